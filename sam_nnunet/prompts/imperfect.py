"""Imperfect masks to correct, for training (issue 35): the errors a model meets in use are not only its own. A user
starts from nnU-Net's automatic prediction, another model's, or a segmentation of a neighbouring case; SAM's and
nnInteractive's training simulate such starts. Here, per training patch, one of

  - ``erode``: every structure shrunk by 1..3 voxels (an under-segmentation);
  - ``dilate``: every structure grown by 1..3 voxels into the background (an over-segmentation);
  - ``shift``: the whole mask moved by up to 3 voxels along each axis (a misregistered or displaced result);
  - ``neighbour``: another patch's mask of the batch (a wrong case's segmentation; ``shift`` in a batch of one);

given as the previous mask (logits +-10, what an initial segmentation becomes), with correction clicks at the
largest error of every class (``adherence.class_correction_clicks``: the evaluation's "initial+clicks" protocol).
numpy / scipy, outside the network's forward.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from sam_nnunet.prompts.adherence import class_correction_clicks
from sam_nnunet.prompts.clicks import NO_CLICK, click_label
from sam_nnunet.prompts.corrections import _largest_error

IMPERFECTIONS = ("erode", "dilate", "shift", "neighbour")
MASK_LOGIT = 10.0


def _shifted(masks: np.ndarray, offset: Sequence[int]) -> np.ndarray:
    out = np.zeros_like(masks)
    src = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(offset, masks.shape[1:]))
    dst = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(offset, masks.shape[1:]))
    out[(slice(None),) + dst] = masks[(slice(None),) + src]
    return out


def imperfect_masks(masks: np.ndarray, kind: str, rng: np.random.Generator,
                    neighbour: Optional[np.ndarray] = None) -> np.ndarray:
    """masks (K, *S) bool (one per class or region) -> the same made imperfect by ``kind`` (``IMPERFECTIONS``).
    Label-based callers pass one-hot foreground classes: a dilated class grows only into voxels no class holds."""
    if kind not in IMPERFECTIONS:
        raise ValueError(f"imperfection must be one of {', '.join(IMPERFECTIONS)}, not {kind!r}")
    masks = np.asarray(masks, dtype=bool)
    if kind == "neighbour" and neighbour is not None:
        return np.asarray(neighbour, dtype=bool).copy()
    if kind in ("shift", "neighbour"):
        offset = rng.integers(-3, 4, size=masks.ndim - 1)
        if not offset.any():
            offset[rng.integers(masks.ndim - 1)] = rng.choice([-2, 2])
        return _shifted(masks, offset)
    iterations = int(rng.integers(1, 4))
    if kind == "erode":
        return np.stack([ndimage.binary_erosion(m, iterations=iterations) for m in masks])
    taken = masks.any(0)
    out = masks.copy()
    for i, m in enumerate(masks):
        grown = ndimage.binary_dilation(m, iterations=iterations) & ~taken
        out[i] |= grown
        taken = taken | grown
    return out


def imperfect_start(target: np.ndarray, num_outputs: int, has_regions: bool, active: np.ndarray,
                    rng: np.random.Generator, ignore_label: Optional[int] = None,
                    kinds: Sequence[str] = IMPERFECTIONS) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch's imperfect previous masks and their correction clicks.

    Arguments:
      target: nnU-Net's target (B, C, *S) at full resolution: label-based (B, 1, *S) label values; region-based
        (B, R (+1 ignore channel), *S) region masks.
      num_outputs: the network's outputs (label-based: classes with background; regions: R).
      active: (B,) bool, the prompted samples; the others (prompt-free) get no click and an all-background mask.
    Returns mask_prompt (B, k, *S) float32 (+-10; k = num_outputs - 1 label-based, R regions), point_coords
    (B, K, 3) float32 and point_labels (B, K) int64 (K = one slot per class; ``NO_CLICK`` where a class has no
    error or the sample is prompt-free).
    """
    b, spatial = target.shape[0], target.shape[2:]
    k = num_outputs if has_regions else num_outputs - 1
    masks = np.zeros((b, k, *spatial), dtype=bool)
    ignores = [None] * b
    for i in range(b):
        if has_regions:
            masks[i] = target[i, :k] > 0
            if ignore_label is not None:
                ignores[i] = target[i, -1] > 0
        else:
            masks[i] = np.stack([target[i, 0] == c for c in range(1, num_outputs)])
            if ignore_label is not None:
                ignores[i] = target[i, 0] == ignore_label
    mask_prompt = np.full((b, k, *spatial), -MASK_LOGIT, dtype=np.float32)
    coords = np.zeros((b, k, 3), dtype=np.float32)
    labels = np.full((b, k), NO_CLICK, dtype=np.int64)
    for i in np.flatnonzero(active):
        kind = kinds[int(rng.integers(len(kinds)))]
        others = [j for j in range(b) if j != i]
        neighbour = masks[others[int(rng.integers(len(others)))]] if others else None
        start = imperfect_masks(masks[i], kind, rng, neighbour)
        mask_prompt[i] = np.where(start, MASK_LOGIT, -MASK_LOGIT)
        points, point_labels = _corrections(start, masks[i], has_regions, ignores[i])
        coords[i, :len(points)] = points
        labels[i, :len(points)] = point_labels
    return mask_prompt, coords, labels


def _corrections(start: np.ndarray, truth: np.ndarray, has_regions: bool, ignore: Optional[np.ndarray]
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """One correction click per class (region) at its largest error, from (K, *S) masks."""
    if has_regions:
        points, labels = [], []
        for r in range(len(start)):
            found = _largest_error([start[r] != truth[r]], ignore)
            if found is not None:
                points.append(found[1])
                labels.append(click_label(r, negative=not bool(truth[r][tuple(found[1])])))
        return (np.stack(points).astype(np.float32) if points else np.zeros((0, 3), np.float32),
                np.asarray(labels, np.int64))
    as_labels = lambda m: np.where(m.any(0), m.argmax(0) + 1, 0)  # noqa: E731  (one-hot foreground -> labels)
    classes = list(range(1, len(start) + 1))
    return class_correction_clicks(as_labels(start), as_labels(truth), classes, False, ignore)
