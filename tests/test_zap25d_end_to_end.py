"""ZAP25DSAMTrainer with the real LiteMedSAM weights, end to end through the nnU-Net command line on the shared CLI
dataset (MSD hippocampus cases converted with nnUNetv2_convert_MSD_dataset and planned; a generated dataset without
../shared/data): coarse plans preprocessed with nnUNetv2_preprocess -> nnUNetv2_train -tr ZAP25DSAMTrainer (two
iterations, nnU-Net's final validation with mirroring) -> nnUNetv2_predict.

Budget: LiteMedSAM's encoder costs ~75 GFLOP per 256x256 pseudo-slice on a CPU. The test therefore trains on plans
with a coarser spacing (3 mm: a hippocampus case is ~12x17x12 voxels, one 12x20x12 tile) and batch 1, written as a
separate plans file beside nnU-Net's, as a user would edit plans (``helpers.preprocess_coarse_plans``, shared with
the prompted ZAP test), and predicts without mirroring (the final validation mirrors). The network, trainer and
commands are the real ones.
"""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import preprocess_coarse_plans, run_cli as run

from sam_nnunet.encoders.checkpoint import read_state_dict
from sam_nnunet.encoders.litemedsam import CHECKPOINT_SHA256, packaged_checkpoint

TRAINER = "ZAP25DSAMTrainer"


@pytest.mark.slow
def test_train_and_predict_with_real_litemedsam_weights(cli_dataset, cli_env, tmp_path):
    env, dataset_id, raw = cli_env, cli_dataset["dataset_id"], cli_dataset["raw"]
    name = os.path.basename(raw)
    plans = preprocess_coarse_plans(cli_dataset)

    train_env = dict(env, nnUNet_SAM_encoder="litemedsam", nnUNet_SAM_num_epochs="1",
                     nnUNet_SAM_iterations_per_epoch="2", nnUNet_n_proc_DA="0")
    run(["nnUNetv2_train", dataset_id, "3d_fullres", 0, "-tr", TRAINER, "-p", plans, "-device", "cpu"], train_env)

    model = os.path.join(env["nnUNet_results"], name, f"{TRAINER}__{plans}__3d_fullres")
    log = "".join(open(os.path.join(model, "fold_0", f)).read() for f in os.listdir(os.path.join(model, "fold_0"))
                  if f.startswith("training_log"))
    assert f"Pretrained weights sha256: {CHECKPOINT_SHA256}" in log
    assert "3,646,112 trainable" in log and " 0 added" in log  # 2 foreground classes: SAM's tokens 0 and 1
    arch = json.load(open(os.path.join(model, "plans.json")))["configurations"]["3d_fullres"]["architecture"]
    assert arch["arch_kwargs"]["encoder"] == "litemedsam"

    checkpoint = torch.load(os.path.join(model, "fold_0", "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    weights = checkpoint["network_weights"]
    assert weights["_extra_state"]["sha256"] == CHECKPOINT_SHA256
    lite = read_state_dict(packaged_checkpoint())
    for prefix, source in (("encoder.tinyvit.", "image_encoder."), ("prompt_encoder.", "prompt_encoder.")):
        keys = [k for k in weights if k.startswith(prefix)]
        assert keys
        for k in keys:  # frozen through training, BatchNorm statistics included
            assert torch.equal(weights[k], lite[source + k[len(prefix):]].to(weights[k].dtype)), k
    decoder = [k for k in weights if k.startswith("decoder.sam.") and weights[k].is_floating_point()]
    assert any(not torch.equal(weights[k], lite["mask_decoder." + k[len("decoder.sam."):]]) for k in decoder)
    assert os.path.isfile(os.path.join(model, "fold_0", "validation", "summary.json"))

    predictions = str(tmp_path / "pred")
    run(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", predictions, "-d", dataset_id, "-c",
         "3d_fullres", "-p", plans, "-tr", TRAINER, "-f", 0, "-device", "cpu", "-npp", 0, "-nps", 0, "--disable_tta"],
        env)
    cases = sorted(f for f in os.listdir(os.path.join(raw, "labelsTs")) if f.endswith(".nii.gz"))
    assert len(cases) == 2  # the dataset's held-out cases
    for case in cases:
        pred = sitk.ReadImage(os.path.join(predictions, case))
        ref = sitk.ReadImage(os.path.join(raw, "labelsTs", case))
        assert pred.GetSize() == ref.GetSize() and np.allclose(pred.GetSpacing(), ref.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}
