"""3D clicks as SAM point prompts on ZAP-2.5DSAM's slices: where a click lands in the images of one orientation,
and what it says to each mask output.

Projection (ZAP-2.5DSAM, methods.md section 3.1): a click (d, h, w) in the patch is projected onto the slices of an
orientation by dropping that orientation's slice axis; the same 2D point is used for every (pseudo-)slice of it.
The slices of ``ZAP25DNetwork`` (``PLANE_LAYOUTS``, layout 2 = the published code's) are, in rows x columns: along D
(axial) H x W images, along H (coronal) W x D images, along W (sagittal) D x H images; SAM's points are
(x, y) = (column, row). A slice fills the whole image the encoder sees, so the click
keeps its relative position: voxel v of an axis of n voxels (centre at (v + 0.5) / n of the axis, the convention of
the image's positional encoding ``pe_layer(grid)``) becomes the pixel of SAM's prompt-encoder frame at the same
relative position. (ZAP multiplies crop voxels by 4 in its 512-pixel frame and SAM adds half a pixel: a shift of
3/8 voxel, which the exact mapping here does not have.)

Reading of a click for mask output j (channel ``first_channel + j``), SAM's labels (1 positive, 0 negative, -1 "not a
point" = SAM's own padding token, which carries no position):

    click                         on j's channel    on another channel
    positive ("this is class c")  1                 0 when classes are mutually exclusive (label-based: another
                                                    class or background is "not j" there), else -1
    negative ("this is not c")    0                 -1 (says nothing about j)
    empty slot (label -1)         -1                -1
"""
from typing import Sequence, Tuple

import torch

SAM_POSITIVE, SAM_NEGATIVE, SAM_NOT_A_POINT = 1, 0, -1


def sam_point_labels(point_labels: torch.Tensor, num_masks: int, first_channel: int,
                     exclusive: bool) -> torch.Tensor:
    """point_labels (B, N) (``2 * channel + negative``, -1 empty; ``sam_nnunet.prompts.clicks``) -> SAM labels
    (B, num_masks, N) of every click for every mask output (the table of the module docstring).

    Arguments:
      first_channel: the network output channel of mask output 0 (1 after a background channel, else 0).
      exclusive: outputs are mutually exclusive classes (label-based training), not possibly overlapping regions.
    """
    valid = point_labels >= 0
    channel = torch.div(point_labels, 2, rounding_mode="floor")
    negative = point_labels.remainder(2) == 1
    outputs = torch.arange(num_masks, device=point_labels.device) + first_channel
    same = channel[:, None, :] == outputs[None, :, None]  # (B, k, N)
    positive = ~negative[:, None, :]
    elsewhere = SAM_NEGATIVE if exclusive else SAM_NOT_A_POINT
    labels = torch.where(same, torch.where(positive, SAM_POSITIVE, SAM_NEGATIVE),
                         torch.where(positive, elsewhere, SAM_NOT_A_POINT))
    return torch.where(valid[:, None, :], labels, SAM_NOT_A_POINT)


# {layout version: {slice axis: (row axis, column axis)}}, tensor axes of (B, C, D, H, W). SAM's encoder is not
# transpose-equivariant, so the orientation of each image is part of a trained model (its plans record the version).
#   2: ZAP-2.5DSAM's public code (train.py: coronal images are W rows x D columns) -- what sam-nnunet builds now
#   1: sam-nnunet 0.1 (coronal D x W), kept so that models trained with it predict as they were trained
PLANE_LAYOUTS = {
    1: {2: (3, 4), 3: (2, 4), 4: (2, 3)},
    2: {2: (3, 4), 3: (4, 2), 4: (2, 3)},
}
PLANE_LAYOUT = 2  # what new trainings use


def plane_axes(axis: int, layout: int = PLANE_LAYOUT) -> Tuple[int, int]:
    """(row, column) coordinate indices (0 = D, 1 = H, 2 = W) of the slices along tensor axis ``axis`` (2, 3, 4)."""
    rows, cols = PLANE_LAYOUTS[layout][axis]
    return rows - 2, cols - 2


