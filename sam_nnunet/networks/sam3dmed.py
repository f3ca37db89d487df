"""3DMedSAM (Lin et al., Biocybernetics and Biomedical Engineering 45(1), 2025): SAM fully adapted to 3D.

The paper has no public code; its abstract names three parts, built here on the 3DSAM-adapter template
(documentation/sam3dmed.md gives every choice the paper leaves open, and why):

    input channels -> 3 (replicate / pass / 1x1x1 projection)           InputChannelAdapter
    pad each axis to a multiple of the token stride (from the plan)
    3D patch embedding replacing SAM's: SAM's 16x16 kernel inflated     InflatedPatchEmbed3d
      over depth, in-plane at stride s (= bilinear x16/s upsampling
      folded into the kernel) -> tokens (B, d, h, w, C)
    + SAM's absolute position embedding resized in-plane               volumetric_pos_embed
      + learnable depth embedding
    SAM's frozen blocks, each preceded by a 3D adapter (bottleneck      ConvAdapter3d
      with a depth-wise 3x3x3 conv); 3D attention: SAM's windowed
      blocks in 3D windows of <= 8^3 tokens (shifted every other),       window_attention_3d
      SAM's global blocks in windows of <= 16^3 tokens (global for
      grids up to 16^3); relative positions: SAM's h/w tables cropped
      to the window + a trainable depth table; block LayerNorms trained
    features of L + 1 blocks at evenly spaced depths                    MultiScaleDecoder3d
      -> multi-scale decoder: progressive upsampling, skips from a
      small stem on the input, logits at every level (deep supervision)
    crop back to (D, H, W) -> logits (B, num_classes, D, H, W)
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from sam_nnunet.blocks.conv_adapter import ConvAdapter3d
from sam_nnunet.blocks.inflated_patch_embed import InflatedPatchEmbed3d
from sam_nnunet.blocks.padding import pad_to_multiple
from sam_nnunet.blocks.position import volumetric_pos_embed
from sam_nnunet.blocks.vit3d import freeze_all_but_norms, run_blocks_3d
from sam_nnunet.decoders.multiscale import MultiScaleDecoder3d
from sam_nnunet.encoders.checkpoint import CheckpointError, WHERE_TO_GET, load_submodule_state
from sam_nnunet.encoders.sam_vit import SAM_VIT_CONFIGS, build_sam_image_encoder
from sam_nnunet.encoders.surgery import inflate_conv2d_to_3d, rel_pos_for_window, resize_abs_pos_embed
from sam_nnunet.networks.base import SAMNetworkBase
from sam_nnunet.networks.token_grid import TokenGrid

DEFAULT_LEVEL_STRIDES = ((2, 2, 2), (2, 2, 2))  # token stride 4 on every axis: isotropic plans
MAX_TOKENS = 32 ** 3  # 3DSAM-adapter's token grid for its 128^3 patch


def plan_token_levels(patch_size: Sequence[int], pool_op_kernel_sizes: Sequence[Sequence[int]],
                      max_tokens: int = MAX_TOKENS, min_inplane_stride: int = 4,
                      sam_patch_size: int = 16) -> List[List[int]]:
    """The decoder levels (per-axis factors) from the patch to the token grid, taken from nnU-Net's plan.

    The token grid is the resolution of one of the plan's own U-Net stages: the first (finest) stage whose
    in-plane stride is at least ``min_inplane_stride`` voxels and whose grid has at most ``max_tokens`` tokens,
    never coarser in-plane than SAM's patch size. The stages' pooling factors follow nnU-Net's spacing-aware
    rule (anisotropic data are pooled in-plane first), so tokens are about as isotropic in millimetres as the
    plan's feature maps, and the decoder's scales equal nnU-Net's deep-supervision scales. Where the plan has
    too few stages (tiny patches), in-plane factors of 2 are appended (depth too while it keeps >= 2 tokens).
    """
    patch = [int(p) for p in patch_size]
    if len(patch) != 3:
        raise ValueError(f"expected a 3D patch size, got {patch_size}")
    pools = [[int(f) for f in p] for p in pool_op_kernel_sizes if any(int(f) != 1 for f in p)]
    stride, levels = [1, 1, 1], []

    def done() -> bool:
        tokens = math.prod(math.ceil(p / s) for p, s in zip(patch, stride))
        return min(stride[1:]) >= min_inplane_stride and tokens <= max_tokens

    while not done():
        if pools:
            factor = pools.pop(0)
        else:
            factor = [2 if math.ceil(patch[0] / (2 * stride[0])) >= 2 else 1, 2, 2]
        new = [s * f for s, f in zip(stride, factor)]
        if any(sam_patch_size % s for s in new[1:]):
            break  # the in-plane stride must divide SAM's patch (the kernel folds an integer upsampling)
        levels.append(factor)
        stride = new
    return levels


def deep_supervision_scales(level_strides: Sequence[Sequence[int]]) -> List[List[float]]:
    """nnU-Net's deep-supervision scales (finest first) of the decoder levels: 1 / cumulative stride per axis.

    For levels taken from the plan's first stages they are nnU-Net's own first scales."""
    stride, scales = [1, 1, 1], [[1.0, 1.0, 1.0]]
    for factor in level_strides:
        stride = [s * int(f) for s, f in zip(stride, factor)]
        scales.append([1.0 / s for s in stride])
    return scales


class SAM3DMedNetwork(SAMNetworkBase):
    """3DMedSAM network, built from nnU-Net plans (``architecture.arch_kwargs``).

    Arguments:
      input_channels: nnU-Net's input channels (any number).
      num_classes: nnU-Net's segmentation heads.
      encoder: SAM ViT size (``vit_b``, ``vit_l``, ``vit_h``, ``vit_test``).
      level_strides: per-axis factors from the patch to the token grid, one per decoder level (the trainer
        takes them from the plan, see plan_token_levels); their product is the token stride.
      local_window: largest 3D window, in tokens per axis, of SAM's windowed blocks.
      global_window: largest 3D window of SAM's global-attention blocks (global up to that grid).
      depth_positions: length of the learnable depth embedding (interpolated to the grid's depth).
      adapter_ratio: adapter bottleneck width as a fraction of the token width.
      deep_supervision: return logits at every decoder level (finest first), as nnU-Net's deep supervision needs.
    """

    supports_deep_supervision = True

    @classmethod
    def token_grid(cls, arch_kwargs: Dict) -> TokenGrid:
        stride = tuple(math.prod(int(f[a]) for f in arch_kwargs["level_strides"]) for a in range(3))
        return TokenGrid(stride=stride, windows=(arch_kwargs.get("local_window", 8),
                                                 arch_kwargs.get("global_window", 16)), min_tokens=4)

    @classmethod
    def planned_deep_supervision_scales(cls, arch_kwargs: Dict) -> List[List[float]]:
        return deep_supervision_scales(arch_kwargs["level_strides"])

    def __init__(self, input_channels: int, num_classes: int, encoder: str = "vit_b",
                 level_strides: Sequence[Sequence[int]] = DEFAULT_LEVEL_STRIDES, local_window: int = 8,
                 global_window: int = 16, depth_positions: int = 32, adapter_ratio: float = 0.25,
                 input_window: Optional[Sequence[Sequence[float]]] = None, deep_supervision: bool = False) -> None:
        super().__init__(encoder, deep_supervision)
        if encoder not in SAM_VIT_CONFIGS:
            raise ValueError(f"SAM3DMedNetwork adapts a SAM ViT ({', '.join(SAM_VIT_CONFIGS)}); got {encoder!r}")
        self.level_strides = [tuple(int(f) for f in factor) for factor in level_strides]
        if not self.level_strides or any(len(f) != 3 or min(f) < 1 for f in self.level_strides):
            raise ValueError(f"level_strides must be a non-empty list of 3 positive factors each, got {level_strides}")
        cfg = SAM_VIT_CONFIGS[encoder]
        dim = cfg.embed_dim
        self.token_stride: Tuple[int, ...] = tuple(math.prod(f[a] for f in self.level_strides) for a in range(3))
        self.local_window = local_window
        self.global_window = global_window
        self.global_blocks = tuple(cfg.global_attn_indexes)

        self.channels = self.encoder_input(input_channels, input_window)
        # the official encoder keeps SAM's blocks and absolute positions under SAM's key names; its 2D patch
        # embedding is replaced by the 3D one, its 2D neck by the multi-scale decoder
        self.vit = build_sam_image_encoder(encoder)
        del self.vit.patch_embed
        del self.vit.neck
        self.patch_embed = InflatedPatchEmbed3d(dim, self.token_stride, cfg.patch_size)
        self.depth_embed = nn.Parameter(torch.zeros(1, depth_positions, dim))
        self.adapters = nn.ModuleList(ConvAdapter3d(dim, max(1, int(dim * adapter_ratio))) for _ in range(cfg.depth))
        self.rel_pos_d = nn.ParameterList(
            nn.Parameter(self._depth_table(block, self._max_window(i))) for i, block in enumerate(self.vit.blocks))

        levels = len(self.level_strides)
        self.taps = tuple(max(0, round(cfg.depth * (k + 1) / (levels + 1)) - 1) for k in range(levels + 1))
        base = max(1, cfg.out_chans // 8)
        widths = [min(base * 2 ** k, cfg.out_chans) for k in range(levels + 1)]
        self.decoder = MultiScaleDecoder3d(dim, self.level_strides, widths, input_channels, num_classes,
                                           deep_supervision)

        # frozen: SAM's attention (qkv, proj, h/w relative positions), MLPs, absolute positions;
        # trained: the 3D patch embedding, block LayerNorms and everything added
        freeze_all_but_norms(self.vit)

    # ---- geometry ------------------------------------------------------------------------------------------
    def _max_window(self, block_index: int) -> int:
        return self.global_window if block_index in self.global_blocks else self.local_window

    def _block_kinds(self) -> List[str]:
        """Each block's window layout: SAM's global blocks in global windows; every other windowed block shifts its
        windows (Swin) so windows exchange information."""
        kinds, local_count = [], 0
        for i in range(len(self.vit.blocks)):
            if i in self.global_blocks:
                kinds.append("global")
            else:
                kinds.append("shifted" if local_count % 2 else "local")
                local_count += 1
        return kinds

    def _window_tables(self, i: int, window: Tuple[int, int, int]):
        """Block i's depth, h and w relative-position tables cropped to the window (SAM's distances kept)."""
        attn = self.vit.blocks[i].attn
        return tuple(rel_pos_for_window(table, w) for table, w in
                     zip((self.rel_pos_d[i], attn.rel_pos_h, attn.rel_pos_w), window))

    @staticmethod
    def _depth_table(block: nn.Module, window: int) -> torch.Tensor:
        """Depth relative positions start as the mean of the block's pretrained h and w tables (3DSAM-adapter)."""
        attn = block.attn
        return 0.5 * (rel_pos_for_window(attn.rel_pos_h.detach(), window) +
                      rel_pos_for_window(attn.rel_pos_w.detach(), window)).clone()

    # ---- weights -------------------------------------------------------------------------------------------
    def pretrained_modules(self) -> Dict[str, nn.Module]:
        return {"vit": self.vit, "patch_embed": self.patch_embed}

    def load_pretrained(self, state_dict: Dict[str, torch.Tensor], path: str = "the checkpoint") -> None:
        load_submodule_state(self.vit, state_dict, "image_encoder.", ignore_prefixes=("neck.", "patch_embed."),
                             path=path)
        keys = ("image_encoder.patch_embed.proj.weight", "image_encoder.patch_embed.proj.bias")
        if any(k not in state_dict for k in keys):
            raise CheckpointError(f"{path} has no SAM patch embedding ({keys[0]}); it is not a SAM ViT checkpoint. "
                                  f"{WHERE_TO_GET}.")
        try:
            inflated = inflate_conv2d_to_3d(state_dict[keys[0]].double(), self.token_stride[0], mode="average")
            self.patch_embed.load_inflated_kernel(inflated, state_dict[keys[1]])
        except ValueError as e:
            raise CheckpointError(f"{path} does not match the model being built: {e}.") from None
        with torch.no_grad():
            for i, (table, block) in enumerate(zip(self.rel_pos_d, self.vit.blocks)):
                table.copy_(self._depth_table(block, self._max_window(i)))

    def parameter_notes(self) -> Dict:
        return {"token_stride": list(self.token_stride), "tapped_blocks": [t + 1 for t in self.taps],
                "global_blocks": [b + 1 for b in self.global_blocks],
                "note": "counts for the token stride shown; the trainer takes the stride from the plan (4 voxels "
                        "per axis for isotropic plans), which changes the patch-embedding and decoder counts"}

    # ---- forward -------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor):
        image, spatial = pad_to_multiple(x, self.token_stride)
        tokens = self.patch_embed(self.channels(image))  # (B, d, h, w, C)
        grid = tokens.shape[1:4]
        tokens = tokens + volumetric_pos_embed(resize_abs_pos_embed(self.vit.pos_embed, grid[1:]), self.depth_embed,
                                               grid[0])

        windows = {"global": (self.global_window, False), "local": (self.local_window, False),
                   "shifted": (self.local_window, True)}
        features = run_blocks_3d(tokens, self.vit.blocks, self.adapters, self._block_kinds(), windows, self.taps,
                                 self._window_tables)
        return self.decoder([features[t] for t in self.taps], image, spatial)

