"""SAM 2 / SAM 2.1 (Hiera-T/S/B+/L) built with the official ``sam2`` classes, without Hydra.

``sam2.build_sam`` composes the model from Hydra YAML configs. Here every size is a small dataclass over one builder
that instantiates the same official classes (Hiera, FpnNeck, ImageEncoder, MemoryAttention(Layer), RoPEAttention,
MemoryEncoder, SAM2Base) with the arguments of the official configs ``configs/sam2/sam2_hiera_*.yaml`` and
``configs/sam2.1/sam2.1_hiera_*.yaml``; a test checks that the state dicts equal those of the Hydra build. So an
official checkpoint (``{"model": state_dict}``) loads strictly, and ``sam2_test`` is a tiny random-weight model of
the same code for tests and smoke runs.

The two releases differ in three SAM2Base options (SAM 2.1 adds ``no_obj_embed_spatial`` and a projected, signed
temporal encoding of object pointers: three more tensors), so they are separate encoder names, as in the official
config file names: ``sam2_hiera_t`` (sam2_hiera_tiny.pt) and ``sam2.1_hiera_t`` (sam2.1_hiera_tiny.pt).

The ``sam2`` package (an optional extra of sam-nnunet: ``pip install 'sam-nnunet[sam2]'``) is imported only when a
model is built: importing it initialises Hydra's global config module (``sam2/__init__.py``; it prints and downloads
nothing), which nothing else of sam-nnunet needs.
"""
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import nn

from sam_nnunet.encoders.checkpoint import CheckpointError, WHERE_TO_GET


@dataclass(frozen=True)
class SAM2Config:
    """Hyper-parameters of one SAM 2 model (values of the official configs unless said otherwise)."""
    name: str
    version: str                                   # "2" (July 2024) or "2.1" (September 2024)
    embed_dim: int                                 # Hiera stage-1 width
    num_heads: int
    stages: Tuple[int, ...]
    global_att_blocks: Tuple[int, ...]
    window_pos_embed_bkg_spatial_size: Tuple[int, int] = (14, 14)
    window_spec: Tuple[int, ...] = (8, 4, 14, 7)
    d_model: int = 256                             # FPN neck / memory attention / mask decoder width
    mem_dim: int = 64                              # memory encoder output width
    memory_layers: int = 4
    memory_ffn_dim: int = 2048
    memory_heads: int = 1
    num_maskmem: int = 7
    description: str = ""

    @property
    def depth(self) -> int:
        return sum(self.stages)

    @property
    def backbone_channel_list(self) -> Tuple[int, ...]:
        return tuple(self.embed_dim * 2 ** i for i in reversed(range(len(self.stages))))


def _official(size: str, version: str, file: str, **kw) -> SAM2Config:
    prefix = "sam2" if version == "2" else "sam2.1"
    return SAM2Config(name=f"{prefix}_hiera_{size}", version=version,
                      description=f"SAM {version} Hiera-{size.upper()} ({file})", **kw)


_SIZES = {
    "t": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
              window_pos_embed_bkg_spatial_size=(7, 7)),
    "s": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
              window_pos_embed_bkg_spatial_size=(7, 7)),
    "b+": dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20)),
    "l": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
              window_spec=(8, 4, 16, 8)),
}
_FILES = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}

SAM2_CONFIGS: Dict[str, SAM2Config] = {}
for _size, _kw in _SIZES.items():
    for _version, _prefix in (("2", "sam2"), ("2.1", "sam2.1")):
        _cfg = _official(_size, _version, f"{_prefix}_hiera_{_FILES[_size]}.pt", **_kw)
        SAM2_CONFIGS[_cfg.name] = _cfg
# tiny, random weights only: the official classes and SAM 2.1 options, small widths, for tests and smoke runs
SAM2_CONFIGS["sam2_test"] = SAM2Config(
    name="sam2_test", version="2.1", embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,),
    window_pos_embed_bkg_spatial_size=(4, 4), d_model=32, mem_dim=16, memory_layers=2, memory_ffn_dim=64,
    description="tiny SAM 2.1 with random weights, for tests and smoke runs only")


SAM2_MISSING = ("SAM 2 models need Meta's `sam2` package, which is not installed. Install it with "
                "`pip install 'sam-nnunet[sam2]'` (PyPI's sam2) or `pip install "
                "git+https://github.com/facebookresearch/sam2.git` (Meta's repository); both provide `import sam2`.")


def require_sam2() -> None:
    """Import the ``sam2`` package or raise ImportError saying how to install it."""
    try:
        import sam2  # noqa: F401  (initialises Hydra's config module; see the module docstring)
    except ModuleNotFoundError as e:
        if e.name != "sam2":
            raise
        raise ImportError(SAM2_MISSING) from None


def _rope_attention(**kwargs) -> nn.Module:
    from sam2.modeling.sam.transformer import RoPEAttention

    # RoPEAttention moves its rotary table to CUDA at construction when a GPU exists; a meta-device build (parameter
    # counting) cannot copy a meta tensor there, so the table (not a parameter) is computed on the CPU then
    meta = torch.get_default_device().type == "meta"
    with torch.device("cpu") if meta else nullcontext():
        return RoPEAttention(**kwargs)


def _hiera(cfg: SAM2Config) -> nn.Module:
    from sam2.modeling.backbones.hieradet import Hiera

    kwargs = dict(embed_dim=cfg.embed_dim, num_heads=cfg.num_heads, stages=cfg.stages,
                  global_att_blocks=cfg.global_att_blocks,
                  window_pos_embed_bkg_spatial_size=cfg.window_pos_embed_bkg_spatial_size, window_spec=cfg.window_spec)
    if torch.get_default_device().type != "meta":
        return Hiera(**kwargs)
    # Hiera's constructor calls .item() on its drop-path schedule, impossible on the meta device: build on the CPU
    # and move the parameters to meta (memory only while building)
    with torch.device("cpu"):
        return Hiera(**kwargs).to("meta")


