"""A 3D patch embedding that replaces SAM's: SAM's 16x16 kernel inflated over depth (I3D), at a finer stride.

SAM's patch embedding is a Conv2d with a 16x16 kernel and stride 16 (one token per 16x16 pixels of a 1024x1024
image). A medical patch is small (40x56x40 voxels for the hippocampus, 128^3 for CT), so one token per 16 voxels
would leave a handful of tokens; 3DSAM-adapter therefore upsamples the patch x4 and keeps the 16x16 kernel, so a
token covers 4x4 voxels of the original patch and the kernel still sees structures at the pixel scale it was
trained on.

``InflatedPatchEmbed3d`` computes exactly that - in-plane bilinear upsampling by ``u = 16 / stride`` followed by
SAM's kernel inflated over ``kd`` slices (kernel and stride ``kd`` along depth) - without materialising the
upsampled volume: upsampling is linear and, per patch, local, so it folds into the kernel. The 16x16 kernel
composed with the upsampling operator is a ``(stride + 2) x (stride + 2)`` kernel with stride ``stride`` on the
original voxels, after a one-voxel replicate padding (how ``F.interpolate`` treats the border). Same output, u^2
times less memory and compute (in-plane x4 upsampling of a 128^3 patch holds 3 x 128 x 512 x 512 floats).
With stride 16 (u = 1) the kernel is SAM's 16x16 kernel itself.
"""
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def bilinear_patch_operator(patch_size: int, factor: int, dtype=torch.float64) -> torch.Tensor:
    """The 1D linear upsampling by ``factor`` seen by one patch of ``patch_size`` upsampled samples.

    Returns M (patch_size, patch_size // factor + 2) with ``up[k * patch_size + o] = sum_t M[o, t] *
    x[k * patch_size // factor - 1 + t]``: what ``F.interpolate(mode="linear"/"bilinear"/"trilinear",
    align_corners=False)`` computes, the samples beyond the border being the border sample (replicate padding).
    For ``factor == 1`` it is the identity (patch_size, patch_size) and needs no padding.
    """
    if factor < 1 or patch_size % factor:
        raise ValueError(f"the upsampling factor {factor} must divide the patch size {patch_size}")
    if factor == 1:
        return torch.eye(patch_size, dtype=dtype)
    op = torch.zeros(patch_size, patch_size // factor + 2, dtype=dtype)
    for o in range(patch_size):
        source = (o + 0.5) / factor - 0.5  # source coordinate relative to the patch's first source sample
        i0 = int(torch.floor(torch.tensor(source)).item())
        frac = source - i0
        op[o, i0 + 1] += 1.0 - frac  # column t holds source sample t - 1
        op[o, i0 + 2] += frac
    return op


def fold_upsampling_into_kernel(weight: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """Compose a kernel (O, I, kd, p, p) with in-plane bilinear upsampling by ``factors`` (fh, fw).

    Returns the kernel (O, I, kd, p / fh + 2, p / fw + 2) (or p where a factor is 1) that, with stride p / f and
    a one-sample replicate padding in-plane, gives on the original volume what ``weight`` with stride p gives on
    the upsampled volume. Computed in float64 and cast back.
    """
    if weight.ndim != 5:
        raise ValueError(f"expected a Conv3d weight (O, I, kd, kh, kw), got shape {tuple(weight.shape)}")
    mh = bilinear_patch_operator(weight.shape[3], int(factors[0])).to(weight.device)
    mw = bilinear_patch_operator(weight.shape[4], int(factors[1])).to(weight.device)
    return torch.einsum("oidhw,ha,wb->oidab", weight.double(), mh, mw).to(weight.dtype)


class InflatedPatchEmbed3d(nn.Module):
    """Conv3d patch embedding initialised from SAM's 2D patch embedding, inflated over depth.

    Equivalent to: upsample the patch in-plane by 16 / stride (bilinear), then a Conv3d whose kernel is SAM's
    16x16 kernel repeated over ``stride[0]`` slices and divided by ``stride[0]`` (kernel = stride = (kd, 16, 16)),
    so a volume of identical slices gives SAM's 2D embedding of the (upsampled) slice at every depth. Computed
    with the upsampling folded into the kernel (see the module docstring).

    Arguments:
      embed_dim: token width C (SAM's embedding width).
      stride: token stride in voxels (depth, height, width); height and width must divide ``patch_size``.
      patch_size: SAM's patch size (16).
      in_chans: input channels (3, SAM's RGB).

    Input (B, in_chans, D, H, W) with every axis a multiple of its stride; output channels-last
    (B, D / sd, H / sh, W / sw, C).
    """

    def __init__(self, embed_dim: int, stride: Sequence[int], patch_size: int = 16, in_chans: int = 3) -> None:
        super().__init__()
        self.stride: Tuple[int, int, int] = tuple(int(s) for s in stride)
        self.patch_size = patch_size
        sd, sh, sw = self.stride
        if sd < 1 or sh < 1 or sw < 1 or patch_size % sh or patch_size % sw:
            raise ValueError(f"in-plane token strides {sh}, {sw} must divide SAM's patch size {patch_size} "
                             f"(and the depth stride {sd} must be positive)")
        self.upsample = (patch_size // sh, patch_size // sw)
        # columns of the folded kernel: stride + 2 source samples for a bilinear factor > 1, the patch itself else
        kh, kw = (s + 2 if u > 1 else s for s, u in zip((sh, sw), self.upsample))
        self.padding = tuple(1 if u > 1 else 0 for u in self.upsample)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(sd, kh, kw), stride=self.stride)

    @torch.no_grad()
    def load_inflated_kernel(self, weight_3d: torch.Tensor, bias: torch.Tensor) -> None:
        """Initialise from SAM's ``patch_embed.proj`` inflated over depth by the caller (weight (C, in_chans,
        stride[0], p, p), ``encoders.surgery.inflate_conv2d_to_3d`` with mode "average"; bias (C,)). The kernel is
        folded in float64: pass it in float64 for a result exact to float rounding of the parameters' dtype."""
        expected = (self.proj.out_channels, self.proj.in_channels, self.stride[0], self.patch_size, self.patch_size)
        if tuple(weight_3d.shape) != expected or tuple(bias.shape) != expected[:1]:
            raise ValueError(f"SAM patch embedding of shape {tuple(weight_3d.shape)} / {tuple(bias.shape)}; this "
                             f"embedding folds a {expected} kernel (SAM's inflated over {self.stride[0]} slices)")
        folded = fold_upsampling_into_kernel(weight_3d.double(), self.upsample)
        self.proj.weight.copy_(folded.to(self.proj.weight.dtype))
        self.proj.bias.copy_(bias.to(self.proj.bias.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph, 0, 0), mode="replicate")
        return self.proj(x).permute(0, 2, 3, 4, 1)
