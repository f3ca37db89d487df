"""``sam-nnunet predict-prompted``: nnU-Net prediction of a folder of images with clicks from a prompt file or
simulated from reference labels, optionally evaluated against those labels.

Every case goes through nnU-Net's own preprocessing (``preprocessor.run_case``) and export
(``export_prediction_from_logits``); its clicks are mapped into the preprocessed volume with the properties that
preprocessing recorded (``sam_nnunet.inference.geometry``). The clicks used are written to ``OUT/clicks.json`` (a
valid prompt file, voxel coordinates), so simulated clicks can be inspected and re-used.
"""
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p, save_json

from sam_nnunet.inference.geometry import (ClickOutsideError, array_index_to_file, array_index_to_preprocessed,
                                           box_array_to_preprocessed, check_box, file_index_to_array,
                                           world_box_to_file_index, world_to_file_index)
from sam_nnunet.inference.initial_segmentation import initial_case, read_initial_segmentation
from sam_nnunet.inference.predictor import PromptedPredictor
from sam_nnunet.inference.prompt_file import (Box, PromptFileError, Prompts, box_label, class_channels,
                                              click_point_label, load_prompts)
from sam_nnunet.metrics.evaluate import evaluate_folders
from sam_nnunet.prompts.corrections import MERGES, progressive_merge
from sam_nnunet.prompts.guarantee import guarantee_clicks
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


@dataclass
class CasePrompts:
    """A case's prompts in the image array (nnU-Net reader's axes), each with the interaction round it joins."""
    points: np.ndarray        # (N, 3)
    labels: np.ndarray        # (N,) point_labels
    boxes: np.ndarray         # (M, 2, 3) first and last voxel
    box_labels: np.ndarray    # (M,)
    point_rounds: np.ndarray  # (N,)
    box_rounds: np.ndarray    # (M,)

    @classmethod
    def of(cls, points=None, labels=None, boxes=None, box_labels=None, point_rounds=None,
           box_rounds=None) -> "CasePrompts":
        points = np.zeros((0, 3)) if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 3)
        boxes = np.zeros((0, 2, 3)) if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 2, 3)
        labels = np.zeros(0, np.int64) if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
        box_labels = np.zeros(0, np.int64) if box_labels is None else np.asarray(box_labels, np.int64).reshape(-1)
        return cls(points, labels, boxes, box_labels,
                   np.zeros(len(points), np.int64) if point_rounds is None else np.asarray(point_rounds, np.int64),
                   np.zeros(len(boxes), np.int64) if box_rounds is None else np.asarray(box_rounds, np.int64))

    @property
    def num_rounds(self) -> int:
        return int(max([0, *self.point_rounds.tolist(), *self.box_rounds.tolist()])) + 1

    def upto(self, r: int) -> "CasePrompts":
        """The prompts of rounds 0..r."""
        return self._select(self.point_rounds <= r, self.box_rounds <= r)

    def of_round(self, r: int) -> "CasePrompts":
        """The prompts added in round r."""
        return self._select(self.point_rounds == r, self.box_rounds == r)

    def _select(self, p: np.ndarray, b: np.ndarray) -> "CasePrompts":
        return CasePrompts(self.points[p], self.labels[p], self.boxes[b], self.box_labels[b], self.point_rounds[p],
                           self.box_rounds[b])

    def add(self, points=None, labels=None, boxes=None, box_labels=None, at_round: int = 0) -> "CasePrompts":
        more = CasePrompts.of(points, labels, boxes, box_labels)
        return CasePrompts(np.concatenate([self.points, more.points]), np.concatenate([self.labels, more.labels]),
                           np.concatenate([self.boxes, more.boxes]),
                           np.concatenate([self.box_labels, more.box_labels]),
                           np.concatenate([self.point_rounds, np.full(len(more.points), at_round)]),
                           np.concatenate([self.box_rounds, np.full(len(more.boxes), at_round)]))


