"""Corrections that name every class, and whether a click was followed (issue 35).

``class_correction_clicks``: one correction click per class (region) and round, each at the centre of the largest
error of that class -- the voxels where prediction and reference disagree about it -- as nnInteractive's and SAM's
protocols place them (``corrections._largest_error``); the click says what the reference says there (label-based:
that class, background or another class; regions: inside / outside).

``click_adherence``: per click, whether its voxel ends with the clicked class (label-based, background included:
"this is background" is the removing click) or, for a region, inside it (positive) / outside (negative).
"""
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from sam_nnunet.prompts.clicks import click_label
from sam_nnunet.prompts.corrections import _largest_error

Classes = Sequence[Union[int, Tuple[int, ...]]]


def class_correction_clicks(prediction: np.ndarray, reference: np.ndarray, classes: Classes, has_regions: bool,
                            ignore: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Label maps (*S) -> (points (K, 3), point labels (K,)): at most one click per class (region) with an error,
    distinct voxels (a voxel that is the centre of two classes' errors is clicked once)."""
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    points: List[np.ndarray] = []
    labels: List[int] = []
    for i, cls in enumerate(classes):
        values = np.atleast_1d(cls)
        predicted, referenced = np.isin(prediction, values), np.isin(reference, values)
        found = _largest_error([predicted != referenced], ignore)
        if found is None:
            continue
        voxel = found[1]
        if any((voxel == p).all() for p in points):
            continue
        if has_regions:
            label = click_label(i, negative=not bool(referenced[tuple(voxel)]))
        else:
            label = click_label(int(reference[tuple(voxel)]))
        points.append(voxel)
        labels.append(label)
    if not points:
        return np.zeros((0, 3)), np.zeros(0, np.int64)
    return np.stack(points).astype(np.float64), np.asarray(labels, np.int64)


def click_adherence(segmentation: np.ndarray, points: np.ndarray, labels: np.ndarray, classes: Classes,
                    has_regions: bool) -> Tuple[np.ndarray, np.ndarray]:
    """(followed (K,) bool, positive (K,) bool) of clicks (array indices, rounded to the nearest voxel) on the label
    map ``segmentation``. Label-based: followed = the voxel holds the clicked class; positive = a foreground class
    (a background click removes). Regions: followed = inside region r (positive) / outside (negative)."""
    segmentation = np.asarray(segmentation)
    shape = np.array(segmentation.shape)
    followed, positive = [], []
    for p, label in zip(np.asarray(points, dtype=np.float64).reshape(-1, 3), np.asarray(labels).reshape(-1)):
        value = segmentation[tuple(np.clip(np.round(p).astype(np.int64), 0, shape - 1))]
        channel, negative = divmod(int(label), 2)
        if has_regions:
            inside = bool(np.isin(value, np.atleast_1d(classes[channel])))
            followed.append(inside != bool(negative))
            positive.append(not negative)
        else:
            followed.append(int(value) == channel)
            positive.append(channel != 0)
    return np.asarray(followed, bool), np.asarray(positive, bool)
