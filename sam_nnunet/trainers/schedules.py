"""Shorter schedules of the frozen-encoder trainers, named as nnU-Net names its own (``nnUNetTrainer_250epochs``),
and the paper's optimiser recipe of ZAP-2.5DSAM (``_paper``).

nnU-Net's default is 1000 epochs x 250 iterations. The papers of the frozen-encoder methods train far less:
ZAP-2.5DSAM 200 epochs of one crop per volume (batch 1), SAM2-3dMed 100-200 epochs. ``-tr ZAP25DSAMTrainer_250epochs``
trains a quarter of nnU-Net's budget, everything else unchanged; nnUNet_SAM_num_epochs still overrides.

``ZAP25DSAMTrainer_budget`` (and ``_prompted_budget``): the candidate recipe for runs of hundreds to thousands of
steps, where the public code's recipe (lr 1e-4 decayed per epoch over nnU-Net's nominal 1000 epochs) stays flat and
underfits: AdamW at 1e-3, warm-up over the first 5 % of the run, then cosine decay to 0.01x over the run's real
length (the schedule's iterations or the share of a wall-clock budget, set before every step), and every output
starting from the mask token the substituted encoder's decoder trained (LiteMedSAM: token 0, its only trained
one). ``ZAP25DSAMTrainer_paper`` names the public code's recipe explicitly (today also ZAP25DSAMTrainer's): the
default changes only once scripts/recipe_ablation.py has measured the two on validation cases
(documentation/zap25dsam.md, "Recipe").
"""
import torch

from sam_nnunet.trainers.sam2_3dmed import SAM2_3dMedTrainer
from sam_nnunet.trainers.zap25d import ZAP25DSAMTrainer
from sam_nnunet.trainers.zap25d_prompted import ZAP25DSAMTrainer_prompted


class _Epochs:
    """Mixed in before a SAM trainer: ``epochs`` instead of nnU-Net's 1000 (the short-run variables still win)."""
    epochs: int = 1000

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self._apply_short_run_settings()


class _PaperRecipe:
    """Mixed in before a ZAP trainer: the published code's optimiser schedule and mask-token start."""
    sam_initial_lr = 1e-4
    lr_schedule = "linear"
    lr_warmup = 0.0
    lr_end_factor = 0.1
    outputs_from_trained_token = False


class _BudgetRecipe:
    """Mixed in before a ZAP trainer: warm-up + cosine over the run's real length at 1e-3; every output from the
    token the substituted encoder's decoder trained (SAM ViT keeps the published token i for output i)."""
    sam_initial_lr = 1e-3
    lr_schedule = "warmup_cosine"
    lr_warmup = 0.05
    lr_end_factor = 0.01
    outputs_from_trained_token = True


class ZAP25DSAMTrainer_paper(_PaperRecipe, ZAP25DSAMTrainer):
    pass


class ZAP25DSAMTrainer_prompted_paper(_PaperRecipe, ZAP25DSAMTrainer_prompted):
    pass


class ZAP25DSAMTrainer_budget(_BudgetRecipe, ZAP25DSAMTrainer):
    pass


class ZAP25DSAMTrainer_prompted_budget(_BudgetRecipe, ZAP25DSAMTrainer_prompted):
    pass


class ZAP25DSAMTrainer_250epochs(_Epochs, ZAP25DSAMTrainer):
    epochs = 250


class ZAP25DSAMTrainer_100epochs(_Epochs, ZAP25DSAMTrainer):
    epochs = 100


class ZAP25DSAMTrainer_prompted_250epochs(_Epochs, ZAP25DSAMTrainer_prompted):
    epochs = 250


class ZAP25DSAMTrainer_prompted_100epochs(_Epochs, ZAP25DSAMTrainer_prompted):
    epochs = 100


class SAM2_3dMedTrainer_250epochs(_Epochs, SAM2_3dMedTrainer):
    epochs = 250


class SAM2_3dMedTrainer_100epochs(_Epochs, SAM2_3dMedTrainer):
    epochs = 100


__all__ = ["ZAP25DSAMTrainer_paper", "ZAP25DSAMTrainer_prompted_paper", "ZAP25DSAMTrainer_budget",
           "ZAP25DSAMTrainer_prompted_budget", "ZAP25DSAMTrainer_250epochs", "ZAP25DSAMTrainer_100epochs", "ZAP25DSAMTrainer_prompted_250epochs",
           "ZAP25DSAMTrainer_prompted_100epochs", "SAM2_3dMedTrainer_250epochs", "SAM2_3dMedTrainer_100epochs"]
