"""The cases ``sam-nnunet interaction`` scores, each preprocessed as the model's predictor sees it, with its
reference label and (optionally) an initial segmentation:

  - ``fold_cases``: a fold's validation cases (or named ones) of the preprocessed dataset the model was trained on
    (nnU-Net's preprocessed data and ``gt_segmentations``, as nnU-Net's own validation);
  - ``test_folder_cases``: any folder with ``imagesTs`` (CASE_0000.nii.gz, ...) and ``labelsTs`` (CASE.nii.gz), in
    nnU-Net's naming, never preprocessed with the model: each case goes through nnU-Net's preprocessor with the
    model's plans (``preprocessor.run_case``, as ``predict-prompted`` and ``nnUNetv2_predict`` do).

An initial segmentation folder (label files CASE.nii.gz, e.g. nnUNetv2_predict's output) is read with the model's
reader and checked against each case's image (``inference.initial_segmentation``: shape, spacing, orientation,
origin, labels), all cases before the first prediction.
"""
import os
from typing import Iterator, List, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from sam_nnunet.inference.initial_segmentation import initial_logits, read_initial_segmentation


class InteractionCase(NamedTuple):
    name: str
    data: torch.Tensor                  # (C, *preprocessed shape)
    properties: dict                    # nnU-Net's preprocessing properties
    reference: np.ndarray               # (*S) at native resolution, the reader's axes
    initial: Optional[np.ndarray]       # (*S) the initial segmentation, or None
    initial_logits: Optional[torch.Tensor]  # its logits in the preprocessed volume


def _with_initial(predictor, name, data, properties, reference, initial_folder) -> InteractionCase:
    initial = logits = None
    if initial_folder is not None:
        reader = predictor.plans_manager.image_reader_writer_class()
        initial = read_initial_segmentation(initial_folder, name, predictor.dataset_json["file_ending"], reader,
                                            reference.shape, properties, predictor.label_manager,
                                            predictor.dataset_json["labels"])
        logits = initial_logits(initial, properties, data.shape[1:], predictor.plans_manager,
                                predictor.configuration_manager, predictor.label_manager)
    return InteractionCase(name, data, properties, reference, initial, logits)


def _check_initial_folder(folder: Optional[str]) -> None:
    if folder is not None and not os.path.isdir(folder):
        raise ValueError(f"initial segmentation folder {folder} does not exist")


def fold_case_names(predictor, fold: Union[int, str], cases: Optional[Sequence[str]]) -> List[str]:
    from nnunetv2.paths import nnUNet_preprocessed

    if cases is not None:
        return list(cases)
    splits = join(nnUNet_preprocessed, predictor.plans_manager.dataset_name, "splits_final.json")
    if not os.path.isfile(splits):
        raise FileNotFoundError(f"{splits} is missing: give the cases, the preprocessed dataset the model was trained "
                                f"on (nnUNet_preprocessed), or --test-folder")
    return sorted(load_json(splits)[int(fold)]["val"])


def fold_cases(predictor, cases: Sequence[str], initial_folder: Optional[str] = None
               ) -> Iterator[InteractionCase]:
    """The preprocessed cases ``cases`` of the model's dataset, with their ``gt_segmentations``."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    _check_initial_folder(initial_folder)
    pm, cm = predictor.plans_manager, predictor.configuration_manager
    base = join(nnUNet_preprocessed, pm.dataset_name)
    data_folder = join(base, cm.data_identifier)
    dataset = infer_dataset_class(data_folder)(data_folder, list(cases))
    reader = pm.image_reader_writer_class()
    if initial_folder is not None:  # every initial segmentation checked before the first prediction
        for case in cases:
            _, _, _, properties = dataset.load_case(case)
            read_initial_segmentation(initial_folder, case, predictor.dataset_json["file_ending"], reader,
                                      properties["shape_before_cropping"], properties, predictor.label_manager,
                                      predictor.dataset_json["labels"])
    for case in cases:
        data, _, _, properties = dataset.load_case(case)
        data = torch.from_numpy(np.asarray(data[:]))
        reference, _ = reader.read_seg(join(base, "gt_segmentations", case + predictor.dataset_json["file_ending"]))
        yield _with_initial(predictor, case, data, properties, reference[0], initial_folder)


def labelled_folder_case_names(folder: str, file_ending: str, cases: Optional[Sequence[str]] = None) -> List[str]:
    """The cases of ``folder/imagesTs`` that have a label in ``folder/labelsTs`` (all of them, or a clear error)."""
    from nnunetv2.utilities.utils import get_identifiers_from_splitted_dataset_folder

    images, labels = join(folder, "imagesTs"), join(folder, "labelsTs")
    if not os.path.isdir(images) or not os.path.isdir(labels):
        raise ValueError(f"--test-folder {folder} needs imagesTs (CASE_0000{file_ending}, ...) and labelsTs "
                         f"(CASE{file_ending}), nnU-Net's naming")
    found = [str(c) for c in get_identifiers_from_splitted_dataset_folder(images, file_ending)]
    if not found:
        raise ValueError(f"no images named CASE_0000{file_ending} in {images}")
    unlabelled = [c for c in found if not os.path.isfile(join(labels, c + file_ending))]
    if unlabelled:
        raise ValueError(f"{labels} has no label for {unlabelled[:5]}{' ...' if len(unlabelled) > 5 else ''}: "
                         f"every image of imagesTs needs its CASE{file_ending}")
    if cases is None:
        return found
    unknown = sorted(set(cases) - set(found))
    if unknown:
        raise ValueError(f"{unknown} are not cases of {images}")
    return list(cases)


def labelled_folder_cases(predictor, folder: str, cases: Sequence[str], initial_folder: Optional[str] = None
                      ) -> Iterator[InteractionCase]:
    """Cases of a test folder, preprocessed with the model's plans by nnU-Net's preprocessor."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    _check_initial_folder(initial_folder)
    pm, cm, dataset_json = predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json
    file_ending = dataset_json["file_ending"]
    files = create_lists_from_splitted_dataset_folder(join(folder, "imagesTs"), file_ending, list(cases),
                                                      num_processes=1)
    reader = pm.image_reader_writer_class()
    for case, case_files in zip(cases, files):  # labels (and initial segmentations) checked before predicting
        image, properties = reader.read_images(case_files)
        reference, _ = reader.read_seg(join(folder, "labelsTs", case + file_ending))
        if tuple(reference.shape[1:]) != tuple(image.shape[1:]):
            raise ValueError(f"case {case!r}: the label {join(folder, 'labelsTs', case + file_ending)} has shape "
                             f"{list(reference.shape[1:])}, the image {list(image.shape[1:])}; they must be on the "
                             f"same grid")
        if initial_folder is not None:
            read_initial_segmentation(initial_folder, case, file_ending, reader, image.shape[1:], properties,
                                      predictor.label_manager, dataset_json["labels"])
    preprocessor = cm.preprocessor_class(verbose=False)
    for case, case_files in zip(cases, files):
        data, _, properties = preprocessor.run_case(case_files, None, pm, cm, dataset_json)
        reference, _ = reader.read_seg(join(folder, "labelsTs", case + file_ending))
        yield _with_initial(predictor, case, torch.from_numpy(np.ascontiguousarray(data)), properties,
                            reference[0], initial_folder)
