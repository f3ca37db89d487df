"""What a click is inside the networks, and the papers' click sampling for training (torch, outside ``forward``).

A set of clicks for a batch of patches is two tensors, as SAM's ``point_coords`` / ``point_labels``:

  point_coords (B, N, 3) float: voxel coordinates in the patch, along its axes (D, H, W) (voxel centres are
                                integers);
  point_labels (B, N) long:     ``2 * channel + negative``, or -1 where a sample has fewer than N clicks.

``channel`` is the network output the click speaks about:
  - label-based training (softmax over classes): the class index, 0 = background. A click says "this voxel is
    class c". A negative click for a class is stored as a background click (label 0): with mutually exclusive
    classes "not c" is taken as "background here", the only reading a binary task has.
  - region-based training (sigmoid per region): the region index; the click says "inside" (positive) or "outside"
    (negative) region r.

Batches without any click have N = 0 (``no_clicks``): the prompted networks then segment automatically.
"""
from typing import Optional, Tuple

import torch

NO_CLICK = -1


def click_label(channel: int, negative: bool = False) -> int:
    """The ``point_labels`` value of a click on ``channel`` (see the module docstring)."""
    return 2 * int(channel) + int(bool(negative))


def num_label_codes(num_outputs: int) -> int:
    """How many distinct click labels a network with ``num_outputs`` output channels can receive."""
    return 2 * num_outputs


