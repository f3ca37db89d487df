"""ZAP25DNetwork (ZAP-2.5DSAM): parameter counts, the tri-planar data flow against a slice-by-slice reference, SAM's
decoder, shapes for any patch / channels / classes, frozen parts, nnU-Net's sliding window with mirroring."""
import json

import pytest
import torch
import torch.nn.functional as F

from sam_nnunet import cli
from sam_nnunet.decoders.sam_mask import PromptFreeMaskDecoder, build_sam_mask_decoder
from sam_nnunet.encoders.sam_vit import SAM_VIT_CONFIGS
from sam_nnunet.encoders.surgery import resize_abs_pos_embed
from sam_nnunet.info import parameter_counts
from sam_nnunet.networks.zap25d import ZAP25DNetwork

DECODER_ONE_MASK = 3_506_304  # the paper's count: transformer, IoU token, 4 mask tokens, upscaling, 1 MLP
HYPERNETWORK_MLP = 139_808    # 256 -> 256 -> 256 -> 32


def _info_json(capsys, *args):
    cli.main(["info", "--trainer", "ZAP25DSAMTrainer", *args, "--json"])
    return json.loads(capsys.readouterr().out)


def test_vit_b_counts_through_the_cli(capsys):
    counts = _info_json(capsys, "--encoder", "vit_b", "--inputs", "1", "--outputs", "2")
    assert counts["trainable"] == DECODER_ONE_MASK
    assert counts["added"] == 0
    # frozen: SAM ViT-B image encoder with its neck (89,670,912; the 8 windowed blocks' relative-position tables
    # grow from 27 to 31 rows for window 16: +4,096) and SAM's prompt encoder (6,220)
    assert counts["frozen"] == 89_670_912 + 4_096 + 6_220


def test_litemedsam_counts(capsys):
    counts = _info_json(capsys, "--encoder", "litemedsam", "--inputs", "1", "--outputs", "2")
    assert counts["trainable"] == DECODER_ONE_MASK  # LiteMedSAM's decoder has SAM's sizes
    assert counts["added"] == 0
    # frozen: LiteMedSAM's TinyViT with its neck (5,726,740 parameters; its BatchNorm statistics are buffers) and
    # prompt encoder (6,220 parameters, as SAM's)
    assert counts["frozen"] == 5_726_740 + 6_220


def test_up_to_four_classes_or_regions_add_nothing_beyond_that_adds_tokens():
    for classes in (2, 3, 4, 5):
        counts = parameter_counts("ZAP25DSAMTrainer", "vit_b", 1, classes)
        assert counts["trainable"] == DECODER_ONE_MASK + (classes - 2) * HYPERNETWORK_MLP
        assert counts["added"] == 0 and counts["outputs_from_sam_mask_tokens"] == classes - 1
    six = parameter_counts("ZAP25DSAMTrainer", "vit_b", 1, 7)  # 6 foreground classes: 2 beyond SAM's 4
    assert six["added"] == six["added_by_outputs_beyond_4"] == 2 * (HYPERNETWORK_MLP + 256)
    assert six["trainable"] == DECODER_ONE_MASK + 5 * HYPERNETWORK_MLP + 2 * 256
    regions = ZAP25DNetwork(1, 4, "vit_test", background_channel=False)
    assert regions.decoder.num_masks == 4 and regions.parameter_report()["added"] == 0


