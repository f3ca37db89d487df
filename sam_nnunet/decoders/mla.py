"""Multi-layer aggregation decoder (SETR-MLA style), as 3DSAM-adapter uses it."""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv_in_relu(cin: int, cout: int) -> List[nn.Module]:
    return [nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.InstanceNorm3d(cout), nn.ReLU(inplace=True)]


class MultiLayerAggregationDecoder3d(nn.Module):
    """Decodes several same-resolution feature maps of an encoder into per-voxel logits.

    Each map passes its own head (two 3^3 conv + InstanceNorm + ReLU) and is upsampled x2; the heads are
    concatenated with the raw image at that resolution, fused by a 3^3 conv block and classified by a 3^3 conv;
    the logits are upsampled to the requested output size. Convolutions have no bias (as in 3DSAM-adapter).

    Arguments:
      in_channels: width of each encoder feature map (the necks' output, 256 for SAM).
      head_channels: width of each head (128 in 3DSAM-adapter).
      num_maps: number of feature maps aggregated.
      image_channels: channels of the raw image appended before fusion.
      num_classes: output channels (nnU-Net's segmentation heads).
    """

    def __init__(self, in_channels: int, head_channels: int, num_maps: int, image_channels: int,
                 num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(*_conv_in_relu(in_channels, head_channels), *_conv_in_relu(head_channels, head_channels))
            for _ in range(num_maps))
        self.fuse = nn.Sequential(*_conv_in_relu(num_maps * head_channels + image_channels, head_channels))
        self.classifier = nn.Conv3d(head_channels, num_classes, 3, padding=1, bias=False)

    def forward(self, features: Sequence[torch.Tensor], image: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
        """features: num_maps tensors (B, in_channels, d, h, w); image: (B, image_channels, ...) at any size;
        out_size: spatial size of the returned logits (B, num_classes, *out_size)."""
        heads = [F.interpolate(head(f), scale_factor=2, mode="trilinear", align_corners=True)
                 for head, f in zip(self.heads, features)]
        img = F.interpolate(image, size=heads[0].shape[2:], mode="trilinear", align_corners=False)
        x = self.classifier(self.fuse(torch.cat(heads + [img], dim=1)))
        return F.interpolate(x, size=tuple(out_size), mode="trilinear", align_corners=True)
