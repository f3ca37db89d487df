"""SRPP head of SAM2-3dMed: predicts the relative position of every pair of slices from their features."""
import torch
from torch import nn


class SliceRelativePositionHead(nn.Module):
    """A small transformer over per-slice feature vectors and a pairwise MLP.

    The transformer has no positional encoding, so the slice order is not given to it: to predict where slice j lies
    relative to slice i, the features themselves must carry it. Used only during training (a self-supervised
    regulariser of the features it reads); it has no part in the segmentation output.

    Arguments:
      in_dim: width of the per-slice features.
      width: transformer width.
      depth: transformer layers.
      heads: attention heads.
    """

    def __init__(self, in_dim: int, width: int = 128, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, width)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.pair = nn.Sequential(nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        """(B, D, in_dim) slice features -> (B, D, D) predictions of (j - i) / (D - 1) for slices i, j."""
        h = self.encoder(self.proj(slices))
        d = h.shape[1]
        pairs = torch.cat([h[:, :, None].expand(-1, -1, d, -1), h[:, None].expand(-1, d, -1, -1)], dim=-1)
        return self.pair(pairs).squeeze(-1)
