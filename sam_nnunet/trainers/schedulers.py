"""Learning-rate schedules with nnU-Net's calling convention (``step(current_epoch)``)."""
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
        new_lr = self.lr_at(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] = new_lr
        self._last_lr = [new_lr for _ in self.optimizer.param_groups]

    def get_last_lr(self):
        return self._last_lr
