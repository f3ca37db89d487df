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


def progressive_merge(previous: torch.Tensor, new: torch.Tensor, points: np.ndarray, point_labels: np.ndarray,
                      boxes: Optional[np.ndarray], has_regions: bool) -> torch.Tensor:
    """FocalClick's progressive merge (Chen et al., CVPR 2022), in 3D: a correction changes the previous prediction
    only where the change is connected to it, so a click cannot undo what earlier rounds got right far from it.

    previous, new: logits (C, *S) of the same grid, before and after the round; points (N, 3) positions of the
    round's new clicks and point_labels (N,) their ``point_labels`` values; boxes (M, 2, 3) first and last voxel of
    its new boxes, on that grid. Where the segmentations (argmax; regions: logit > 0 per channel) differ, the new
    logits are taken only

      - for a click, in the 26-connected component holding its voxel of the voxels that changed *the way the click
        says*: to its class (label-based: "this is class c", background included), into its region (positive) or
        out of it (negative). FocalClick merges the whole changed component of a binary mask, where a change at a
        positive click can only be a gain; with several classes a component also holds label swaps at the borders
        between classes (anterior / posterior hippocampus) that the click said nothing about;
      - for a box, in the changed components (any change) that meet it.

    Every other changed voxel gets the previous logits back; where the segmentations agree the new logits stay (the
    next round's mask prompt carries the network's current confidence). A round without a new click or box: the new
    logits.
    """
    ndim = previous.ndim - 1
    points = np.asarray(points, dtype=np.float64).reshape(-1, ndim)
    point_labels = np.asarray(point_labels, dtype=np.int64).reshape(-1)
    if len(point_labels) != len(points):
        raise ValueError(f"{len(points)} clicks but {len(point_labels)} click labels")
    boxes = np.zeros((0, 2, ndim)) if boxes is None else np.asarray(boxes).reshape(-1, 2, ndim)
    if not len(points) and not len(boxes):
        return new
    before, after = _segmentation(previous, has_regions), _segmentation(new, has_regions)
    changed = before != after
    if has_regions:
        changed = changed.any(0)
    if not changed.any():
        return new
    shape = np.array(changed.shape)
    connectivity = np.ones((3,) * ndim, dtype=bool)
    taken = np.zeros_like(changed)
    for p, label in zip(np.clip(np.round(points).astype(np.int64), 0, shape - 1), point_labels):
        channel, negative = divmod(int(label), 2)
        if has_regions:  # into region `channel` (positive) or out of it (negative)
            towards = (~after[channel] & before[channel]) if negative else (after[channel] & ~before[channel])
        else:  # label-based clicks are "this is class `channel`" (clicks.py)
            towards = (after == channel) & (before != channel)
        if towards[tuple(p)]:
            components, _ = ndimage.label(towards, structure=connectivity)
            taken |= components == components[tuple(p)]
    if len(boxes):
        anchor = np.zeros_like(changed)
        for first, last in boxes:
            lo = np.clip(np.ceil(np.minimum(first, last) - 0.5).astype(np.int64), 0, shape - 1)
            hi = np.clip(np.floor(np.maximum(first, last) + 0.5).astype(np.int64), 0, shape - 1)
            anchor[tuple(slice(a, b + 1) for a, b in zip(lo, hi))] = True
        components, _ = ndimage.label(changed, structure=connectivity)
        taken |= np.isin(components, np.unique(components[anchor & changed]))
    revert = changed & ~taken
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
