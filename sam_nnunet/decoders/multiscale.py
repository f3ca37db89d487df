"""Multi-scale 3D mask decoder (UNETR-like) for a plain ViT whose tokens sit on one grid."""
from typing import List, Sequence, Union

import torch
from torch import nn

Factor = Sequence[int]


def conv_block(cin: int, cout: int, stride: Union[int, Factor] = 1) -> nn.Sequential:
    """3x3x3 convolution, InstanceNorm, LeakyReLU: nnU-Net's default building block."""
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1),
                         nn.InstanceNorm3d(cout, eps=1e-5, affine=True),
                         nn.LeakyReLU(0.01, inplace=True))


def up_block(cin: int, cout: int, factor: Factor) -> nn.ConvTranspose3d:
    """Transposed convolution with kernel = stride = ``factor`` (per axis; 1 leaves an axis as it is)."""
    factor = tuple(int(f) for f in factor)
    return nn.ConvTranspose3d(cin, cout, kernel_size=factor, stride=factor)


class MultiScaleDecoder3d(nn.Module):
    """Decodes features tapped at several depths of a ViT into logits at every level of a resolution pyramid.

    Levels 0 .. L: level 0 is the full (padded) patch, level L the token grid, level k is level k - 1 downsampled
    by ``level_factors[k - 1]`` (per axis). Features ``features[k]`` (taken from deeper blocks for larger k) are
    brought to level k by L - k transposed convolutions (UNETR's progressive upsampling of shallower features). A
    small convolutional stem on the input image gives a skip at every level below the token grid. From the token
    grid down, each level upsamples the level above, concatenates the tapped feature and the input skip of its
    resolution and fuses them with two conv blocks; a 1x1x1 head per level gives logits.

    With ``deep_supervision`` the forward returns the logits of every level, finest first (nnU-Net's order);
    otherwise only the full-resolution logits. The flag does not change the parameters (nnU-Net builds the
    network for inference with it off and loads the training weights strictly).

    Arguments:
      feature_dim: width of the tapped ViT features.
      level_factors: L per-axis factors (level k-1 -> k).
      widths: L + 1 channel widths, level 0 first.
      image_channels: channels of the raw input image (the stem's input).
      num_classes: output channels.
      deep_supervision: return the logits of every level.
    """

    def __init__(self, feature_dim: int, level_factors: Sequence[Factor], widths: Sequence[int],
                 image_channels: int, num_classes: int, deep_supervision: bool = False) -> None:
        super().__init__()
        self.level_factors = [tuple(int(f) for f in factor) for factor in level_factors]
        levels = len(self.level_factors)
        if len(widths) != levels + 1:
            raise ValueError(f"{levels} level factors need {levels + 1} widths, got {len(widths)}")
        self.num_levels = levels + 1
        self.deep_supervision = deep_supervision

        # tapped ViT features: 1x1x1 projection, then progressive upsampling to their level
        taps = []
        for k in range(levels + 1):
            layers = [nn.Conv3d(feature_dim, widths[levels], 1), nn.InstanceNorm3d(widths[levels], affine=True),
                      nn.LeakyReLU(0.01, inplace=True)]
            for j in range(levels, k, -1):
                layers += [up_block(widths[j], widths[j - 1], self.level_factors[j - 1]),
                           conv_block(widths[j - 1], widths[j - 1])]
            taps.append(nn.Sequential(*layers))
        self.taps = nn.ModuleList(taps)
        # skips from the input image at levels 0 .. L-1
        self.stem = nn.ModuleList(
            [nn.Sequential(conv_block(image_channels, widths[0]), conv_block(widths[0], widths[0]))] +
            [nn.Sequential(conv_block(widths[k - 1], widths[k], self.level_factors[k - 1]),
                           conv_block(widths[k], widths[k])) for k in range(1, levels)])
        self.bottleneck = conv_block(widths[levels], widths[levels])
        self.up = nn.ModuleList(up_block(widths[k + 1], widths[k], self.level_factors[k]) for k in range(levels))
        self.fuse = nn.ModuleList(nn.Sequential(conv_block(3 * widths[k], widths[k]), conv_block(widths[k], widths[k]))
                                  for k in range(levels))
        self.heads = nn.ModuleList(nn.Conv3d(w, num_classes, 1) for w in widths)

    def forward(self, features: Sequence[torch.Tensor], image: torch.Tensor,
                out_size: Sequence[int]) -> Union[torch.Tensor, List[torch.Tensor]]:
        """features: L + 1 maps (B, feature_dim, *token grid), shallow to deep; image: (B, image_channels, *P)
        with P the padded patch (token grid x token stride); out_size: the unpadded patch size S. Level k logits
        are cropped to round(S / stride_k), the target size nnU-Net's deep-supervision downsampling produces."""
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(features)}")
        skips = []
        x = image
        for stem in self.stem:
            x = stem(x)
            skips.append(x)
        x = self.bottleneck(self.taps[-1](features[-1]))
        outputs = [self.heads[-1](x)] if self.deep_supervision else []
        for k in range(self.num_levels - 2, -1, -1):
            x = self.fuse[k](torch.cat([self.up[k](x), self.taps[k](features[k]), skips[k]], dim=1))
            if self.deep_supervision or k == 0:
                outputs.append(self.heads[k](x))
        outputs = outputs[::-1]  # finest first
        if not self.deep_supervision:
            return outputs[0][(Ellipsis,) + tuple(slice(0, s) for s in out_size)]
        cropped, stride = [], [1] * len(out_size)
        for k, out in enumerate(outputs):
            if k > 0:
                stride = [s * f for s, f in zip(stride, self.level_factors[k - 1])]
            size = [round(s * (1.0 / f)) for s, f in zip(out_size, stride)]
            cropped.append(out[(Ellipsis,) + tuple(slice(0, s) for s in size)])
        return cropped
