"""The precision of CPU prediction (nnUNet_SAM_cpu_bf16): bfloat16 autocast for networks that declare
``cpu_bf16_prediction`` where the CPU has it natively ("auto"), everywhere ("1") or nowhere ("0"); float32 for every
other network; CUDA keeps nnU-Net's fp16 autocast whatever the setting."""
import pytest
import torch
from torch import nn

from sam_nnunet import nnunet_prediction
from sam_nnunet.networks.zap25d import ZAP25DNetwork
from sam_nnunet.networks.zap25d_prompted import ZAP25DPromptedNetwork
from sam_nnunet.networks.sam_adapter import SAMAdapterNetwork
from sam_nnunet.nnunet_prediction import inference_autocast


class _Declares(nn.Linear):
    cpu_bf16_prediction = True


def _dtype(network: nn.Module) -> torch.dtype:
    with inference_autocast(torch.device("cpu"), network):
        return torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype


@pytest.mark.parametrize("setting, native, expected", [
    ("auto", True, torch.bfloat16), ("auto", False, torch.float32), ("1", False, torch.bfloat16),
    ("0", True, torch.float32), ("", True, torch.bfloat16)])
def test_cpu_prediction_precision_follows_the_setting_and_the_cpu(monkeypatch, setting, native, expected):
    monkeypatch.setenv("nnUNet_SAM_cpu_bf16", setting)
    monkeypatch.setattr(nnunet_prediction, "cpu_bf16_native", lambda: native)
    assert _dtype(_Declares(2, 2)) == expected


@pytest.mark.parametrize("setting", ["auto", "1"])
def test_a_network_that_does_not_declare_it_predicts_in_float32(monkeypatch, setting):
    monkeypatch.setenv("nnUNet_SAM_cpu_bf16", setting)
    monkeypatch.setattr(nnunet_prediction, "cpu_bf16_native", lambda: True)
    assert _dtype(nn.Linear(2, 2)) == torch.float32


def test_the_declaration_is_found_through_torch_compile(monkeypatch):
    monkeypatch.setenv("nnUNet_SAM_cpu_bf16", "1")
    assert _dtype(torch.compile(_Declares(2, 2))) == torch.bfloat16


def test_which_methods_declare_it():
    # measured for ZAP-2.5DSAM (zap25dsam.md, "Prediction on the CPU: channels-last and bfloat16"); not for the adapter methods
    assert ZAP25DNetwork.cpu_bf16_prediction and ZAP25DPromptedNetwork.cpu_bf16_prediction
    assert not getattr(SAMAdapterNetwork, "cpu_bf16_prediction", False)


def test_a_wrong_setting_is_named(monkeypatch):
    monkeypatch.setenv("nnUNet_SAM_cpu_bf16", "fast")
    with pytest.raises(ValueError, match=r"nnUNet_SAM_cpu_bf16='fast' must be one of auto, 1, 0"):
        inference_autocast(torch.device("cpu"), _Declares(2, 2))
