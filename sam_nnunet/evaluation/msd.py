"""``sam-nnunet msd-submission``: lay out nnU-Net's test-set predictions as a Medical Segmentation Decathlon
submission.

The Decathlon's leaderboard takes one zip archive whose top level holds one folder per task, named as the task
is named in the Decathlon download (``Task04_Hippocampus``), each with one segmentation per test image, named as
that test image (``hippocampus_267.nii.gz``), in the test image's geometry, with the task's label values.
``nnUNetv2_predict`` already writes ``<case>.nii.gz`` in the image's geometry (its ``nnUNetv2_convert_MSD_dataset``
only appended ``_0000`` to the image names), so this command only checks the predictions against the converted
dataset (every test case present, geometry, label values) and copies them into ``<output>/TaskXX_Name/``;
``--zip`` packs every task folder of ``<output>`` into the archive. Run it once per task into the same folder.
"""
import json
import os
import re
import shutil
import zipfile
from typing import Dict, List, Optional

import numpy as np

from sam_nnunet.synthetic import synthetic_case, write_image

MSD_ENDING = ".nii.gz"


def msd_task_name(dataset_name: str) -> str:
    """``Dataset004_Hippocampus`` -> ``Task04_Hippocampus`` (the Decathlon's two-digit task ids)."""
    match = re.fullmatch(r"Dataset(\d{3})_(.+)", dataset_name)
    if not match:
        raise ValueError(f"{dataset_name!r} is not an nnU-Net dataset name (DatasetXXX_Name)")
    return f"Task{int(match.group(1)):02d}_{match.group(2)}"


def _geometry(path: str) -> Dict:
    import SimpleITK as sitk
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()  # header only
    return {"size": reader.GetSize(), "spacing": reader.GetSpacing(), "origin": reader.GetOrigin(),
            "direction": reader.GetDirection()}


def _same_geometry(a: Dict, b: Dict) -> bool:
    if a["size"] != b["size"]:
        return False
    return all(np.allclose(a[k], b[k], rtol=1e-5, atol=1e-4) for k in ("spacing", "origin", "direction"))


def check_prediction(prediction: str, image: str, allowed_labels: List[int]) -> Optional[str]:
    """None when ``prediction`` fits ``image`` (geometry) and holds only ``allowed_labels``; else the problem."""
    import SimpleITK as sitk

    pred_geometry, image_geometry = _geometry(prediction), _geometry(image)
    if not _same_geometry(pred_geometry, image_geometry):
        return (f"{os.path.basename(prediction)}: geometry {pred_geometry} differs from the test image's "
                f"{image_geometry}")
    values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(prediction)))
    extra = sorted(set(values.tolist()) - set(allowed_labels))
    if extra:
        return f"{os.path.basename(prediction)}: label values {extra} are not labels of the task ({allowed_labels})"
    return None


def make_submission(predictions: str, dataset: str, output: str, zip_file: Optional[str] = None,
                    task_name: Optional[str] = None, allow_missing: bool = False) -> Dict:
    """Check and copy the predictions of one task into ``output/TaskXX_Name``; with ``zip_file`` zip every task
    folder of ``output``. Returns {"task", "folder", "cases", "zip"}."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    raw = os.path.join(nnUNet_raw, dataset_name)
    dataset_json = load_json(os.path.join(raw, "dataset.json"))
    ending = dataset_json["file_ending"]
    if ending != MSD_ENDING:
        raise ValueError(f"{dataset_name} stores {ending} files; a Decathlon submission holds {MSD_ENDING} files")
    images_ts = os.path.join(raw, "imagesTs")
    cases = sorted(f[:-len("_0000" + ending)] for f in os.listdir(images_ts) if f.endswith("_0000" + ending)) \
        if os.path.isdir(images_ts) else []
    if not cases:
        raise ValueError(f"{images_ts} holds no test images (<case>_0000{ending}); the submission predicts them")
    if not os.path.isdir(predictions):
        raise ValueError(f"the prediction folder {predictions} does not exist")
    missing = [c for c in cases if not os.path.isfile(os.path.join(predictions, c + ending))]
    if missing and not allow_missing:
        raise ValueError(f"{len(missing)} of {len(cases)} test images have no prediction in {predictions} (e.g. "
                         f"{missing[0]}{ending}); predict them all, or pass --allow-missing")
    label_manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    allowed = sorted({0, *[int(v) for v in label_manager.all_labels]})
    if label_manager.has_regions:  # nnU-Net exports region-based predictions as the regions_class_order values
        allowed = sorted({0, *[int(v) for v in dataset_json["regions_class_order"]]})

    problems = []
    present = [c for c in cases if c not in missing]
    for case in present:
        problem = check_prediction(os.path.join(predictions, case + ending),
                                   os.path.join(images_ts, f"{case}_0000{ending}"), allowed)
        if problem:
            problems.append(problem)
    if problems:
        raise ValueError("these predictions do not fit the test images:\n  " + "\n  ".join(problems[:10]))

    task = task_name or msd_task_name(dataset_name)
    folder = os.path.join(output, task)
    shutil.rmtree(folder, ignore_errors=True)  # a task folder holds one submission's files only
    os.makedirs(folder)
    for case in present:
        shutil.copyfile(os.path.join(predictions, case + ending), os.path.join(folder, case + MSD_ENDING))
    if zip_file:
        write_zip(output, zip_file)
    return {"task": task, "folder": folder, "cases": present, "missing": missing, "zip": zip_file}


def write_zip(output: str, zip_file: str) -> List[str]:
    """Zip every ``Task*`` folder of ``output`` (the folder at the archive's top level); returns the entries."""
    tasks = sorted(d for d in os.listdir(output) if d.startswith("Task") and os.path.isdir(os.path.join(output, d)))
    entries = []
    os.makedirs(os.path.dirname(os.path.abspath(zip_file)), exist_ok=True)
    with zipfile.ZipFile(zip_file, "w", zipfile.ZIP_DEFLATED) as z:
        for task in tasks:
            for name in sorted(os.listdir(os.path.join(output, task))):
                if name.endswith(MSD_ENDING):
                    z.write(os.path.join(output, task, name), f"{task}/{name}")
                    entries.append(f"{task}/{name}")
    return entries


def make_synthetic_msd_task(out_parent: str, task: str = "Task98_SAMDemo", num_train: int = 5, num_test: int = 2,
                            seed: int = 0) -> str:
    """A Decathlon-layout task (imagesTr, labelsTr, imagesTs, dataset.json with modality / labels / training /
    test) of synthetic volumes, for the Decathlon workflow without Decathlon data; the test labels go to labelsTs
    (not part of a real task) so that the test predictions can be evaluated. Returns the task folder."""
    folder = os.path.join(out_parent, task)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    rng = np.random.default_rng(seed)
    prefix = task.split("_", 1)[1].lower()
    training, test = [], []
    for i in range(num_train + num_test):
        image, label = synthetic_case(rng)
        name = f"{prefix}_{i:03d}.nii.gz"
        split = "Tr" if i < num_train else "Ts"
        write_image(image, os.path.join(folder, f"images{split}", name), (1.0, 1.0, 1.0))
        write_image(label, os.path.join(folder, f"labels{split}", name), (1.0, 1.0, 1.0))
        if split == "Tr":
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")
    meta = {"name": task.split("_", 1)[1], "description": "synthetic data of sam-nnunet in the Decathlon layout",
            "tensorImageSize": "3D", "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "anterior", "2": "posterior"},
            "numTraining": num_train, "numTest": num_test, "training": training, "test": test}
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return folder
