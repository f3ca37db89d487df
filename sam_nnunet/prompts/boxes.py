"""3D box prompts inside the networks, and box sampling from nnU-Net's target for training (torch, outside
``forward``).

A set of boxes for a batch of patches is two tensors, in the patch's voxel coordinates like clicks
(``sam_nnunet.prompts.clicks``):

  boxes (B, M, 2, 3) float: the first and the last voxel of each box along (D, H, W), both inclusive (a
                            structure's bounding box from its min / max voxel index, MedSAM's convention);
  box_labels (B, M) long:   ``2 * channel`` (a box says "this output is in here"), -1 where a patch has fewer boxes.

SAM's prompt encoder has no negative box, so boxes are positive only (negative corrections are clicks).
"""
from typing import Optional, Tuple

import torch

from sam_nnunet.prompts.clicks import NO_CLICK


def no_boxes(batch: int, device: torch.device = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """An empty box set: boxes (B, 0, 2, 3), labels (B, 0)."""
    return torch.zeros(batch, 0, 2, 3, device=device), torch.zeros(batch, 0, dtype=torch.long, device=device)


def _extent(mask: torch.Tensor, dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """First and last index along ``dim`` where ``mask`` (R, D, H, W) holds a voxel (0 for empty rows)."""
    other = [d for d in (1, 2, 3) if d != dim]
    line = mask.any(other[1]).any(other[0])  # (R, S)
    first = line.to(torch.int8).argmax(1)
    last = line.shape[1] - 1 - line.flip(1).to(torch.int8).argmax(1)
    return first, last


def sample_boxes_from_target(target: torch.Tensor, num_outputs: int, has_regions: bool, jitter: int = 2,
                             box_probability: float = 1.0, ignore_label: Optional[int] = None,
                             generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """One box per foreground class (label-based) or region present in a patch: its bounding box, every face moved
    outwards by a random 0..``jitter`` voxels and clipped to the patch (MedSAM's training boxes: each side shifted
    by up to 20 of 1024 pixels, so a user's box need not be tight). A patch gets boxes with ``box_probability``.

    Arguments as ``sample_clicks_from_target``. Returns boxes (B, K, 2, 3) float and box_labels (B, K) long, K =
    foreground channels; classes absent from a patch (or patches drawn without boxes) leave their slot empty (-1).
    """
    b, spatial = target.shape[0], tuple(target.shape[2:])
    if has_regions:
        channels = torch.arange(num_outputs, device=target.device)
        masks = target[:, :num_outputs] > 0  # (B, R, *S)
        if ignore_label is not None:
            masks = masks & ~(target[:, -1:] > 0)
    else:
        channels = torch.arange(1, num_outputs, device=target.device)
        masks = target[:, :1].long() == channels.view(1, -1, 1, 1, 1)
    k = channels.numel()
    flat = masks.reshape(b * k, *spatial)
    lo, hi = zip(*(_extent(flat, d) for d in (1, 2, 3)))
    lo, hi = torch.stack(lo, -1), torch.stack(hi, -1)  # (B * K, 3)
    size = torch.tensor(spatial, device=target.device)
    if jitter > 0:
        lo = lo - torch.randint(0, jitter + 1, lo.shape, generator=generator, device=target.device)
        hi = hi + torch.randint(0, jitter + 1, hi.shape, generator=generator, device=target.device)
    lo, hi = lo.clamp(min=0), torch.minimum(hi, size - 1)
    boxes = torch.stack([lo, hi], 1).to(torch.float32).reshape(b, k, 2, 3)
    labels = (2 * channels)[None].expand(b, -1).clone()
    labels[~flat.flatten(1).any(1).reshape(b, k)] = NO_CLICK
    if box_probability < 1:
        without = torch.rand(b, generator=generator, device=target.device) >= box_probability
        labels[without] = NO_CLICK
    return boxes, labels


BOX_POINTS = 9  # a box as points: its 8 corners and its centre (networks whose prompts are sampled points)


def box_points(boxes: torch.Tensor, box_labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes (B, M, 2, 3) as points: the 8 corner voxels (first / last along each axis) and the centre of each box.

    Returns coords (B, 9 M, 3), labels (B, 9 M) (each point keeps its box's label, -1 for empty slots) and role
    (9 M,) long: 0 for a corner, 1 for the centre."""
    b, m = boxes.shape[:2]
    corner = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], device=boxes.device)  # (8, 3)
    corners = torch.gather(boxes.unsqueeze(2).expand(-1, -1, 8, -1, -1), 3,
                           corner.view(1, 1, 8, 1, 3).expand(b, m, -1, -1, -1)).squeeze(3)  # (B, M, 8, 3)
    centre = boxes.mean(2, keepdim=True)  # (B, M, 1, 3)
    coords = torch.cat([corners, centre], 2).flatten(1, 2)
    labels = box_labels.repeat_interleave(BOX_POINTS, dim=1)
    role = torch.tensor([0] * 8 + [1], device=boxes.device).repeat(m)
    return coords, labels, role
