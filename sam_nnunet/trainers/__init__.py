"""nnU-Net trainers of sam-nnunet: one short subclass of SAMTrainerBase per method."""
from sam_nnunet.trainers.base import SAMTrainerBase
from sam_nnunet.trainers.sam_adapter import SAMAdapterTrainer
from sam_nnunet.trainers.sam_adapter_prompted import SAMAdapterTrainer_prompted, SAMAdapterTrainer_prompted_public
from sam_nnunet.trainers.zap25d import ZAP25DSAMTrainer
from sam_nnunet.trainers.zap25d_prompted import ZAP25DSAMTrainer_prompted
from sam_nnunet.trainers.sam3dmed import SAM3DMedTrainer
from sam_nnunet.trainers.sam2_3dmed import SAM2_3dMedTrainer, SAM2_3dMedTrainer_noAux

__all__ = ["SAMTrainerBase", "SAMAdapterTrainer", "SAMAdapterTrainer_prompted", "ZAP25DSAMTrainer", "SAM3DMedTrainer",
           "SAM2_3dMedTrainer", "SAM2_3dMedTrainer_noAux", "ZAP25DSAMTrainer_prompted",
           "SAMAdapterTrainer_prompted_public"]
