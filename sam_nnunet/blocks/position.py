"""Positional embeddings for volumetric tokens."""
import torch
import torch.nn.functional as F


def volumetric_pos_embed(plane_pos_embed: torch.Tensor, depth_embed: torch.Tensor, depth: int) -> torch.Tensor:
    """An in-plane absolute embedding plus a depth embedding interpolated along the slices.

    plane_pos_embed: (1, h, w, C) on the token grid's plane (the caller resizes SAM's 2D embedding to it,
    ``encoders.surgery.resize_abs_pos_embed``); depth_embed: (1, D0, C); depth: the grid's number of token slices d.
    Returns (1, d, h, w, C), broadcastable over the batch.
    """
    d = int(depth)
    if depth_embed.shape[1] != d:
        depth_embed = F.interpolate(depth_embed.transpose(1, 2), size=d, mode="linear",
                                    align_corners=False).transpose(1, 2)
    return plane_pos_embed[:, None] + depth_embed[:, :, None, None, :]
