"""``sam-nnunet predict-prompted``: nnU-Net prediction of a folder of images with clicks from a prompt file or
simulated from reference labels, optionally evaluated against those labels.

Every case goes through nnU-Net's own preprocessing (``preprocessor.run_case``) and export
(``export_prediction_from_logits``); its clicks are mapped into the preprocessed volume with the properties that
preprocessing recorded (``sam_nnunet.prompts.geometry``). The clicks used are written to ``OUT/clicks.json`` (a
valid prompt file, voxel coordinates), so simulated clicks can be inspected and re-used.
"""
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p, save_json

from sam_nnunet.prompts.geometry import (ClickOutsideError, array_index_to_file, array_index_to_preprocessed,
                                         file_index_to_array, world_to_file_index)
from sam_nnunet.prompts.predictor import PromptedPredictor
from sam_nnunet.prompts.prompt_file import (PromptFileError, Prompts, class_channels, click_point_label,
                                            load_prompts)
from sam_nnunet.prompts.simulate import case_rng, simulate_clicks


def load_prompted_predictor(model_folder: str, folds: Sequence[Union[int, str]], device: torch.device,
                            tiles: str = "all", step_size: float = 0.5, disable_tta: bool = False,
                            checkpoint_name: str = "checkpoint_final.pth") -> PromptedPredictor:
    """A PromptedPredictor with the trained model of ``model_folder`` (nnU-Net's loading; checks it takes clicks)."""
    predictor = PromptedPredictor(tiles=tiles, tile_step_size=step_size, use_gaussian=True,
                                  use_mirroring=not disable_tta, perform_everything_on_device=device.type == "cuda",
                                  device=device, verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, tuple(folds), checkpoint_name)
    predictor.check_network_takes_clicks()
    return predictor


def label_names(dataset_json: dict, has_regions: bool) -> Dict[int, str]:
    """{output channel: label name} (the inverse of class_channels for names)."""
    return {c: k for k, c in class_channels(dataset_json["labels"], has_regions).items() if isinstance(k, str)}


def image_size_ijk(image_file: str) -> Tuple[int, ...]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(image_file)
    reader.ReadImageInformation()
    return tuple(reader.GetSize())


def resolve_prompt_clicks(prompts: Prompts, case: str, image_file: str, reader_name: str,
                          dataset_json: dict, has_regions: bool) -> Tuple[np.ndarray, np.ndarray]:
    """A case's clicks of a prompt file -> (array indices (N, 3), point labels (N,)); checks classes and that every
    click lies in the image (PromptFileError naming case and click)."""
    clicks = prompts.cases.get(case, [])
    channels = class_channels(dataset_json["labels"], has_regions)
    if not clicks:
        return np.zeros((0, 3)), np.zeros((0,), dtype=np.int64)
    points = np.array([c.point for c in clicks], dtype=np.float64)
    if prompts.coordinates == "world":
        points = world_to_file_index(points, image_file, prompts.world_convention)
    size = np.array(image_size_ijk(image_file), dtype=np.float64)
    for i, p in enumerate(points):
        if np.any(p < -0.5) or np.any(p >= size - 0.5):
            given = list(clicks[i].point)
            where = f"voxel index {given}" if prompts.coordinates == "voxel" else \
                f"world position {given} mm ({prompts.world_convention}; voxel index {np.round(p, 2).tolist()})"
            raise PromptFileError(f"case {case!r}, click {i}: {where} lies outside the image (size {size.astype(int).tolist()} "
                                  f"voxels, indices 0..size-1 along i, j, k)")
    labels = [click_point_label(c, channels, has_regions, f"case {case!r}, click {i}") for i, c in enumerate(clicks)]
    return file_index_to_array(points, reader_name), np.asarray(labels, dtype=np.int64)


def clicks_record(points: np.ndarray, labels: np.ndarray, names: Dict[int, str], has_regions: bool) -> List[dict]:
    """Clicks as prompt-file entries (voxel index in the file)."""
    record = []
    for p, label in zip(array_index_to_file(points), labels):
        channel, negative = divmod(int(label), 2)
        record.append({"point": [round(float(v), 3) for v in p], "class": names[channel],
                       "positive": not negative})
    return record


