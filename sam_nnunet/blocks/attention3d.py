"""3D (shifted-)window self-attention that reuses a frozen SAM ``Attention`` module.

SAM's 2D attention carries a qkv projection, an output projection and decomposed relative positions along h and w.
Made volumetric (3DSAM-adapter), the same frozen weights attend inside 3D windows, with a third, trainable
relative-position table along depth.

Token tensors are channels-last ``(B, D, H, W, C)`` throughout; D is the slice axis (nnU-Net's first spatial axis).
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import get_rel_pos

# finite, so a row of masked keys can never give NaN; exp(-1e4) is 0 in fp16 and fp32
MASK_VALUE = -1e4


@dataclass(frozen=True)
class WindowLayout:
    """How a token grid is cut into windows: per axis the window size, the padded size, and the shift."""
    grid: Tuple[int, int, int]
    window: Tuple[int, int, int]
    padded: Tuple[int, int, int]
    shift: Tuple[int, int, int]

    @property
    def num_windows(self) -> int:
        return math.prod(p // w for p, w in zip(self.padded, self.window))

    @property
    def needs_mask(self) -> bool:
        return any(self.shift) or self.padded != self.grid


def window_layout(grid: Sequence[int], max_window: int, shifted: bool) -> WindowLayout:
    """Split each axis into the fewest windows of at most ``max_window`` tokens, of equal size.

    A 32-token axis with ``max_window=8`` gives 4 windows of 8 (the paper's setting); a 14-token axis gives 2 of
    7 instead of padding to 16. Shifted layouts move windows by half a window on every axis that has more than
    one window (a shift along an axis with a single window would only wrap the volume around).
    """
    window, padded, shift = [], [], []
    for g in grid:
        n = max(1, math.ceil(g / max_window))
        w = math.ceil(g / n)
        window.append(w)
        padded.append(n * w)
        shift.append(w // 2 if shifted and n > 1 else 0)
    return WindowLayout(tuple(int(g) for g in grid), tuple(window), tuple(padded), tuple(shift))


def partition_windows(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, D, H, W, C) with each axis a multiple of its window -> (B * nW, wd * wh * ww, C)."""
    B, D, H, W, C = x.shape
    wd, wh, ww = window
    x = x.view(B, D // wd, wd, H // wh, wh, W // ww, ww, C)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, C)


def unpartition_windows(x: torch.Tensor, window: Sequence[int], padded: Sequence[int], batch: int) -> torch.Tensor:
    """Inverse of partition_windows: (B * nW, N, C) -> (B, D, H, W, C) on the padded grid."""
    wd, wh, ww = window
    D, H, W = padded
    C = x.shape[-1]
    x = x.view(batch, D // wd, H // wh, W // ww, wd, wh, ww, C)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, D, H, W, C)


def window_attention_mask(layout: WindowLayout, device, dtype) -> Optional[torch.Tensor]:
    """Additive mask (nW, N, N): tokens attend only within their shift region (Swin) and never to padding."""
    if not layout.needs_mask:
        return None
    region = torch.zeros(layout.padded, dtype=torch.long, device=device)
    valid = torch.zeros(layout.padded, dtype=torch.bool, device=device)
    valid[:layout.grid[0], :layout.grid[1], :layout.grid[2]] = True
    for axis, (p, w, s) in enumerate(zip(layout.padded, layout.window, layout.shift)):
        if s == 0:
            continue
        # after rolling by -s, the last window mixes tokens from the volume's end and its start: label the parts
        labels = torch.zeros(p, dtype=torch.long, device=device)
        labels[p - w:p - s] = 1
        labels[p - s:] = 2
        shape = [1, 1, 1]
        shape[axis] = p
        region = region * 3 + labels.view(shape)
    if any(layout.shift):
        # the region labels above describe the rolled grid; the validity map must be rolled the same way
        valid = torch.roll(valid, shifts=[-s for s in layout.shift], dims=(0, 1, 2))
    region_w = partition_windows(region[None, ..., None], layout.window)[..., 0]  # (nW, N)
    valid_w = partition_windows(valid[None, ..., None], layout.window)[..., 0]
    allowed = (region_w[:, :, None] == region_w[:, None, :]) & valid_w[:, None, :]
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, MASK_VALUE)


def decomposed_rel_pos_bias(q: torch.Tensor, window: Sequence[int], rel_pos_d: torch.Tensor,
                            rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor) -> torch.Tensor:
    """SAM's decomposed relative positions in 3D: bias[q, k] = <q, R_d[dq-dk]> + <q, R_h[..]> + <q, R_w[..]>.

    q: (B', N, hd) unscaled queries of one window; returns (B', N, N).
    """
    wd, wh, ww = window
    Rd = get_rel_pos(wd, wd, rel_pos_d).to(q.dtype)
    Rh = get_rel_pos(wh, wh, rel_pos_h).to(q.dtype)
    Rw = get_rel_pos(ww, ww, rel_pos_w).to(q.dtype)
    Bq, N, hd = q.shape
    r_q = q.reshape(Bq, wd, wh, ww, hd)
    rel_d = torch.einsum("bdhwc,dkc->bdhwk", r_q, Rd)
    rel_h = torch.einsum("bdhwc,hkc->bdhwk", r_q, Rh)
    rel_w = torch.einsum("bdhwc,wkc->bdhwk", r_q, Rw)
    bias = (rel_d[..., :, None, None] + rel_h[..., None, :, None] + rel_w[..., None, None, :])
    return bias.reshape(Bq, N, N)


def window_attention_3d(x: torch.Tensor, attn: torch.nn.Module, rel_pos_d: torch.Tensor, layout: WindowLayout,
                        mask: Optional[torch.Tensor], rel_pos_h: Optional[torch.Tensor] = None,
                        rel_pos_w: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Self-attention of SAM's ``attn`` (qkv, proj, rel_pos_h/w) inside the 3D windows of ``layout``.

    x: (B, D, H, W, C) normalised tokens on ``layout.grid``; mask: window_attention_mask(layout) or None.
    rel_pos_h / rel_pos_w: tables to use instead of ``attn``'s own (e.g. cropped to the window); a table of
    2 * window - 1 rows is used as it is, any other length is interpolated (SAM's get_rel_pos).
    Returns (B, D, H, W, C).
    """
    B, D, H, W, C = x.shape
    pd, ph, pw = (p - g for p, g in zip(layout.padded, layout.grid))
    if pd or ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph, 0, pd))
    if any(layout.shift):
        x = torch.roll(x, shifts=[-s for s in layout.shift], dims=(1, 2, 3))
    xw = partition_windows(x, layout.window)  # (B*nW, N, C)
    Bw, N, _ = xw.shape
    heads = attn.num_heads
    qkv = attn.qkv(xw).reshape(Bw, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (Bw, heads, N, hd)
    bias = decomposed_rel_pos_bias(q.reshape(Bw * heads, N, -1), layout.window, rel_pos_d,
                                   attn.rel_pos_h if rel_pos_h is None else rel_pos_h,
                                   attn.rel_pos_w if rel_pos_w is None else rel_pos_w).view(Bw, heads, N, N)
    if mask is not None:
        nW = mask.shape[0]
        bias = (bias.view(Bw // nW, nW, heads, N, N) + mask[None, :, None].to(bias.dtype)).view(Bw, heads, N, N)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=attn.scale)
    out = attn.proj(out.transpose(1, 2).reshape(Bw, N, C))
    out = unpartition_windows(out, layout.window, layout.padded, B)
    if any(layout.shift):
        out = torch.roll(out, shifts=list(layout.shift), dims=(1, 2, 3))
    return out[:, :D, :H, :W]