def test_multichannel_input_is_a_fixed_false_colour_projection():
    net = ZAP25DNetwork(2, 2, "vit_test")
    proj = net.channels.proj
    assert not proj.weight.requires_grad and not proj.bias.requires_grad
    torch.testing.assert_close(proj.weight.view(3, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
    report = net.parameter_report()
    assert report["added"] == 2 * 3 + 3 and "input_projection" in net.parameter_notes()
    four = ZAP25DNetwork(4, 2, "vit_test").channels.proj.weight.view(3, 4)
    torch.testing.assert_close(four, torch.tensor([[0.5, 0, 0, 0.5], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))


def _loaded(encoder_state, classes=3, channels=1, window_size=4, **kwargs):
    """vit_test with the tiny checkpoint; window 4 (not ZAP's 16) keeps tiny token grids from padding to 16x16."""
    path, state = encoder_state
    torch.manual_seed(0)
    net = ZAP25DNetwork(channels, classes, "vit_test", window_size=window_size, **kwargs)
    net.load_pretrained(state, path)
    return net


def test_decoder_equals_sams_own_decoder(tiny_sam_checkpoint):
    path, state = tiny_sam_checkpoint
    cfg = SAM_VIT_CONFIGS["vit_test"]
    official = build_sam_mask_decoder(cfg)
    official.load_state_dict({k[len("mask_decoder."):]: v for k, v in state.items() if k.startswith("mask_decoder.")})
    ours = PromptFreeMaskDecoder(cfg, num_masks=3)
    ours.load_pretrained(state, path)
    torch.manual_seed(0)
    embeddings, pe = torch.randn(2, cfg.out_chans, 5, 7), torch.randn(1, cfg.out_chans, 5, 7)
    dense = torch.randn(1, cfg.out_chans, 1, 1)
    with torch.no_grad():
        masks = ours(embeddings, pe, dense)
        for i in range(2):  # SAM's decoder takes one image with its prompts; no sparse prompt here
            expected, _ = official.predict_masks(embeddings[i:i + 1], pe, torch.zeros(1, 0, cfg.out_chans),
                                                 dense.expand(1, -1, 5, 7))
            torch.testing.assert_close(masks[i], expected[0, :3], rtol=1e-5, atol=1e-5)
    assert masks.shape == (2, 3, 20, 28)


# The published code's images of a crop img (C, D, H, W) (ZAP-2.5DSAM train.py), slices first, and the inverse
# permutation that puts (slices, k, rows, columns) logits back as (k, D, H, W).
PUBLISHED_PLANES = {2: ((1, 0, 2, 3), (1, 0, 2, 3)),   # axial: H rows x W columns
                    3: ((2, 0, 3, 1), (1, 3, 0, 2)),   # coronal: W rows x D columns
                    4: ((3, 0, 1, 2), (1, 2, 3, 0))}   # sagittal: D rows x H columns
LEGACY_PLANES = {2: PUBLISHED_PLANES[2], 3: ((2, 0, 1, 3), (1, 2, 0, 3)), 4: PUBLISHED_PLANES[4]}  # coronal D x W


def _reference_forward(net, x, planes=PUBLISHED_PLANES):
    """ZAP written out slice by slice in the published code's layout: each plane's images cut from every sample with
    the paper's permutes, every upsampled slice patch-embedded on its own, 4 averaged, encoded, decoded, put back."""
    pool, vit = net.pool, net.encoder.vit
    padded = F.pad(x, [p for s in reversed(x.shape[2:]) for p in (0, (-s) % pool)])
    image = padded.expand(-1, 3, -1, -1, -1)
    total = 0
    for axis in (2, 3, 4):
        forward, backward = planes[axis]
        stacks = torch.stack([image[i].permute(forward) for i in range(image.shape[0])])  # (B, S, 3, a, b)
        pseudo = []
        for g in range(stacks.shape[1] // pool):
            slices = [stacks[:, g * pool + j] for j in range(pool)]  # (B, 3, a, b)
            embedded = [vit.patch_embed(F.interpolate(s, scale_factor=4, mode="bilinear", align_corners=False))
                        for s in slices]
            tokens = torch.stack(embedded).mean(0)
            tokens = tokens + resize_abs_pos_embed(vit.pos_embed, tokens.shape[1:3])
            for block in vit.blocks:
                tokens = block(tokens)
            embedding = vit.neck(tokens.permute(0, 3, 1, 2))
            pe = net.prompt_encoder.pe_layer(tuple(embedding.shape[-2:])).unsqueeze(0)
            dense = net.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
            pseudo.append(net.decoder(embedding, pe, dense))  # (B, k, a, b)
        logits = torch.stack([torch.stack(pseudo, 1)[i].permute(backward) for i in range(image.shape[0])])
        size = [n * (pool if d + 2 == axis else 1) for d, n in enumerate(logits.shape[2:])]
        total = total + F.interpolate(logits, size=size, mode="trilinear", align_corners=False)
    total = total[..., :x.shape[2], :x.shape[3], :x.shape[4]]
    return torch.cat([torch.zeros_like(total[:, :1]), total], 1)


def test_forward_equals_the_slice_by_slice_reference(tiny_sam_checkpoint):
    net = _loaded(tiny_sam_checkpoint, classes=3, window_size=16).eval()
    x = torch.randn(2, 1, 9, 12, 6)  # padded to 12x12x8: 3 + 3 + 2 pseudo-slices per sample
    with torch.no_grad():
        torch.testing.assert_close(net(x), _reference_forward(net, x), rtol=1e-4, atol=1e-4)


def test_each_plane_is_oriented_as_the_published_code(tiny_sam_checkpoint):
    """Each plane's images against the paper's permutes: the encoder is not transpose-equivariant, so a transposed
    plane gives other embeddings (the coronal plane of sam-nnunet 0.1, layout 1, was D x W instead of W x D)."""
    net = _loaded(tiny_sam_checkpoint, classes=2, channels=3, window_size=16).eval()
    x = torch.randn(1, 3, 8, 12, 16)  # three channels: the images are x itself; every size distinct
    with torch.no_grad():
        planes, _ = net.embed(x)
        for axis, (forward, _) in PUBLISHED_PLANES.items():
            images = x[0].permute(forward)  # (S, 3, a, b)
            expected = net.encoder(images.unflatten(0, (-1, net.pool)))
            assert planes[axis].slice_shape == tuple(images.shape[-2:])
            torch.testing.assert_close(planes[axis].embeddings, expected, rtol=1e-5, atol=1e-5)
        coronal = x[0].permute(LEGACY_PLANES[3][0])
        transposed = net.encoder(coronal.unflatten(0, (-1, net.pool)))
        assert (transposed.mean((-2, -1)) - planes[3].embeddings.mean((-2, -1))).abs().amax() > 1e-3


def test_models_of_the_old_layout_keep_it(tiny_sam_checkpoint):
    """An nnU-Net checkpoint of sam-nnunet 0.1 records no layout: loaded into a new network it runs with layout 1
    (coronal D x W, as it was trained); a new model's layout travels with its weights."""
    net = _loaded(tiny_sam_checkpoint, classes=3, window_size=16).eval()
    assert net.plane_layout == 2 and net.state_dict()["_extra_state"]["plane_layout"] == 2
    old = net.state_dict()
    old["_extra_state"] = {k: v for k, v in old["_extra_state"].items() if k != "plane_layout"}
    rebuilt = ZAP25DNetwork(1, 3, "vit_test", window_size=16)
    rebuilt.load_state_dict(old)
    assert rebuilt.plane_layout == 1 and "plane_layout" not in rebuilt.pretrained_info
    x = torch.randn(1, 1, 8, 12, 4)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), _reference_forward(net, x, LEGACY_PLANES), rtol=1e-4,
                                   atol=1e-4)
        assert (rebuilt(x) - net(x)).abs().amax() > 1e-4
    again = ZAP25DNetwork(1, 3, "vit_test", window_size=16)
    again.load_state_dict(rebuilt.state_dict())
    assert again.plane_layout == 1
    with pytest.raises(ValueError, match="plane_layout"):
        ZAP25DNetwork(1, 3, "vit_test", plane_layout=3)


def test_one_foreground_class_softmax_is_the_papers_sigmoid(tiny_sam_checkpoint):
    net = _loaded(tiny_sam_checkpoint, classes=2).eval()
    with torch.no_grad():
        logits = net(torch.randn(1, 1, 8, 8, 8))
    assert torch.equal(logits[:, 0], torch.zeros_like(logits[:, 0]))
    torch.testing.assert_close(logits.softmax(1)[:, 1], torch.sigmoid(logits[:, 1]))


@pytest.mark.parametrize("channels,classes,shape,regions", [
    (1, 2, (13, 18, 9), False), (2, 3, (20, 28, 20), False), (3, 5, (7, 5, 11), False),
    (4, 7, (16, 16, 16), False), (1, 3, (5, 9, 4), True)])
def test_any_patch_size_channel_count_and_class_count(channels, classes, shape, regions):
    torch.manual_seed(0)
    net = ZAP25DNetwork(channels, classes, "vit_test", window_size=4, background_channel=not regions)
    net.train()
    y = net(torch.randn(2, channels, *shape))
    assert y.shape == (2, classes, *shape) and torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in net.named_parameters():
        if p.requires_grad and p.numel():
            assert p.grad is not None, name
        elif not p.requires_grad:
            assert p.grad is None, name
    assert all(n.startswith("decoder.") for n, p in net.named_parameters() if p.requires_grad)


def test_encoder_runs_without_autograd_and_stays_in_eval(tiny_sam_checkpoint):
    net = _loaded(tiny_sam_checkpoint)
    seen = []
    net.encoder.register_forward_hook(lambda module, args, out: seen.append((torch.is_grad_enabled(),
                                                                             module.training, out.requires_grad)))
    net.train()
    net(torch.randn(1, 1, 8, 12, 8)).sum().backward()
    assert seen and all(state == (False, False, False) for state in seen)
    assert net.decoder.training


def test_encoder_batch_and_decoder_checkpointing_do_not_change_the_result(tiny_sam_checkpoint):
    x = torch.randn(2, 1, 16, 12, 8)
    with torch.no_grad():
        one = _loaded(tiny_sam_checkpoint, encoder_batch=1).eval()(x)
        many = _loaded(tiny_sam_checkpoint, encoder_batch=64).eval()(x)
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-5)
    grads = []
    for recompute in (True, False):
        net = _loaded(tiny_sam_checkpoint, encoder_batch=3, checkpoint_decoder=recompute).train()
        net(x).square().mean().backward()
        grads.append({n: p.grad for n, p in net.named_parameters() if p.requires_grad})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-5, atol=1e-6)


