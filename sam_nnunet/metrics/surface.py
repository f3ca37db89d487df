"""Surface metrics of one structure: Normalised Surface Dice at a tolerance and the 95th-percentile Hausdorff
distance, in millimetres, with the image's real voxel spacing.

Distances come from MONAI (``monai.metrics``), a maintained library: ``compute_surface_dice`` with
``use_subvoxels=True`` follows DeepMind's surface-distance definition (surface elements weighted by their area,
the NSD that 3DSAM-adapter and ZAP-2.5DSAM report), ``compute_hausdorff_distance`` with ``percentile=95`` gives
HD95 as the larger of the two directed 95th percentiles of the distances between boundary voxels.

MONAI leaves empty structures to the caller (NaN or inf); this module defines them:

=====================  =====  ==============================================================
reference / prediction  NSD    HD95
=====================  =====  ==============================================================
both empty             1.0    0.0 (the prediction agrees that the structure is absent)
only one empty         0.0    the image diagonal in mm (the largest distance the image allows)
=====================  =====  ==============================================================

so both metrics are finite for every case and their means never hide a NaN.
"""
import math
import warnings
from typing import Dict, Sequence

import numpy as np
import torch

NSD_KEY = "NSD"
HD95_KEY = "HD95"


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the image's diagonal in mm: the HD95 given when only one of the two masks is empty."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def _drop_singleton_axes(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]):
    # a 2D image read as (1, y, x): a boundary along the singleton axis does not exist; erosion across it would
    # mark every voxel as boundary
    keep = [i for i, n in enumerate(ref.shape) if n > 1]
    squeeze = tuple(i for i in range(ref.ndim) if i not in keep)
    return np.squeeze(ref, squeeze), np.squeeze(pred, squeeze), [float(spacing[i]) for i in keep]


def surface_metrics(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float],
                    tolerance_mm: float) -> Dict[str, float]:
    """NSD at ``tolerance_mm`` and HD95 in mm of one binary structure.

    Arguments:
      mask_ref, mask_pred: boolean arrays of the same shape (z, y, x) (or (y, x)).
      spacing: voxel size in mm per array axis, in the same axis order.
      tolerance_mm: boundary tolerance of the NSD in mm (>= 0).
    Returns {"NSD": float in [0, 1], "HD95": float mm}.
    """
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    if mask_ref.shape != mask_pred.shape:
        raise ValueError(f"reference and prediction differ in shape: {mask_ref.shape} vs {mask_pred.shape}")
    if len(spacing) != mask_ref.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match the {mask_ref.ndim} image axes")
    if not (tolerance_mm >= 0 and math.isfinite(tolerance_mm)):
        raise ValueError(f"the NSD tolerance must be a finite number >= 0 mm, got {tolerance_mm}")
    ref_any, pred_any = bool(mask_ref.any()), bool(mask_pred.any())
    if not ref_any and not pred_any:
        return {NSD_KEY: 1.0, HD95_KEY: 0.0}
    if not ref_any or not pred_any:
        return {NSD_KEY: 0.0, HD95_KEY: image_diagonal_mm(mask_ref.shape, spacing)}

    ref, pred, spacing = _drop_singleton_axes(mask_ref.astype(bool), mask_pred.astype(bool), spacing)
    # MONAI takes one-hot batches (B, C, *spatial); one channel, counted as foreground (include_background)
    y = torch.from_numpy(np.ascontiguousarray(ref))[None, None]
    y_pred = torch.from_numpy(np.ascontiguousarray(pred))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty-mask warnings cannot occur here; nothing else is expected
        nsd = compute_surface_dice(y_pred, y, class_thresholds=[float(tolerance_mm)], include_background=True,
                                   spacing=spacing, use_subvoxels=True)
        hd95 = compute_hausdorff_distance(y_pred.float(), y.float(), include_background=True, percentile=95,
                                          spacing=spacing)
    return {NSD_KEY: float(nsd[0, 0]), HD95_KEY: float(hd95[0, 0])}
