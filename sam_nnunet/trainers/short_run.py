"""nnUNetTrainerShortRun: nnU-Net's default trainer, shortened by the same variables as our SAM trainers.

Everything is ``nnUNetTrainer``'s (network, loss, optimiser, schedule, augmentation); only ``nnUNet_SAM_num_epochs``
and ``nnUNet_SAM_iterations_per_epoch`` shorten training when set. It exists for smoke tests, demos and workflow
tests that need the nnU-Net baseline through the stock command line on a small budget (nnU-Net's own
``nnUNetTrainer_1epoch`` still runs 250 + 50 iterations). Without the variables it *is* nnUNetTrainer. Not for
comparisons of iteration counts: ``sam-nnunet benchmark`` budgets plain ``nnUNetTrainer`` itself; with
``nnUNet_SAM_time_budget_seconds`` it is the baseline of ``sam-nnunet learning-curve`` (equal wall-clock time).
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from sam_nnunet.errors import UserFacingExit
from sam_nnunet.trainers.base import SAMTrainerBase, check_settings
from sam_nnunet.trainers.budget import TimeBudgetMixin
from sam_nnunet.trainers.seeding import seed_training


class nnUNetTrainerShortRun(TimeBudgetMixin, nnUNetTrainer):
    """nnUNetTrainer whose length follows nnUNet_SAM_num_epochs / nnUNet_SAM_iterations_per_epoch and, when set,
    the wall-clock budget nnUNet_SAM_time_budget_seconds (trainers.budget: the same rule as the SAM trainers')."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        check_settings()
        super().__init__(plans, configuration, fold, dataset_json, device)
        try:
            # the same rule as the SAM trainers (it only sets nnU-Net's attributes)
            SAMTrainerBase._apply_short_run_settings(self)
        except ValueError as e:
            raise UserFacingExit(str(e)) from None
        seed_training(self.print_to_log_file)
