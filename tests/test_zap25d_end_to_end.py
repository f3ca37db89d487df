"""ZAP25DSAMTrainer with the real LiteMedSAM weights, end to end through the nnU-Net command line:
convert MSD hippocampus cases (or generate a dataset) -> plan -> preprocess -> nnUNetv2_train -tr ZAP25DSAMTrainer
(two iterations, nnU-Net's final validation with mirroring) -> nnUNetv2_predict.

Budget: LiteMedSAM's encoder costs ~75 GFLOP per 256x256 pseudo-slice on a CPU. The test therefore trains on plans
with a coarser spacing (3 mm: a hippocampus case is ~12x17x12 voxels, one 12x20x12 tile) and batch 1, written as a
separate plans file beside nnU-Net's, as a user would edit plans, and predicts without mirroring (the final
validation mirrors). The network, trainer and commands are the real ones.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import HIPPOCAMPUS
from helpers import COARSE_PLANS as PLANS
from helpers import write_coarse_plans

from sam_nnunet.demo import make_msd_subset, make_synthetic_dataset
from sam_nnunet.encoders.checkpoint import read_state_dict
from sam_nnunet.encoders.litemedsam import CHECKPOINT_SHA256, packaged_checkpoint
from sam_nnunet.nnunet_env import required_environment

BIN = os.path.dirname(sys.executable)
TRAINER = "ZAP25DSAMTrainer"


def run(cmd, env):
    proc = subprocess.run([os.path.join(BIN, cmd[0])] + [str(c) for c in cmd[1:]], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


@pytest.mark.slow
def test_train_and_predict_with_real_litemedsam_weights(tmp_path):
    env = dict(os.environ)
    env.update(required_environment(str(tmp_path / "nnunet")))
    env.update({"nnUNet_def_n_proc": "1"})
    for var in list(env):
        if var.startswith("nnUNet_SAM_"):
            del env[var]
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key], exist_ok=True)
    if os.path.isdir(HIPPOCAMPUS):  # real MRI: 5 training cases (fold 0 validates 1), 1 held out
        task = make_msd_subset(HIPPOCAMPUS, str(tmp_path / "msd"), num_train=5, num_test=1)
        run(["nnUNetv2_convert_MSD_dataset", "-i", task, "-np", "1"], env)
        dataset_id, raw = 4, os.path.join(env["nnUNet_raw"], "Dataset004_Hippocampus")
        os.symlink(os.path.join(task, "labelsTs"), os.path.join(raw, "labelsTs"))
    else:
        dataset_id = 990
        raw = make_synthetic_dataset(env["nnUNet_raw"], dataset_id, num_train=5, num_test=1)
    name = os.path.basename(raw)
    run(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", "3d_fullres", "-np", "1", "--no_pp"], env)
    write_coarse_plans(os.path.join(env["nnUNet_preprocessed"], name))
    run(["nnUNetv2_preprocess", "-d", dataset_id, "-plans_name", PLANS, "-c", "3d_fullres", "-np", "1"], env)

    train_env = dict(env, nnUNet_SAM_encoder="litemedsam", nnUNet_SAM_num_epochs="1",
                     nnUNet_SAM_iterations_per_epoch="2", nnUNet_n_proc_DA="0")
    run(["nnUNetv2_train", dataset_id, "3d_fullres", 0, "-tr", TRAINER, "-p", PLANS, "-device", "cpu"], train_env)

    model = os.path.join(env["nnUNet_results"], name, f"{TRAINER}__{PLANS}__3d_fullres")
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
         "3d_fullres", "-p", PLANS, "-tr", TRAINER, "-f", 0, "-device", "cpu", "-npp", 1, "-nps", 1, "--disable_tta"], env)
    cases = sorted(f for f in os.listdir(os.path.join(raw, "labelsTs")) if f.endswith(".nii.gz"))
    assert len(cases) == 1
    for case in cases:
        pred = sitk.ReadImage(os.path.join(predictions, case))
        ref = sitk.ReadImage(os.path.join(raw, "labelsTs", case))
        assert pred.GetSize() == ref.GetSize() and np.allclose(pred.GetSpacing(), ref.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}
