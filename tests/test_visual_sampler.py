"""3DSAM-adapter's visual sampler prompt encoder and the prompted network: counts, shapes, click handling, compile."""
import pytest
import torch

from sam_nnunet.blocks.visual_sampler import VisualSamplerPromptEncoder3d
from sam_nnunet.info import parameter_counts
from sam_nnunet.networks.sam_adapter_prompted import SAMAdapterPromptedNetwork
from sam_nnunet.prompts.clicks import click_label, normalise_coords


def test_vit_b_trainable_parameters_are_the_papers():
    counts = parameter_counts("SAMAdapterTrainer_prompted", "vit_b", 1, 2)
    assert counts["trainable"] == 25_462_400  # 3DSAM-adapter's public code, ViT-B, one input channel, two outputs
    assert counts["prompt_encoder"] == 3_164_160
    assert counts["trainable"] - parameter_counts("SAMAdapterTrainer", "vit_b", 1, 2)["trainable"] == 3_164_160
    assert counts["network"].endswith("SAMAdapterPromptedNetwork")
    # the paper's setting without its public code's unused parts: 2 blocks x (self-attention 263,168 + two
    # cross-attentions 2 x 131,712 + MLP 1,050,880 + 4 LayerNorms 2,048 + 10 global queries 2,560)
    assert 2 * (263_168 + 2 * 131_712 + 1_050_880 + 4 * 512 + 10 * 256) == 3_164_160


def _encoder(dim=32, codes=6):
    torch.manual_seed(0)
    return VisualSamplerPromptEncoder3d(dim, codes, depth=2, num_heads=2, mlp_dim=64).eval()


def test_prompt_encoder_shapes_and_absent_clicks():
    enc = _encoder()
    features = torch.randn(2, 32, 4, 6, 5)
    coords = torch.rand(2, 3, 3)
    labels = torch.tensor([[2, 3, 0], [4, -1, -1]])
    out = enc(features, coords, labels)
    assert out.shape == features.shape and torch.isfinite(out).all()
    # no click at all (automatic mode): still defined, N = 0
    empty = enc(features, torch.zeros(2, 0, 3), torch.zeros(2, 0, dtype=torch.long))
    assert empty.shape == features.shape and torch.isfinite(empty).all()
    # absent clicks (label -1) are ignored wherever they are: sample 1 equals sample 1 with its valid click only
    moved = coords.clone()
    moved[1, 1:] = torch.rand(2, 3)
    torch.testing.assert_close(enc(features, moved, labels)[1], out[1])
    torch.testing.assert_close(enc(features[1:], coords[1:, :1], labels[1:, :1])[0], out[1], rtol=1e-5, atol=1e-5)
    # a sample with only absent clicks equals the automatic mode; clicks do change the output
    only_absent = enc(features[1:], coords[1:, 1:], labels[1:, 1:])
    torch.testing.assert_close(only_absent[0], empty[1], rtol=1e-5, atol=1e-5)
    assert (out[0] - empty[0]).abs().max() > 1e-3
    # the label of a click matters (positive / negative / other class)
    relabelled = enc(features, coords, torch.tensor([[3, 3, 0], [4, -1, -1]]))
    assert (relabelled[0] - out[0]).abs().max() > 1e-3


def test_clicks_sample_the_features_where_they_are():
    """A click at a voxel samples the token that covers it: axis order (D, H, W) and the voxel-centre convention."""
    stride, grid = 4, (3, 5, 4)
    features = torch.zeros(1, 8, *grid)
    features[0, :, 2, 1, 3] = torch.arange(8.0)
    spatial = tuple(stride * g for g in grid)
    # the centre of token (2, 1, 3) is voxel 4 * index + 1.5
    coords = torch.tensor([[[2 * stride + 1.5, 1 * stride + 1.5, 3 * stride + 1.5]]])
    grid_coords = 2 * normalise_coords(coords, spatial) - 1
    sampled = torch.nn.functional.grid_sample(features, grid_coords.flip(-1).view(1, 1, 1, 1, 3),
                                              align_corners=False)
    torch.testing.assert_close(sampled.flatten(), torch.arange(8.0))
    # transposed coordinates miss it
    wrong = 2 * normalise_coords(coords[..., [2, 1, 0]], spatial) - 1
    assert torch.nn.functional.grid_sample(features, wrong.flip(-1).view(1, 1, 1, 1, 3),
                                           align_corners=False).abs().sum() < 1e-6


def test_prompted_network_output_and_gradients():
    torch.manual_seed(0)
    net = SAMAdapterPromptedNetwork(1, 3, "vit_test")
    x = torch.randn(2, 1, 18, 22, 17)  # not multiples of the token stride
    coords = torch.tensor([[[3.0, 4.0, 5.0], [10.0, 12.0, 8.0]], [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[click_label(1), click_label(2, True)], [click_label(2), -1]])
    out = net(x, coords, labels)
    assert out.shape == (2, 3, 18, 22, 17)
    automatic = net(x)
    assert automatic.shape == out.shape
    assert (out - automatic).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-4
    out.sum().backward()
    for name, p in net.prompt_encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in net.vit.patch_embed.parameters())  # still frozen


