"""Boundary supervision of the BD branch: boundaries derived from the label, class-balanced BCE."""
from typing import Optional

import torch
import torch.nn.functional as F


def boundary_targets(masks: torch.Tensor) -> torch.Tensor:
    """In-plane morphological gradient of binary masks: 1 where a 3x3 in-plane neighbourhood holds both object and
    background (the voxels on either side of the object's contour in every slice), else 0.

    In-plane because the BD branch predicts per slice (SAM 2 frame), like the mask it refines.

    Arguments:
      masks: (B, K, D, H, W), binary (bool or 0/1).
    """
    m = masks.float()
    kernel, padding = (1, 3, 3), (0, 1, 1)
    dilated = F.max_pool3d(m, kernel, stride=1, padding=padding)
    eroded = -F.max_pool3d(-m, kernel, stride=1, padding=padding)
    return dilated - eroded


def balanced_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor,
                             valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Class-balanced binary cross-entropy: per channel, boundary and non-boundary voxels weigh half each (a channel
    without boundary voxels in the batch: the non-boundary voxels weigh all), then the mean over channels.

    Boundaries are a few percent of a patch; unweighted BCE would be minimised by predicting none.

    Arguments:
      logits, targets: (B, K, ...); targets in {0, 1}.
      valid: (B, 1, ...) 1 where the label is known (nnU-Net's ignore label marks the rest), or None.
    """
    logits, targets = logits.float(), targets.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    valid = torch.ones_like(targets[:, :1]) if valid is None else valid.float()
    axes = [0] + list(range(2, logits.ndim))
    positive = targets * valid
    negative = (1 - targets) * valid
    n_pos, n_neg = positive.sum(axes), negative.sum(axes)                       # (K,)
    has_pos = (n_pos > 0).float()
    w_pos = 0.5 * has_pos / n_pos.clamp(min=1)
    w_neg = (1 - 0.5 * has_pos) / n_neg.clamp(min=1)
    per_channel = ((bce * positive).sum(axes) * w_pos + (bce * negative).sum(axes) * w_neg)
    return per_channel.mean() if per_channel.numel() else logits.sum() * 0
