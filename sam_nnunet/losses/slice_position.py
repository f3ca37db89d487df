"""SRPP supervision: relative positions of slice pairs, regressed with MSE."""
import torch
import torch.nn.functional as F


def relative_slice_positions(num_slices: int, device=None) -> torch.Tensor:
    """(D, D) matrix of (j - i) / (D - 1): where slice j lies relative to slice i, as a fraction of the patch."""
    index = torch.arange(num_slices, device=device, dtype=torch.float32)
    return (index[None, :] - index[:, None]) / max(num_slices - 1, 1)


def slice_position_loss(predictions: torch.Tensor) -> torch.Tensor:
    """MSE between predicted (B, D, D) relative positions and the truth, over the pairs of distinct slices (the
    patch's slices are consecutive, so the truth follows from D alone)."""
    d = predictions.shape[-1]
    if d < 2:
        return predictions.sum() * 0
    target = relative_slice_positions(d, predictions.device)
    # a weighted mean rather than boolean indexing: no data-dependent shapes (torch.compile, the planner's trace)
    off_diagonal = 1 - torch.eye(d, device=predictions.device)
    squared = F.mse_loss(predictions.float(), target.expand_as(predictions), reduction="none")
    return (squared * off_diagonal).sum() / (predictions.shape[0] * d * (d - 1))
