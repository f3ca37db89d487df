"""The next correction click of a simulated interaction: at the centre of the largest error region of the previous
prediction (SAM's and nnInteractive's training and evaluation protocol; the centre is the error voxel farthest from
the region's border, as RITM and nnInteractive place it, so the click is unambiguous).

Works on label maps in any space (a training patch, or a case at its native resolution), in numpy / scipy. The
previous prediction goes back in as the mask prompt (``mask_prompt``), and a correction's prediction is merged into
the previous one where its change is connected to the correction (``progressive_merge``).
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


MERGES = ("progressive", "none")


def progressive_merge(previous: torch.Tensor, new: torch.Tensor, points: np.ndarray,
                      boxes: Optional[np.ndarray], has_regions: bool) -> torch.Tensor:
    """FocalClick's progressive merge (Chen et al., CVPR 2022), in 3D: a correction changes the previous prediction
    only where the change is connected to it, so a click cannot undo what earlier rounds got right far from it.

    previous, new: logits (C, *S) of the same grid, before and after the round; points (N, 3) positions of the
    round's new clicks, boxes (M, 2, 3) first and last voxel of its new boxes, on that grid. The voxels whose
    segmentation (argmax; regions: logit > 0 per channel) differs form 26-connected components; a component holding a
    click's voxel or meeting a box keeps the new logits, every other one gets the previous logits back. Elsewhere the
    segmentations agree and the new logits are kept. A round without a new click or box: the new logits.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, previous.ndim - 1)
    boxes = np.zeros((0, 2, previous.ndim - 1)) if boxes is None else np.asarray(boxes).reshape(-1, 2,
                                                                                               previous.ndim - 1)
    if not len(points) and not len(boxes):
        return new
    changed = _segmentation(previous, has_regions) != _segmentation(new, has_regions)
    if has_regions:
        changed = changed.any(0)
    if not changed.any():
        return new
    shape = np.array(changed.shape)
    anchor = np.zeros_like(changed)
    for p in np.clip(np.round(points).astype(np.int64), 0, shape - 1):
        anchor[tuple(p)] = True
    for first, last in boxes:
        lo = np.clip(np.ceil(np.minimum(first, last) - 0.5).astype(np.int64), 0, shape - 1)
        hi = np.clip(np.floor(np.maximum(first, last) + 0.5).astype(np.int64), 0, shape - 1)
        anchor[tuple(slice(a, b + 1) for a, b in zip(lo, hi))] = True
    components, _ = ndimage.label(changed, structure=np.ones((3,) * changed.ndim, dtype=bool))
    kept = np.unique(components[anchor & changed])
    revert = changed & ~np.isin(components, kept)
    return torch.where(torch.from_numpy(revert).to(new.device), previous.to(new.device, new.dtype), new)


def _segmentation(logits: torch.Tensor, has_regions: bool) -> np.ndarray:
    logits = logits.detach().float().cpu()
    return (logits > 0).numpy() if has_regions else logits.argmax(0).numpy()


def mask_prompt(logits: torch.Tensor, has_regions: bool, dim: int = 0) -> torch.Tensor:
    """A prediction's logits (num_heads channels along ``dim``) -> the next round's mask prompt: the mask outputs'
    logits, label-based relative to the background logit (channels 1.. minus channel 0: softmax([0, prompt]) is the
    prediction's softmax; ZAP's background logit is 0, so for it these are its mask logits), regions all channels."""
    if has_regions:
        return logits
    background = logits.narrow(dim, 0, 1)
    return logits.narrow(dim, 1, logits.shape[dim] - 1) - background
