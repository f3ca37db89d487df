"""SAM3DMedTrainer through the stock nnU-Net command line: convert the MSD hippocampus task (a generated dataset
without ../shared/data) -> plan_and_preprocess with default plans -> nnUNetv2_train -tr SAM3DMedTrainer (tiny
official-layout SAM checkpoint, deep supervision, final validation) -> nnUNetv2_predict -> valid segmentations."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import HIPPOCAMPUS

from sam_nnunet.demo import make_msd_subset, make_synthetic_dataset
from sam_nnunet.nnunet_env import required_environment

BIN = os.path.dirname(sys.executable)
TRAINER = "SAM3DMedTrainer"
DATASET_ID = 951  # a number of its own: other end-to-end tests may convert the same task


def run(cmd, env):
    proc = subprocess.run([os.path.join(BIN, cmd[0])] + [str(c) for c in cmd[1:]], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


@pytest.mark.slow
def test_train_and_predict_with_the_stock_cli(tmp_path, tiny_sam_checkpoint):
    env = dict(os.environ)
    env.update(required_environment(str(tmp_path / "nnunet")))
    env.update({"nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "2"})
    for var in [v for v in env if v.startswith("nnUNet_SAM_")]:
        del env[var]
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key])
    if os.path.isdir(HIPPOCAMPUS):
        task = make_msd_subset(HIPPOCAMPUS, str(tmp_path / "msd"), num_train=5, num_test=2)
        run(["nnUNetv2_convert_MSD_dataset", "-i", task, "-overwrite_id", DATASET_ID, "-np", "2"], env)
        raw = os.path.join(env["nnUNet_raw"], f"Dataset{DATASET_ID}_Hippocampus")
    else:  # without ../shared/data: a generated dataset of the same kind
        raw = make_synthetic_dataset(env["nnUNet_raw"], DATASET_ID, num_train=5, num_test=2)
    run(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "-np", "2", "-npfp", "2"], env)

    ckpt, _ = tiny_sam_checkpoint
    train_env = dict(env, nnUNet_SAM_checkpoint=ckpt, nnUNet_SAM_num_epochs="1", nnUNet_SAM_iterations_per_epoch="2",
                     nnUNet_n_proc_DA="0")
    run(["nnUNetv2_train", DATASET_ID, "3d_fullres", 0, "-tr", TRAINER, "-device", "cpu"], train_env)
    model = os.path.join(env["nnUNet_results"], os.path.basename(raw), f"{TRAINER}__nnUNetPlans__3d_fullres")
    plans = json.load(open(os.path.join(model, "plans.json")))
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"] == "sam_nnunet.networks.sam3dmed.SAM3DMedNetwork"
    assert arch["arch_kwargs"]["encoder"] == "vit_test" and arch["arch_kwargs"]["level_strides"]
    log = "".join(open(os.path.join(model, "fold_0", f)).read() for f in os.listdir(os.path.join(model, "fold_0"))
                  if f.startswith("training_log"))
    assert "Pretrained weights sha256" in log
    checkpoint = torch.load(os.path.join(model, "fold_0", "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER
    assert len(checkpoint["network_weights"]["_extra_state"]["sha256"]) == 64
    assert os.path.isfile(os.path.join(model, "fold_0", "validation", "summary.json"))

    predictions = str(tmp_path / "pred")
    run(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", predictions, "-d", DATASET_ID, "-c",
         "3d_fullres", "-tr", TRAINER, "-f", 0, "-device", "cpu", "-npp", 1, "-nps", 1, "--disable_tta"],
        dict(env, nnUNet_n_proc_DA="0"))
    images = sorted(f for f in os.listdir(os.path.join(raw, "imagesTs")) if f.endswith("_0000.nii.gz"))
    assert len(images) == 2
    for image_file in images:
        image = sitk.ReadImage(os.path.join(raw, "imagesTs", image_file))
        pred = sitk.ReadImage(os.path.join(predictions, image_file.replace("_0000.nii.gz", ".nii.gz")))
        assert pred.GetSize() == image.GetSize()
        assert np.allclose(pred.GetSpacing(), image.GetSpacing()) and np.allclose(pred.GetOrigin(), image.GetOrigin())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}
