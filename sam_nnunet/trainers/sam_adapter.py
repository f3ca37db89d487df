"""SAMAdapterTrainer: 3DSAM-adapter (Gong et al., MedIA 2024), prompt-free, on nnU-Net's plans."""
from sam_nnunet.trainers.base import SAMTrainerBase


class SAMAdapterTrainer(SAMTrainerBase):
    """SAM ViT made volumetric with spatial adapters and a multi-layer aggregation decoder.

    Recipe of the paper's code: AdamW, lr 4e-4, no weight decay, linear decay to 1% of the initial lr over the
    training, 2 of 3 training patches centred on foreground; nnU-Net's Dice+CE loss, augmentation and gradient clipping
    (norm 12 over all parameters; the public automatic variant clips at 12 per part).
    """
    network_class = "sam_nnunet.networks.sam_adapter.SAMAdapterNetwork"
    network_kwargs = {"max_window": 8}
    encoder_families = ("sam_vit",)
    sam_initial_lr = 4e-4
    sam_weight_decay = 0.0
    lr_end_factor = 0.01
    sam_oversample_foreground_percent = 0.67  # the public code's crops: RandCropByPosNegLabeld pos=2, neg=1

    @classmethod
    def maps_intensity(cls, encoder: str) -> bool:
        # the public code feeds z-scored volumes (clipped CT) into SAM's patch embedding, without SAM's pixel
        # statistics: nnU-Net's values as they are are the faithful input (encoders/contract.py)
        return False
