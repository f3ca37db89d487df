"""The Medical Segmentation Decathlon workflow of documentation/decathlon.md, end to end with our trainers:
nnUNetv2_convert_MSD_dataset -> nnUNetv2_plan_and_preprocess -> folds of two trainers (--npz) ->
nnUNetv2_find_best_configuration (cross-validation ensemble, postprocessing) -> nnUNetv2_predict of the test set ->
nnUNetv2_ensemble -> nnUNetv2_apply_postprocessing -> sam-nnunet msd-submission -> sam-nnunet evaluate.

Real hippocampus MRI (5 training + 2 held-out cases) when ../shared/data is present, else a generated task in the
Decathlon layout. Two of nnU-Net's five folds (0 and 1; ``-f 0 1`` for find_best_configuration and predict, as
nnU-Net offers): every fold is the same code, and each costs ~15 s of final validation on 2 cores. Every step is the
stock command line except the four trainings: they call nnU-Net's ``run_training`` (what ``nnUNetv2_train D C F -tr T
--npz`` runs after parsing its arguments) in this process, to save interpreter start-ups and trainer look-ups;
test_end_to_end runs ``nnUNetv2_train`` itself. Predictions use nnU-Net's sequential predictor (``-npp 0 -nps 0``: no
worker processes to start). The budget is one epoch of one iteration per fold, with the tiny random-weight encoder
vit_test: a test of the workflow, not of accuracy."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import HIPPOCAMPUS

from sam_nnunet.demo import make_msd_subset
from sam_nnunet.evaluation.msd import make_synthetic_msd_task
from sam_nnunet.nnunet_env import required_environment

BIN = os.path.dirname(sys.executable)
TRAINERS = ("nnUNetTrainerShortRun", "SAMAdapterTrainer")
FOLDS = (0, 1)


def run(cmd, env):
    proc = subprocess.run([os.path.join(BIN, cmd[0])] + [str(c) for c in cmd[1:]], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


@pytest.mark.slow
def test_decathlon_workflow(tmp_path_factory, monkeypatch):
    import torch
    from nnunetv2.run.run_training import run_training

    root = tmp_path_factory.mktemp("msd")
    if os.path.isdir(HIPPOCAMPUS):
        task = make_msd_subset(HIPPOCAMPUS, str(root / "download"), num_train=5, num_test=2)
    else:
        task = make_synthetic_msd_task(str(root / "download"), "Task98_SAMDemo", num_train=5, num_test=2)
    task_name = os.path.basename(task)
    dataset_id = int(task_name[4:6])
    env = dict(os.environ)
    env.update(required_environment(str(root / "nnunet")))
    env.update({"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1"})
    for var in list(env):
        if var.startswith("nnUNet_SAM_"):
            del env[var]
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key], exist_ok=True)

    # 1-2. the Decathlon download -> nnU-Net's raw format; fingerprint, plans, preprocessing
    run(["nnUNetv2_convert_MSD_dataset", "-i", task, "-np", 1], env)
    dataset = f"Dataset{dataset_id:03d}_{task_name.split('_', 1)[1]}"
    raw = os.path.join(env["nnUNet_raw"], dataset)
    assert sorted(os.listdir(os.path.join(raw, "imagesTs"))) == sorted(
        f[:-len(".nii.gz")] + "_0000.nii.gz" for f in os.listdir(os.path.join(task, "imagesTs")))
    run(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", "3d_fullres", "-np", 1], env)

    # 3. five folds of each trainer, validation probabilities kept (--npz) for ensembling
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_def_n_proc"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    for var, value in (("nnUNet_SAM_encoder", "vit_test"), ("nnUNet_SAM_allow_random_init", "1"),
                       ("nnUNet_SAM_num_epochs", "1"), ("nnUNet_SAM_iterations_per_epoch", "1")):
        monkeypatch.setenv(var, value)
    for trainer in TRAINERS:
        for fold in FOLDS:
            run_training(str(dataset_id), "3d_fullres", fold, trainer, export_validation_probabilities=True,
                         device=torch.device("cpu"))
    for var in ("nnUNet_SAM_encoder", "nnUNet_SAM_allow_random_init"):
        monkeypatch.delenv(var)  # from here on nothing needs SAM weights: they are in nnU-Net's checkpoints

    # 4. cross-validation of both models and of their ensemble; postprocessing for the best
    run(["nnUNetv2_find_best_configuration", dataset_id, "-c", "3d_fullres", "-tr", *TRAINERS, "-f", *FOLDS, "-np", 1],
        env)
    results = os.path.join(env["nnUNet_results"], dataset)
    with open(os.path.join(results, "inference_information.json")) as f:
        info = json.load(f)
    assert len(info["all_results"]) == 3  # two models and their ensemble
    ensemble = [k for k in info["all_results"] if k.startswith("ensemble___")][0]
    assert os.path.isfile(os.path.join(results, "ensembles", ensemble, "summary.json"))
    best = info["best_model_or_ensemble"]
    assert os.path.isfile(best["postprocessing_file"])
    assert os.path.isfile(os.path.join(results, "inference_instructions.txt"))

    # 5. the test set, with each model's folds (probabilities kept for the ensemble)
    test_out = root / "test"
    images_ts = os.path.join(raw, "imagesTs")
    for trainer in TRAINERS:
        run(["nnUNetv2_predict", "-i", images_ts, "-o", test_out / trainer, "-d", dataset_id, "-c", "3d_fullres",
             "-tr", trainer, "-f", *FOLDS, "--save_probabilities", "--disable_tta", "-device", "cpu", "-npp", 0,
             "-nps", 0], env)
    # 6. the ensemble of both models, as find_best_configuration's instructions say when an ensemble wins
    run(["nnUNetv2_ensemble", "-i", test_out / TRAINERS[0], test_out / TRAINERS[1], "-o", test_out / "ensemble",
         "-np", 1], env)
    chosen = best["selected_model_or_models"]
    chosen_folder = test_out / ("ensemble" if len(chosen) == 2 else chosen[0]["trainer"])
    # 7. the postprocessing chosen on the cross-validation
    run(["nnUNetv2_apply_postprocessing", "-i", chosen_folder, "-o", test_out / "final", "-pp_pkl_file",
         best["postprocessing_file"], "-np", 1, "-plans_json", best["some_plans_file"]], env)

    # 8. the submission: TaskXX_Name/<test image name>.nii.gz, in the test image's geometry
    archive = root / "submission.zip"
    run(["sam-nnunet", "msd-submission", "-i", test_out / "final", "-d", dataset_id, "-o", root / "submission",
         "--zip", archive], env)
    test_images = sorted(os.listdir(os.path.join(task, "imagesTs")))
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == [f"{task_name}/{name}" for name in test_images]
    for name in test_images:
        pred = sitk.ReadImage(str(root / "submission" / task_name / name))
        image = sitk.ReadImage(os.path.join(task, "imagesTs", name))
        assert pred.GetSize() == image.GetSize() and np.allclose(pred.GetSpacing(), image.GetSpacing())
        assert np.allclose(pred.GetOrigin(), image.GetOrigin()) and np.allclose(pred.GetDirection(),
                                                                                image.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}

    # 9. the held-out labels of this test: Dice, NSD, HD95 of the submitted segmentations
    run(["sam-nnunet", "evaluate", "-ref", os.path.join(task, "labelsTs"), "-pred", test_out / "final", "-o",
         root / "test_summary.json"], env)
    with open(root / "test_summary.json") as f:
        summary = json.load(f)
    assert set(summary["mean"]) == {"1", "2"} and summary["evaluation"]["num_cases"] == len(test_images)