def predict_prompted(input_folder: str, output_folder: str, model_folder: str, folds: Sequence[Union[int, str]],
                     prompts_file: Optional[str] = None, simulate: Optional[int] = None,
                     reference_folder: Optional[str] = None, tiles: str = "all", seed: int = 0,
                     device: Optional[torch.device] = None, checkpoint_name: str = "checkpoint_final.pth",
                     step_size: float = 0.5, disable_tta: bool = False, save_probabilities: bool = False,
                     num_processes: int = 2, tolerance_mm: float = 5.0) -> Optional[dict]:
    """Predict every case of ``input_folder`` (nnU-Net's naming: CASE_0000.nii.gz, ...) with its clicks.

    Clicks come from ``prompts_file`` or are simulated (``simulate`` per class) from ``reference_folder``'s labels.
    With ``reference_folder`` the predictions are evaluated as ``sam-nnunet evaluate`` does (nnU-Net's Dice, NSD at
    ``tolerance_mm``, HD95; ``OUT/summary.json`` and ``summary.csv``); the summary is returned.
    Errors the user can fix raise PromptFileError / ValueError with a message naming the case.
    """
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder, \
        get_identifiers_from_splitted_dataset_folder

    if (prompts_file is None) == (simulate is None):
        raise ValueError("give either a prompt file (--prompts) or --simulate-clicks N with --reference")
    if simulate is not None and (reference_folder is None or simulate < 1):
        raise ValueError("--simulate-clicks N needs N >= 1 and --reference LABELS_FOLDER")
    if not os.path.isdir(input_folder):
        raise ValueError(f"input folder {input_folder} does not exist")
    prompts = load_prompts(prompts_file) if prompts_file is not None else None
    device = device or torch.device("cpu")
    predictor = load_prompted_predictor(model_folder, folds, device, tiles, step_size, disable_tta, checkpoint_name)
    pm, cm, dataset_json, lm = (predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json,
                                predictor.label_manager)
    file_ending = dataset_json["file_ending"]
    reader = pm.image_reader_writer_class()
    reader_name = type(reader).__name__

    cases = [str(c) for c in get_identifiers_from_splitted_dataset_folder(input_folder, file_ending)]
    if not cases:
        raise ValueError(f"no images named CASE_0000{file_ending} in {input_folder}")
    files = create_lists_from_splitted_dataset_folder(input_folder, file_ending, cases, num_processes=1)
    if prompts is not None:
        unknown = sorted(set(prompts.cases) - set(cases))
        if unknown:
            raise PromptFileError(f"{prompts_file} has clicks for case(s) {unknown} that are not in {input_folder} "
                                  f"(its cases: {', '.join(cases[:10])}{', ...' if len(cases) > 10 else ''})")
    names = label_names(dataset_json, lm.has_regions)
    classes = lm.foreground_regions if lm.has_regions else lm.foreground_labels

    # all clicks first, so that a mistake stops the command before any prediction
    clicks = {}
    for case, case_files in zip(cases, files):
        if prompts is not None:
            clicks[case] = resolve_prompt_clicks(prompts, case, case_files[0], reader_name, dataset_json,
                                                 lm.has_regions)
        else:
            ref_file = join(reference_folder, case + file_ending)
            if not os.path.isfile(ref_file):
                raise ValueError(f"case {case!r}: no reference label {ref_file} to simulate clicks from")
            reference, _ = reader.read_seg(ref_file)
            size = image_size_ijk(case_files[0])
            if tuple(reference.shape[1:]) != tuple(size[::-1]):
                raise ValueError(f"case {case!r}: the reference {ref_file} has {reference.shape[1:][::-1]} voxels, "
                                 f"the image {size}; they must be on the same grid")
            clicks[case] = simulate_clicks(reference, classes, lm.has_regions, simulate, case_rng(seed, case))

    maybe_mkdir_p(output_folder)
    save_json(dataset_json, join(output_folder, "dataset.json"), sort_keys=False)
    save_json(pm.plans, join(output_folder, "plans.json"), sort_keys=False)
    preprocessor = cm.preprocessor_class(verbose=False)
    record = {"coordinates": "voxel", "cases": {}}
    for case, case_files in zip(cases, files):
        points, labels = clicks[case]
        data, _, properties = preprocessor.run_case(case_files, None, pm, cm, dataset_json)
        try:
            inside = array_index_to_preprocessed(points, properties, pm.transpose_forward, data.shape[1:])
        except ClickOutsideError as e:
            raise PromptFileError(f"case {case!r}: {e}") from None
        logits = predictor.predict_logits_with_clicks(torch.from_numpy(data), inside, labels).cpu()
        export_prediction_from_logits(logits, properties, cm, pm, dataset_json, join(output_folder, case),
                                      save_probabilities)
        record["cases"][case] = clicks_record(points, labels, names, lm.has_regions)
    with open(join(output_folder, "clicks.json"), "w") as f:
        json.dump(record, f, indent=1)

    if reference_folder is None:
        return None
    from sam_nnunet.evaluation.evaluate import evaluate_folders

    return evaluate_folders(reference_folder, output_folder, classes, join(output_folder, "summary.json"),
                            tolerance_mm, lm.ignore_label, reader, file_ending, num_processes, chill=True)
