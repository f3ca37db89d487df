"""ZAP25DSAMTrainer_prompted / ZAP25DPromptedNetwork: zero added parameters, the clicks' geometry on every plane,
SAM's prompt path, per-output reading of clicks, the prompt-free mode, compile safety, nnU-Net's training steps."""
import glob
import json
import os

import numpy as np
import pytest
import torch
from helpers import make_trainer

from sam_nnunet import cli
from sam_nnunet.blocks.plane_prompts import SAM_NEGATIVE, SAM_NOT_A_POINT, SAM_POSITIVE, plane_axes, \
    sam_point_labels
from sam_nnunet.decoders.sam_mask import build_sam_mask_decoder
from sam_nnunet.encoders.sam_vit import SAM_VIT_CONFIGS
from sam_nnunet.networks.zap25d import ZAP25DNetwork
from sam_nnunet.networks.zap25d_prompted import ZAP25DPromptedNetwork
from sam_nnunet.prompts.clicks import NO_CLICK, click_label


@pytest.mark.parametrize("encoder", ["vit_b", "litemedsam"])
def test_same_parameters_as_zap25d_prompt_encoder_frozen(capsys, encoder):
    counts = {}
    for trainer in ("ZAP25DSAMTrainer", "ZAP25DSAMTrainer_prompted"):
        cli.main(["info", "--trainer", trainer, "--encoder", encoder, "--inputs", "1", "--outputs", "2", "--json"])
        counts[trainer] = json.loads(capsys.readouterr().out)
    zap, prompted = counts["ZAP25DSAMTrainer"], counts["ZAP25DSAMTrainer_prompted"]
    assert prompted["trainable"] == zap["trainable"] == 3_506_304  # the paper's count, for both encoders
    assert prompted["frozen"] == zap["frozen"] and prompted["added"] == zap["added"] == 0
    net = ZAP25DPromptedNetwork(1, 3, "vit_test")
    assert not any(p.requires_grad for p in net.prompt_encoder.parameters())
    assert all(n.startswith("decoder.") for n, p in net.named_parameters() if p.requires_grad)


def test_how_each_mask_output_reads_a_click():
    labels = torch.tensor([[click_label(1), click_label(2), click_label(0), click_label(1, negative=True), NO_CLICK]])
    # label-based, outputs = classes 1 and 2 (after the background channel): exclusive classes
    expected = torch.tensor([[[SAM_POSITIVE, SAM_NEGATIVE, SAM_NEGATIVE, SAM_NEGATIVE, SAM_NOT_A_POINT],
                              [SAM_NEGATIVE, SAM_POSITIVE, SAM_NEGATIVE, SAM_NOT_A_POINT, SAM_NOT_A_POINT]]])
    assert torch.equal(sam_point_labels(labels, 2, first_channel=1, exclusive=True), expected)
    # region-based, outputs = regions 0, 1, 2: a click speaks about its own region only
    labels = torch.tensor([[click_label(0), click_label(1, negative=True), NO_CLICK]])
    expected = torch.tensor([[[SAM_POSITIVE, SAM_NOT_A_POINT, SAM_NOT_A_POINT],
                              [SAM_NOT_A_POINT, SAM_NEGATIVE, SAM_NOT_A_POINT],
                              [SAM_NOT_A_POINT, SAM_NOT_A_POINT, SAM_NOT_A_POINT]]])
    assert torch.equal(sam_point_labels(labels, 3, first_channel=0, exclusive=False), expected)


def test_a_click_is_encoded_at_the_position_of_its_voxel_on_every_plane():
    """LiteMedSAM's token is one voxel in-plane (x4 upsampling, stride 4): the positional encoding SAM's prompt
    encoder gives a click must be the image's positional encoding at the click's voxel, on all three planes (a swap
    of rows and columns, an off-by-one or a wrong scale fails). The patch is padded inside the network (7 -> 8)."""
    torch.manual_seed(0)
    net = ZAP25DPromptedNetwork(1, 3, "litemedsam")
    spatial, padded = (7, 12, 16), (8, 12, 16)
    clicks = torch.tensor([[[6.0, 2.0, 13.0], [1.0, 10.0, 0.0]]])
    labels = torch.tensor([[click_label(1), click_label(2)]])
    prompts = net.plane_prompts(clicks, labels, spatial)
    positive = net.prompt_encoder.point_embeddings[1].weight[0]
    for axis in (2, 3, 4):
        sparse, present, has_click, _ = prompts[axis]
        assert sparse.shape == (2, 3, 256) and has_click.tolist() == [True]  # (B * k, N + SAM's padding point, C)
        assert present.all()  # label-based: every click speaks to every output; SAM's padding point is kept
        rows, cols = plane_axes(axis)
        a, b = padded[rows], padded[cols]
        assert net.encoder.grid(a, b) == (a, b)
        image_pe = net.prompt_encoder.pe_layer((a, b))  # (C, a, b), as the decoder receives it
        for n, j in ((0, 0), (1, 1)):  # click n is positive for output j
            row, col = clicks[0, n, rows].long(), clicks[0, n, cols].long()
            torch.testing.assert_close(sparse[j, n] - positive, image_pe[:, row, col], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sparse[0, 2], net.prompt_encoder.not_a_point_embed.weight[0])


