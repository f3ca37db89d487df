"""Pretrained-weight surgery: small pure functions, each tested on its own.

They adapt a checkpoint tensor to a model built for another token grid or dimensionality; none touches a module.
"""
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


def resize_abs_pos_embed(pos_embed: torch.Tensor, new_hw: Sequence[int]) -> torch.Tensor:
    """Resize SAM's absolute position embedding (1, H, W, C) to (1, h, w, C).

    Shrinking by whole factors is average pooling (what 3DSAM-adapter does: 64x64 -> 32x32 with a 2x2 pool);
    any other size is (antialiased) bicubic interpolation (what SAM-based fine-tuning code does at load time).
    """
    if pos_embed.ndim != 4:
        raise ValueError(f"expected a (1, H, W, C) position embedding, got shape {tuple(pos_embed.shape)}")
    h, w = int(new_hw[0]), int(new_hw[1])
    H, W = pos_embed.shape[1:3]
    if (h, w) == (H, W):
        return pos_embed
    x = pos_embed.permute(0, 3, 1, 2)
    if H % h == 0 and W % w == 0:
        x = F.avg_pool2d(x, kernel_size=(H // h, W // w))
    else:
        # antialias when shrinking so the coarse grid averages, as pooling would, instead of aliasing
        x = F.interpolate(x.float(), size=(h, w), mode="bicubic", align_corners=False,
                          antialias=h < H or w < W).to(pos_embed.dtype)
    return x.permute(0, 2, 3, 1).contiguous()


def resize_rel_pos(rel_pos: torch.Tensor, new_len: int) -> torch.Tensor:
    """Resize a decomposed relative-position table (L, C) to (new_len, C) by linear interpolation.

    Same interpolation SAM itself applies at run time in ``get_rel_pos``, done once at load time instead.
    """
    if rel_pos.ndim != 2:
        raise ValueError(f"expected an (L, C) relative position table, got shape {tuple(rel_pos.shape)}")
    if rel_pos.shape[0] == new_len:
        return rel_pos
    x = rel_pos.t().unsqueeze(0).float()  # (1, C, L)
    x = F.interpolate(x, size=int(new_len), mode="linear", align_corners=False)
    return x.squeeze(0).t().contiguous().to(rel_pos.dtype)



def rel_pos_for_window(table: torch.Tensor, window: int) -> torch.Tensor:
    """The rows of a decomposed relative-position table (L, C) for distances -(window-1) .. window-1.

    SAM's table holds one row per token distance (-(L-1)/2 .. (L-1)/2). When the window is no larger than the
    table covers, the central 2 * window - 1 rows are taken: a distance of one token keeps its pretrained meaning
    (SAM's own ``get_rel_pos`` would instead stretch the table over the window, i.e. rescale every distance).
    A table too short for the window (the tiny test encoder) is interpolated to 2 * window - 1 rows.
    """
    if table.ndim != 2:
        raise ValueError(f"expected an (L, C) relative position table, got shape {tuple(table.shape)}")
    need = 2 * int(window) - 1
    length = table.shape[0]
    if length < need or length % 2 == 0:
        return resize_rel_pos(table, need)
    start = (length - 1) // 2 - (int(window) - 1)
    return table[start:start + need]

def inflate_conv2d_to_3d(weight: torch.Tensor, depth: int, mode: str = "average") -> torch.Tensor:
    """Inflate a Conv2d kernel (O, I, kh, kw) to a Conv3d kernel (O, I, depth, kh, kw), I3D-style.

    ``average`` divides by ``depth`` so that a volume of identical slices gives exactly the 2D response;
    ``center`` puts the 2D kernel in the middle slice only (zeros elsewhere), which reproduces the 2D response
    slice by slice.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a Conv2d weight (O, I, kh, kw), got shape {tuple(weight.shape)}")
    if depth < 1:
        raise ValueError("depth must be >= 1")
    if mode == "average":
        return weight.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth
    if mode == "center":
        out = weight.new_zeros(weight.shape[0], weight.shape[1], depth, *weight.shape[2:])
        out[:, :, depth // 2] = weight
        return out
    raise ValueError(f"unknown inflation mode {mode!r}; use 'average' or 'center'")


def adapt_state_dict_shapes(state: dict, target_shapes: dict) -> Tuple[dict, list]:
    """Resize the tensors of ``state`` whose shape differs from ``target_shapes`` where a rule exists.

    Rules: ``*pos_embed`` (1, H, W, C) -> resize_abs_pos_embed; ``*rel_pos_h`` / ``*rel_pos_w`` (L, C) ->
    resize_rel_pos. Returns the adapted dict and a list of (key, old_shape, new_shape) for what was resized.
    Tensors with other shape differences are left as they are, so a strict load reports them.
    """
    out, resized = {}, []
    for k, v in state.items():
        target = target_shapes.get(k)
        if target is not None and tuple(v.shape) != tuple(target):
            if k.endswith("pos_embed") and v.ndim == 4 and len(target) == 4 and v.shape[-1] == target[-1]:
                out[k] = resize_abs_pos_embed(v, target[1:3])
                resized.append((k, tuple(v.shape), tuple(target)))
                continue
            if (k.endswith("rel_pos_h") or k.endswith("rel_pos_w")) and v.ndim == 2 and v.shape[1] == target[1]:
                out[k] = resize_rel_pos(v, target[0])
                resized.append((k, tuple(v.shape), tuple(target)))
                continue
        out[k] = v
    return out, resized
