"""nnU-Net trainers of sam-nnunet: one short subclass of SAMTrainerBase per method."""
from sam_nnunet.trainers.base import SAMTrainerBase
from sam_nnunet.trainers.sam_adapter import SAMAdapterTrainer
from sam_nnunet.trainers.zap25d import ZAP25DSAMTrainer

__all__ = ["SAMTrainerBase", "SAMAdapterTrainer", "ZAP25DSAMTrainer"]
