"""SAMAdapterTrainer inside nnU-Net's training machinery (in-process, tiny encoder, synthetic data)."""
import glob
import os

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import save_json
from helpers import make_trainer

from sam_nnunet.encoders.checkpoint import sha256_of_file
from sam_nnunet.errors import UserFacingExit
from sam_nnunet.trainers import SAMAdapterTrainer
from sam_nnunet.trainers.schedulers import LinearDecayLR


@pytest.fixture
def results(sam_env, tmp_path):
    sam_env.setenv("nnUNet_results", str(tmp_path / "results"))
    sam_env.setenv("nnUNet_n_proc_DA", "0")  # in-process data augmentation: quick start-up, no worker processes
    return sam_env


def _log_text(trainer):
    return "".join(open(f).read() for f in glob.glob(os.path.join(trainer.output_folder, "training_log_*.txt")))


def test_refuses_random_weights_before_building_anything(synthetic_dataset, results):
    trainer = make_trainer(SAMAdapterTrainer, synthetic_dataset)
    with pytest.raises(UserFacingExit, match="will not train vit_b from random weights.*nnUNet_SAM_checkpoint="):
        trainer.initialize()
    assert trainer.network is None


def test_bad_checkpoint_stops_at_start_with_the_fix(synthetic_dataset, results, tmp_path):
    results.setenv("nnUNet_SAM_checkpoint", str(tmp_path / "sam_vit_b_01ec64.pth"))
    with pytest.raises(UserFacingExit, match="no such file. Check the path"):
        make_trainer(SAMAdapterTrainer, synthetic_dataset)


def test_2d_configuration_is_refused(synthetic_dataset, results):
    results.setenv("nnUNet_SAM_encoder", "vit_test")
    with pytest.raises(UserFacingExit, match="segments 3D patches.*Train a 3d_fullres"):
        make_trainer(SAMAdapterTrainer, synthetic_dataset, configuration="2d")


def test_short_runs_from_the_environment(synthetic_dataset, results):
    results.setenv("nnUNet_SAM_encoder", "vit_test")
    results.setenv("nnUNet_SAM_num_epochs", "3")
    results.setenv("nnUNet_SAM_iterations_per_epoch", "4")
    trainer = make_trainer(SAMAdapterTrainer, synthetic_dataset)
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (3, 4, 4)
    results.setenv("nnUNet_SAM_num_epochs", "three")
    with pytest.raises(UserFacingExit, match="must be a positive integer"):
        make_trainer(SAMAdapterTrainer, synthetic_dataset)


def test_pretrained_weights_survive_init_and_frozen_weights_stay_bit_identical(synthetic_dataset, results,
                                                                                tiny_sam_checkpoint):
    path, state = tiny_sam_checkpoint
    results.setenv("nnUNet_SAM_checkpoint", path)
    trainer = make_trainer(SAMAdapterTrainer, synthetic_dataset)
    trainer.on_train_start()  # initialize (build, He-init path of get_network_from_plans, load SAM), dataloaders
    net = trainer.sam_network
    for k, v in net.vit.state_dict().items():  # nnU-Net's initialisation did not touch the pretrained weights
        torch.testing.assert_close(v, state["image_encoder." + k], rtol=0, atol=0)
    sha = sha256_of_file(path)
    assert f"Pretrained weights sha256: {sha}" in _log_text(trainer)
    assert net.state_dict()["_extra_state"]["sha256"] == sha

    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == trainable
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.optimizer.param_groups[0]["lr"] == 4e-4

    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    trainer.on_train_epoch_start()
    losses = [trainer.train_step(next(trainer.dataloader_train))["loss"] for _ in range(3)]
    assert all(np.isfinite(losses))
    for n, p in net.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen parameter {n} changed"
    assert any(not torch.equal(p, trained[n]) for n, p in net.named_parameters() if n in trained)
    assert all(id(p) in trainable for p in trainer.optimizer.state)  # no optimiser state for frozen weights
    trainer.on_train_end()
    assert os.path.isfile(os.path.join(trainer.output_folder, "checkpoint_final.pth"))


def test_plans_name_the_network_and_prediction_rebuilds_it(synthetic_dataset, results):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    results.setenv("nnUNet_SAM_encoder", "vit_test")
    results.setenv("nnUNet_SAM_allow_random_init", "1")
    trainer = make_trainer(SAMAdapterTrainer, synthetic_dataset)
    trainer.initialize()
    arch = trainer.plans_manager.plans["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"] == "sam_nnunet.networks.sam_adapter.SAMAdapterNetwork"
    assert arch["arch_kwargs"]["encoder"] == "vit_test"
    assert "RANDOM weights" in _log_text(trainer)

    # what nnUNetPredictor does: build from plans on the class, strict-load the trained weights
    network = SAMAdapterTrainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, trainer.label_manager.num_segmentation_heads,
        enable_deep_supervision=False)
    network.load_state_dict(trainer.sam_network.state_dict())
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                device=torch.device("cpu"), perform_everything_on_device=False)
    predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, "SAMAdapterTrainer", (0, 1, 2))
    image = torch.randn(1, 45, 61, 43)  # larger than the planned patch: several tiles, 8 mirrorings each
    logits = predictor.predict_sliding_window_return_logits(image)
    assert logits.shape == (trainer.label_manager.num_segmentation_heads, 45, 61, 43)
    assert torch.isfinite(logits).all()