@pytest.mark.parametrize("regions", [False, True])
def test_empty_click_slots_do_not_change_the_prediction(regions):
    """One click with 0, 2 or 7 empty slots after it (and, region-based, a click on another region, which says
    nothing to this one): the same logits, as the published model with that one click (no padding token but SAM's
    own). Before, every empty slot was a SAM "not a point" token in the decoder's attention."""
    prompted, _ = _pair(background_channel=not regions)
    x = torch.randn(1, 1, 8, 8, 8)
    click, label = torch.tensor([[[3.0, 4.0, 5.0]]]), torch.tensor([[click_label(1)]])
    with torch.no_grad():
        outputs = [prompted(x, torch.cat([click, torch.zeros(1, empty, 3)], 1),
                            torch.cat([label, torch.full((1, empty), NO_CLICK)], 1)) for empty in (0, 2, 7)]
        for out in outputs[1:]:
            torch.testing.assert_close(out, outputs[0], rtol=1e-6, atol=1e-6)
        if regions:  # a click on region 0 is no token of region 1's decoding
            other = prompted(x, torch.tensor([[[3.0, 4.0, 5.0], [1.0, 1.0, 1.0]]]),
                             torch.tensor([[click_label(1), click_label(0)]]))
            torch.testing.assert_close(other[:, 1], outputs[0][:, 1], rtol=1e-6, atol=1e-6)
            assert (other[:, 0] - outputs[0][:, 0]).abs().amax() > 1e-3
        # and the padding tokens matter where they are not left out: SAM's decoder has no padding mask
        planes, spatial = prompted.embed(x)
        prompts = prompted.plane_prompts(torch.cat([click, torch.zeros(1, 7, 3)], 1),
                                         torch.cat([label, torch.full((1, 7), NO_CLICK)], 1), x.shape[2:])
        unmasked = {axis: p._replace(present=torch.ones_like(p.present)) for axis, p in prompts.items()}
        assert (prompted.decode(planes, spatial, unmasked) - outputs[0]).abs().amax() > 1e-6