def project_clicks(point_coords: torch.Tensor, spatial: Sequence[int], axis: int,
                   frame: Sequence[int], layout: int = PLANE_LAYOUT) -> torch.Tensor:
    """point_coords (B, N, 3) voxel positions (D, H, W) in a volume of size ``spatial`` -> SAM points (B, N, 2)
    (x, y) in pixels of a prompt-encoder frame ``frame`` (H_in, W_in) (``PromptEncoder.input_image_size``), for the
    slices along tensor axis ``axis``. SAM adds half a pixel and divides by the frame: the result is the voxel's
    relative position in the slice."""
    rows, cols = plane_axes(axis, layout)
    xy = point_coords[..., [cols, rows]]
    size = torch.tensor([spatial[cols], spatial[rows]], dtype=xy.dtype, device=xy.device)
    pixels = torch.tensor([frame[1], frame[0]], dtype=xy.dtype, device=xy.device)
    return (xy + 0.5) / size * pixels - 0.5


# ---- boxes and mask prompts (issue 17) ---------------------------------------------------------------------------
# A 3D box is two corners (B, M, 2, 3): the voxel centres of its first and last voxel along (D, H, W) (inclusive, a
# structure's bounding box from its min / max voxel index, MedSAM's convention). On the slices of one orientation it
# is the 2D box of its in-plane extent, given only to the pseudo-slices it crosses along the slice axis (a click has
# no extent there, a box has).

def project_boxes(boxes: torch.Tensor, spatial: Sequence[int], axis: int, frame: Sequence[int],
                  layout: int = PLANE_LAYOUT) -> torch.Tensor:
    """boxes (B, M, 2, 3) -> SAM boxes (B, M, 4) (x1, y1, x2, y2) in pixels of the prompt-encoder frame, for the
    slices along tensor axis ``axis``: both corners projected as clicks (``project_clicks``), so SAM's corner
    embeddings sit at the relative positions of the box's first and last voxel, as MedSAM's boxes do."""
    b, m = boxes.shape[:2]
    return project_clicks(boxes.reshape(b, m * 2, 3), spatial, axis, frame, layout).reshape(b, m, 4)


def pseudo_slices_crossed(boxes: torch.Tensor, axis: int, num_groups: int, pool: int) -> torch.Tensor:
    """(B, M, num_groups) bool: box m overlaps pseudo-slice g (slices g * pool .. (g + 1) * pool - 1) along the slice
    axis ``axis``. Extents are +-0.5 around voxel centres: the box covers [lo - 0.5, hi + 0.5], the pseudo-slice
    [g * pool - 0.5, (g + 1) * pool - 0.5]."""
    lo, hi = boxes[..., 0, axis - 2], boxes[..., 1, axis - 2]
    start = torch.arange(num_groups, device=boxes.device, dtype=boxes.dtype) * pool
    return (start < hi[..., None] + 1) & (start + pool > lo[..., None])


def click_pseudo_slices(point_coords: torch.Tensor, axis: int, num_groups: int, pool: int, reach: int
                        ) -> torch.Tensor:
    """(B, num_groups, N) bool: pseudo-slice g (slices g * pool .. (g + 1) * pool - 1 along tensor axis ``axis``)
    lies within ``reach`` pseudo-slices of the one holding click n (its voxel rounded to the nearest slice). A
    3D click then reaches the slices near it in every orientation (``ZAP25DPromptedNetwork(click_slice_reach=...)``)."""
    voxel = torch.round(point_coords[..., axis - 2].float()).clamp(min=0)
    own = torch.div(voxel, pool, rounding_mode="floor")  # (B, N)
    groups = torch.arange(num_groups, device=point_coords.device, dtype=own.dtype)
    return (groups[None, :, None] - own[:, None, :]).abs() <= reach


def boxes_for_outputs(box_labels: torch.Tensor, num_masks: int, first_channel: int) -> torch.Tensor:
    """box_labels (B, M) (``2 * channel``, -1 empty; boxes are positive) -> (B, num_masks, M) bool: box m speaks to
    mask output j. A box says "class c is in here" and nothing about another class (SAM has no negative box)."""
    channel = torch.div(box_labels, 2, rounding_mode="floor")
    outputs = torch.arange(num_masks, device=box_labels.device) + first_channel
    return (box_labels[:, None, :] >= 0) & (channel[:, None, :] == outputs[None, :, None])


def plane_mask_prompt(mask: torch.Tensor, axis: int, pool: int, layout: int = PLANE_LAYOUT) -> torch.Tensor:
    """mask (B, k, D, H, W) (each axis a multiple of ``pool``) -> (B, S / pool, k, a, b): the mask of every
    pseudo-slice of the orientation, the mean over its ``pool`` slices, in the images' rows x columns."""
    rows, cols = PLANE_LAYOUTS[layout][axis]
    stack = mask.permute(0, axis, 1, rows, cols)  # (B, S, k, a, b)
    b, s = stack.shape[:2]
    return stack.reshape(b, s // pool, pool, *stack.shape[2:]).mean(2)
