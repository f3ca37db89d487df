"""nnU-Net trainers of sam-nnunet: one short subclass of SAMTrainerBase per method."""
from sam_nnunet.trainers.base import SAMTrainerBase
from sam_nnunet.trainers.sam_adapter import SAMAdapterTrainer
from sam_nnunet.trainers.sam_adapter_prompted import SAMAdapterTrainer_prompted
from sam_nnunet.trainers.sam3dmed import SAM3DMedTrainer

__all__ = ["SAMTrainerBase", "SAMAdapterTrainer", "SAMAdapterTrainer_prompted", "SAM3DMedTrainer"]
