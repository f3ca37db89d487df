"""Learning-rate schedules with nnU-Net's calling convention (``step(current_epoch)``)."""
import math

from torch.optim.lr_scheduler import _LRScheduler


class LinearDecayLR(_LRScheduler):
    """Linear decay from ``initial_lr`` to ``end_factor * initial_lr`` over ``num_epochs`` epochs.

    The schedule of 3DSAM-adapter (1.0 -> 0.01) and ZAP-2.5DSAM (1.0 -> 0.1), i.e. torch's LinearLR stepped once
    per epoch, written so that nnU-Net can set the epoch directly when a training resumes.
    """

    def __init__(self, optimizer, initial_lr: float, num_epochs: int, end_factor: float):
        self.initial_lr = initial_lr
        self.num_epochs = num_epochs
        self.end_factor = end_factor
        self.ctr = 0
        super().__init__(optimizer, -1)

    def lr_at(self, epoch: int) -> float:
        progress = min(max(epoch, 0), self.num_epochs) / max(self.num_epochs, 1)
        return self.initial_lr * (1.0 - (1.0 - self.end_factor) * progress)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        self._set(self.lr_at(current_step))

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr for _ in self.optimizer.param_groups]

    def get_last_lr(self):
        return self._last_lr


class WarmupCosineLR(LinearDecayLR):
    """Linear warm-up over the first ``warmup`` share of the run, then a cosine decay to ``end_factor * initial_lr``,
    set before every training step from the share of the run already done (``set_progress``).

    For runs of a few hundred steps: the schedule follows the run's real length — iterations of the whole schedule,
    or the elapsed share of a wall-clock budget — where a per-epoch decay over nnU-Net's nominal 1000 epochs stays
    flat. nnU-Net's per-epoch ``step(epoch)`` sets the lr of the epoch's first step (the progress of that epoch).
    """

    def __init__(self, optimizer, initial_lr: float, num_epochs: int, end_factor: float, warmup: float):
        self.warmup = warmup
        super().__init__(optimizer, initial_lr, num_epochs, end_factor)

    def lr_at_progress(self, progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        if self.warmup > 0 and p < self.warmup:
            return self.initial_lr * (p + 1e-3) / (self.warmup + 1e-3)  # never exactly 0: the first step learns
        p = (p - self.warmup) / max(1.0 - self.warmup, 1e-8)
        return self.initial_lr * (self.end_factor + (1.0 - self.end_factor) * 0.5 * (1.0 + math.cos(math.pi * p)))

    def lr_at(self, epoch: int) -> float:
        return self.lr_at_progress(epoch / max(self.num_epochs, 1))

    def set_progress(self, progress: float) -> None:
        self._set(self.lr_at_progress(progress))
