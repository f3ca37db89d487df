"""Positional embeddings for volumetric tokens."""
from typing import Sequence

import torch
import torch.nn.functional as F

from sam_nnunet.encoders.surgery import resize_abs_pos_embed


def volumetric_pos_embed(pos_embed_2d: torch.Tensor, depth_embed: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """SAM's 2D absolute embedding resized in-plane plus a depth embedding interpolated along the slices.

    pos_embed_2d: (1, H0, W0, C) from SAM; depth_embed: (1, D0, C); grid: token grid (d, h, w).
    Returns (1, d, h, w, C), broadcastable over the batch.
    """
    d, h, w = (int(g) for g in grid)
    plane = resize_abs_pos_embed(pos_embed_2d, (h, w))  # (1, h, w, C)
    depth = depth_embed
    if depth.shape[1] != d:
        depth = F.interpolate(depth.transpose(1, 2), size=d, mode="linear", align_corners=False).transpose(1, 2)
    return plane[:, None] + depth[:, :, None, None, :]
