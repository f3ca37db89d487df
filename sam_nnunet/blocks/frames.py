"""In-plane slices of a patch as square SAM 2 frames, and SAM 2's mask logits back onto the slice grid.

SAM 2's Hiera has a total stride of 32 and tiles its windowed position embedding over the stride-4 grid, so a frame
side must be a multiple of 32; its memory attention uses 2D rotary positions that assume a square token grid. A slice
(h, w) is therefore resized by ``scale`` and zero-padded (at its end, like ``pad_to_multiple``) to a square frame of
side ``size``. SAM 2's mask decoder predicts at stride 4 of the frame, so with the default scale 4 its logits fall
exactly on the slice's voxel grid (h x w after cropping) and need no interpolation.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

HIERA_STRIDE = 32
MASK_STRIDE = 4     # SAM 2 mask decoder output stride
TOKEN_STRIDE = 16   # stride of the features memory attention works on


@dataclass(frozen=True)
class FrameGeometry:
    """Slice (h, w) -> resized (rh, rw) -> padded square frame (size, size)."""
    h: int
    w: int
    rh: int
    rw: int
    size: int

    @property
    def grid(self) -> int:
        """Tokens per side of the stride-16 features that memory attention works on."""
        return self.size // TOKEN_STRIDE

    @property
    def mask_hw(self):
        """Part of the stride-4 mask grid that covers the (resized) slice."""
        return math.ceil(self.rh / MASK_STRIDE), math.ceil(self.rw / MASK_STRIDE)


def frame_geometry(h: int, w: int, upsample: float = 4.0, max_image_size: int = 1024) -> FrameGeometry:
    """Frame geometry for an (h, w) slice: scale by ``upsample`` unless the longer side would exceed
    ``max_image_size`` (SAM 2's training size 1024 by default), then pad to a multiple of 32."""
    if h < 1 or w < 1:
        raise ValueError(f"empty slice {h}x{w}")
    if max_image_size < HIERA_STRIDE or max_image_size % HIERA_STRIDE:
        raise ValueError(f"max_image_size must be a positive multiple of {HIERA_STRIDE}, got {max_image_size}")
    scale = min(float(upsample), max_image_size / max(h, w))
    rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
    size = HIERA_STRIDE * math.ceil(max(rh, rw) / HIERA_STRIDE)
    return FrameGeometry(h, w, rh, rw, size)


def slices_to_frames(slices: torch.Tensor, geometry: FrameGeometry) -> torch.Tensor:
    """(N, C, h, w) slices -> (N, C, size, size) frames (bilinear resize, zero padding)."""
    g = geometry
    x = slices
    if (g.rh, g.rw) != (g.h, g.w):
        x = F.interpolate(x, size=(g.rh, g.rw), mode="bilinear", align_corners=False,
                          antialias=g.rh < g.h or g.rw < g.w)
    return F.pad(x, (0, g.size - g.rw, 0, g.size - g.rh))


def frames_to_slices(logits: torch.Tensor, geometry: FrameGeometry) -> torch.Tensor:
    """(N, K, size/4, size/4) mask-decoder logits -> (N, K, h, w) on the slice grid (crop, then bilinear resize
    where the scale was not 4)."""
    g = geometry
    mh, mw = g.mask_hw
    x = logits[..., :mh, :mw]
    if (mh, mw) != (g.h, g.w):
        x = F.interpolate(x, size=(g.h, g.w), mode="bilinear", align_corners=False)
    return x
