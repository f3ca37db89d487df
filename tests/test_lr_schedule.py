"""The budget recipe's learning rate: warm-up, then cosine decay over the run's real length (iterations of the
schedule or the share of a wall-clock budget), set before every step; and nnUNet_SAM_seed."""
import random

import numpy as np
import pytest
import torch

from sam_nnunet.trainers.budget import TimeBudgetMixin
from sam_nnunet.trainers.schedulers import LinearDecayLR, WarmupCosineLR
from sam_nnunet.trainers.seeding import seed_training


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_warm_up_then_cosine_to_the_end_factor():
    s = WarmupCosineLR(_optimizer(), initial_lr=1e-3, num_epochs=10, end_factor=0.01, warmup=0.1)
    lrs = [s.lr_at_progress(p / 100) for p in range(101)]
    assert lrs[0] < 1e-5 and lrs[0] > 0  # never exactly 0: the first step learns
    assert lrs[10] == pytest.approx(1e-3)  # the end of the warm-up is the peak
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11]))  # rising during the warm-up
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then falling
    assert lrs[55] == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))  # half-way through the decay: the mean
    assert lrs[100] == pytest.approx(1e-5)
    assert s.lr_at_progress(2.0) == pytest.approx(1e-5)  # past the end: stays at the end value


def test_set_progress_sets_every_group_and_the_per_epoch_step_agrees():
    opt = _optimizer()
    s = WarmupCosineLR(opt, initial_lr=1e-3, num_epochs=4, end_factor=0.1, warmup=0.0)
    s.set_progress(0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5)) == s.get_last_lr()[0]
    s.step(2)  # nnU-Net's call at the start of epoch 2 of 4
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert LinearDecayLR(_optimizer(), 1e-4, 1000, 0.1).lr_at(4) == pytest.approx(1e-4 * (1 - 0.9 * 4 / 1000))


class _Run(TimeBudgetMixin):
    num_epochs, num_iterations_per_epoch, current_epoch = 4, 10, 0


def test_run_progress_counts_iterations_or_the_budget_whichever_is_further(monkeypatch):
    run = _Run()
    run.current_epoch, run.steps_in_epoch = 1, 5
    assert run.run_progress() == pytest.approx(15 / 40)
    clock = iter([110.0])
    monkeypatch.setattr("sam_nnunet.trainers.budget.time.perf_counter", lambda: next(clock))
    run._budget_clock = (100.0, 20.0)  # half of a 20 s budget spent
    assert run.run_progress() == pytest.approx(0.5)
    run.current_epoch = 4
    run.steps_in_epoch = 0
    run._budget_clock = None
    assert run.run_progress() == 1.0


def test_the_seed_setting_repeats_every_generator(monkeypatch):
    monkeypatch.setenv("nnUNet_SAM_seed", "7")
    draws = []
    for _ in range(2):
        assert seed_training() == 7
        draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]
    monkeypatch.setenv("nnUNet_SAM_seed", "x")
    with pytest.raises(ValueError, match="nnUNet_SAM_seed"):
        seed_training()
    monkeypatch.delenv("nnUNet_SAM_seed")
    assert seed_training() is None
