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
    target = relative_slice_positions(d, predictions.device)
    off_diagonal = ~torch.eye(d, dtype=torch.bool, device=predictions.device)
    if d < 2:
        return predictions.sum() * 0
    pred = predictions.float()[:, off_diagonal]
    return F.mse_loss(pred, target[off_diagonal].expand_as(pred))
