"""Necks: project transformer tokens to the decoder's width."""
import torch
from torch import nn


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, D, H, W) tensor (3D twin of SAM's LayerNorm2d)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class Neck3d(nn.Sequential):
    """SAM's neck in 3D: 1^3 conv -> LayerNorm3d -> 3^3 conv -> LayerNorm3d, convolutions without bias.

    Input (B, in_dim, d, h, w) channels-first; output (B, out_dim, d, h, w).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Conv3d(in_dim, out_dim, kernel_size=1, bias=False),
            LayerNorm3d(out_dim),
            nn.Conv3d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_dim),
        )