def test_masked_transformer_equals_sams_when_every_token_is_present():
    from sam_nnunet.decoders.sam_mask import two_way_transformer

    prompted, _ = _pair()
    transformer = prompted.decoder.sam.transformer
    torch.manual_seed(1)
    image, pe, tokens = torch.randn(2, 32, 3, 5), torch.randn(2, 32, 3, 5), torch.randn(2, 7, 32)
    with torch.no_grad():
        expected = transformer(image, pe, tokens)
        ours = two_way_transformer(transformer, image, pe, tokens, torch.ones(2, 7, dtype=torch.bool))
        dropped = transformer(image, pe, tokens[:, :4])
        masked = two_way_transformer(transformer, image, pe, tokens, torch.arange(7).expand(2, 7) < 4)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(masked[0][:, :4], dropped[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(masked[1], dropped[1], rtol=1e-6, atol=1e-6)


def _pair(classes=3, **kwargs):
    torch.manual_seed(0)
    prompted = ZAP25DPromptedNetwork(1, classes, "vit_test", window_size=4, **kwargs).eval()
    with torch.no_grad():  # a random but non-trivial prompt encoder (the official init has zero point embeddings)
        for p in prompted.prompt_encoder.parameters():
            p.normal_()
    plain = ZAP25DNetwork(1, classes, "vit_test", window_size=4, **kwargs).eval()
    plain.load_state_dict(prompted.state_dict())
    return prompted, plain


def test_without_clicks_it_is_zap25d_and_clicks_change_only_their_sample():
    prompted, plain = _pair()
    x = torch.randn(2, 1, 9, 12, 6)
    clicks = torch.tensor([[[2.0, 3.0, 1.0], [5.0, 6.0, 2.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[click_label(1), click_label(2)], [NO_CLICK, NO_CLICK]])
    with torch.no_grad():
        automatic = plain(x)
        assert torch.equal(prompted(x), automatic)
        assert torch.equal(prompted(x, clicks[:, :0], labels[:, :0]), automatic)  # N = 0
        clicked = prompted(x, clicks, labels)
    # a sample whose slots are all empty: ZAP's "no points" (its prompt-free pass runs without the clicked sample:
    # another batch size, which CPU kernels may round differently in the last bit)
    torch.testing.assert_close(clicked[1], automatic[1])
    assert (clicked[0] - automatic[0]).abs().amax() > 1e-3


def test_the_prompt_free_pass_runs_only_for_samples_without_a_prompt():
    prompted, _ = _pair()
    x = torch.randn(2, 1, 9, 12, 6)
    clicks = torch.tensor([[[2.0, 3.0, 1.0]], [[5.0, 6.0, 2.0]]])
    rows = []
    prompted.decoder.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    with torch.no_grad():
        both = prompted(x, clicks, torch.tensor([[click_label(1)], [click_label(2)]]))
        calls_both, rows[:] = list(rows), []
        one = prompted(x, clicks, torch.tensor([[click_label(1)], [NO_CLICK]]))
        calls_one = list(rows)
        alone = [prompted(x[i:i + 1], clicks[i:i + 1], torch.tensor([[click_label(i + 1)]])) for i in range(2)]
    # three orientations; every sample prompted: one decoder call per orientation, k = 2 passes per pseudo-slice
    assert len(calls_both) == 3 and len(calls_one) == 6
    # the second sample alone has no prompt: its pseudo-slices once more, prompt-free
    assert [calls_one[i + 1] for i in range(0, 6, 2)] == [r // 4 for r in calls_both]
    torch.testing.assert_close(both, torch.cat(alone), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one[0], alone[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one[1], prompted(x[1:])[0], atol=1e-5, rtol=1e-5)


def test_one_pseudo_slice_is_sams_own_prompted_decoder(tiny_sam_checkpoint):
    """One foreground class: decoding a pseudo-slice with the clicks is SAM's mask decoder with SAM's prompt encoder
    output for the projected points (the paper's model)."""
    path, state = tiny_sam_checkpoint
    net = ZAP25DPromptedNetwork(1, 2, "vit_test", window_size=4)
    net.load_pretrained(state, path)
    net.eval()
    official = build_sam_mask_decoder(SAM_VIT_CONFIGS["vit_test"])
    official.load_state_dict({k[len("mask_decoder."):]: v for k, v in state.items() if k.startswith("mask_decoder.")})
    x = torch.randn(1, 1, 4, 8, 12)  # one pseudo-slice along D
    clicks, labels = torch.tensor([[[1.0, 2.0, 9.0], [3.0, 6.0, 1.0]]]), torch.tensor([[2, 0]])
    with torch.no_grad():
        planes, _ = net.embed(x)
        plane = planes[2]
        prompt = net.plane_prompts(clicks, labels, x.shape[2:])[2]
        ours = net._decode(plane, prompt)
        points = torch.tensor([[[9.0, 2.0], [1.0, 6.0]]])  # (x, y) = (W, H) voxels, scaled to SAM's frame
        points = (points + 0.5) / torch.tensor([12.0, 8.0]) * torch.tensor(net.prompt_encoder.input_image_size) - 0.5
        tokens, _ = net.prompt_encoder(points=(points, torch.tensor([[1, 0]])), boxes=None, masks=None)
        torch.testing.assert_close(prompt[0], tokens)
        expected, _ = official.predict_masks(plane.embeddings, plane.image_pe, tokens,
                                             plane.dense.expand(1, -1, *plane.embeddings.shape[-2:]))
    torch.testing.assert_close(ours, expected[:, :1], rtol=1e-5, atol=1e-5)


def test_each_output_reads_the_clicks_for_it():
    """Label-based, two classes: a click on class 1 is negative for class 2, exactly as a background click there; for
    class 1 it is positive, unlike the background click."""
    prompted, _ = _pair()
    x = torch.randn(1, 1, 8, 8, 8)
    where = torch.tensor([[[3.0, 4.0, 5.0]]])
    with torch.no_grad():
        on_class_1 = prompted(x, where, torch.tensor([[click_label(1)]]))
        on_background = prompted(x, where, torch.tensor([[click_label(0)]]))
    torch.testing.assert_close(on_class_1[:, 2], on_background[:, 2])
    assert (on_class_1[:, 1] - on_background[:, 1]).abs().amax() > 1e-3


def test_torch_compile_captures_one_graph_with_clicks():
    prompted, _ = _pair()
    prompted.train()
    x = torch.randn(2, 1, 5, 8, 4)
    clicks = torch.tensor([[[2.0, 3.0, 1.0], [1.0, 6.0, 2.0], [0.0, 0.0, 0.0]]]).repeat(2, 1, 1)
    labels = torch.tensor([[click_label(1), click_label(2), NO_CLICK], [NO_CLICK] * 3])
    expected = prompted(x, clicks, labels)
    compiled = torch.compile(prompted, backend="eager", fullgraph=True)  # any graph break fails (as ZAP's own test)
    out = compiled(x, clicks, labels)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    out.sum().backward()
    assert prompted.decoder.sam.mask_tokens.weight.grad is not None


@pytest.fixture
def results(sam_env, tmp_path):
    sam_env.setenv("nnUNet_results", str(tmp_path / "results"))
    sam_env.setenv("nnUNet_n_proc_DA", "0")  # in-process data augmentation
    return sam_env


def test_training_and_validation_steps_with_the_papers_clicks(synthetic_dataset, results, tiny_sam_checkpoint):
    from sam_nnunet.trainers import ZAP25DSAMTrainer_prompted

    path, _ = tiny_sam_checkpoint
    results.setenv("nnUNet_SAM_checkpoint", path)
    trainer = make_trainer(ZAP25DSAMTrainer_prompted, synthetic_dataset)
    # the paper's clicks only (boxes and correction rounds: test_boxes_refinement.py)
    trainer.train_box_probability = trainer.refine_probability = 0
    trainer.on_train_start()
    net = trainer.sam_network
    assert type(net).__name__ == "ZAP25DPromptedNetwork"
    log = "".join(open(f).read() for f in glob.glob(os.path.join(trainer.output_folder, "training_log_*.txt")))
    assert "1-3 (uniform) distinct positive per class present + 0 anywhere" in log and "0 added" in log

    seen = []
    original_forward = net.forward

    def spy(x, point_coords=None, point_labels=None, **more):
        seen.append((x.shape, point_coords.clone(), point_labels.clone()))
        return original_forward(x, point_coords, point_labels, **more)

    net.forward = spy
    frozen = {k: v.clone() for k, v in net.state_dict().items()
              if not k.startswith("decoder.") and isinstance(v, torch.Tensor)}
    decoder = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    trainer.on_train_epoch_start()
    torch.manual_seed(0)
    losses = [trainer.train_step(next(trainer.dataloader_train))["loss"] for _ in range(2)]
    assert all(np.isfinite(losses))
    heads = trainer.label_manager.num_segmentation_heads  # background + 2 classes
    for shape, coords, labels in seen:
        assert labels.shape == (shape[0], 3 * (heads - 1))  # 3 slots per class, no random clicks
        for b in range(shape[0]):
            for c in range(heads - 1):
                slots = labels[b, 3 * c:3 * c + 3]
                used = int((slots != NO_CLICK).sum())
                assert used <= 3 and (slots[:used] == click_label(c + 1)).all()
                points = {tuple(p) for p in coords[b, 3 * c:3 * c + used].tolist()}
                assert used == 0 or len(points) == used  # distinct voxels
    for k, v in net.state_dict().items():  # encoder, prompt encoder (and every buffer) bit-identical
        if k in frozen:
            assert torch.equal(v, frozen[k]), f"frozen {k} changed"
    assert any(not torch.equal(v, decoder[k]) for k, v in net.decoder.state_dict().items())

    # boxes and simulated correction rounds through nnU-Net's own train_step (the rounds hand it the embeddings)
    seen.clear()
    trainer.train_box_probability, trainer.refine_probability = 1.0, 1.0
    loss = trainer.train_step(next(trainer.dataloader_train))["loss"]
    assert np.isfinite(loss) and len(seen) >= 2  # >= 1 round without gradient, then the training forward
    assert seen[-1][2].shape[1] > 3 * (heads - 1)  # the correction clicks' slots
    trainer.train_box_probability = trainer.refine_probability = 0

    seen.clear()
    trainer.on_validation_epoch_start()
    with torch.no_grad():
        trainer.validation_step(next(trainer.dataloader_val))
    (_, _, labels), = seen
    assert labels.shape[1] == 3 * (heads - 1)  # the paper validates with 3 clicks
    trainer.on_train_end()
