"""Automatic vs 1 / 3 / 10-click Dice of a prompted model on a fold's validation cases (the papers' protocol).

For the benchmark (``sam-nnunet benchmark``) and for users: ``evaluate_clicks_on_fold(model_folder, fold)``
predicts nnU-Net's validation cases of that fold (preprocessed data of the training run, nnU-Net's
``splits_final.json``) once per click count, with clicks simulated from the reference labels
(``gt_segmentations``, the files nnU-Net's own validation compares with), and evaluates them as ``sam-nnunet
evaluate`` does (nnU-Net's Dice, NSD, HD95). 0 clicks = the automatic mode (every tile, no clicks), what nnU-Net's
own validation of the model measures.
"""
import json
import os
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json, maybe_mkdir_p

from sam_nnunet.inference.geometry import array_index_to_preprocessed
from sam_nnunet.inference.predict import clicks_record, label_names, load_prompted_predictor
from sam_nnunet.metrics.evaluate import evaluate_folders
from sam_nnunet.prompts.simulate import case_rng, simulate_clicks
from sam_nnunet.trainers.registry import find_trainer_class


def paper_tiles(trainer_name: str) -> str:
    """The test protocol of the paper a prompted trainer follows (``paper_click_tiles``), else "all"."""
    return getattr(find_trainer_class(trainer_name), "paper_click_tiles", "all")


def evaluate_clicks_on_fold(model_folder: str, fold: Union[int, str], num_clicks: Sequence[int] = (0, 1, 3, 10),
                            tiles: Optional[str] = None, seed: int = 0, device: Optional[torch.device] = None,
                            checkpoint_name: str = "checkpoint_final.pth", disable_tta: bool = False,
                            output_folder: Optional[str] = None, cases: Optional[Sequence[str]] = None,
                            tolerance_mm: float = 5.0, num_processes: int = 1) -> Dict[int, dict]:
    """Predict and evaluate the fold's validation cases for each number of simulated clicks per class.

    Arguments:
      model_folder: nnU-Net model folder (.../DatasetXXX_Name/Trainer__Plans__Configuration) of a prompted trainer.
      fold: the fold whose validation cases (and checkpoint) are used.
      num_clicks: clicks per class to evaluate; 0 = automatic.
      tiles: which tiles get predicted with clicks ("all", "clicked", "centred"; see PromptedPredictor); default:
        the trainer's paper protocol (SAMAdapterTrainer_prompted: "centred"). 0 clicks always uses "all".
      seed: seed of the simulated clicks (per case; the same clicks for every run with the same seed).
      output_folder: where the predictions go (default ``fold_F/validation_clicks``): ``N_clicks/`` per count with
        its ``summary.json`` / ``summary.csv`` and the clicks used (``clicks.json``), and ``summary.json`` over all
        counts.
      cases: a subset of the fold's validation cases (default: all of them).
      tolerance_mm: NSD tolerance (5 mm as both papers).
    Returns {N: the summary of ``sam_nnunet.metrics.evaluate.evaluate_folders`` (``mean``, ``foreground_mean``,
    ``metric_per_case``)}; e.g. the foreground Dice with N clicks is ``result[N]["foreground_mean"]["Dice"]``.
    """
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    if str(fold) == "all":
        raise ValueError("fold 'all' has no validation cases; evaluate a cross-validation fold")
    device = device or torch.device("cpu")
    fold_name = int(fold)
    predictor = load_prompted_predictor(model_folder, [fold_name], device, "all", disable_tta=disable_tta,
                                        checkpoint_name=checkpoint_name)
    tiles = tiles or paper_tiles(predictor.trainer_name)
    pm, cm, dataset_json, lm = (predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json,
                                predictor.label_manager)
    base = join(nnUNet_preprocessed, pm.dataset_name)
    splits_file = join(base, "splits_final.json")
    if not os.path.isfile(splits_file):
        raise FileNotFoundError(f"{splits_file} is missing: evaluating a fold needs the preprocessed dataset the "
                                f"model was trained on (nnUNet_preprocessed)")
    validation = sorted(load_json(splits_file)[fold_name]["val"])
    if cases is not None:
        unknown = sorted(set(cases) - set(validation))
        if unknown:
            raise ValueError(f"{unknown} are not validation cases of fold {fold_name}")
        validation = [c for c in validation if c in set(cases)]
    data_folder = join(base, cm.data_identifier)
    dataset = infer_dataset_class(data_folder)(data_folder, validation)
    reference_folder = join(base, "gt_segmentations")
    file_ending = dataset_json["file_ending"]
    reader = pm.image_reader_writer_class()
    classes = lm.foreground_regions if lm.has_regions else lm.foreground_labels
    names = label_names(dataset_json, lm.has_regions)

    output_folder = output_folder or join(model_folder, f"fold_{fold_name}", "validation_clicks")
    folders = {n: join(output_folder, f"{n}_clicks") for n in num_clicks}
    for folder in folders.values():
        maybe_mkdir_p(folder)
    records = {n: {"coordinates": "voxel", "cases": {}} for n in num_clicks}
    for case in validation:
        data, _, _, properties = dataset.load_case(case)
        data = torch.from_numpy(np.asarray(data[:]))
        reference, _ = reader.read_seg(join(reference_folder, case + file_ending))
        for n in num_clicks:
            points, labels = simulate_clicks(reference, classes, lm.has_regions, n, case_rng(seed, case))
            inside = array_index_to_preprocessed(points, properties, pm.transpose_forward, data.shape[1:])
            predictor.tiles = tiles if n > 0 else "all"
            logits = predictor.predict_logits_with_clicks(data, inside, labels).cpu()
            export_prediction_from_logits(logits, properties, cm, pm, dataset_json, join(folders[n], case))
            records[n]["cases"][case] = clicks_record(points, labels, names, lm.has_regions)

    results, overview = {}, {"tiles": tiles, "seed": seed, "cases": validation, "foreground_mean": {}}
    for n in num_clicks:
        with open(join(folders[n], "clicks.json"), "w") as f:
            json.dump(records[n], f, indent=1)
        results[n] = evaluate_folders(reference_folder, folders[n], classes, join(folders[n], "summary.json"),
                                      tolerance_mm, lm.ignore_label, reader, file_ending, num_processes, chill=True)
        overview["foreground_mean"][str(n)] = results[n]["foreground_mean"]
    with open(join(output_folder, "summary.json"), "w") as f:
        json.dump(overview, f, indent=1)
    return results