def no_clicks(batch: int, device: torch.device = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """An empty click set for ``batch`` patches: coords (B, 0, 3), labels (B, 0)."""
    return (torch.zeros(batch, 0, 3, device=device), torch.zeros(batch, 0, dtype=torch.long, device=device))


def normalise_coords(point_coords: torch.Tensor, spatial: Tuple[int, ...]) -> torch.Tensor:
    """Voxel coordinates (B, N, 3) in a volume of size ``spatial`` -> [0, 1] (0 and 1 = outer faces of the first and
    last voxel), the convention of trilinear sampling with ``align_corners=False``."""
    size = torch.tensor(spatial, dtype=point_coords.dtype, device=point_coords.device)
    return (point_coords + 0.5) / size


def _sample_voxels(masks: torch.Tensor, count: int, generator: Optional[torch.Generator]) -> Tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """``count`` voxels drawn uniformly with replacement from each row of ``masks`` (R, V) bool.

    Returns flat indices (R, count) and whether the row had any voxel (R,); rows without one get index 0.
    (Inverse-CDF sampling: exact for any number of voxels, unlike torch.multinomial's 2^24 category limit.)
    """
    totals = masks.sum(-1)  # (R,)
    cumulative = masks.to(torch.int32).cumsum(-1, dtype=torch.int32)  # (R, V)
    u = torch.rand(masks.shape[0], count, generator=generator, device=masks.device)
    rank = (u * totals[:, None]).long().minimum((totals - 1).clamp(min=0)[:, None])
    index = torch.searchsorted(cumulative, (rank + 1).to(torch.int32))  # first voxel whose count reaches rank + 1
    return index.clamp(max=masks.shape[-1] - 1), totals > 0


def _sample_distinct_voxels(masks: torch.Tensor, count: int, generator: Optional[torch.Generator]) -> Tuple[
        torch.Tensor, torch.Tensor]:
    """As ``_sample_voxels``, without replacement: ``count`` distinct voxels per row (random keys, top-k); a row with
    fewer than ``count`` voxels has all of them, its remaining picks drawn with replacement."""
    keys = torch.rand(masks.shape, generator=generator, device=masks.device).masked_fill(~masks, -1.0)
    top, index = keys.topk(count, dim=-1)  # (R, count)
    fallback, present = _sample_voxels(masks, count, generator)
    return torch.where(top >= 0, index, fallback), present


def sample_clicks_from_target(target: torch.Tensor, num_outputs: int, has_regions: bool,
                              positives_per_class: int = 10, random_clicks: int = 20,
                              prompt_free_probability: float = 0.0, ignore_label: Optional[int] = None,
                              min_positives_per_class: Optional[int] = None,
                              generator: Optional[torch.Generator] = None,
                              distinct_positives: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Clicks for a batch of training patches, drawn from nnU-Net's target as 3DSAM-adapter does per crop.

    For every foreground class (label-based) or region present in a patch: ``positives_per_class`` positive clicks
    uniformly from its voxels, with replacement (3DSAM-adapter: 10). Then ``random_clicks`` clicks uniformly from
    the whole patch (3DSAM-adapter: 20), each labelled with what the target says there (label-based: the class at the
    voxel, background included; region-based: inside / outside a region chosen at random). Voxels of nnU-Net's
    ignore label are never clicked. With ``min_positives_per_class`` the number of positive clicks per class is
    drawn uniformly from [min_positives_per_class, positives_per_class] for every patch and class (ZAP-2.5DSAM:
    k ~ U{1, 2, 3}, no random clicks); the remaining slots stay empty. ``distinct_positives``: the positive clicks of
    a class are distinct voxels (ZAP-2.5DSAM; 3DSAM-adapter draws with replacement) where it has enough of them.
    With ``prompt_free_probability`` a patch gets no click at all (the automatic mode). Classes absent from a patch
    leave their slots empty (label -1), so N is the same for every batch: ``(num foreground channels) *
    positives_per_class + random_clicks``.

    Arguments:
      target: (B, 1, *S) label map (label-based) or (B, R, *S) region masks (region-based; with an ignore label
        nnU-Net appends its mask as one more channel).
      num_outputs: the network's output channels (nnU-Net's segmentation heads).
      has_regions: region-based training.
    Returns point_coords (B, N, 3) float and point_labels (B, N) long on ``target``'s device.
    """
    b, spatial = target.shape[0], tuple(target.shape[2:])
    flat = target.reshape(b, target.shape[1], -1)
    if has_regions:
        channels = torch.arange(num_outputs, device=target.device)
        masks = flat[:, :num_outputs] > 0  # (B, R, V)
        annotated = ~(flat[:, -1] > 0) if ignore_label is not None else torch.ones_like(masks[:, 0])
    else:
        labels = flat[:, 0].long()  # (B, V)
        channels = torch.arange(1, num_outputs, device=target.device)
        masks = labels[:, None, :] == channels[None, :, None]  # (B, K - 1, V)
        annotated = labels != ignore_label if ignore_label is not None else torch.ones_like(labels, dtype=torch.bool)
    masks = masks & annotated[:, None]
    k = channels.numel()

    sample = _sample_distinct_voxels if distinct_positives else _sample_voxels
    index, present = sample(masks.reshape(b * k, -1), positives_per_class, generator)
    pos_index = index.reshape(b, k * positives_per_class)
    pos_labels = (2 * channels).repeat_interleave(positives_per_class)[None].expand(b, -1).clone()
    pos_labels[~present.reshape(b, k).repeat_interleave(positives_per_class, dim=1)] = NO_CLICK
    if min_positives_per_class is not None and min_positives_per_class < positives_per_class:
        wanted = torch.randint(min_positives_per_class, positives_per_class + 1, (b, k, 1), generator=generator,
                               device=target.device)
        slot = torch.arange(positives_per_class, device=target.device).view(1, 1, -1)
        pos_labels[(slot >= wanted).reshape(b, -1)] = NO_CLICK

    rnd_index, any_annotated = _sample_voxels(annotated, random_clicks, generator)
    if has_regions:
        region = torch.randint(0, k, rnd_index.shape, generator=generator, device=target.device)
        inside = masks[torch.arange(b, device=target.device)[:, None], region, rnd_index]
        rnd_labels = 2 * region + (~inside).long()
    else:
        rnd_labels = 2 * torch.gather(labels, 1, rnd_index)
    rnd_labels[~any_annotated] = NO_CLICK

    flat_index = torch.cat([pos_index, rnd_index], dim=1)
    point_labels = torch.cat([pos_labels, rnd_labels], dim=1)
    point_coords = torch.stack(torch.unravel_index(flat_index, spatial), dim=-1).to(torch.float32)
    if prompt_free_probability > 0:
        free = torch.rand(b, generator=generator, device=target.device) < prompt_free_probability
        point_labels[free] = NO_CLICK
    return point_coords, point_labels