def test_torch_compile_captures_one_graph_with_litemedsam():
    # TinyViT's resolution bookkeeping, the no_grad encoder and the recomputed decoder in one graph. Dynamo's
    # capture (fullgraph) is what can break here; the eager backend skips AOT autograd's trace of the whole TinyViT
    # (3 minutes on 2 cores), which test_zap25d_prompted runs with aot_eager on the same decoder
    torch.manual_seed(0)
    net = ZAP25DNetwork(2, 3, "litemedsam").train()
    x = torch.randn(1, 2, 5, 8, 4)
    expected = net(x)
    compiled = torch.compile(net, backend="eager", fullgraph=True)  # fullgraph: any graph break fails
    out = compiled(x)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    out.sum().backward()
    assert net.decoder.sam.mask_tokens.weight.grad is not None


def test_frozen_litemedsam_weights_and_batchnorm_statistics_survive_training_steps():
    from sam_nnunet.encoders.litemedsam import packaged_checkpoint
    from sam_nnunet.encoders.checkpoint import read_state_dict

    path = packaged_checkpoint()
    net = ZAP25DNetwork(1, 3, "litemedsam")
    net.load_pretrained(read_state_dict(path), path)
    frozen = {k: v.clone() for k, v in net.state_dict().items()
              if not k.startswith("decoder.") and isinstance(v, torch.Tensor)}
    decoder = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    optimizer = torch.optim.AdamW(net.trainable_parameters(), lr=1e-3, weight_decay=1e-5)
    net.train()
    target = torch.randint(0, 3, (2, 8, 8, 4))
    for _ in range(2):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(torch.randn(2, 1, 8, 8, 4)), target)
        loss.backward()
        optimizer.step()
    for k, v in net.state_dict().items():  # parameters and BatchNorm buffers (running mean/var, counters)
        if k in frozen:
            assert torch.equal(v, frozen[k]), f"frozen {k} changed"
    assert any(not torch.equal(v, decoder[k]) for k, v in net.decoder.state_dict().items())


