"""End to end through the real nnU-Net command line, as a user runs it:
convert MSD data (or generate a dataset) -> plan_and_preprocess -> train SAMAdapterTrainer -> resume with --c ->
predict -> evaluate -> export / install the model. Real hippocampus MRI when ../shared/data is present."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import run_cli as run

TRAINER = "SAMAdapterTrainer"


@pytest.mark.slow
def test_training_refuses_random_weights_and_bad_paths_without_a_traceback(cli_dataset, cli_env, tmp_path):
    env, dataset_id = cli_env, cli_dataset["dataset_id"]
    proc = run(["nnUNetv2_train", dataset_id, "3d_fullres", 0, "-tr", TRAINER, "-device", "cpu"], env,
               expect_ok=False)
    assert proc.returncode == 1
    assert "will not train vit_b from random weights" in proc.stderr and "Traceback" not in proc.stderr
    bad = dict(env, nnUNet_SAM_checkpoint=str(tmp_path / "sam_vit_b_01ec64.pth"))
    proc = run(["nnUNetv2_train", dataset_id, "3d_fullres", 0, "-tr", TRAINER, "-device", "cpu"], bad,
               expect_ok=False)
    assert proc.returncode == 1
    assert "no such file" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_train_resume_predict_evaluate_export(cli_dataset, cli_env, tiny_sam_checkpoint, tmp_path):
    env, dataset_id, raw = cli_env, cli_dataset["dataset_id"], cli_dataset["raw"]
    ckpt, _ = tiny_sam_checkpoint
    train_env = dict(env, nnUNet_SAM_checkpoint=ckpt, nnUNet_SAM_num_epochs="1", nnUNet_SAM_iterations_per_epoch="3")
    run(["nnUNetv2_train", dataset_id, "3d_fullres", 0, "-tr", TRAINER, "-device", "cpu"], train_env)
    model = os.path.join(env["nnUNet_results"], os.path.basename(raw), f"{TRAINER}__nnUNetPlans__3d_fullres")
    final = os.path.join(model, "fold_0", "checkpoint_final.pth")
    checkpoint = torch.load(final, map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER and checkpoint["current_epoch"] == 1
    assert len(checkpoint["network_weights"]["_extra_state"]["sha256"]) == 64  # provenance of the SAM weights
    plans = json.load(open(os.path.join(model, "plans.json")))
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["encoder"] == "vit_test"
    assert os.path.isfile(os.path.join(model, "fold_0", "validation", "summary.json"))

    # interrupted training continues with --c; the SAM checkpoint is no longer needed (weights are nnU-Net's), and
    # one that has moved away since does not stop it
    resume_env = dict(env, nnUNet_SAM_num_epochs="2", nnUNet_SAM_iterations_per_epoch="3",
                      nnUNet_SAM_checkpoint=str(tmp_path / "moved" / "sam_vit_test.pth"))
    run(["nnUNetv2_train", dataset_id, "3d_fullres", 0, "-tr", TRAINER, "-device", "cpu", "--c"], resume_env)
    assert torch.load(final, map_location="cpu", weights_only=False)["current_epoch"] == 2
    logs = "".join(open(os.path.join(model, "fold_0", f)).read() for f in os.listdir(os.path.join(model, "fold_0"))
                   if f.startswith("training_log_"))
    assert "nnUNet_SAM_checkpoint is not usable, and not needed to validate or resume this fold" in logs

    predictions = str(tmp_path / "pred")
    run(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", predictions, "-d", dataset_id, "-c",
         "3d_fullres", "-tr", TRAINER, "-f", 0, "-device", "cpu", "-npp", 1, "-nps", 1], env)
    cases = sorted(f for f in os.listdir(os.path.join(raw, "labelsTs")) if f.endswith(".nii.gz"))
    assert len(cases) == 2
    for case in cases:
        pred = sitk.ReadImage(os.path.join(predictions, case))
        ref = sitk.ReadImage(os.path.join(raw, "labelsTs", case))
        assert pred.GetSize() == ref.GetSize() and np.allclose(pred.GetSpacing(), ref.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}

    run(["nnUNetv2_evaluate_folder", os.path.join(raw, "labelsTs"), predictions, "-djfile",
         os.path.join(predictions, "dataset.json"), "-pfile", os.path.join(predictions, "plans.json")], env)
    summary = json.load(open(os.path.join(predictions, "summary.json")))
    assert set(summary["mean"]) == {"1", "2"} and len(summary["metric_per_case"]) == 2

    # share the model as nnU-Net does: export to zip, install elsewhere
    zip_file = str(tmp_path / "model.zip")
    run(["nnUNetv2_export_model_to_zip", "-d", dataset_id, "-o", zip_file, "-c", "3d_fullres", "-tr", TRAINER,
         "-f", 0], env)
    other = dict(env, nnUNet_results=str(tmp_path / "installed"))
    os.makedirs(other["nnUNet_results"])
    run(["nnUNetv2_install_pretrained_model_from_zip", zip_file], other)
    installed = os.path.join(other["nnUNet_results"], os.path.basename(raw), f"{TRAINER}__nnUNetPlans__3d_fullres")
    assert os.path.isfile(os.path.join(installed, "fold_0", "checkpoint_final.pth"))
    assert os.path.isfile(os.path.join(installed, "plans.json"))