def predict_case_prompts(predictor: PromptedPredictor, data: torch.Tensor, prompts: CasePrompts, properties: dict,
                         mask_prompt: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Logits (num_heads, *S) of a preprocessed case with its prompts (array indices, mapped through nnU-Net's
    preprocessing with ``properties``) and the previous round's mask prompt (``predictor.mask_prompt_of``).
    Raises ClickOutsideError for a prompt outside what nnU-Net segments."""
    points, boxes = _preprocessed_prompts(predictor, prompts, properties, data.shape[1:])
    return predictor.predict_logits_with_clicks(data, points, prompts.labels, boxes,
                                                None if boxes is None else prompts.box_labels, mask_prompt)


def refine_case_prompts(predictor: PromptedPredictor, data: torch.Tensor, prompts: CasePrompts, properties: dict,
                        previous: Optional[torch.Tensor] = None, merge: str = "progressive",
                        guarantee: Optional[float] = None) -> torch.Tensor:
    """One interaction round: logits (num_heads, *S) with every prompt so far and ``previous`` (the last round's
    logits, or None; a network without mask prompt refuses it) as mask prompt. ``merge``: "progressive" (default) keeps the
    previous logits wherever the change is not connected to this round's new prompts (the prompts of
    ``prompts``' last round; ``corrections.progressive_merge``), "none" takes the new prediction everywhere.
    ``guarantee``: a radius in voxels (None: off): every click so far then holds its class within it, a post-hoc
    rule (``prompts.guarantee``)."""
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {', '.join(MERGES)}, not {merge!r}")
    mask = None if previous is None else predictor.mask_prompt_of(previous)
    logits = predict_case_prompts(predictor, data, prompts, properties, mask)
    if previous is not None and merge != "none":
        last = prompts.of_round(prompts.num_rounds - 1)
        points, boxes = _preprocessed_prompts(predictor, last, properties, data.shape[1:])
        logits = progressive_merge(previous.to(logits.device), logits, points, last.labels, boxes,
                                   predictor.label_manager.has_regions)
    if guarantee is not None:
        points, _ = _preprocessed_prompts(predictor, CasePrompts.of(prompts.points, prompts.labels), properties,
                                          data.shape[1:])
        logits = guarantee_clicks(logits, points, prompts.labels, predictor.label_manager.has_regions, guarantee)
    return logits


def _preprocessed_prompts(predictor: PromptedPredictor, prompts: CasePrompts, properties: dict,
                          shape: Sequence[int]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Clicks (N, 3) and boxes (M, 2, 3) (None without) of ``prompts`` in the preprocessed volume of ``shape``."""
    transpose = predictor.plans_manager.transpose_forward
    points = array_index_to_preprocessed(prompts.points, properties, transpose, shape)
    boxes = None
    if len(prompts.boxes):
        boxes = np.stack([box_array_to_preprocessed(b, properties, transpose, shape) for b in prompts.boxes])
    return points, boxes


def predict_rounds(predictor: PromptedPredictor, data: torch.Tensor, prompts: CasePrompts,
                   properties: dict, merge: str = "progressive", initial: Optional[torch.Tensor] = None,
                   guarantee: Optional[float] = None) -> torch.Tensor:
    """The last round's logits: round r is predicted with the prompts of rounds 0..r and round r - 1's prediction as
    mask prompt, merged into it (``refine_case_prompts``); the frozen encoder runs once for all rounds (the
    predictor's embedding cache). ``initial``: logits of an initial segmentation (``initial_segmentation``), the
    previous prediction of the prompts' round 0 (returned as they are where there is no prompt)."""
    if initial is not None and not len(prompts.labels) and not len(prompts.box_labels):
        return initial
    logits = initial
    predictor.embedding_cache = {} if prompts.num_rounds > 1 else None
    try:
        for r in range(prompts.num_rounds):
            logits = refine_case_prompts(predictor, data, prompts.upto(r), properties, logits, merge, guarantee)
    finally:
        predictor.embedding_cache = None
    return logits


def resolve_case_prompts(prompts: Prompts, case: str, image_file: str, reader_name: str,
                         dataset_json: dict, has_regions: bool) -> CasePrompts:
    """A case's clicks and boxes of a prompt file -> CasePrompts (array indices); checks classes, that every click
    and box lies in the image, and that boxes are neither inverted nor empty (PromptFileError naming case and
    entry)."""
    entries, rounds = prompts.cases.get(case, []), prompts.round_of(case)
    clicks = [i for i, e in enumerate(entries) if not isinstance(e, Box)]
    points, labels = _resolve_clicks(prompts, case, [entries[i] for i in clicks], clicks, image_file, reader_name,
                                     dataset_json, has_regions)
    channels = class_channels(dataset_json["labels"], has_regions)
    boxes, box_labels, box_rounds = [], [], []
    size = None
    for i, box in enumerate(entries):
        if not isinstance(box, Box):
            continue
        where = f"case {case!r}, click {i} (a box)"
        size = size or image_size_ijk(image_file)
        try:
            if prompts.coordinates == "world":
                corners = check_box(world_box_to_file_index(box.first, box.last, image_file,
                                                            prompts.world_convention), size, ordered=False)
            else:
                corners = check_box(np.array([box.first, box.last]), size)
        except ClickOutsideError as e:
            given = f" (given {[list(box.first), list(box.last)]} mm, {prompts.world_convention})" \
                if prompts.coordinates == "world" else ""
            raise PromptFileError(f"{where}: {e}{given}") from None
        box_labels.append(box_label(box, channels, has_regions, where))
        boxes.append(file_index_to_array(corners, reader_name))
        box_rounds.append(rounds[i])
    return CasePrompts.of(points, labels, np.array(boxes) if boxes else None, box_labels,
                          [rounds[i] for i in clicks], box_rounds)


def resolve_prompt_clicks(prompts: Prompts, case: str, image_file: str, reader_name: str,
                          dataset_json: dict, has_regions: bool) -> Tuple[np.ndarray, np.ndarray]:
    """A case's clicks of a prompt file -> (array indices (N, 3), point labels (N,)); checks classes and that every
    click lies in the image (PromptFileError naming case and click)."""
    entries = prompts.cases.get(case, [])
    clicks = [i for i, e in enumerate(entries) if not isinstance(e, Box)]
    return _resolve_clicks(prompts, case, [entries[i] for i in clicks], clicks, image_file, reader_name,
                           dataset_json, has_regions)


def _resolve_clicks(prompts: Prompts, case: str, clicks: list, numbers: List[int], image_file: str,
                    reader_name: str, dataset_json: dict, has_regions: bool) -> Tuple[np.ndarray, np.ndarray]:
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
            raise PromptFileError(f"case {case!r}, click {numbers[i]}: {where} lies outside the image (size "
                                  f"{size.astype(int).tolist()} voxels, indices 0..size-1 along i, j, k)")
    labels = [click_point_label(c, channels, has_regions, f"case {case!r}, click {numbers[i]}")
              for i, c in enumerate(clicks)]
    return file_index_to_array(points, reader_name), np.asarray(labels, dtype=np.int64)


def _initial_folder(folder: Optional[str], prompts: Optional[Prompts], prompts_file: Optional[str]) -> Optional[str]:
    """The initial segmentation folder of ``--initial-segmentation`` or the prompt file (the same one if both)."""
    given = prompts.initial_segmentation if prompts is not None else None
    if folder is not None and given is not None and os.path.realpath(folder) != os.path.realpath(given):
        raise ValueError(f"two initial segmentations: --initial-segmentation {folder} and {prompts_file}'s "
                         f"\"initial_segmentation\" {given}; give one")
    folder = folder if folder is not None else given
    if folder is not None and not os.path.isdir(folder):
        raise ValueError(f"initial segmentation folder {folder} does not exist")
    return folder


def clicks_record(points: np.ndarray, labels: np.ndarray, names: Dict[int, str], has_regions: bool) -> List[dict]:
    """Clicks as prompt-file entries (voxel index in the file)."""
    record = []
    for p, label in zip(array_index_to_file(points), labels):
        channel, negative = divmod(int(label), 2)
        record.append({"point": [round(float(v), 3) for v in p], "class": names[channel],
                       "positive": not negative})
    return record


def prompts_record(prompts: CasePrompts, names: Dict[int, str], has_regions: bool):
    """A case's prompts as a prompt-file case entry (a list, or ``{"rounds": [...]}`` with several rounds)."""
    rounds = []
    for r in range(prompts.num_rounds):
        p, b = prompts.point_rounds == r, prompts.box_rounds == r
        entries = clicks_record(prompts.points[p], prompts.labels[p], names, has_regions)
        for box, label in zip(prompts.boxes[b], prompts.box_labels[b]):
            corners = array_index_to_file(box)
            entries.append({"box": [[round(float(v), 3) for v in c] for c in corners],
                            "class": names[int(label) // 2]})
        rounds.append(entries)
    return rounds[0] if len(rounds) == 1 else {"rounds": rounds}


def predict_prompted(input_folder: str, output_folder: str, model_folder: str, folds: Sequence[Union[int, str]],
                     prompts_file: Optional[str] = None, simulate: Optional[int] = None,
                     reference_folder: Optional[str] = None, tiles: str = "all", seed: int = 0,
                     device: Optional[torch.device] = None, checkpoint_name: str = "checkpoint_final.pth",
                     step_size: float = 0.5, disable_tta: bool = False, save_probabilities: bool = False,
                     num_processes: int = 2, tolerance_mm: float = 5.0, merge: str = "progressive",
                     initial_segmentation: Optional[str] = None, click_guarantee: Optional[float] = None
                     ) -> Optional[dict]:
    """Predict every case of ``input_folder`` (nnU-Net's naming: CASE_0000.nii.gz, ...) with its clicks.

    Clicks come from ``prompts_file`` or are simulated (``simulate`` per class) from ``reference_folder``'s labels.
    With ``reference_folder`` the predictions are evaluated as ``sam-nnunet evaluate`` does (nnU-Net's Dice, NSD at
    ``tolerance_mm``, HD95; ``OUT/summary.json`` and ``summary.csv``); the summary is returned.
    ``merge``: how a later round of a prompt file's ``rounds`` changes the previous prediction ("progressive": only
    where the change is connected to its prompts; "none": everywhere; ``refine_case_prompts``).
    ``initial_segmentation``: a folder of label files (CASE.nii.gz, e.g. nnUNetv2_predict's output; or the prompt
    file's ``"initial_segmentation"``): each case's is round 0, the prompts its corrections (a case without prompts
    is written as given, through nnU-Net's export); each is checked against its image first.
    ``click_guarantee``: radius in voxels within which every click holds its class (a post-hoc rule; None: off).
    Errors the user can fix raise PromptFileError / ValueError with a message naming the case.
    """
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder, \
        get_identifiers_from_splitted_dataset_folder

    if (prompts_file is None) == (simulate is None):
        raise ValueError("give either a prompt file (--prompts) or --simulate-clicks N with --reference")
    if simulate is not None and (reference_folder is None or simulate < 1):
        raise ValueError("--simulate-clicks N needs N >= 1 and --reference LABELS_FOLDER")
    if merge not in MERGES:
        raise ValueError(f"--merge must be one of {', '.join(MERGES)}, not {merge!r}")
    if not os.path.isdir(input_folder):
        raise ValueError(f"input folder {input_folder} does not exist")
    prompts = load_prompts(prompts_file) if prompts_file is not None else None
    initial_segmentation = _initial_folder(initial_segmentation, prompts, prompts_file)
    device = device or torch.device("cpu")
    predictor = load_prompted_predictor(model_folder, folds, device, tiles, step_size, disable_tta, checkpoint_name)
    if initial_segmentation is not None:
        predictor.check_network_takes_boxes()  # the initial segmentation is the first correction's mask prompt
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
            clicks[case] = resolve_case_prompts(prompts, case, case_files[0], reader_name, dataset_json,
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
            clicks[case] = CasePrompts.of(*simulate_clicks(reference, classes, lm.has_regions, simulate,
                                                           case_rng(seed, case)))
        if initial_segmentation is not None:
            image, image_properties = reader.read_images(case_files)
            read_initial_segmentation(initial_segmentation, case, file_ending, reader, image.shape[1:],
                                      image_properties, lm, dataset_json["labels"])

    maybe_mkdir_p(output_folder)
    save_json(dataset_json, join(output_folder, "dataset.json"), sort_keys=False)
    save_json(pm.plans, join(output_folder, "plans.json"), sort_keys=False)
    preprocessor = cm.preprocessor_class(verbose=False)
    record = {"coordinates": "voxel", "cases": {}}
    if initial_segmentation is not None:
        record["initial_segmentation"] = os.path.abspath(initial_segmentation)
    for case, case_files in zip(cases, files):
        data, _, properties = preprocessor.run_case(case_files, None, pm, cm, dataset_json)
        _, initial = initial_case(initial_segmentation, case, file_ending, reader, properties, data.shape[1:],
                                  predictor)
        try:
            logits = predict_rounds(predictor, torch.from_numpy(data), clicks[case], properties, merge,
                                    initial, click_guarantee).cpu()
        except ClickOutsideError as e:
            raise PromptFileError(f"case {case!r}: {e}") from None
        export_prediction_from_logits(logits, properties, cm, pm, dataset_json, join(output_folder, case),
                                      save_probabilities)
        record["cases"][case] = prompts_record(clicks[case], names, lm.has_regions)
    with open(join(output_folder, "clicks.json"), "w") as f:
        json.dump(record, f, indent=1)

    if reference_folder is None:
        return None
    return evaluate_folders(reference_folder, output_folder, classes, join(output_folder, "summary.json"),
                            tolerance_mm, lm.ignore_label, reader, file_ending, num_processes, chill=True)