def build_sam2(name: str) -> nn.Module:
    """The official ``SAM2Base`` of a size (image encoder, memory attention, memory encoder, prompt encoder, mask
    decoder, memory and object-pointer embeddings), random weights. Its ``state_dict()`` has the keys and shapes of
    the official checkpoint's ``"model"``."""
    require_sam2()
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam2_base import SAM2Base

    if name not in SAM2_CONFIGS:
        raise ValueError(f"unknown SAM 2 size {name!r}; known: {', '.join(SAM2_CONFIGS)}")
    cfg = SAM2_CONFIGS[name]
    d, mem = cfg.d_model, cfg.mem_dim
    # warmup_cache=False: the official default precomputes CUDA position tables at construction (a CUDA context in
    # every process that builds the network); the tables are computed on first use instead
    sine = lambda n: PositionEmbeddingSine(num_pos_feats=n, normalize=True, scale=None, temperature=10000,
                                           warmup_cache=False)
    image_encoder = ImageEncoder(
        trunk=_hiera(cfg),
        neck=FpnNeck(position_encoding=sine(d), d_model=d, backbone_channel_list=list(cfg.backbone_channel_list),
                     fpn_top_down_levels=[2, 3], fpn_interp_model="nearest"),
        scalp=1)
    layer = MemoryAttentionLayer(
        activation="relu", d_model=d, dim_feedforward=cfg.memory_ffn_dim, dropout=0.1, pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
        self_attention=_rope_attention(rope_theta=10000.0, feat_sizes=(64, 64), embedding_dim=d,
                                       num_heads=cfg.memory_heads, downsample_rate=1, dropout=0.1),
        cross_attention=_rope_attention(rope_theta=10000.0, feat_sizes=(64, 64), rope_k_repeat=True, embedding_dim=d,
                                        num_heads=cfg.memory_heads, downsample_rate=1, dropout=0.1, kv_in_dim=mem))
    memory_attention = MemoryAttention(d_model=d, pos_enc_at_input=True, layer=layer, num_layers=cfg.memory_layers)
    memory_encoder = MemoryEncoder(
        out_dim=mem, position_encoding=sine(mem), in_dim=d,
        mask_downsampler=MaskDownSampler(embed_dim=d, kernel_size=3, stride=2, padding=1),
        fuser=Fuser(CXBlock(dim=d, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True),
                    num_layers=2))
    v21 = cfg.version == "2.1"
    return SAM2Base(
        image_encoder=image_encoder, memory_attention=memory_attention, memory_encoder=memory_encoder,
        num_maskmem=cfg.num_maskmem, image_size=1024, sigmoid_scale_for_mem_enc=20.0, sigmoid_bias_for_mem_enc=-10.0,
        use_mask_input_as_output_without_sam=True, directly_add_no_mem_embed=True, no_obj_embed_spatial=v21,
        use_high_res_features_in_sam=True, multimask_output_in_sam=True, iou_prediction_use_sigmoid=True,
        use_obj_ptrs_in_encoder=True, add_tpos_enc_to_obj_ptrs=v21, proj_tpos_enc_in_obj_ptrs=v21,
        use_signed_tpos_enc_to_obj_ptrs=v21, only_obj_ptrs_in_the_past_for_eval=True, pred_obj_scores=True,
        pred_obj_scores_mlp=True, fixed_no_obj_ptr=True, multimask_output_for_tracking=True,
        use_multimask_token_for_obj_ptr=True, multimask_min_pt_num=0, multimask_max_pt_num=1,
        use_mlp_for_obj_ptr_proj=True, compile_image_encoder=False)


PATCH_EMBED_KEY = "image_encoder.trunk.patch_embed.proj.weight"


def recognises_sam2(state: Dict[str, torch.Tensor]) -> bool:
    return PATCH_EMBED_KEY in state and any(k.startswith("memory_attention.") for k in state)


def infer_sam2_variant(state: Dict[str, torch.Tensor], path: str = "the checkpoint") -> str:
    """Name the SAM 2 model a state dict was saved from: Hiera width and depth give the size, SAM 2.1's extra
    ``no_obj_embed_spatial`` the release."""
    if PATCH_EMBED_KEY not in state:
        raise CheckpointError(f"{path} is not a SAM 2 checkpoint (no '{PATCH_EMBED_KEY}'); {WHERE_TO_GET}.")
    embed_dim = state[PATCH_EMBED_KEY].shape[0]
    depth = len({k.split(".")[3] for k in state if k.startswith("image_encoder.trunk.blocks.")})
    version = "2.1" if "no_obj_embed_spatial" in state else "2"
    for name, cfg in SAM2_CONFIGS.items():
        if cfg.embed_dim == embed_dim and cfg.depth == depth and cfg.version == version:
            return name
    sizes = ", ".join(f"{n} ({c.embed_dim}/{c.depth})" for n, c in SAM2_CONFIGS.items() if c.version == "2")
    raise CheckpointError(
        f"{path} holds a SAM {version} Hiera of width {embed_dim} and depth {depth}, which is none of the official "
        f"sizes {sizes}. Use an official SAM 2 / SAM 2.1 checkpoint (e.g. sam2.1_hiera_tiny.pt); {WHERE_TO_GET}.")
