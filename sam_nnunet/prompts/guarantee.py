"""The click guarantee: a post-hoc rule at inference, nnInteractive-like adherence, not something a network learnt.

After a round (and its progressive merge), every click so far sets its voxel and the voxels within ``radius`` of it
(a ball on the preprocessed grid, radius 0 = the voxel alone) to what it says: label-based, its class (background
for a removing click); regions, inside (positive) or outside (negative) its region. Later clicks win where balls
overlap. The logits are set to +-10 (``MASK_LOGIT``; label-based the background logit is 0, ZAP's convention), so
the next round's mask prompt carries the click as a certain label.

A click is then always followed at its voxel by construction: adherence measured with the guarantee says nothing
about the network, which is why ``sam-nnunet interaction`` labels such rows ``+guarantee`` and the documentation
reports them beside the rows without it.
"""
from typing import Optional

import numpy as np
import torch

MASK_LOGIT = 10.0


def _ball(radius: float) -> np.ndarray:
    r = int(np.floor(radius))
    offsets = np.stack(np.meshgrid(*[np.arange(-r, r + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return offsets[(offsets ** 2).sum(1) <= radius ** 2 + 1e-9]


def guarantee_clicks(logits: torch.Tensor, points: np.ndarray, labels: np.ndarray, has_regions: bool,
                     radius: Optional[float]) -> torch.Tensor:
    """logits (C, *S) with every click (points (N, 3) on that grid, labels (N,) ``point_labels``) enforced within
    ``radius`` voxels (None: unchanged). Returns a new tensor."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if radius is None or not len(points):
        return logits
    if radius < 0:
        raise ValueError(f"the click guarantee's radius must be >= 0 voxels, not {radius:g}")
    out = logits.clone()
    shape = np.array(out.shape[1:])
    ball = _ball(radius)
    for p, label in zip(points, np.asarray(labels).reshape(-1)):
        if label < 0:
            continue
        voxels = np.round(p).astype(np.int64) + ball
        voxels = voxels[((voxels >= 0) & (voxels < shape)).all(1)]
        if not len(voxels):
            continue
        index = tuple(torch.from_numpy(voxels[:, d]) for d in range(3))
        channel, negative = divmod(int(label), 2)
        if has_regions:
            out[(channel,) + index] = -MASK_LOGIT if negative else MASK_LOGIT
        else:
            values = torch.full((out.shape[0],), -MASK_LOGIT, dtype=out.dtype)
            values[channel] = MASK_LOGIT
            if channel != 0:
                values[0] = 0  # ZAP's background logit: the mask prompt is then +-10
            out[(slice(None),) + index] = values[:, None].to(out.device)
    return out
