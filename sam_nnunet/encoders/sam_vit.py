"""SAM ViT backbones (ViT-B/L/H, MedSAM, and a tiny test size) built with the official ``segment_anything`` classes.

The sizes are a registry of small configs over one builder, like ``segment_anything.sam_model_registry``, with two
differences: every size also exists as a tiny random-weight ``vit_test`` for tests and smoke runs, and the image size
(hence the token grid of the absolute position embedding) is a build argument.
"""
from dataclasses import dataclass
from functools import partial
from typing import Dict, Optional, Tuple

import torch
from torch import nn

# load_submodule_state (encoders/checkpoint.py) stays importable from here: decoders/sam_mask.py and
# networks/zap25d.py import it from this module
from sam_nnunet.encoders.checkpoint import CheckpointError, WHERE_TO_GET, load_submodule_state  # noqa: F401


@dataclass(frozen=True)
class SAMViTConfig:
    """Hyper-parameters of one SAM model size (image encoder, prompt encoder, mask decoder)."""
    name: str
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: Tuple[int, ...]
    window_size: int = 14
    img_size: int = 1024
    patch_size: int = 16
    out_chans: int = 256           # neck output = prompt embedding dim = mask decoder transformer dim
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    description: str = ""


SAM_VIT_CONFIGS: Dict[str, SAMViTConfig] = {
    "vit_b": SAMViTConfig("vit_b", 768, 12, 12, (2, 5, 8, 11),
                          description="SAM ViT-B (sam_vit_b_01ec64.pth; MedSAM medsam_vit_b.pth has the same layout)"),
    "vit_l": SAMViTConfig("vit_l", 1024, 24, 16, (5, 11, 17, 23), description="SAM ViT-L (sam_vit_l_0b3195.pth)"),
    "vit_h": SAMViTConfig("vit_h", 1280, 32, 16, (7, 15, 23, 31), description="SAM ViT-H (sam_vit_h_4b8939.pth)"),
    # tiny, random weights only: built with the official classes so tests exercise the real code paths
    "vit_test": SAMViTConfig("vit_test", 64, 4, 2, (1, 3), window_size=4, img_size=256, out_chans=32,
                             decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32, mask_in_chans=4,
                             description="tiny SAM ViT with random weights, for tests and smoke runs only"),
}


def build_sam_image_encoder(name: str, img_size: Optional[int] = None,
                            window_size: Optional[int] = None) -> nn.Module:
    """The official ``ImageEncoderViT`` of a SAM size, random weights (what most of our methods adapt).

    Arguments:
      name: a key of SAM_VIT_CONFIGS.
      img_size: input size; sets the absolute-position grid (img_size / 16). Defaults to the training size, so
        the shapes equal the checkpoint's.
      window_size: attention window of the non-global blocks (default: the size's own, 14 for SAM); another size
        changes the shape of those blocks' relative-position tables, which loading then resizes.
    """
    from segment_anything.modeling import ImageEncoderViT

    cfg = SAM_VIT_CONFIGS[name]
    return ImageEncoderViT(
        depth=cfg.depth, embed_dim=cfg.embed_dim, img_size=img_size or cfg.img_size, mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=cfg.num_heads, patch_size=cfg.patch_size,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=cfg.global_attn_indexes,
        window_size=window_size or cfg.window_size, out_chans=cfg.out_chans)


def build_sam(name: str, img_size: Optional[int] = None):
    """An official ``segment_anything.modeling.Sam`` (image encoder, prompt encoder, mask decoder), random weights."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    cfg = SAM_VIT_CONFIGS[name]
    img_size = img_size or cfg.img_size
    grid = img_size // cfg.patch_size
    prompt_encoder = PromptEncoder(embed_dim=cfg.out_chans, image_embedding_size=(grid, grid),
                                   input_image_size=(img_size, img_size), mask_in_chans=cfg.mask_in_chans)
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=cfg.out_chans, mlp_dim=cfg.decoder_mlp_dim,
                                      num_heads=cfg.decoder_num_heads),
        transformer_dim=cfg.out_chans, iou_head_depth=3, iou_head_hidden_dim=cfg.iou_head_hidden_dim)
    return Sam(image_encoder=build_sam_image_encoder(name, img_size), prompt_encoder=prompt_encoder,
               mask_decoder=mask_decoder, pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def infer_sam_vit_variant(state: Dict[str, torch.Tensor], path: str = "the checkpoint") -> str:
    """Name the SAM ViT size a state dict was saved from, from its shapes alone."""
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state:
        raise CheckpointError(f"{path} is not a SAM ViT checkpoint (no '{key}'); {WHERE_TO_GET}.")
    embed_dim = state[key].shape[0]
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, cfg in SAM_VIT_CONFIGS.items():
        if cfg.embed_dim == embed_dim and cfg.depth == depth:
            return name
    raise CheckpointError(
        f"{path} holds a ViT image encoder of width {embed_dim} and depth {depth}, which is none of the SAM sizes "
        f"{', '.join(f'{n} ({c.embed_dim}/{c.depth})' for n, c in SAM_VIT_CONFIGS.items())}. Use an official SAM "
        f"or MedSAM checkpoint; {WHERE_TO_GET}.")

