"""SAM3DMedTrainer: 3DMedSAM (Lin et al., 2025), SAM fully adapted to 3D, on nnU-Net's plans."""
import math
from typing import Dict, List, Optional, Sequence

import torch
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

from sam_nnunet.networks.sam3dmed import (DEFAULT_LEVEL_STRIDES, MAX_TOKENS, deep_supervision_scales,
                                          plan_token_levels)
from sam_nnunet.trainers.base import SAMTrainerBase


class SAM3DMedTrainer(SAMTrainerBase):
    """SAM ViT with an inflated 3D patch embedding, 3D adapters and a multi-scale 3D decoder (deep supervision).

    The token stride comes from the plan (one of nnU-Net's own U-Net resolutions, see plan_token_levels) and is
    written into the plans of the model folder, so nnUNetv2_predict rebuilds the same network. The paper gives no
    recipe; this is its closest template's (3DSAM-adapter): AdamW, lr 4e-4, no weight decay, linear decay to 1%.
    Loss, augmentation and deep supervision (weights 1, 1/2, ... with the coarsest output unweighted) are nnU-Net's.
    """
    network_class = "sam_nnunet.networks.sam3dmed.SAM3DMedNetwork"
    network_kwargs = {"local_window": 8, "global_window": 16}
    encoder_families = ("sam_vit",)
    sam_initial_lr = 4e-4
    sam_weight_decay = 0.0
    lr_end_factor = 0.01
    max_tokens = MAX_TOKENS  # token-grid budget when choosing the stride from the plan

    @classmethod
    def planned_arch_kwargs(cls, spacing: Sequence[float]) -> Dict:
        # the rule of _write_architecture_into_plans for plans that do not name this network yet: decoder levels
        # are the first stages of nnU-Net's own U-Net pooling at this spacing (anisotropic axes pooled later) until
        # tokens are at least 4 voxels in-plane. The token-count cap is left out: the planner's memory budget bounds
        # the patch instead.
        inverse = [1 / s for s in spacing]
        reference = [round(i * (256 ** 3 / math.prod(inverse)) ** (1 / 3)) for i in inverse]
        _, pools, _, reference, _ = get_pool_and_conv_props(list(spacing), reference, 4, 999999)
        return {"level_strides": plan_token_levels(reference, pools, max_tokens=math.prod(reference))}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = True  # the decoder has a head per level (SAMTrainerBase turns it off)

    def _write_architecture_into_plans(self, encoder: str) -> None:
        arch = self.configuration_manager.configuration["architecture"]
        kwargs = arch.get("arch_kwargs", {})
        if arch.get("network_class_name") == self.network_class and "level_strides" in kwargs:
            levels = kwargs["level_strides"]  # plans that already name this network keep their geometry
        elif "strides" in kwargs:
            levels = plan_token_levels(self.configuration_manager.patch_size, kwargs["strides"], self.max_tokens)
        else:
            levels = [list(f) for f in DEFAULT_LEVEL_STRIDES]
        self.network_kwargs = {**type(self).network_kwargs, "level_strides": [list(f) for f in levels]}
        super()._write_architecture_into_plans(encoder)

    def _get_deep_supervision_scales(self) -> Optional[List[List[float]]]:
        # the decoder's levels, finest first; for the plan's first stages these equal nnU-Net's own scales (its
        # loss then weights them 1, 1/2, ... and leaves the coarsest, the token grid, unweighted)
        if not self.enable_deep_supervision:
            return None
        return deep_supervision_scales(self.network_kwargs["level_strides"])
