"""``sam-nnunet plan_and_preprocess -pl SAMPlanner`` on the shared CLI dataset (MSD hippocampus cases converted with
nnUNetv2_convert_MSD_dataset; a generated dataset without ../shared/data), then every SAM trainer trains on the
plans: SAMAdapterTrainer on 3d_fullres and SAM3DMedTrainer on its own configuration 3d_fullres_SAM3DMedTrainer
through the stock ``nnUNetv2_train -p nnUNetSAMPlans`` (one epoch of one iteration, nnU-Net's final validation
included); every other trainer on its configuration 3d_fullres_<Trainer> in this process, as ``nnUNetv2_train`` builds
it (nnU-Net's ``get_trainer_from_args``: the same trainer look-up, plans and configuration), for one training step
on a batch of nnU-Net's data loader. The command line and the final validation are the same code for every trainer
(tested with each trainer's default plans in its own end-to-end test); one step per trainer shows that each network
builds from its planned configuration and trains at the planned patch and batch size. Tiny random-weight encoders
(vit_test, sam2_test).

Recipe-only variants (a subclass of a trainer that keeps its network class, e.g. SAM2_3dMedTrainer_noAux: other loss
weights) are planned and checked against their method's configuration but not trained again: their command line,
network and step are their method's, and a SAM 2 run costs minutes on a CPU."""
import json
import os

import numpy as np
import pytest
import torch
from helpers import run_cli as run

from sam_nnunet.planners.plan_and_preprocess import default_trainers
from sam_nnunet.planners.sam_planner import planned_method, variant_configuration_name
from sam_nnunet.trainers.registry import trainer_classes

ENCODERS = ["vit_test", "sam2_test"]  # each trainer is sized with (and trains) the one of its family
TRAINERS = default_trainers()


def recipe_variant_of(trainer: str):
    """The trainer whose network class ``trainer`` keeps, if it derives from one; else None."""
    from sam_nnunet.trainers.registry import trainer_classes

    classes = trainer_classes()
    cls = classes[trainer]
    return next((name for name, other in classes.items() if other is not cls and issubclass(cls, other)
                 and other.network_class == cls.network_class), None)


TRAINED = [t for t in TRAINERS if recipe_variant_of(t) is None]
CLI_TRAINED = ["SAMAdapterTrainer", "SAM3DMedTrainer"]  # 3d_fullres, and a variant configuration
STEPPED = [t for t in TRAINED if t not in CLI_TRAINED]


def configuration_of(trainer: str) -> str:
    return "3d_fullres" if trainer == TRAINERS[0] else variant_configuration_name(trainer)


@pytest.fixture(scope="module")
def sam_plans(cli_dataset):
    env, dataset_id = cli_dataset["env"], cli_dataset["dataset_id"]
    preprocessed = os.path.join(env["nnUNet_preprocessed"], os.path.basename(cli_dataset["raw"]))
    default_plans = open(os.path.join(preprocessed, "nnUNetPlans.json"), "rb").read()
    proc = run(["sam-nnunet", "plan_and_preprocess", "-d", dataset_id, "-pl", "SAMPlanner", "-encoder", *ENCODERS,
                "-np", 2, "-npfp", 2], env)
    plans = json.load(open(os.path.join(preprocessed, "nnUNetSAMPlans.json")))
    return {"plans": plans, "stdout": proc.stdout, "preprocessed": preprocessed, "default_plans": default_plans}


@pytest.mark.slow
def test_samplanner_sizes_a_configuration_for_every_trainer(cli_dataset, sam_plans):
    plans, preprocessed = sam_plans["plans"], sam_plans["preprocessed"]
    # nnU-Net's own plans are left as they were
    assert open(os.path.join(preprocessed, "nnUNetPlans.json"), "rb").read() == sam_plans["default_plans"]
    assert plans["experiment_planner_used"] == "SAMPlanner"
    assert "sam_planner_skipped" not in plans  # no trainer left out
    assert TRAINERS[0] == "SAMAdapterTrainer" and {"ZAP25DSAMTrainer", "SAM2_3dMedTrainer"} <= set(TRAINERS)
    for trainer in TRAINERS:
        configuration = configuration_of(trainer)
        assert f"nnUNetv2_train {cli_dataset['dataset_id']} {configuration} FOLD -tr {trainer} -p nnUNetSAMPlans" \
            in sam_plans["stdout"]
        cfg = {**plans["configurations"]["3d_fullres"], **plans["configurations"][configuration]}
        record = cfg["sam_planner"]
        method = planned_method(trainer, ENCODERS)
        assert (record["trainer"], record["encoder"]) == (trainer, method.encoder)
        assert record["estimated_memory_gb"] <= record["memory_target_gb"] == 8
        assert cfg["architecture"]["network_class_name"] == method.network_class
        assert method.grid(cfg["architecture"]["arch_kwargs"]).fits_patch(cfg["patch_size"]), (trainer, cfg)
    # SAM 2's frames are square: the planned in-plane axes are equal
    sam2 = plans["configurations"][configuration_of("SAM2_3dMedTrainer")]
    assert sam2["patch_size"][1] == sam2["patch_size"][2]
    # a recipe variant is sized like its method (the same network; the arguments it sets itself aside, as
    # SAMAdapterTrainer_prompted_public's visual sampler)
    classes = trainer_classes()
    for trainer in set(TRAINERS) - set(TRAINED):
        parent = recipe_variant_of(trainer)
        variant, method = (plans["configurations"][configuration_of(t)] for t in (trainer, parent))
        assert (variant["patch_size"], variant["batch_size"]) == (method["patch_size"], method["batch_size"])
        own = {k: v for k, v in classes[trainer].network_kwargs.items() if classes[parent].network_kwargs.get(k) != v}
        arch = method["architecture"]
        assert variant["architecture"] == {**arch, "arch_kwargs": {**arch["arch_kwargs"], **own}}
    assert "SAM2_3dMedTrainer_noAux" in TRAINERS and "SAM2_3dMedTrainer_noAux" not in TRAINED
    fullres = plans["configurations"]["3d_fullres"]
    assert fullres["spacing"] == [1.0, 1.0, 1.0]  # nnU-Net's median spacing of this data
    data = os.path.join(preprocessed, fullres["data_identifier"])
    assert len([f for f in os.listdir(data) if f.endswith(".pkl")]) == 10


