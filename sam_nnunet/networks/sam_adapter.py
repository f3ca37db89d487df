"""3DSAM-adapter (Gong et al., MedIA 2024) in its prompt-free form, for any nnU-Net patch.

Data flow for a patch (B, C_in, D, H, W), D the slice axis:

    input channels -> 3 (replicate / pass / 1x1x1 projection)        InputChannelAdapter
    pad each axis to a multiple of 4
    x4 trilinear upsampling, SAM's frozen 16x16 patch embedding      SliceMergePatchEmbed3d
      per slice, trainable depth-wise merge of 16 slices -> tokens (B, D/4, H/4, W/4, C)
    + SAM's absolute position embedding resized in-plane             volumetric_pos_embed
      + learnable depth embedding (32 positions, interpolated)
    SAM's frozen blocks, each preceded by a spatial adapter, with    SpatialAdapter3d, window_attention_3d
      3D (shifted) window attention and a trainable depth table
      of relative positions; block LayerNorms trained
    features after every quarter of the blocks -> four 3D necks     Neck3d
    multi-layer aggregation decoder (+ raw image at half res.)     MultiLayerAggregationDecoder3d
    crop back to (D, H, W) -> logits (B, num_classes, D, H, W)
"""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from sam_nnunet.blocks.adapters import SpatialAdapter3d
from sam_nnunet.blocks.necks import Neck3d
from sam_nnunet.blocks.padding import crop_to, pad_to_multiple
from sam_nnunet.blocks.patch_embed import SliceMergePatchEmbed3d
from sam_nnunet.blocks.position import volumetric_pos_embed
from sam_nnunet.blocks.vit3d import freeze_all_but_norms, run_blocks_3d
from sam_nnunet.decoders.mla import MultiLayerAggregationDecoder3d
from sam_nnunet.encoders.checkpoint import load_submodule_state
from sam_nnunet.encoders.sam_vit import SAM_VIT_CONFIGS, build_sam_image_encoder
from sam_nnunet.encoders.surgery import resize_abs_pos_embed
from sam_nnunet.networks.base import SAMNetworkBase
from sam_nnunet.networks.token_grid import TokenGrid


class SAMAdapterNetwork(SAMNetworkBase):
    """3DSAM-adapter network, built from nnU-Net plans (``architecture.arch_kwargs``).

    Arguments:
      input_channels: nnU-Net's input channels (any number).
      num_classes: nnU-Net's segmentation heads.
      encoder: SAM ViT size (``vit_b``, ``vit_l``, ``vit_h``, ``vit_test``).
      max_window: largest 3D attention window, in tokens per axis (8 in the paper).
      depth_positions: length of the learnable depth embedding (32 = the paper's 128-voxel patch / 4).
      deep_supervision: must be False: the network has a single full-resolution head (nnU-Net passes the flag).
    """

    upsample = 4
    slices_per_token = 16

    @classmethod
    def token_grid(cls, arch_kwargs: Dict) -> TokenGrid:
        # SAM's 16-pixel patches on a x4-upsampled patch and 16 upsampled slices per token give tokens of 4^3 voxels;
        # every block attends in 3D windows split equally with at most max_window tokens per axis
        stride = cls.slices_per_token // cls.upsample
        return TokenGrid(stride=(stride,) * 3, windows=(arch_kwargs.get("max_window", 8),), min_tokens=4)

    def __init__(self, input_channels: int, num_classes: int, encoder: str = "vit_b", max_window: int = 8,
                 depth_positions: int = 32, input_window: Optional[Sequence[Sequence[float]]] = None,
                 deep_supervision: bool = False) -> None:
        super().__init__(encoder, deep_supervision)
        if encoder not in SAM_VIT_CONFIGS:
            raise ValueError(f"SAMAdapterNetwork adapts a SAM ViT ({', '.join(SAM_VIT_CONFIGS)}); got {encoder!r}")
        cfg = SAM_VIT_CONFIGS[encoder]
        dim = cfg.embed_dim
        self.max_window = max_window

        self.channels = self.encoder_input(input_channels, input_window)
        # the official encoder holds every pretrained weight under SAM's own key names; its 2D neck is not used
        self.vit = build_sam_image_encoder(encoder)
        del self.vit.neck
        self.token_embed = SliceMergePatchEmbed3d(dim, cfg.patch_size, self.upsample, self.slices_per_token)
        self.depth_embed = nn.Parameter(torch.ones(1, depth_positions, dim))
        self.adapters = nn.ModuleList(SpatialAdapter3d(dim, dim // 2) for _ in range(cfg.depth))
        # depth table of relative positions, one per block, the shape of that block's h/w tables
        self.rel_pos_d = nn.ParameterList(
            nn.Parameter(0.5 * (b.attn.rel_pos_h.detach() + b.attn.rel_pos_w.detach())) for b in self.vit.blocks)
        self.taps = tuple(cfg.depth // 4 * (i + 1) - 1 for i in range(4))
        self.necks = nn.ModuleList(Neck3d(dim, cfg.out_chans) for _ in self.taps)
        self.decoder = MultiLayerAggregationDecoder3d(cfg.out_chans, cfg.out_chans // 2, len(self.taps),
                                                      input_channels, num_classes)

        # frozen: SAM's patch embedding, absolute positions, attention, MLPs, h/w relative positions;
        # trained: block LayerNorms and everything added
        freeze_all_but_norms(self.vit)

    @property
    def stride(self) -> int:
        return self.token_embed.stride

    def pretrained_modules(self) -> Dict[str, nn.Module]:
        return {"vit": self.vit}

    def load_pretrained(self, state_dict: Dict[str, torch.Tensor], path: str = "the checkpoint") -> None:
        load_submodule_state(self.vit, state_dict, "image_encoder.", ignore_prefixes=("neck.",), path=path)
        # the depth tables start from the mean of the pretrained in-plane tables
        with torch.no_grad():
            for table, block in zip(self.rel_pos_d, self.vit.blocks):
                table.copy_(0.5 * (block.attn.rel_pos_h + block.attn.rel_pos_w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image, spatial = pad_to_multiple(x, (self.stride,) * 3)
        logits = self.decoder(self.encode(image), image, image.shape[2:])
        return crop_to(logits, spatial)

    def encode(self, image: torch.Tensor) -> List[torch.Tensor]:
        """Padded patch (B, C_in, D, H, W) -> the necks' feature maps, each (B, out_chans, D/4, H/4, W/4)."""
        tokens = self.token_embed(self.channels(image), self.vit.patch_embed)  # (B, d, h, w, C)
        grid = tokens.shape[1:4]
        tokens = tokens + volumetric_pos_embed(resize_abs_pos_embed(self.vit.pos_embed, grid[1:]), self.depth_embed,
                                               grid[0])

        # plain windows, and windows shifted by half a window (even blocks, as in the paper); the depth table as
        # it is and SAM's own h/w tables, all interpolated to the window by SAM's get_rel_pos
        kinds = ["shifted" if i % 2 == 0 else "plain" for i in range(len(self.vit.blocks))]
        windows = {"plain": (self.max_window, False), "shifted": (self.max_window, True)}
        features = run_blocks_3d(tokens, self.vit.blocks, self.adapters, kinds, windows, self.taps,
                                 lambda i, window: (self.rel_pos_d[i], None, None))
        return [neck(features[tap]) for neck, tap in zip(self.necks, self.taps)]