def test_resume_takes_weights_from_the_nnunet_checkpoint(synthetic_dataset, results, tiny_sam_checkpoint, tmp_path):
    path, _ = tiny_sam_checkpoint
    results.setenv("nnUNet_SAM_checkpoint", path)
    trainer = make_trainer(SAMAdapterTrainer, synthetic_dataset)
    trainer.initialize()
    with torch.no_grad():
        trainer.sam_network.decoder.classifier.weight.add_(1.0)  # as if trained
    saved = str(tmp_path / "checkpoint_latest.pth")
    trainer.save_checkpoint(saved)

    # --c / --val without the SAM checkpoint in the environment: the encoder comes from the model folder's plans
    # (written by the first run) and no pretrained weights are needed
    results.delenv("nnUNet_SAM_checkpoint")
    # plans.json of the model folder is written by on_train_start in real runs
    save_json(trainer.plans_manager.plans, os.path.join(trainer.output_folder_base, "plans.json"))
    resumed = make_trainer(SAMAdapterTrainer, synthetic_dataset)
    resumed.load_checkpoint(saved)
    torch.testing.assert_close(resumed.sam_network.decoder.classifier.weight,
                               trainer.sam_network.decoder.classifier.weight, rtol=0, atol=0)
    assert resumed.sam_network.pretrained_info["sha256"] == sha256_of_file(path)

    results.setenv("nnUNet_SAM_encoder", "vit_b")  # a different encoder than the one trained
    other = make_trainer(SAMAdapterTrainer, synthetic_dataset)
    with pytest.raises(UserFacingExit, match="does not fit the network built now"):
        other.load_checkpoint(saved)


def test_linear_decay_schedule():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LinearDecayLR(opt, 4e-4, num_epochs=100, end_factor=0.01)
    sched.step(0)
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-4)
    sched.step(50)
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-4 * (1 - 0.99 * 0.5))
    sched.step(100)
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-6)


def test_region_based_training(synthetic_dataset, results):
    """nnU-Net's region-based training (sigmoid per region, Dice+BCE) with our network: one head per region."""
    from batchgenerators.utilities.file_and_folder_operations import join, load_json

    results.setenv("nnUNet_SAM_encoder", "vit_test")
    results.setenv("nnUNet_SAM_allow_random_init", "1")
    plans = load_json(join(synthetic_dataset["preprocessed"], "nnUNetPlans.json"))
    plans["continue_training"] = False
    dataset_json = load_json(join(synthetic_dataset["preprocessed"], "dataset.json"))
    dataset_json["labels"] = {"background": 0, "whole": [1, 2], "posterior": 2}
    dataset_json["regions_class_order"] = [1, 2]
    trainer = SAMAdapterTrainer(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    trainer.on_train_start()
    assert trainer.label_manager.has_regions and trainer.label_manager.num_segmentation_heads == 2
    trainer.on_train_epoch_start()
    loss = trainer.train_step(next(trainer.dataloader_train))["loss"]
    assert np.isfinite(loss)
    trainer.on_validation_epoch_start()
    out = trainer.validation_step(next(trainer.dataloader_val))
    assert out["tp_hard"].shape == (2,)  # one Dice per region
    trainer.on_train_end()


# ---- clear errors: stale SAM checkpoint and --val, refusals in the log, unwritable results, model checkpoints -------
def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and sa["_extra_state"] == sb["_extra_state"]  # pretrained weights' record
    for k, v in sa.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, sb[k]), k


def test_stale_sam_checkpoint_blocks_a_new_training_not_validation(synthetic_dataset, results, tiny_sam_checkpoint,
                                                                   tmp_path):
    path, _ = tiny_sam_checkpoint
    results.setenv("nnUNet_SAM_checkpoint", path)
    trainer = make_trainer(SAMAdapterTrainer, synthetic_dataset)
    trainer.initialize()
    final = os.path.join(trainer.output_folder, "checkpoint_final.pth")
    trainer.save_checkpoint(final)
    save_json(trainer.plans_manager.plans, os.path.join(trainer.output_folder_base, "plans.json"))

    # the SAM checkpoint was moved since: --val (load_checkpoint, as nnUNetv2_train --val) needs no SAM weights
    results.setenv("nnUNet_SAM_checkpoint", str(tmp_path / "moved" / "sam_vit_test.pth"))
    validating = make_trainer(SAMAdapterTrainer, synthetic_dataset)
    validating.load_checkpoint(final)
    _assert_same_weights(validating.sam_network, trainer.sam_network)
    assert "not needed to validate or resume this fold" in _log_text(validating)

    # a training from the start needs them: refused in the terminal and in the fold's training log
    fresh = make_trainer(SAMAdapterTrainer, synthetic_dataset)
    with pytest.raises(UserFacingExit, match="moved/sam_vit_test.pth: no such file"):
        fresh.run_training()
    assert "sam-nnunet: nnUNet_SAM_checkpoint=" in open(fresh.log_file).read()
    assert fresh.network is None

    # a fold without an earlier run: refused at start-up, in the log too
    with pytest.raises(UserFacingExit, match="no such file"):
        make_trainer(SAMAdapterTrainer, synthetic_dataset, fold=1)
    fold_1 = os.path.join(trainer.output_folder_base, "fold_1")
    assert "sam-nnunet: nnUNet_SAM_checkpoint=" in "".join(
        open(f).read() for f in glob.glob(os.path.join(fold_1, "training_log_*.txt")))


