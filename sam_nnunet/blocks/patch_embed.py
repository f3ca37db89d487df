"""Patch embeddings that turn a 3D patch into volumetric tokens with SAM's pretrained 2D patch embedding."""
import torch
import torch.nn.functional as F
from torch import nn


class SliceMergePatchEmbed3d(nn.Module):
    """3DSAM-adapter's volumetric tokens: frozen 2D patch embedding per slice, trainable depth-wise slice merge.

    The patch (B, 3, D, H, W) is upsampled by ``upsample`` (trilinear); every upsampled slice goes through SAM's
    frozen ``patch_embed`` (stride p); a depth-wise Conv3d with kernel and stride ``slices_per_token`` merges
    consecutive slice embeddings. With upsample 4, p 16 and 16 slices per token, one token covers 4x4x4 voxels.

    SAM's ``PatchEmbed`` is passed to ``forward`` rather than owned, so the pretrained weights keep living in the
    official ``ImageEncoderViT`` and its checkpoint key layout.

    Arguments:
      embed_dim: token width C.
      patch_size: SAM's patch size p.
      upsample: in-network upsampling factor of the patch.
      slices_per_token: upsampled slices merged into one token along depth.

    Input spatial sizes must be multiples of ``stride`` (pad first). Output (B, D / stride, H / stride, W / stride, C).
    """

    def __init__(self, embed_dim: int, patch_size: int = 16, upsample: int = 4, slices_per_token: int = 16):
        super().__init__()
        self.upsample = upsample
        self.slices_per_token = slices_per_token
        self.slice_merge = nn.Conv3d(embed_dim, embed_dim, kernel_size=(slices_per_token, 1, 1),
                                     stride=(slices_per_token, 1, 1), groups=embed_dim)
        if (patch_size % upsample) or (slices_per_token % upsample) or \
                patch_size // upsample != slices_per_token // upsample:
            raise ValueError("patch size and slices per token must be equal multiples of the upsampling factor")
        self.stride = patch_size // upsample

    def forward(self, x: torch.Tensor, patch_embed: nn.Module) -> torch.Tensor:
        """x: (B, 3, D, H, W); patch_embed: SAM's frozen PatchEmbed (output channels-last (N, h, w, C))."""
        B = x.shape[0]
        embedded = []
        # the frozen part needs no autograd graph unless a trainable layer (a channel projection) precedes it;
        # one sample at a time bounds the memory of the 4x upsampled volume
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            for b in range(B):
                up = F.interpolate(x[b:b + 1], scale_factor=self.upsample, mode="trilinear")
                slices = up[0].transpose(0, 1)  # (D_up, 3, H_up, W_up)
                embedded.append(patch_embed(slices))  # (D_up, h, w, C)
        e = torch.stack(embedded).permute(0, 4, 1, 2, 3)  # (B, C, D_up, h, w)
        tokens = self.slice_merge(e)  # (B, C, D_up / slices_per_token, h, w)
        return tokens.permute(0, 2, 3, 4, 1).contiguous()
