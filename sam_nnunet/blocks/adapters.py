"""Adapters: small trainable bottlenecks inserted into frozen transformer blocks."""
import torch
import torch.nn.functional as F
from torch import nn


class SpatialAdapter3d(nn.Module):
    """3DSAM-adapter's spatial adapter: Linear down, depth-wise 3^3 conv over the token volume, Linear up, residual.

    ReLU follows each of the three operations, as in the published model. Tokens are channels-last
    (B, D, H, W, C).

    Arguments:
      dim: token width (768 for ViT-B).
      bottleneck_dim: width inside the adapter (dim // 2 in 3DSAM-adapter).
    """

    def __init__(self, dim: int, bottleneck_dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck_dim)
        self.conv = nn.Conv3d(bottleneck_dim, bottleneck_dim, kernel_size=3, padding=1, groups=bottleneck_dim)
        self.up = nn.Linear(bottleneck_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.down(x))
        h = F.relu(self.conv(h.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1))
        return x + F.relu(self.up(h))
