"""Clicks simulated from a reference segmentation, as the papers evaluated their prompted models.

3DSAM-adapter (test.py) and ZAP-2.5DSAM (test.py) draw 1, 3 or 10 points uniformly from the reference tumour voxels
of each test volume; these are all positive clicks. Here: for every foreground class (label-based) or region
(region-based) present in the reference, ``n`` voxels drawn uniformly, distinct where the class has at least ``n``
voxels. The reference is the case's label file at its own resolution (the papers drew them from labels resampled to
1 mm; the clicks are then mapped through nnU-Net's preprocessing like any click).
"""
import zlib
from typing import List, Tuple, Union

import numpy as np

from sam_nnunet.prompts.clicks import click_label


def case_rng(seed: int, case: str) -> np.random.Generator:
    """A generator per (seed, case): the clicks of a case do not depend on which other cases are predicted."""
    return np.random.default_rng([seed, zlib.crc32(case.encode())])


def simulate_clicks(reference: np.ndarray, classes: List[Union[int, Tuple[int, ...]]], has_regions: bool, n: int,
                    rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` positive clicks per class present in ``reference``.

    Arguments:
      reference: label array (*S) or (1, *S), in the axes of nnU-Net's reader (the image's array).
      classes: label_manager.foreground_labels (label-based) or .foreground_regions (region-based).
    Returns array indices (M, 3) and point labels (M,) (see ``sam_nnunet.prompts.clicks``).
    """
    reference = np.asarray(reference)
    if reference.ndim == 4:
        reference = reference[0]
    points, labels = [], []
    for i, cls in enumerate(classes):
        if has_regions:
            mask = np.isin(reference, np.atleast_1d(cls))
            channel = i
        else:
            mask = reference == cls
            channel = int(cls)
        voxels = np.argwhere(mask)
        if len(voxels) == 0 or n == 0:
            continue
        chosen = rng.choice(len(voxels), size=n, replace=len(voxels) < n)
        points.append(voxels[chosen].astype(np.float64))
        labels += [click_label(channel)] * n
    if not points:
        return np.zeros((0, 3)), np.zeros((0,), dtype=np.int64)
    return np.concatenate(points), np.asarray(labels, dtype=np.int64)
