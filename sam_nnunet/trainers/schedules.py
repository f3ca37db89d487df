"""Shorter schedules of the frozen-encoder trainers, named as nnU-Net names its own (``nnUNetTrainer_250epochs``).

nnU-Net's default is 1000 epochs x 250 iterations. The papers of the frozen-encoder methods train far less:
ZAP-2.5DSAM 200 epochs of one crop per volume (batch 1), SAM2-3dMed 100-200 epochs. ``-tr ZAP25DSAMTrainer_250epochs``
trains a quarter of nnU-Net's budget, everything else unchanged; nnUNet_SAM_num_epochs still overrides.
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


__all__ = ["ZAP25DSAMTrainer_250epochs", "ZAP25DSAMTrainer_100epochs", "ZAP25DSAMTrainer_prompted_250epochs",
           "ZAP25DSAMTrainer_prompted_100epochs", "SAM2_3dMedTrainer_250epochs", "SAM2_3dMedTrainer_100epochs"]