@pytest.mark.slow
@pytest.mark.parametrize("trainer", CLI_TRAINED)
def test_trainers_train_on_the_sam_plans_with_nnunet_cli(cli_dataset, cli_env, sam_plans, trainer):
    plans, configuration = sam_plans["plans"], configuration_of(trainer)
    name = os.path.basename(cli_dataset["raw"])
    planned = {**plans["configurations"]["3d_fullres"], **plans["configurations"][configuration]}
    env = dict(cli_env, nnUNet_SAM_encoder=planned["sam_planner"]["encoder"], nnUNet_SAM_allow_random_init="1",
               nnUNet_SAM_num_epochs="1", nnUNet_SAM_iterations_per_epoch="1", nnUNet_n_proc_DA="0")
    run(["nnUNetv2_train", cli_dataset["dataset_id"], configuration, 0, "-tr", trainer, "-p", "nnUNetSAMPlans",
         "-device", "cpu"], env)
    model = os.path.join(env["nnUNet_results"], name, f"{trainer}__nnUNetSAMPlans__{configuration}")
    checkpoint = torch.load(os.path.join(model, "fold_0", "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    assert checkpoint["current_epoch"] == 1 and checkpoint["trainer_name"] == trainer
    trained = json.load(open(os.path.join(model, "plans.json")))["configurations"][configuration]
    assert trained["patch_size"] == planned["patch_size"] and trained["batch_size"] == planned["batch_size"]
    # the trainer kept the planned network: its arguments (SAM3DMed: the token stride the planner chose; ZAP, SAM 2:
    # what they derive from the labels) are the ones the memory estimate was traced with
    assert trained["architecture"]["arch_kwargs"] == planned["architecture"]["arch_kwargs"]
    assert os.path.isfile(os.path.join(model, "fold_0", "validation", "summary.json"))


@pytest.mark.slow
@pytest.mark.parametrize("trainer", STEPPED)
def test_every_other_trainer_takes_a_training_step_on_its_planned_configuration(cli_dataset, cli_env, sam_plans,
                                                                                 trainer, monkeypatch):
    from nnunetv2.run.run_training import get_trainer_from_args

    assert set(STEPPED) >= {"ZAP25DSAMTrainer", "SAM2_3dMedTrainer"}  # every other method is covered here
    plans, configuration = sam_plans["plans"], configuration_of(trainer)
    planned = {**plans["configurations"]["3d_fullres"], **plans["configurations"][configuration]}
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, cli_env[key])
    for key, value in (("nnUNet_SAM_encoder", planned["sam_planner"]["encoder"]),
                       ("nnUNet_SAM_allow_random_init", "1"), ("nnUNet_n_proc_DA", "0")):
        monkeypatch.setenv(key, value)
    nnunet_trainer = get_trainer_from_args(str(cli_dataset["dataset_id"]), configuration, 0, trainer, "nnUNetSAMPlans",
                                           device=torch.device("cpu"))
    assert type(nnunet_trainer).__name__ == trainer
    nnunet_trainer.on_train_start()  # initialise: network, optimiser, data loaders (the plans written to results)
    try:
        batch = next(nnunet_trainer.dataloader_train)
        assert list(batch["data"].shape[2:]) == planned["patch_size"]
        assert batch["data"].shape[0] == planned["batch_size"]
        frozen = {n: p.detach().clone() for n, p in nnunet_trainer.network.named_parameters() if not p.requires_grad}
        loss = nnunet_trainer.train_step(batch)["loss"]
        assert np.isfinite(loss)
        assert all(torch.equal(p, frozen[n]) for n, p in nnunet_trainer.network.named_parameters() if n in frozen)
    finally:
        nnunet_trainer.on_train_end()  # saves checkpoint_final.pth, stops the data loaders
    model = os.path.join(cli_env["nnUNet_results"], os.path.basename(cli_dataset["raw"]),
                         f"{trainer}__nnUNetSAMPlans__{configuration}")
    trained = json.load(open(os.path.join(model, "plans.json")))["configurations"][configuration]
    # the trainer kept the planned network: its arguments are the ones the memory estimate was traced with
    assert trained["architecture"]["arch_kwargs"] == planned["architecture"]["arch_kwargs"]
    assert os.path.isfile(os.path.join(model, "fold_0", "checkpoint_final.pth"))
