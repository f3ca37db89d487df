"""nnUNet_SAM_* settings are checked when a trainer or a predictor starts, before any work: a bad value is one line
naming the variable and what it takes (not a traceback after the model loaded, or after hours of training)."""
import pytest
import torch

from sam_nnunet import settings
from sam_nnunet.errors import UserFacingExit
from sam_nnunet.trainers import ZAP25DSAMTrainer
from sam_nnunet.trainers.short_run import nnUNetTrainerShortRun


@pytest.mark.parametrize("name, value, message", [
    ("nnUNet_SAM_cpu_bf16", "maybe", r"nnUNet_SAM_cpu_bf16='maybe' must be one of auto, 1, 0"),
    ("nnUNet_SAM_skip_memory_check", "maybe", r"nnUNet_SAM_skip_memory_check='maybe' must be 1 or 0"),
    ("nnUNet_SAM_allow_random_init", "ja", r"nnUNet_SAM_allow_random_init='ja' must be 1 or 0"),
    ("nnUNet_SAM_cache_copies", "-1", r"nnUNet_SAM_cache_copies='-1' must be a whole number >= 0"),
    ("nnUNet_SAM_num_epochs", "ten", r"nnUNet_SAM_num_epochs='ten' must be a positive integer"),
    ("nnUNet_SAM_time_budget_seconds", "nan", r"nnUNet_SAM_time_budget_seconds='nan' must be a positive number"),
])
def test_every_setting_is_checked(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        settings.check_all()


def test_good_values_pass_and_a_misspelt_name_is_reported(monkeypatch):
    for name, value in (("nnUNet_SAM_cpu_bf16", "AUTO"), ("nnUNet_SAM_skip_memory_check", "yes"),
                        ("nnUNet_SAM_cache_copies", "0"), ("nnUNet_SAM_device_memory_gb", "1.5")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("nnUNet_SAM_cpu_bf61", "1")
    lines = []
    settings.check_all(warn=lines.append)
    assert lines == ["sam-nnunet: WARNING: nnUNet_SAM_cpu_bf61 is not a sam-nnunet setting and is ignored; did you "
                     "mean nnUNet_SAM_cpu_bf16? (settings: sam_nnunet/settings.py)"]


def test_trainers_and_predictors_refuse_a_bad_setting_before_any_work(monkeypatch):
    """The check comes first: the (here unusable) plans are never looked at."""
    monkeypatch.setenv("nnUNet_SAM_cpu_bf16", "maybe")
    for start in (lambda: ZAP25DSAMTrainer({}, "3d_fullres", 0, {}, torch.device("cpu")),
                  lambda: nnUNetTrainerShortRun({}, "3d_fullres", 0, {}, torch.device("cpu")),
                  # nnUNetv2_predict, predict-prompted, the session and interaction build the network through this
                  lambda: ZAP25DSAMTrainer.build_network_architecture(None, None, 1, 2)):
        with pytest.raises(UserFacingExit, match=r"nnUNet_SAM_cpu_bf16='maybe' must be one of auto, 1, 0"):
            start()
