"""Map nnU-Net's input channels onto the 3 channels every SAM patch embedding expects."""
import torch
from torch import nn


class InputChannelAdapter(nn.Module):
    """1 channel -> replicated to 3 (as all SAM papers do); 3 -> passed through; C other -> learnable 1x1x1
    projection initialised to the channel mean (so at the start every SAM channel sees the average modality).

    Works for 2D (B, C, H, W) and 3D (B, C, D, H, W) input. Only the projection has parameters.
    """

    def __init__(self, in_channels: int, out_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.proj = None
        if in_channels not in (1, out_channels):
            self.proj = nn.Conv3d(in_channels, out_channels, kernel_size=1)
            with torch.no_grad():
                self.proj.weight.fill_(1.0 / in_channels)
                self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}")
        if self.proj is not None:
            if x.ndim == 4:  # 2D input through the 3D projection
                return self.proj(x.unsqueeze(2)).squeeze(2)
            return self.proj(x)
        if self.in_channels == 1:
            return x.expand(-1, self.out_channels, *x.shape[2:])
        return x
