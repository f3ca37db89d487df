"""The loss of SAM2-3dMed: nnU-Net's segmentation loss + lambda_SRPP * MSE + lambda_BD * balanced BCE."""
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from sam_nnunet.losses.boundary import balanced_bce_with_logits, boundary_targets
from sam_nnunet.losses.slice_position import slice_position_loss


class SAM2_3dMedLoss(nn.Module):
    """Wraps nnU-Net's own loss (Dice+CE, or Dice+BCE for regions) so that nnU-Net's train_step and validation_step
    run unchanged (autocast, gradient scaling, clipping).

    The network returns a dict in training mode (segmentation logits, boundary logits, slice-pair positions): the
    three terms are computed and summed. In eval mode (nnU-Net's validation) it returns the logits only: the loss is
    the segmentation loss. The terms of the last training call are kept (detached) in ``last_terms`` for logging.

    Arguments:
      segmentation_loss: nnU-Net's loss module.
      has_regions: region-based training (targets are one binary map per region) or softmax labels.
      ignore_label: nnU-Net's ignore label, or None.
      srpp_weight: lambda_SRPP.
      bd_weight: lambda_BD.
    """

    def __init__(self, segmentation_loss: nn.Module, has_regions: bool, ignore_label: Optional[int],
                 srpp_weight: float, bd_weight: float) -> None:
        super().__init__()
        self.segmentation_loss = segmentation_loss
        self.has_regions = has_regions
        self.ignore_label = ignore_label
        self.srpp_weight = srpp_weight
        self.bd_weight = bd_weight
        self.last_terms: Dict[str, torch.Tensor] = {}

    def object_masks(self, target: torch.Tensor, num_objects: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """nnU-Net's target -> (B, K, D, H, W) binary masks of the network's objects and a (B, 1, ...) mask of
        labelled voxels (None without an ignore label)."""
        if self.has_regions:
            if self.ignore_label is not None:  # nnU-Net appends the ignore mask as the last channel
                return target[:, :-1].float(), 1 - target[:, -1:].float()
            return target.float(), None
        labels = torch.arange(1, num_objects + 1, device=target.device).view(1, -1, *([1] * (target.ndim - 2)))
        masks = (target == labels).float()
        valid = None if self.ignore_label is None else (target != self.ignore_label).float()
        return masks, valid

    def forward(self, output: Union[torch.Tensor, Dict[str, torch.Tensor]], target: torch.Tensor) -> torch.Tensor:
        if isinstance(output, torch.Tensor):  # network in eval mode (validation): segmentation only
            return self.segmentation_loss(output, target)
        masks, valid = self.object_masks(target, output["boundary"].shape[1])
        bd = balanced_bce_with_logits(output["boundary"], boundary_targets(masks), valid)
        srpp = slice_position_loss(output["slice_positions"])
        seg = self.segmentation_loss(output["logits"], target)
        self.last_terms = {"segmentation": seg.detach(), "srpp": srpp.detach(), "bd": bd.detach()}
        return seg + self.srpp_weight * srpp + self.bd_weight * bd
