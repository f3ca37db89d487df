"""``sam-nnunet plan_and_preprocess -pl SAMPlanner`` on real hippocampus MRI (a generated dataset without
../shared/data), then SAMAdapterTrainer trains on the plans through the stock ``nnUNetv2_train``."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import HIPPOCAMPUS

from sam_nnunet.demo import make_msd_subset, make_synthetic_dataset
from sam_nnunet.nnunet_env import required_environment
from sam_nnunet.planners.methods import get_method_profile

BIN = os.path.dirname(sys.executable)


def run(cmd, env):
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Fresh nnU-Net folders with a raw dataset; (env, dataset id, dataset name)."""
    root = tmp_path_factory.mktemp("planner_e2e")
    env = dict(os.environ)
    env.update(required_environment(str(root / "nnunet")))
    env.update({"nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "2"})
    for var in list(env):
        if var.startswith("nnUNet_SAM_"):
            del env[var]
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key], exist_ok=True)
    if os.path.isdir(HIPPOCAMPUS):
        task = make_msd_subset(HIPPOCAMPUS, str(root / "msd"), num_train=10, num_test=1)
        run([os.path.join(BIN, "nnUNetv2_convert_MSD_dataset"), "-i", task, "-np", "2"], env)
        dataset_id, name = 4, "Dataset004_Hippocampus"
    else:
        dataset_id = 990
        name = os.path.basename(make_synthetic_dataset(env["nnUNet_raw"], dataset_id, num_train=10, num_test=1))
    return env, dataset_id, name


@pytest.mark.slow
def test_plan_with_samplanner_then_train_with_nnunet_cli(workspace):
    env, dataset_id, name = workspace
    env = dict(env, nnUNet_SAM_encoder="vit_test")  # plans and training size the same encoder
    proc = run([sys.executable, "-m", "sam_nnunet.cli", "plan_and_preprocess", "-d", dataset_id, "-pl", "SAMPlanner",
                "-np", "2", "-npfp", "2"], env)
    assert f"nnUNetv2_train {dataset_id} 3d_fullres FOLD -tr SAMAdapterTrainer -p nnUNetSAMPlans" in proc.stdout

    preprocessed = os.path.join(env["nnUNet_preprocessed"], name)
    plans = json.load(open(os.path.join(preprocessed, "nnUNetSAMPlans.json")))
    assert plans["experiment_planner_used"] == "SAMPlanner"
    fullres = plans["configurations"]["3d_fullres"]
    record = fullres["sam_planner"]
    assert (record["trainer"], record["encoder"]) == ("SAMAdapterTrainer", "vit_test")
    assert record["estimated_memory_gb"] <= record["memory_target_gb"] == 8
    grid = get_method_profile("SAMAdapterTrainer").grid({"max_window": 8})
    assert all(grid.fits(a, p) for a, p in enumerate(fullres["patch_size"]))
    assert fullres["spacing"] == [1.0, 1.0, 1.0]  # nnU-Net's median spacing of this data
    data = os.path.join(preprocessed, fullres["data_identifier"])
    assert len([f for f in os.listdir(data) if f.endswith(".pkl")]) == 10

    train_env = dict(env, nnUNet_SAM_allow_random_init="1", nnUNet_SAM_num_epochs="1",
                     nnUNet_SAM_iterations_per_epoch="2")
    run([os.path.join(BIN, "nnUNetv2_train"), dataset_id, "3d_fullres", 0, "-tr", "SAMAdapterTrainer", "-p",
         "nnUNetSAMPlans", "-device", "cpu"], train_env)
    model = os.path.join(env["nnUNet_results"], name, "SAMAdapterTrainer__nnUNetSAMPlans__3d_fullres")
    checkpoint = torch.load(os.path.join(model, "fold_0", "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    assert checkpoint["current_epoch"] == 1
    trained = json.load(open(os.path.join(model, "plans.json")))["configurations"]["3d_fullres"]
    assert trained["patch_size"] == fullres["patch_size"] and trained["batch_size"] == fullres["batch_size"]
    assert os.path.isfile(os.path.join(model, "fold_0", "validation", "summary.json"))