def test_paper_attention_variant_and_compile():
    net = SAMAdapterPromptedNetwork(1, 2, "vit_test", image_reads_clicks=False).eval()
    assert sum(p.numel() for p in net.prompt_encoder.parameters()) == \
        sum(p.numel() for p in SAMAdapterPromptedNetwork(1, 2, "vit_test").prompt_encoder.parameters())
    x = torch.randn(1, 1, 16, 16, 16)
    coords, labels = torch.tensor([[[5.0, 6.0, 7.0]]]), torch.tensor([[2]])
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)  # any graph break fails
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, coords, labels), net(x, coords, labels), rtol=1e-4, atol=1e-4)


# ---- the public code's computation (sampler="public") ---------------------------------------------------------------

def _public_reference(weights, features, points_whd, heads, num_global=10):
    """What med-air/3DSAM-adapter's PromptEncoder + TwoWayTransformer (``modeling/prompt_encoder.py``) compute for one
    image, written out from that code's layout with our module's weights: ``points_whd`` (N, 3) voxel coordinates
    in the order its grid takes them (x = W, y = H, z = D), normalised as ``(p + 0.5) * 2 / size - 1``; features
    (1, C, d, h, w) of a patch of ``size`` = 4 * (d, h, w) voxels."""
    import math

    import torch.nn.functional as F

    def linear(x, name):
        return F.linear(x, weights[name + ".weight"], weights[name + ".bias"])

    def attention(q, k, v, name):
        q, k, v = linear(q, name + ".q_proj"), linear(k, name + ".k_proj"), linear(v, name + ".v_proj")
        b, n, c = q.shape
        q, k, v = (t.reshape(b, t.shape[1], heads, c // heads).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(q @ k.permute(0, 1, 3, 2) / math.sqrt(c // heads), dim=-1)
        return linear((attn @ v).transpose(1, 2).reshape(b, n, c), name + ".out_proj")

    def norm(x, name):
        return F.layer_norm(x, x.shape[-1:], weights[name + ".weight"], weights[name + ".bias"])

    size_whd = torch.tensor([4 * s for s in features.shape[2:]][::-1], dtype=features.dtype)
    grid = ((points_whd + 0.5) * 2 / size_whd - 1).reshape(1, 1, 1, -1, 3)
    point_embed = F.grid_sample(features, grid, align_corners=False).squeeze(2).squeeze(2).permute(0, 2, 1)
    img_embed = features.flatten(2).permute(0, 2, 1)
    for i in range(2):
        p = f"blocks.{i}"
        q = torch.cat([weights[p + ".global_queries"], point_embed], dim=1)
        self_out = norm(attention(q, q, q, p + ".self_attn"), p + ".norm1")
        queries = norm(q + self_out, p + ".norm2")
        point_embed, queries = queries[:, num_global:], queries[:, :num_global]
        mlp = linear(torch.relu(linear(queries, p + ".mlp.lin1")), p + ".mlp.lin2")
        queries = norm(queries + mlp, p + ".norm3")
        img_embed = norm(img_embed + attention(img_embed, queries, queries, p + ".cross_attn_image_to_token"),
                         p + ".norm4")
    return img_embed.transpose(1, 2).reshape(features.shape)


def test_public_sampler_computes_what_the_public_code_computes():
    torch.manual_seed(0)
    enc = VisualSamplerPromptEncoder3d(32, 6, depth=2, num_heads=2, mlp_dim=64, sampler="public").eval()
    with torch.no_grad():  # LayerNorms away from their identity initialisation
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    weights = dict(enc.named_parameters())
    features = torch.randn(2, 32, 4, 6, 5)
    spatial = tuple(4 * s for s in features.shape[2:])
    voxels = torch.stack([torch.randint(0, s, (2, 3)) for s in spatial], dim=-1).float()  # (B, N, 3) along D, H, W
    labels = torch.tensor([[2, 3, 0], [4, -1, -1]])
    with torch.no_grad():
        out = enc(features, normalise_coords(voxels, spatial), labels)
        for i, valid in ((0, 3), (1, 1)):  # sample 1: absent clicks are left out, as if they were not there
            reference = _public_reference(weights, features[i:i + 1], voxels[i, :valid].flip(-1), heads=2)
            torch.testing.assert_close(out[i:i + 1], reference, rtol=1e-5, atol=1e-5)
        # no click labels in the public code: relabelling changes nothing; the clicks themselves do
        relabelled = torch.where(labels >= 0, 1, labels)
        torch.testing.assert_close(enc(features, normalise_coords(voxels, spatial), relabelled), out)
        empty = enc(features, torch.zeros(2, 0, 3), torch.zeros(2, 0, dtype=torch.long))
        assert (out[0] - empty[0]).abs().max() > 1e-3
    # no positional encodings, no label codes, no token-to-image attention (never called there)
    assert not list(enc.buffers())
    assert not any("token_to_image" in n for n in weights)
    ours = VisualSamplerPromptEncoder3d(32, 6, depth=2, num_heads=2, mlp_dim=64)
    token_to_image = sum(p.numel() for b in ours.blocks for p in b.cross_attn_token_to_image.parameters())
    assert sum(p.numel() for p in enc.parameters()) == sum(p.numel() for p in ours.parameters()) - token_to_image


def test_public_sampler_in_the_network_trains_every_parameter():
    """DDP (default find_unused_parameters=False) needs every trainable parameter in every step."""
    torch.manual_seed(0)
    net = SAMAdapterPromptedNetwork(1, 2, "vit_test", visual_sampler="public")
    x = torch.randn(1, 1, 16, 16, 16)
    net(x, torch.tensor([[[5.0, 6.0, 7.0]]]), torch.tensor([[2]])).sum().backward()
    for name, p in net.named_parameters():
        assert not p.requires_grad or p.grad is not None, name
    counts = parameter_counts("SAMAdapterTrainer_prompted_public", "vit_b", 1, 2)
    # the public code's 3,164,160 less its 2 x 131,712 token-to-image parameters, which never get a gradient there
    assert counts["prompt_encoder"] == 3_164_160 - 2 * 131_712
    assert counts["trainable"] == 25_462_400 - 2 * 131_712


def test_box_points_are_the_corners_and_the_centre():
    from sam_nnunet.prompts.boxes import BOX_POINTS, box_points

    boxes = torch.tensor([[[[1.0, 2.0, 3.0], [5.0, 8.0, 4.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]])
    coords, labels, role = box_points(boxes, torch.tensor([[click_label(1), -1]]))
    assert coords.shape == (1, 2 * BOX_POINTS, 3) and labels.tolist() == [[2] * 9 + [-1] * 9]
    corners = {tuple(c) for c in coords[0, :8].tolist()}
    assert corners == {(d, h, w) for d in (1.0, 5.0) for h in (2.0, 8.0) for w in (3.0, 4.0)}
    assert coords[0, 8].tolist() == [3.0, 5.0, 3.5] and role.tolist() == ([0] * 8 + [1]) * 2


def test_boxes_and_the_mask_prompt_in_the_adapter_add_no_parameter():
    torch.manual_seed(0)
    net = SAMAdapterPromptedNetwork(1, 3, "vit_test").eval()
    clicks_only = SAMAdapterPromptedNetwork(1, 3, "vit_test")
    # the box codes are fixed (seeded, not saved): the state dict is the clicks-only one, old models load strictly
    assert net.state_dict().keys() == clicks_only.state_dict().keys()
    assert not any("box_codes" in k for k in net.state_dict())
    assert torch.equal(net.box_codes, clicks_only.box_codes) and net.takes_boxes
    clicks_only.load_state_dict(net.state_dict())
    x = torch.randn(1, 1, 18, 22, 17)
    coords, labels = torch.tensor([[[3.0, 4.0, 5.0]]]), torch.tensor([[click_label(1)]])
    boxes, box_labels = torch.tensor([[[[2.0, 3.0, 2.0], [10.0, 12.0, 9.0]]]]), torch.tensor([[click_label(2)]])
    with torch.no_grad():
        plain = net(x, coords, labels)
        boxed = net(x, coords, labels, boxes, box_labels)
        assert boxed.shape == plain.shape and (boxed - plain).abs().max() > 1e-4
        # encoded once, decoded with other prompts: the same as the whole forward
        encoded = net.encoded(x)
        torch.testing.assert_close(net(encoded, coords, labels, boxes, box_labels), boxed)
        # a mask that says "background everywhere" adds nothing; one that says class 1 somewhere changes the output
        background = torch.full((1, 2, 18, 22, 17), -1e4)
        torch.testing.assert_close(net(encoded, coords, labels, mask_prompt=background), plain)
        background[:, 0, 4:9, 5:10, 5:9] = 1e4
        assert (net(encoded, coords, labels, mask_prompt=background) - plain).abs().max() > 1e-4
    public = SAMAdapterPromptedNetwork(1, 3, "vit_test", visual_sampler="public")
    assert not public.takes_boxes
    with pytest.raises(ValueError, match="need the click_aware visual sampler"):
        public(x, coords, labels, boxes, box_labels)


def test_mask_prompt_is_relative_to_the_background_logit():
    from sam_nnunet.prompts.corrections import mask_prompt

    logits = torch.randn(2, 3, 4, 4, 4)
    prompt = mask_prompt(logits, has_regions=False, dim=1)
    # softmax([0, prompt]) is the prediction's softmax; with ZAP's constant background 0 it is its mask logits
    full = torch.cat([torch.zeros_like(prompt[:, :1]), prompt], 1)
    torch.testing.assert_close(full.softmax(1), logits.softmax(1))
    logits[:, 0] = 0
    assert torch.equal(mask_prompt(logits, False, dim=1), logits[:, 1:])
    assert torch.equal(mask_prompt(logits[0], True), logits[0])
