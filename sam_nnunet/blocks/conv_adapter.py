"""3D adapter: a bottleneck with a depth-wise 3D convolution, added to a frozen ViT block."""
import torch
import torch.nn.functional as F
from torch import nn


class ConvAdapter3d(nn.Module):
    """x + Up(GELU(DWConv3d(GELU(Down(LayerNorm(x)))))) on channels-last volumetric tokens (B, D, H, W, C).

    The depth-wise 3x3x3 convolution mixes each token with its 26 neighbours, across slices included: the local
    3D context a frozen 2D block lacks. ``Up`` starts at zero, so at initialisation the adapter is the identity
    and the network computes what the (inflated) pretrained model computes; the LayerNorm keeps the bottleneck's
    input scale independent of the residual stream's, whose channels differ widely in a pretrained ViT.

    Arguments:
      dim: token width C.
      bottleneck_dim: width inside the adapter.
      kernel_size: depth-wise convolution kernel (3).
    """

    def __init__(self, dim: int, bottleneck_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck_dim)
        self.conv = nn.Conv3d(bottleneck_dim, bottleneck_dim, kernel_size, padding=kernel_size // 2,
                              groups=bottleneck_dim)
        self.up = nn.Linear(bottleneck_dim, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.down(self.norm(x)))
        h = F.gelu(self.conv(h.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1))
        return x + self.up(h)