def test_sliding_window_prediction_with_mirroring(tiny_sam_checkpoint):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

    net = _loaded(tiny_sam_checkpoint, classes=3)
    # what the predictor reads: the patch size from the configuration, the labels from dataset.json
    configuration = ConfigurationManager({"patch_size": [8, 12, 8], "architecture": {
        "network_class_name": "sam_nnunet.networks.zap25d.ZAP25DNetwork", "arch_kwargs": {}, "_kw_requires_import": []}})
    dataset_json = {"labels": {"background": 0, "a": 1, "b": 2}, "channel_names": {"0": "MRI"},
                    "file_ending": ".nii.gz"}
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                device=torch.device("cpu"), perform_everything_on_device=False)
    predictor.manual_initialization(net, PlansManager({}), configuration, None, dataset_json, "ZAP25DSAMTrainer",
                                    (0, 1, 2))
    image = torch.randn(1, 11, 12, 5)  # two tiles on the first axis, smaller than the patch on the third
    logits = predictor.predict_sliding_window_return_logits(image)
    assert logits.shape == (3, 11, 12, 5) and torch.isfinite(logits).all()


def test_every_output_can_start_from_the_single_mask_token(tiny_sam_checkpoint):
    """mask_token_source=0: each output is SAM's output 0 at the start (the token MedSAM / LiteMedSAM trained), for
    the outputs on SAM's own tokens and for the added ones beyond four."""
    path, state = tiny_sam_checkpoint
    cfg = SAM_VIT_CONFIGS["vit_test"]
    torch.manual_seed(0)
    embeddings, pe = torch.randn(1, cfg.out_chans, 5, 7), torch.randn(1, cfg.out_chans, 5, 7)
    dense = torch.randn(1, cfg.out_chans, 1, 1)
    default = PromptFreeMaskDecoder(cfg, num_masks=5)
    default.load_pretrained(state, path)
    shared = PromptFreeMaskDecoder(cfg, num_masks=5, token_source=0)
    shared.load_pretrained(state, path)
    with torch.no_grad():
        d, s = default(embeddings, pe, dense), shared(embeddings, pe, dense)
    assert not torch.allclose(d[0, 1], d[0, 0])  # SAM's own tokens differ
    for i in range(5):  # all token outputs equal (the tokens attend to each other: equal tokens, equal outputs)
        torch.testing.assert_close(s[0, i], s[0, 0])
    assert not torch.allclose(s[0, 0], d[0, 0])  # token 1..3 changed, so the token set the transformer sees changed
    with pytest.raises(ValueError, match="token_source 2"):
        PromptFreeMaskDecoder(cfg, num_masks=2, token_source=2)
