"""SAM's frozen ViT blocks run on a 3D token grid: what 3DSAM-adapter and 3DMedSAM share.

Both methods keep SAM's blocks and train only their LayerNorms (``freeze_all_but_norms``), and run every block on
channels-last tokens (B, D, H, W, C) as: adapter, SAM's attention inside 3D windows with a third (depth)
relative-position table, SAM's MLP (``run_blocks_3d``). What differs between them is passed in: which window layout
each block uses, and the relative-position tables a block attends with.

The caller passes SAM's blocks in (the encoder is built in ``encoders``); nothing here builds or loads one.
"""
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from sam_nnunet.blocks.attention3d import window_attention_3d, window_attention_mask, window_layout

#: (depth table, in-plane h table or None, in-plane w table or None) of one block for its window (wd, wh, ww);
#: None: the block's own pretrained table (interpolated to the window by SAM's get_rel_pos)
RelPosTables = Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]


def freeze_all_but_norms(vit: nn.Module) -> None:
    """Freeze the whole SAM image encoder ``vit`` except its blocks' two LayerNorms (norm1, norm2)."""
    vit.requires_grad_(False)
    for block in vit.blocks:
        block.norm1.requires_grad_(True)
        block.norm2.requires_grad_(True)


def run_blocks_3d(tokens: torch.Tensor, blocks: Sequence[nn.Module], adapters: Sequence[nn.Module],
                  kinds: Sequence[str], windows: Mapping[str, Tuple[int, bool]], taps: Sequence[int],
                  tables: Callable[[int, Tuple[int, int, int]], RelPosTables]) -> Dict[int, torch.Tensor]:
    """Run SAM's ``blocks`` (each after its adapter) on tokens (B, D, H, W, C) up to the last of ``taps``.

    kinds: the layout name of every block, a key of ``windows``; windows: {name: (largest window per axis, shifted)};
    taps: the block indices whose output is returned; tables(i, window): block i's relative-position tables.
    Returns {tap: tokens after that block, channels-first (B, C, D, H, W)}.
    """
    grid = tokens.shape[1:4]
    layouts = {name: window_layout(grid, size, shifted) for name, (size, shifted) in windows.items()}
    masks = {name: window_attention_mask(layout, tokens.device, tokens.dtype) for name, layout in layouts.items()}
    features: Dict[int, torch.Tensor] = {}
    last = max(taps)
    for i, (block, adapter) in enumerate(zip(blocks, adapters)):
        layout = layouts[kinds[i]]
        rel_pos_d, rel_pos_h, rel_pos_w = tables(i, layout.window)
        tokens = adapter(tokens)
        tokens = tokens + window_attention_3d(block.norm1(tokens), block.attn, rel_pos_d, layout, masks[kinds[i]],
                                              rel_pos_h=rel_pos_h, rel_pos_w=rel_pos_w)
        tokens = tokens + block.mlp(block.norm2(tokens))
        if i in taps:
            features[i] = tokens.permute(0, 4, 1, 2, 3)
        if i >= last:
            break
    return features
