"""The start-up memory check of every SAM trainer (sam_nnunet/trainers/memory_check.py), in-process on the CPU with
a tiny encoder: a step that cannot fit stops before training with the fix, one that fits trains, the override skips
the check; the CUDA arithmetic with a faked device."""
import glob
import os
import re

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
from helpers import make_trainer

from sam_nnunet.errors import UserFacingExit
from sam_nnunet.trainers import SAMAdapterTrainer, memory_check


@pytest.fixture
def results(sam_env, tmp_path):
    sam_env.setenv("nnUNet_results", str(tmp_path / "results"))
    sam_env.setenv("nnUNet_n_proc_DA", "0")  # in-process data augmentation: no worker processes
    sam_env.setenv("nnUNet_SAM_encoder", "vit_test")
    sam_env.setenv("nnUNet_SAM_allow_random_init", "1")
    for var in ("nnUNet_SAM_skip_memory_check", "nnUNet_SAM_device_memory_gb"):
        sam_env.delenv(var, raising=False)
    return sam_env


def _log_text(trainer):
    return "".join(open(f).read() for f in glob.glob(os.path.join(trainer.output_folder, "training_log_*.txt")))


def _start_and_stop(trainer):
    trainer.on_train_start()
    assert trainer.dataloader_train is not None
    trainer.on_train_end()


def test_a_step_that_cannot_fit_stops_before_training_with_the_fix(synthetic_dataset, results):
    results.setenv("nnUNet_SAM_device_memory_gb", "0.02")  # a 20 MB device; vit_test's step needs ~0.1 GB
    trainer = make_trainer(SAMAdapterTrainer, synthetic_dataset)
    with pytest.raises(UserFacingExit) as stop:
        trainer.on_train_start()
    message = stop.value.message
    patch = "x".join(map(str, trainer.configuration_manager.patch_size))
    assert f"SAMAdapterTrainer at patch {patch}, batch {trainer.batch_size}" in message
    estimate = float(re.search(r"needs ([0-9.]+) GB for one training step in fp32 \(traced now", message).group(1))
    assert estimate > 0.02
    assert "nnUNet_SAM_device_memory_gb=0.02 has 0.02 GB of 0.02 GB" in message
    assert "`sam-nnunet plan_and_preprocess -d 990 -pl SAMPlanner -tr SAMAdapterTrainer -gpu_memory_target 0.018`" \
        in message and "`-p nnUNetSAMPlans`" in message and "nnUNet_SAM_skip_memory_check=1" in message
    assert trainer.dataloader_train is None  # stopped before any data loading or iteration
    assert "does NOT fit" in _log_text(trainer)


def test_a_step_that_fits_trains_and_other_folds_read_the_cached_estimate(synthetic_dataset, results, monkeypatch):
    trainer = make_trainer(SAMAdapterTrainer, synthetic_dataset)  # against the RAM this machine has available
    _start_and_stop(trainer)
    assert re.search(r"Memory check: .*traced now in .*the CPU \(available RAM\) has .*: fits", _log_text(trainer))
    assert os.path.isfile(os.path.join(trainer.output_folder_base, memory_check.CACHE_FILE))

    def no_trace(*args, **kwargs):
        raise AssertionError("traced again")

    monkeypatch.setattr(memory_check, "TrainingMemoryEstimator", no_trace)
    again = make_trainer(SAMAdapterTrainer, synthetic_dataset, fold=1)  # another fold of the same model
    _start_and_stop(again)
    assert f"traced earlier ({memory_check.CACHE_FILE})" in _log_text(again)


def test_the_override_skips_the_check(synthetic_dataset, results):
    results.setenv("nnUNet_SAM_device_memory_gb", "0.02")
    results.setenv("nnUNet_SAM_skip_memory_check", "1")
    trainer = make_trainer(SAMAdapterTrainer, synthetic_dataset)
    _start_and_stop(trainer)
    assert "Memory check skipped (nnUNet_SAM_skip_memory_check=1)" in _log_text(trainer)

    results.delenv("nnUNet_SAM_skip_memory_check")
    results.setenv("nnUNet_SAM_device_memory_gb", "lots")
    with pytest.raises(UserFacingExit, match="nnUNet_SAM_device_memory_gb='lots' must be a positive number"):
        make_trainer(SAMAdapterTrainer, synthetic_dataset).on_train_start()


def test_plans_sized_by_samplanner_are_not_traced_again(synthetic_dataset, results, monkeypatch):
    plans = load_json(os.path.join(synthetic_dataset["preprocessed"], "nnUNetPlans.json"))
    cfg = plans["configurations"]["3d_fullres"]
    record = {"trainer": "SAMAdapterTrainer", "encoder": "vit_test", "estimated_memory_gb": 0.5,
              "patch_size": cfg["patch_size"], "batch_size": cfg["batch_size"]}
    cfg["sam_planner"] = record
    plans["plans_name"] = "nnUNetPlans_memorycheck"
    save_json(plans, os.path.join(synthetic_dataset["preprocessed"], "nnUNetPlans_memorycheck.json"))
    trainer = make_trainer(SAMAdapterTrainer, synthetic_dataset, plans_name="nnUNetPlans_memorycheck")
    trainer.initialize()
    monkeypatch.setattr(memory_check, "TrainingMemoryEstimator", None)  # any trace would fail
    patch, batch = tuple(cfg["patch_size"]), cfg["batch_size"]
    planned = memory_check.estimate_step_memory(trainer, patch, batch)
    assert planned == (int(0.5e9), "SAMPlanner's estimate in the plans")
    # another batch size than planned (e.g. per DDP process): the plans' figure does not apply
    with pytest.raises(TypeError):
        memory_check.estimate_step_memory(trainer, patch, batch - 1)


def test_cuda_free_memory_and_autocast_margin(synthetic_dataset, results, monkeypatch):
    gb = 10 ** 9
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (6 * gb, 24 * gb))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2 * gb)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: gb)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 24GB")
    cuda = memory_check.device_memory(torch.device("cuda", 0), resident=gb)
    assert (cuda.free_bytes, cuda.total_bytes) == (7 * gb, 24 * gb)  # free + allocator cache not in use
    assert cuda.description == "cuda:0 (Fake GPU 24GB)"

    trainer = make_trainer(SAMAdapterTrainer, synthetic_dataset)
    trainer.batch_size = 2
    # 10 GB in fp32 (1 GB of it already resident): 6.5 - 1 GB more under autocast fits 7 GB free, not on a CPU
    message, line = memory_check.memory_refusal(trainer, 10 * gb, "test", cuda, gb, "cuda")
    assert message is None and "fits only thanks to autocast" in line
    assert "at least 6.50 GB with nnU-Net's autocast (0.65 x" in line
    message, _ = memory_check.memory_refusal(trainer, 10 * gb, "test", cuda, gb, "cpu")
    assert "has 8.00 GB of 24.00 GB" in message and "-gpu_memory_target 7.2`" in message
    message, _ = memory_check.memory_refusal(trainer, 13 * gb, "test", cuda, gb, "cuda")
    assert message is not None and "at least 8.45 GB with nnU-Net's autocast" in message
