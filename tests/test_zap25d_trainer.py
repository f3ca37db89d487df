"""ZAP25DSAMTrainer inside nnU-Net's training machinery (in-process, tiny encoder, synthetic data)."""
import glob
import os

import numpy as np
import pytest
import torch
from helpers import make_trainer

from sam_nnunet.trainers import ZAP25DSAMTrainer
from sam_nnunet.trainers.schedulers import WarmupCosineLR


@pytest.fixture
def results(sam_env, tmp_path):
    sam_env.setenv("nnUNet_results", str(tmp_path / "results"))
    sam_env.setenv("nnUNet_n_proc_DA", "0")  # in-process data augmentation: quick start-up, no worker processes
    return sam_env


def test_recipe_frozen_weights_and_training_steps(synthetic_dataset, results, tiny_sam_checkpoint):
    path, state = tiny_sam_checkpoint
    results.setenv("nnUNet_SAM_checkpoint", path)
    trainer = make_trainer(ZAP25DSAMTrainer, synthetic_dataset)
    arch = trainer.plans_manager.plans["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"] == "sam_nnunet.networks.zap25d.ZAP25DNetwork"
    assert arch["arch_kwargs"] == {"encoder": "vit_test", "upsample": 4, "pool": 4, "window_size": 16,
                                   "plane_layout": 2, "background_channel": True, "mask_token_source": None,
                                   "input_window": None}  # SAM ViT: the public code's input (encoders/contract.py)
    trainer.on_train_start()
    net = trainer.sam_network
    for k, v in net.encoder.vit.state_dict().items():  # loaded after nnU-Net's initialisation
        expected = state["image_encoder." + k]
        if v.shape == expected.shape:  # (window tables are resized from 7 to 31 rows for window 16)
            assert torch.equal(v, expected), k
    log = "".join(open(f).read() for f in glob.glob(os.path.join(trainer.output_folder, "training_log_*.txt")))
    assert "0 added" in log

    optimizer = trainer.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(1e-5)
    assert trainer.lr_scheduler.lr_at(trainer.num_epochs) == pytest.approx(1e-5)  # linear decay to 0.1x
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trainable
    assert all(n.startswith("decoder.") for n, p in net.named_parameters() if p.requires_grad)

    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    trainer.on_train_epoch_start()
    losses = [trainer.train_step(next(trainer.dataloader_train))["loss"] for _ in range(2)]
    assert all(np.isfinite(losses))
    for n, p in net.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen parameter {n} changed"
    assert any(not torch.equal(p, trained[n]) for n, p in net.named_parameters() if n in trained)
    assert all(id(p) in trainable for p in optimizer.state)
    trainer.on_train_end()
    assert os.path.isfile(os.path.join(trainer.output_folder, "checkpoint_final.pth"))


def test_region_based_training_has_no_background_channel(synthetic_dataset, results):
    from batchgenerators.utilities.file_and_folder_operations import join, load_json

    results.setenv("nnUNet_SAM_encoder", "vit_test")
    results.setenv("nnUNet_SAM_allow_random_init", "1")
    plans = load_json(join(synthetic_dataset["preprocessed"], "nnUNetPlans.json"))
    plans["continue_training"] = False
    dataset_json = load_json(join(synthetic_dataset["preprocessed"], "dataset.json"))
    dataset_json["labels"] = {"background": 0, "whole": [1, 2], "posterior": 2}
    dataset_json["regions_class_order"] = [1, 2]
    trainer = ZAP25DSAMTrainer(plans=plans, configuration="3d_fullres", fold=0, dataset_json=dataset_json,
                               device=torch.device("cpu"))
    assert trainer.configuration_manager.network_arch_init_kwargs["background_channel"] is False
    trainer.initialize()
    assert trainer.sam_network.decoder.num_masks == 2
    with torch.no_grad():
        out = trainer.network(torch.zeros(1, 1, 8, 8, 8))
    assert out.shape == (1, 2, 8, 8, 8)


def test_the_budget_recipe_sets_the_lr_every_step_from_the_runs_progress(synthetic_dataset, results,
                                                                          tiny_sam_checkpoint):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    results.setenv("nnUNet_SAM_checkpoint", tiny_sam_checkpoint[0])
    cls = recursive_find_trainer_class_by_name("ZAP25DSAMTrainer_budget")
    assert cls is not None and recursive_find_trainer_class_by_name("ZAP25DSAMTrainer_paper") is not None
    trainer = make_trainer(cls, synthetic_dataset)
    trainer.on_train_start()
    schedule, optimizer = trainer.lr_scheduler, trainer.optimizer
    assert trainer.initial_lr == pytest.approx(1e-3) and isinstance(schedule, WarmupCosineLR)
    assert schedule.lr_at_progress(0.05) == pytest.approx(1e-3) and schedule.lr_at_progress(1.0) == pytest.approx(1e-5)
    trainer.on_train_epoch_start()
    lrs = []
    for _ in range(2):
        assert np.isfinite(trainer.train_step(next(trainer.dataloader_train))["loss"])
        lrs.append(optimizer.param_groups[0]["lr"])
    total = trainer.num_epochs * trainer.num_iterations_per_epoch
    assert lrs == pytest.approx([schedule.lr_at_progress(0), schedule.lr_at_progress(1 / total)])
    assert lrs[1] > lrs[0]  # warming up
    trainer.on_train_end()
    # every output from the token the substituted encoder's decoder trained; SAM ViT keeps the published tokens
    assert cls.encoder_kwargs("litemedsam")["mask_token_source"] == 0
    assert cls.encoder_kwargs("vit_test")["mask_token_source"] is None
    assert ZAP25DSAMTrainer.encoder_kwargs("litemedsam")["mask_token_source"] is None
