"""``sam-nnunet plan_and_preprocess -pl SAMPlanner`` on the shared CLI dataset (MSD hippocampus cases converted with
nnUNetv2_convert_MSD_dataset; a generated dataset without ../shared/data), then every SAM trainer trains on the
plans through the stock ``nnUNetv2_train -p nnUNetSAMPlans``: SAMAdapterTrainer on 3d_fullres, SAM3DMedTrainer on
its own configuration 3d_fullres_SAM3DMedTrainer."""
import json
import os

import pytest
import torch
from helpers import run_cli as run

from sam_nnunet.planners.sam_planner import planned_method


@pytest.mark.slow
def test_plan_with_samplanner_then_train_every_trainer_with_nnunet_cli(cli_dataset, cli_env):
    dataset_id, name = cli_dataset["dataset_id"], os.path.basename(cli_dataset["raw"])
    env = dict(cli_env, nnUNet_SAM_encoder="vit_test")  # plans and training size the same encoder
    default_plans_file = os.path.join(env["nnUNet_preprocessed"], name, "nnUNetPlans.json")
    default_plans = open(default_plans_file, "rb").read()
    proc = run(["sam-nnunet", "plan_and_preprocess", "-d", dataset_id, "-pl", "SAMPlanner", "-np", 2, "-npfp", 2], env)
    assert f"nnUNetv2_train {dataset_id} 3d_fullres FOLD -tr SAMAdapterTrainer -p nnUNetSAMPlans" in proc.stdout
    assert open(default_plans_file, "rb").read() == default_plans  # nnU-Net's own plans are left as they were

    preprocessed = os.path.join(env["nnUNet_preprocessed"], name)
    plans = json.load(open(os.path.join(preprocessed, "nnUNetSAMPlans.json")))
    assert plans["experiment_planner_used"] == "SAMPlanner"
    configurations = {"SAMAdapterTrainer": "3d_fullres", "SAM3DMedTrainer": "3d_fullres_SAM3DMedTrainer"}
    for trainer, configuration in configurations.items():
        cfg = {**plans["configurations"]["3d_fullres"], **plans["configurations"][configuration]}
        record = cfg["sam_planner"]
        assert (record["trainer"], record["encoder"]) == (trainer, "vit_test")
        assert record["estimated_memory_gb"] <= record["memory_target_gb"] == 8
        grid = planned_method(trainer, "vit_test").grid(cfg["architecture"]["arch_kwargs"])
        assert all(grid.fits(a, p) for a, p in enumerate(cfg["patch_size"]))
    fullres = plans["configurations"]["3d_fullres"]
    assert fullres["spacing"] == [1.0, 1.0, 1.0]  # nnU-Net's median spacing of this data
    data = os.path.join(preprocessed, fullres["data_identifier"])
    assert len([f for f in os.listdir(data) if f.endswith(".pkl")]) == 10

    train_env = dict(env, nnUNet_SAM_allow_random_init="1", nnUNet_SAM_num_epochs="1",
                     nnUNet_SAM_iterations_per_epoch="2", nnUNet_n_proc_DA="0")
    for trainer, configuration in configurations.items():
        run(["nnUNetv2_train", dataset_id, configuration, 0, "-tr", trainer, "-p", "nnUNetSAMPlans", "-device", "cpu"],
            train_env)
        model = os.path.join(env["nnUNet_results"], name, f"{trainer}__nnUNetSAMPlans__{configuration}")
        checkpoint = torch.load(os.path.join(model, "fold_0", "checkpoint_final.pth"), map_location="cpu",
                                weights_only=False)
        assert checkpoint["current_epoch"] == 1 and checkpoint["trainer_name"] == trainer
        planned = {**plans["configurations"]["3d_fullres"], **plans["configurations"][configuration]}
        trained = json.load(open(os.path.join(model, "plans.json")))["configurations"][configuration]
        assert trained["patch_size"] == planned["patch_size"] and trained["batch_size"] == planned["batch_size"]
        # the trainer kept the planned geometry (SAM3DMed: the token stride the planner chose)
        assert trained["architecture"]["arch_kwargs"] == planned["architecture"]["arch_kwargs"]
        assert os.path.isfile(os.path.join(model, "fold_0", "validation", "summary.json"))