def test_unwritable_results_folder_is_one_clear_message(synthetic_dataset, results, tmp_path, monkeypatch):
    blocker = tmp_path / "results_file"
    blocker.write_text("a file where nnUNet_results points into\n")
    results.setenv("nnUNet_results", str(blocker / "results"))
    with pytest.raises(UserFacingExit, match=r"writes this fold's results .* but .*results_file is a file, not a "
                                             r"folder\. Point nnUNet_results at a folder you can write"):
        make_trainer(SAMAdapterTrainer, synthetic_dataset)

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    results.setenv("nnUNet_results", str(read_only))
    if os.geteuid() == 0:  # root writes through permission bits: what a user gets, as a read-only mount gives it
        import sam_nnunet.trainers.output_folder as output_folder

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(output_folder.tempfile, "mkstemp", refuse)
    try:
        with pytest.raises(UserFacingExit, match=r"read_only cannot be written \(Permission denied\)\. Point "
                                                 r"nnUNet_results"):
            make_trainer(SAMAdapterTrainer, synthetic_dataset)
    finally:
        read_only.chmod(0o755)
    assert os.listdir(read_only) == []


class _Payload:
    """Unpickling this creates a file: reading a checkpoint with it must refuse before that happens."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_model_checkpoints_are_read_without_running_code(synthetic_dataset, results, tmp_path):
    from sam_nnunet.cli import main
    from sam_nnunet.nnunet_checkpoint import ModelCheckpointError, SafeCheckpointPredictor, load_nnunet_checkpoint

    results.setenv("nnUNet_SAM_encoder", "vit_test")
    results.setenv("nnUNet_SAM_allow_random_init", "1")
    trainer = make_trainer(SAMAdapterTrainer, synthetic_dataset)
    trainer.initialize()
    # the training log filled by nnU-Net's own epoch hooks (numpy scalars among plain values), from the outputs
    # train_step and validation_step return
    trainer.on_train_epoch_start()
    trainer.on_train_epoch_end([{"loss": np.array(0.7, dtype=np.float32)}])
    trainer.on_validation_epoch_end([{"loss": np.array(0.6, dtype=np.float32), "tp_hard": np.array([5.0, 3.0]),
                                      "fp_hard": np.array([1.0, 0.0]), "fn_hard": np.array([2.0, 1.0])}])
    trainer.logger.log("epoch_end_timestamps", 2.0, trainer.current_epoch)
    trainer._best_ema = trainer.logger.get_value("ema_fg_dice", step=-1)
    assert isinstance(trainer._best_ema, np.floating)
    final = os.path.join(trainer.output_folder, "checkpoint_final.pth")
    trainer.save_checkpoint(final)
    save_json(trainer.plans_manager.plans, os.path.join(trainer.output_folder_base, "plans.json"))
    save_json(trainer.dataset_json, os.path.join(trainer.output_folder_base, "dataset.json"))

    predictor = SafeCheckpointPredictor(device=torch.device("cpu"), perform_everything_on_device=False)
    predictor.initialize_from_trained_model_folder(trainer.output_folder_base, (0,))
    _assert_same_weights(predictor.network, trainer.sam_network)
    assert predictor.trainer_name == "SAMAdapterTrainer"
    assert predictor.allowed_mirroring_axes == trainer.inference_allowed_mirroring_axes

    checkpoint = torch.load(final, weights_only=False)  # written by this test: trusted
    checkpoint["logging"]["lrs"] = _Payload(str(tmp_path / "pwned"))
    torch.save(checkpoint, final)
    with pytest.raises(ModelCheckpointError, match=r"objects other than tensors and plain values \(it calls for "
                                                   r"(io|builtins)\.open\)\..*nothing in it was run"):
        load_nnunet_checkpoint(final)
    images, reference = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    reference.mkdir()
    with pytest.raises(UserFacingExit, match="objects other than tensors and plain values"):
        main(["predict-prompted", "-i", str(images), "-o", str(tmp_path / "out"), "-m", trainer.output_folder_base,
              "-f", "0", "--simulate-clicks", "1", "--reference", str(reference)])
    assert not (tmp_path / "pwned").exists()  # the payload never ran
