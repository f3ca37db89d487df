"""Map nnU-Net's input channels onto the 3 channels every SAM patch embedding expects, in the encoder's value range."""
from typing import Optional

import torch
from torch import nn


class InputChannelAdapter(nn.Module):
    """1 channel -> replicated to 3 (as all SAM papers do); 3 -> passed through; C other -> learnable 1x1x1
    projection initialised to the channel mean (so at the start every SAM channel sees the average modality).

    With an intensity ``window`` (``encoders.contract.IntensityWindow``) the nnU-Net values of each input channel are
    first mapped to [0, 1], and the 3 channels then normalised as the encoder's ``contract``
    (``encoders.contract.InputContract``) says: the input the pretrained encoder was trained on. Without a window the
    values pass as they are (ZAP-2.5DSAM's public code on SAM ViT; models trained before the contract).

    Works for 2D (B, C, H, W) and 3D (B, C, D, H, W) input. Only the projection has parameters; the window and
    contract are construction arguments (written in nnU-Net's plans), not state.
    """

    def __init__(self, in_channels: int, out_channels: int = 3, window=None, contract=None) -> None:
        super().__init__()
        if window is not None and contract is None:
            raise ValueError("an intensity window needs the encoder's input contract")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.window = window
        self.contract = contract if window is not None else None
        self.proj = None
        if in_channels not in (1, out_channels):
            self.proj = nn.Conv3d(in_channels, out_channels, kernel_size=1)
            with torch.no_grad():
                self.proj.weight.fill_(1.0 / in_channels)
                self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}")
        if self.window is not None:
            x = self.window(x)
        if self.proj is not None:
            x = self.proj(x.unsqueeze(2)).squeeze(2) if x.ndim == 4 else self.proj(x)  # 2D input: 3D projection
        elif self.in_channels == 1:
            x = x.expand(-1, self.out_channels, *x.shape[2:])
        return x if self.contract is None else self.contract.normalise(x)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}, window={self.window}"
