"""The next correction click of a simulated interaction: at the centre of the largest error region of the previous
prediction (SAM's and nnInteractive's training and evaluation protocol; the centre is the error voxel farthest from
the region's border, as RITM and nnInteractive place it, so the click is unambiguous).

Works on label maps in any space (a training patch, or a case at its native resolution), in numpy / scipy. The
previous prediction goes back in as the mask prompt (``mask_prompt``).
"""
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from scipy import ndimage

from sam_nnunet.prompts.clicks import click_label


def correction_click(prediction: np.ndarray, reference: np.ndarray, classes: List[Union[int, Tuple[int, ...]]],
                     has_regions: bool, ignore: Optional[np.ndarray] = None) -> Optional[Tuple[np.ndarray, int]]:
    """The correction click for ``prediction`` against ``reference`` (label maps (*S) of the same grid; regions:
    nnU-Net's label values, ``classes`` = label_manager.foreground_regions), or None where they agree.

    Label-based: the error is where the labels differ; the click says what the reference says at its voxel (a click
    of that class, background included: where a class was over-segmented, "this is background").
    Region-based: per region, the voxels on the wrong side (``region_correction_click``).
    ``ignore`` (*S) bool: voxels that are never clicked (nnU-Net's ignore label).
    Returns (the voxel index (3,), its ``point_labels`` value).
    """
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if has_regions:
        return region_correction_click(np.stack([np.isin(prediction, np.atleast_1d(r)) for r in classes]),
                                       np.stack([np.isin(reference, np.atleast_1d(r)) for r in classes]), ignore)
    found = _largest_error([prediction != reference], ignore)
    if found is None:
        return None
    _, voxel = found
    return voxel, click_label(int(reference[tuple(voxel)]))


def region_correction_click(predicted: np.ndarray, reference: np.ndarray, ignore: Optional[np.ndarray] = None
                            ) -> Optional[Tuple[np.ndarray, int]]:
    """Region masks (R, *S) bool predicted and referenced -> the correction click (voxel, ``point_labels``): in the
    largest wrong region component, positive for that region inside the reference, negative outside; None where
    they agree."""
    found = _largest_error([p != r for p, r in zip(predicted, reference)], ignore)
    if found is None:
        return None
    region, voxel = found
    return voxel, click_label(region, negative=not bool(reference[region][tuple(voxel)]))


def _largest_error(errors: List[np.ndarray], ignore: Optional[np.ndarray]) -> Optional[Tuple[int, np.ndarray]]:
    """(index of the error map, voxel at the centre of the largest connected component over all maps), or None."""
    best = None  # (size, map index, component mask)
    for i, error in enumerate(errors):
        if ignore is not None:
            error = error & ~ignore
        if not error.any():
            continue
        components, _ = ndimage.label(error)
        sizes = np.bincount(components.ravel())[1:]
        j = int(sizes.argmax())
        if best is None or sizes[j] > best[0]:
            best = (int(sizes[j]), i, components == j + 1)
    if best is None:
        return None
    _, i, component = best
    # the error voxel farthest from the component's border (padded: the image border counts as border)
    depth = ndimage.distance_transform_edt(np.pad(component, 1))[(slice(1, -1),) * component.ndim]
    deepest = np.argwhere(depth == depth.max())
    # ties (a slab has a whole plane of deepest voxels): the one nearest their mean
    return i, deepest[int(((deepest - deepest.mean(0)) ** 2).sum(1).argmin())]


def mask_prompt(logits: torch.Tensor, has_regions: bool, dim: int = 0) -> torch.Tensor:
    """A prediction's logits (num_heads channels along ``dim``) -> the next round's mask prompt: the mask outputs'
    logits, label-based relative to the background logit (channels 1.. minus channel 0: softmax([0, prompt]) is the
    prediction's softmax; ZAP's background logit is 0, so for it these are its mask logits), regions all channels."""
    if has_regions:
        return logits
    background = logits.narrow(dim, 0, 1)
    return logits.narrow(dim, 1, logits.shape[dim] - 1) - background
