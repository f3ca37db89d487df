"""3D (shifted-)window attention against a direct, token-by-token reference."""
import itertools

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, get_rel_pos

from sam_nnunet.blocks.attention3d import window_attention_3d, window_attention_mask, window_layout


def test_window_layout_matches_the_paper_and_avoids_padding():
    lay = window_layout((32, 32, 32), 8, shifted=True)  # the paper: 128^3 patch -> 32^3 tokens, 8^3 windows
    assert lay.window == (8, 8, 8) and lay.padded == (32, 32, 32) and lay.shift == (4, 4, 4)
    lay = window_layout((10, 14, 10), 8, shifted=True)  # hippocampus plan 40x56x40 -> windows of 5x7x5, no padding
    assert lay.window == (5, 7, 5) and lay.padded == (10, 14, 10) and lay.shift == (2, 3, 2)
    lay = window_layout((13, 3, 8), 8, shifted=True)  # 13 -> 2 windows of 7 (1 padded); single windows do not shift
    assert lay.window == (7, 3, 8) and lay.padded == (14, 3, 8) and lay.shift == (3, 0, 0)
    assert window_layout((8, 8, 8), 8, shifted=False).needs_mask is False


def _reference(x, attn, rel_pos_d, layout):
    """Attention written out per token pair: same window (after the cyclic shift), same shift region."""
    B, D, H, W, C = x.shape
    heads, hd = attn.num_heads, C // attn.num_heads
    qkv = attn.qkv(x).reshape(B, D * H * W, 3, heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, heads, hd)
    coords = list(itertools.product(range(D), range(H), range(W)))

    def place(p, axis):
        P, w, s = layout.padded[axis], layout.window[axis], layout.shift[axis]
        r = (p - s) % P
        region = 0 if s == 0 or r < P - w else (1 if r < P - s else 2)
        return r // w, r % w, region

    places = [[place(c[a], a) for a in range(3)] for c in coords]
    tables = [get_rel_pos(w, w, t) for w, t in zip(layout.window, (rel_pos_d, attn.rel_pos_h, attn.rel_pos_w))]
    out = torch.zeros(B, len(coords), heads, hd)
    for i, pi in enumerate(places):
        keys = [j for j, pj in enumerate(places) if all(pi[a][0] == pj[a][0] and pi[a][2] == pj[a][2]
                                                          for a in range(3))]
        qi = q[:, i]  # (B, heads, hd)
        logits = torch.stack([
            (qi * k[:, j]).sum(-1) * attn.scale +
            sum((qi * tables[a][pi[a][1], places[j][a][1]]).sum(-1) for a in range(3))
            for j in keys], dim=-1)  # (B, heads, len(keys))
        weights = logits.softmax(-1)
        out[:, i] = torch.einsum("bhk,bkhd->bhd", weights, v[:, keys])
    return attn.proj(out.reshape(B, D, H, W, C))


@pytest.mark.parametrize("grid,max_window,shifted", [((5, 6, 3), 3, True), ((5, 6, 3), 3, False),
                                                     ((4, 4, 4), 2, True), ((3, 5, 7), 8, True)])
def test_window_attention_equals_reference(grid, max_window, shifted):
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, use_rel_pos=True, input_size=(7, 7))
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    rel_pos_d = torch.randn(5, 8)  # another length than h/w: interpolated like SAM's tables
    x = torch.randn(2, *grid, 16)
    layout = window_layout(grid, max_window, shifted)
    mask = window_attention_mask(layout, x.device, x.dtype)
    out = window_attention_3d(x, attn, rel_pos_d, layout, mask)
    torch.testing.assert_close(out, _reference(x, attn, rel_pos_d, layout), atol=2e-5, rtol=1e-4)


def test_depth_table_receives_gradients_and_padding_is_not_attended():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, use_rel_pos=True, input_size=(7, 7))
    rel_pos_d = torch.zeros(13, 8, requires_grad=True)
    layout = window_layout((5, 4, 4), 3, shifted=False)  # depth padded 5 -> 6
    x = torch.randn(1, 5, 4, 4, 16)
    out = window_attention_3d(x, attn, rel_pos_d, layout, window_attention_mask(layout, x.device, x.dtype))
    out.sum().backward()
    assert rel_pos_d.grad is not None and rel_pos_d.grad.abs().sum() > 0
    # the last real slice shares a window with the padded slice; its output ignores that padding
    torch.testing.assert_close(out, _reference(x, attn, rel_pos_d.detach(), layout), atol=2e-5, rtol=1e-4)
