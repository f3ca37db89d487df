"""Multi-process training (nnU-Net's ``-num_gpus N``: one process per GPU, the network wrapped in
DistributedDataParallel) for our trainers.

nnU-Net's DDP path assumes CUDA: in a process group it sets the device to ``cuda:<rank>`` and wraps the network with
``DDP(network, device_ids=[rank])``. Two small hooks make it device-agnostic without changing what it does on GPUs:

- a trainer constructed for a non-CUDA device inside a process group (CPU processes of a gloo group, as the tests run
  DDP) keeps that device instead of being moved to ``cuda:<rank>``;
- the DDP wrapper nnU-Net creates passes ``device_ids`` only for a network on CUDA (DDP refuses them for CPU modules).

Every trainable parameter takes part in every step of every trainer (tests/test_ddp.py), so DDP runs with its
default ``find_unused_parameters=False`` (no extra autograd-graph traversal per step).
"""
from contextlib import contextmanager

import torch
from torch import nn


def keep_requested_device(trainer, requested: torch.device) -> None:
    """Undo nnU-Net's move to ``cuda:<rank>`` for a trainer asked to run elsewhere inside a process group."""
    if trainer.is_ddp and requested.type != "cuda":
        trainer.device = requested
        trainer.grad_scaler = None  # nnU-Net made a CUDA GradScaler for the CUDA device it assumed


@contextmanager
def device_agnostic_ddp():
    """While nnU-Net's ``initialize`` runs: its ``DDP(network, device_ids=[rank])`` drops ``device_ids`` for a
    network that is not on CUDA."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module

    original = nnunet_trainer_module.DDP

    def wrap(network: nn.Module, device_ids=None, **kwargs):
        on_cuda = any(p.device.type == "cuda" for p in network.parameters())
        return original(network, device_ids=device_ids if on_cuda else None, **kwargs)

    nnunet_trainer_module.DDP = wrap
    try:
        yield
    finally:
        nnunet_trainer_module.DDP = original
