"""Pretrained-weight surgery: each pure function on its own."""
import pytest
import torch
import torch.nn.functional as F

from sam_nnunet.encoders.surgery import (adapt_state_dict_shapes, inflate_conv2d_to_3d, resize_abs_pos_embed,
                                         resize_rel_pos)


def test_pos_embed_whole_factor_is_average_pooling():
    pos = torch.randn(1, 64, 64, 8)
    out = resize_abs_pos_embed(pos, (32, 32))
    expected = F.avg_pool2d(pos.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    assert out.shape == (1, 32, 32, 8)
    torch.testing.assert_close(out, expected)


def test_pos_embed_other_sizes_keep_a_constant_field_and_smooth_ramps():
    const = torch.full((1, 64, 64, 4), 0.7)
    for hw in [(10, 14), (80, 96), (64, 20)]:
        out = resize_abs_pos_embed(const, hw)
        assert out.shape == (1, *hw, 4)
        torch.testing.assert_close(out, torch.full_like(out, 0.7))
    # a linear ramp along H stays monotonic after resizing to an odd grid
    ramp = torch.linspace(-1, 1, 64).view(1, 64, 1, 1).expand(1, 64, 64, 2).contiguous()
    out = resize_abs_pos_embed(ramp, (10, 14))
    assert torch.all(out[0, 1:, 0, 0] > out[0, :-1, 0, 0])


def test_pos_embed_same_size_is_identity_and_rejects_bad_shape():
    pos = torch.randn(1, 16, 16, 4)
    assert resize_abs_pos_embed(pos, (16, 16)) is pos
    with pytest.raises(ValueError):
        resize_abs_pos_embed(torch.randn(16, 16, 4), (8, 8))


def test_rel_pos_resize_interpolates_linearly():
    table = torch.stack([torch.arange(27.0), -torch.arange(27.0)], dim=1)  # (27, 2), linear in the index
    out = resize_rel_pos(table, 15)
    assert out.shape == (15, 2)
    # a linear table stays linear (constant step) and keeps its mean
    steps = out[1:, 0] - out[:-1, 0]
    torch.testing.assert_close(steps, torch.full_like(steps, steps[0].item()))
    torch.testing.assert_close(out[:, 0].mean(), table[:, 0].mean())
    assert resize_rel_pos(table, 27) is table


def test_inflated_kernel_reproduces_2d_response_on_identical_slices():
    torch.manual_seed(0)
    conv2d = torch.nn.Conv2d(3, 5, kernel_size=4, stride=4)
    image = torch.randn(1, 3, 16, 16)
    for depth, mode in [(4, "average"), (3, "center")]:
        w3 = inflate_conv2d_to_3d(conv2d.weight.detach(), depth, mode)
        assert w3.shape == (5, 3, depth, 4, 4)
        volume = image.unsqueeze(2).repeat(1, 1, depth, 1, 1)
        out3 = F.conv3d(volume, w3, conv2d.bias, stride=(depth, 4, 4))
        torch.testing.assert_close(out3[:, :, 0], conv2d(image), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        inflate_conv2d_to_3d(conv2d.weight.detach(), 2, "nearest")


def test_adapt_state_dict_resizes_only_position_tables():
    state = {"pos_embed": torch.randn(1, 16, 16, 8), "blocks.1.attn.rel_pos_h": torch.randn(31, 4),
             "blocks.1.attn.rel_pos_w": torch.randn(31, 4), "blocks.0.attn.qkv.weight": torch.randn(24, 8)}
    targets = {"pos_embed": (1, 8, 8, 8), "blocks.1.attn.rel_pos_h": (15, 4), "blocks.1.attn.rel_pos_w": (15, 4),
               "blocks.0.attn.qkv.weight": (12, 8)}
    out, resized = adapt_state_dict_shapes(state, targets)
    assert out["pos_embed"].shape == (1, 8, 8, 8)
    assert out["blocks.1.attn.rel_pos_h"].shape == (15, 4)
    # no rule for a linear layer: left unchanged so that the strict load reports it
    assert out["blocks.0.attn.qkv.weight"].shape == (24, 8)
    assert {k for k, _, _ in resized} == {"pos_embed", "blocks.1.attn.rel_pos_h", "blocks.1.attn.rel_pos_w"}
