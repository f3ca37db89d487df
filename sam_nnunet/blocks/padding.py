"""Pad a patch to a multiple of the token stride and crop the prediction back: any planned patch size works."""
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: Sequence[int]) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """Zero-pad the trailing spatial axes of ``x`` (B, C, *spatial) at their ends to multiples of ``multiple``.

    Zero is the mean intensity after nnU-Net's normalisation, the value nnU-Net itself pads images with.
    Returns the padded tensor and the original spatial shape (for ``crop_to``).
    """
    spatial = tuple(x.shape[2:])
    if len(multiple) != len(spatial):
        raise ValueError(f"{len(multiple)} multiples for {len(spatial)} spatial axes")
    pads = []
    for s, m in zip(reversed(spatial), reversed(tuple(multiple))):
        pads += [0, (-s) % m]
    if any(pads):
        x = F.pad(x, pads)
    return x, spatial


def crop_to(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Crop the trailing spatial axes of ``x`` back to ``spatial`` (the inverse of pad_to_multiple)."""
    return x[(Ellipsis,) + tuple(slice(0, s) for s in spatial)]
