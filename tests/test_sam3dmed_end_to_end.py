"""SAM3DMedTrainer through the stock nnU-Net command line on the shared CLI dataset (MSD hippocampus cases converted
with nnUNetv2_convert_MSD_dataset and planned with default plans; a generated dataset without ../shared/data):
nnUNetv2_train -tr SAM3DMedTrainer (tiny official-layout SAM checkpoint, deep supervision, final validation) ->
nnUNetv2_predict -> valid segmentations."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import run_cli as run

TRAINER = "SAM3DMedTrainer"


@pytest.mark.slow
def test_train_and_predict_with_the_stock_cli(cli_dataset, cli_env, tiny_sam_checkpoint, tmp_path):
    env, dataset_id, raw = cli_env, cli_dataset["dataset_id"], cli_dataset["raw"]
    ckpt, _ = tiny_sam_checkpoint
    train_env = dict(env, nnUNet_SAM_checkpoint=ckpt, nnUNet_SAM_num_epochs="1", nnUNet_SAM_iterations_per_epoch="2",
                     nnUNet_n_proc_DA="0")
    run(["nnUNetv2_train", dataset_id, "3d_fullres", 0, "-tr", TRAINER, "-device", "cpu"], train_env)
    model = os.path.join(env["nnUNet_results"], os.path.basename(raw), f"{TRAINER}__nnUNetPlans__3d_fullres")
    plans = json.load(open(os.path.join(model, "plans.json")))
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"] == "sam_nnunet.networks.sam3dmed.SAM3DMedNetwork"
    assert arch["arch_kwargs"]["encoder"] == "vit_test" and arch["arch_kwargs"]["level_strides"]
    fold = os.path.join(model, "fold_0")
    log = "".join(open(os.path.join(fold, f)).read() for f in os.listdir(fold) if f.startswith("training_log"))
    assert "Pretrained weights sha256" in log
    checkpoint = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER
    assert len(checkpoint["network_weights"]["_extra_state"]["sha256"]) == 64
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))

    predictions = str(tmp_path / "pred")
    run(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", predictions, "-d", dataset_id, "-c",
         "3d_fullres", "-tr", TRAINER, "-f", 0, "-device", "cpu", "-npp", 0, "-nps", 0, "--disable_tta"],
        dict(env, nnUNet_n_proc_DA="0"))
    images = sorted(f for f in os.listdir(os.path.join(raw, "imagesTs")) if f.endswith("_0000.nii.gz"))
    assert len(images) == 2
    for image_file in images:
        image = sitk.ReadImage(os.path.join(raw, "imagesTs", image_file))
        pred = sitk.ReadImage(os.path.join(predictions, image_file.replace("_0000.nii.gz", ".nii.gz")))
        assert pred.GetSize() == image.GetSize()
        assert np.allclose(pred.GetSpacing(), image.GetSpacing()) and np.allclose(pred.GetOrigin(), image.GetOrigin())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}
