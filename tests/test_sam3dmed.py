"""SAM3DMedTrainer (3DMedSAM): inflated 3D patch embedding, token geometry from the plan, network shapes and deep
supervision, pretrained loading through the trainer, frozen weights through training, parameter counts."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from segment_anything.modeling.image_encoder import PatchEmbed

from helpers import make_trainer
from sam_nnunet.blocks.conv_adapter import ConvAdapter3d
from sam_nnunet.blocks.inflated_patch_embed import InflatedPatchEmbed3d, fold_upsampling_into_kernel
from sam_nnunet.encoders.checkpoint import CheckpointError
from sam_nnunet.encoders.sam_vit import SAM_VIT_CONFIGS, build_sam_image_encoder
from sam_nnunet.encoders.surgery import inflate_conv2d_to_3d, rel_pos_for_window
from sam_nnunet.networks.sam3dmed import MAX_TOKENS, SAM3DMedNetwork, deep_supervision_scales, plan_token_levels
from sam_nnunet.trainers.sam3dmed import SAM3DMedTrainer


# ---- the inflated patch embedding ----------------------------------------------------------------------------
def _sam_patch_embed(dim: int = 8, seed: int = 0) -> PatchEmbed:
    torch.manual_seed(seed)
    embed = PatchEmbed(kernel_size=(16, 16), stride=(16, 16), in_chans=3, embed_dim=dim).double()
    with torch.no_grad():
        embed.proj.bias.normal_()
    return embed


def test_inflated_kernel_on_identical_slices_is_the_2d_convolution():
    torch.manual_seed(0)
    w2d, bias = torch.randn(8, 3, 16, 16, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    image = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    expected = F.conv2d(image, w2d, bias, stride=16)
    for depth in (1, 2, 4, 5):
        volume = image[:, :, None].expand(-1, -1, 3 * depth, -1, -1)
        out = F.conv3d(volume, inflate_conv2d_to_3d(w2d, depth), bias, stride=(depth, 16, 16))
        assert out.shape == (2, 8, 3, 4, 3)
        for d in range(3):
            assert torch.allclose(out[:, :, d], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("stride", [(4, 4, 4), (1, 4, 4), (2, 8, 8), (3, 2, 2), (2, 16, 16)])
def test_3d_patch_embedding_of_identical_slices_is_sams_embedding(stride):
    """Every depth token of a volume of identical slices is SAM's 2D embedding of the slice upsampled in-plane by
    16 / stride (the slice itself at stride 16): the pretrained patch embedding carries over exactly."""
    sam = _sam_patch_embed()
    ours = InflatedPatchEmbed3d(8, stride).double()
    ours.load_inflated_kernel(inflate_conv2d_to_3d(sam.proj.weight, stride[0]), sam.proj.bias)
    torch.manual_seed(1)
    sd, sh, sw = stride
    image = torch.randn(1, 3, 5 * sh, 3 * sw, dtype=torch.float64)
    volume = image[:, :, None].expand(-1, -1, 2 * sd, -1, -1)
    tokens = ours(volume)  # (1, 2, 5, 3, C)
    upsampled = F.interpolate(image, scale_factor=(16 // sh, 16 // sw), mode="bilinear", align_corners=False)
    expected = sam(upsampled)  # (1, 5, 3, C)
    assert tokens.shape == (1, 2, 5, 3, 8)
    for d in range(2):
        torch.testing.assert_close(tokens[:, d], expected, rtol=0, atol=1e-11)


@pytest.mark.parametrize("stride", [(4, 4, 4), (1, 2, 8), (2, 8, 8), (1, 1, 1)])
def test_folded_kernel_equals_upsampling_then_inflated_16x16_kernel(stride):
    """On any volume (not only identical slices), and at the borders: our embedding = bilinear in-plane
    upsampling of the patch followed by the inflated 16x16 kernel at stride (kd, 16, 16)."""
    torch.manual_seed(2)
    w2d, bias = torch.randn(6, 3, 16, 16, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    sd, sh, sw = stride
    ours = InflatedPatchEmbed3d(6, stride).double()
    ours.load_inflated_kernel(inflate_conv2d_to_3d(w2d, sd), bias)
    x = torch.randn(2, 3, 3 * sd, 4 * sh, 5 * sw, dtype=torch.float64)
    up = F.interpolate(x, scale_factor=(1, 16 // sh, 16 // sw), mode="trilinear", align_corners=False)
    reference = F.conv3d(up, inflate_conv2d_to_3d(w2d, sd), bias, stride=(sd, 16, 16)).permute(0, 2, 3, 4, 1)
    torch.testing.assert_close(ours(x), reference, rtol=0, atol=1e-11)


def test_patch_embedding_kernel_shapes_and_errors():
    embed = InflatedPatchEmbed3d(8, (4, 4, 4))
    assert tuple(embed.proj.weight.shape) == (8, 3, 4, 6, 6)  # stride + 2 source voxels in-plane
    assert tuple(InflatedPatchEmbed3d(8, (2, 16, 16)).proj.weight.shape) == (8, 3, 2, 16, 16)
    with pytest.raises(ValueError, match="divide"):
        InflatedPatchEmbed3d(8, (4, 3, 3))
    with pytest.raises(ValueError, match="folds"):
        embed.load_inflated_kernel(torch.zeros(8, 3, 4, 14, 14), torch.zeros(8))
    with pytest.raises(ValueError, match="inflated over 4 slices"):
        embed.load_inflated_kernel(torch.zeros(8, 3, 2, 16, 16), torch.zeros(8))
    with pytest.raises(ValueError, match="Conv3d weight"):
        fold_upsampling_into_kernel(torch.zeros(8, 3, 16, 16), (4, 4))


# ---- geometry --------------------------------------------------------------------------------------------------
def test_token_levels_come_from_the_plan():
    # nnU-Net's default plans: hippocampus 3d_fullres, an isotropic CT plan, an anisotropic MRI plan
    hippocampus = plan_token_levels([40, 56, 40], [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]])
    assert hippocampus == [[2, 2, 2], [2, 2, 2]]
    ct = plan_token_levels([128, 128, 128], [[1, 1, 1]] + [[2, 2, 2]] * 5)
    assert ct == [[2, 2, 2], [2, 2, 2]]  # 32^3 tokens, 3DSAM-adapter's grid
    prostate = plan_token_levels([20, 320, 256], [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2],
                                                  [1, 2, 2], [1, 2, 2]])
    assert prostate == [[1, 2, 2], [1, 2, 2], [2, 2, 2]]  # (1, 4, 4) would be 102,400 tokens
    # too few stages in the plan: factors of 2 appended (depth only while it keeps >= 2 tokens)
    assert plan_token_levels([8, 16, 16], [[1, 1, 1], [2, 2, 2]]) == [[2, 2, 2], [2, 2, 2]]
    assert plan_token_levels([2, 16, 16], [[1, 1, 1]]) == [[1, 2, 2], [1, 2, 2]]
    # never coarser in-plane than SAM's patch size, even where the token budget asks for more
    huge = plan_token_levels([1024, 1024, 1024], [[1, 1, 1]] + [[2, 2, 2]] * 7)
    stride = [math.prod(f[a] for f in huge) for a in range(3)]
    assert stride == [16, 16, 16]
    assert math.prod(1024 // s for s in stride) > MAX_TOKENS  # 64^3 tokens: the cap stopped it, not the budget


def test_rel_pos_tables_are_cropped_to_the_window():
    table = torch.arange(27, dtype=torch.float32)[:, None].repeat(1, 4)  # SAM's window-14 table, row = distance
    cropped = rel_pos_for_window(table, 8)
    assert cropped.shape == (15, 4) and cropped[0, 0] == 13 - 7 and cropped[7, 0] == 13  # distance 0 stays 0
    assert rel_pos_for_window(table, 14) is table or torch.equal(rel_pos_for_window(table, 14), table)
    assert rel_pos_for_window(table[:7], 8).shape == (15, 4)  # too short: interpolated


def test_adapter_starts_as_identity_and_learns():
    adapter = ConvAdapter3d(16, 4)
    x = torch.randn(2, 3, 4, 5, 16)
    assert torch.equal(adapter(x), x)
    adapter(x).square().sum().backward()
    assert adapter.up.weight.grad.abs().sum() > 0


# ---- the network -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels,classes,patch,levels", [
    (1, 3, (20, 28, 24), [[2, 2, 2], [2, 2, 2]]),
    (2, 2, (13, 22, 17), [[1, 2, 2], [2, 2, 2]]),
    (3, 4, (9, 11, 7), [[2, 2, 2], [2, 2, 2]]),
    (4, 2, (6, 21, 19), [[1, 2, 2], [1, 2, 2], [2, 2, 2]]),
])
def test_network_shapes_with_and_without_deep_supervision(channels, classes, patch, levels):
    torch.manual_seed(0)
    net = SAM3DMedNetwork(channels, classes, "vit_test", levels, deep_supervision=True)
    x = torch.randn(2, channels, *patch)
    outputs = net(x)
    # the shapes nnU-Net's deep-supervision target downsampling produces for the trainer's scales
    targets = DownsampleSegForDSTransform(deep_supervision_scales(levels))(
        segmentation=torch.zeros(1, *patch, dtype=torch.uint8))["segmentation"]
    assert len(outputs) == len(levels) + 1
    assert [tuple(o.shape) for o in outputs] == [(2, classes) + tuple(t.shape[1:]) for t in targets]
    outputs[0].mean().backward()

    # inference builds the network without deep supervision: same parameter names, same full-resolution logits
    plain = SAM3DMedNetwork(channels, classes, "vit_test", levels, deep_supervision=False)
    plain.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x)[0])


def test_network_on_meta_device_and_taps():
    with torch.device("meta"):
        net = SAM3DMedNetwork(1, 2, "vit_b")
    assert net.token_stride == (4, 4, 4) and net.taps == (3, 7, 11)
    assert net.parameter_notes()["tapped_blocks"] == [4, 8, 12]


# ---- pretrained weights ------------------------------------------------------------------------------------------
def test_load_pretrained_errors_name_the_problem(tiny_sam_checkpoint):
    _, state = tiny_sam_checkpoint
    net = SAM3DMedNetwork(1, 2, "vit_test")
    without = {k: v for k, v in state.items() if not k.startswith("image_encoder.patch_embed.")}
    with pytest.raises(CheckpointError, match="no SAM patch embedding"):
        net.load_pretrained(without, "ckpt.pth")
    wrong = dict(state)
    wrong["image_encoder.patch_embed.proj.weight"] = torch.zeros(64, 3, 8, 8)
    with pytest.raises(CheckpointError, match="does not match"):
        net.load_pretrained(wrong, "ckpt.pth")
    with pytest.raises(CheckpointError, match="does not match"):  # another model size
        SAM3DMedNetwork(1, 2, "vit_b", local_window=2, global_window=2).load_pretrained(state, "ckpt.pth")


@pytest.fixture
def trainer_with_checkpoint(sam_env, tiny_sam_checkpoint, synthetic_dataset, tmp_path):
    path, state = tiny_sam_checkpoint
    sam_env.setenv("nnUNet_SAM_checkpoint", path)
    sam_env.setenv("nnUNet_results", str(tmp_path / "results"))
    sam_env.setenv("nnUNet_n_proc_DA", "0")  # in-process data augmentation: quick start-up, no worker processes
    trainer = make_trainer(SAM3DMedTrainer, synthetic_dataset)
    trainer.initialize()
    return trainer, state


def test_trainer_loads_pretrained_weights_after_nnunet_built_the_network(trainer_with_checkpoint):
    trainer, state = trainer_with_checkpoint
    net = trainer.sam_network
    arch = trainer.plans_manager.plans["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"] == SAM3DMedTrainer.network_class
    assert arch["arch_kwargs"]["level_strides"] == [list(f) for f in net.level_strides]
    # every SAM weight kept by the method equals the checkpoint's
    vit_state = net.vit.state_dict()
    for key, value in vit_state.items():
        assert torch.equal(value, state["image_encoder." + key].to(value.dtype)), key
    # the 3D patch embedding is the checkpoint's kernel, inflated: identical slices give SAM's embedding
    sam = PatchEmbed(kernel_size=(16, 16), stride=(16, 16), in_chans=3, embed_dim=64)
    sam.load_state_dict({"proj.weight": state["image_encoder.patch_embed.proj.weight"],
                         "proj.bias": state["image_encoder.patch_embed.proj.bias"]})
    sd, sh, sw = net.token_stride
    image = torch.randn(1, 3, 3 * sh, 2 * sw)
    tokens = net.patch_embed(image[:, :, None].expand(-1, -1, sd, -1, -1))[:, 0]
    upsampled = F.interpolate(image, scale_factor=(16 // sh, 16 // sw), mode="bilinear", align_corners=False)
    torch.testing.assert_close(tokens, sam(upsampled), rtol=1e-5, atol=1e-5)
    # depth tables start from the pretrained in-plane tables
    attn = net.vit.blocks[0].attn
    torch.testing.assert_close(net.rel_pos_d[0], 0.5 * (rel_pos_for_window(attn.rel_pos_h, net.local_window) +
                                                        rel_pos_for_window(attn.rel_pos_w, net.local_window)))
    assert net.pretrained_info["sha256"] == trainer.sam_choice.sha256


def test_training_steps_keep_frozen_weights_and_use_deep_supervision(trainer_with_checkpoint):
    trainer, _ = trainer_with_checkpoint
    net = trainer.sam_network
    assert trainer.enable_deep_supervision and net.decoder.deep_supervision
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach().clone() for n, b in net.named_buffers()}
    trainable = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    assert len(frozen) > 0 and len(trainable) > 0
    trained_names = {n for group in trainer.optimizer.param_groups for p in group["params"]
                     for n, q in net.named_parameters() if q is p}
    assert trained_names == set(trainable)  # frozen weights have no optimiser state

    trainer.on_train_start()
    try:
        batch = next(trainer.dataloader_train)
        assert len(batch["target"]) == len(net.level_strides) + 1
        with torch.no_grad():
            outputs = trainer.network(batch["data"])
        assert [o.shape[2:] for o in outputs] == [t.shape[2:] for t in batch["target"]]
        losses = [trainer.train_step(next(trainer.dataloader_train))["loss"] for _ in range(3)]
    finally:
        trainer.on_train_end()
    assert all(torch.isfinite(torch.as_tensor(l)) for l in losses)
    for n, p in net.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen parameter {n} changed"
    for n, b in net.named_buffers():
        assert torch.equal(b, buffers[n]), f"buffer {n} changed"
    changed = [n for n, p in net.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    for part in ("patch_embed.", "adapters.", "decoder.", "rel_pos_d.", "vit.blocks.0.norm1."):
        assert any(n.startswith(part) for n in changed), part


# ---- parameter counts ----------------------------------------------------------------------------------------------
def test_parameter_counts_in_info(capsys):
    from sam_nnunet.cli import main

    main(["info", "--trainer", "SAM3DMedTrainer", "--encoder", "vit_b", "--inputs", "1", "--outputs", "2", "--json"])
    counts = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        sam = build_sam_image_encoder("vit_b")
    cfg = SAM_VIT_CONFIGS["vit_b"]
    count = lambda m: sum(p.numel() for p in m.parameters())
    norms = sum(count(b.norm1) + count(b.norm2) for b in sam.blocks)
    # frozen: SAM's image encoder without its 2D patch embedding and neck, less the trained LayerNorms
    assert counts["frozen"] == count(sam) - count(sam.patch_embed) - count(sam.neck) - norms
    # the inflated patch embedding (stride 4: 4 slices x 6 x 6 voxels) and the norms are pretrained, not added
    embed = cfg.embed_dim * 3 * 4 * 6 * 6 + cfg.embed_dim
    assert counts["trainable"] - counts["added"] == embed + norms
    assert counts["token_stride"] == [4, 4, 4] and counts["total"] == counts["trainable"] + counts["frozen"]
    assert 3_000_000 < counts["trainable"] < 10_000_000  # most of SAM stays frozen


def test_torch_compile_captures_one_graph():
    """nnU-Net compiles the network on CUDA by default: no graph break, same outputs, gradients flow."""
    torch.manual_seed(0)
    net = SAM3DMedNetwork(2, 3, "vit_test", deep_supervision=True)
    x = torch.randn(2, 2, 13, 18, 9)
    expected = net(x)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)  # fullgraph: any graph break fails
    outputs = compiled(x)
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    sum(o.sum() for o in outputs).backward()
    assert net.patch_embed.proj.weight.grad is not None and net.decoder.heads[0].weight.grad is not None


def test_region_based_training_with_deep_supervision(synthetic_dataset, sam_env, tmp_path):
    """nnU-Net's region-based training (sigmoid per region, Dice+BCE) through every deep-supervision output."""
    import numpy as np
    from batchgenerators.utilities.file_and_folder_operations import join, load_json

    sam_env.setenv("nnUNet_SAM_encoder", "vit_test")
    sam_env.setenv("nnUNet_SAM_allow_random_init", "1")
    sam_env.setenv("nnUNet_results", str(tmp_path / "results"))
    sam_env.setenv("nnUNet_n_proc_DA", "0")
    plans = load_json(join(synthetic_dataset["preprocessed"], "nnUNetPlans.json"))
    plans["continue_training"] = False
    dataset_json = load_json(join(synthetic_dataset["preprocessed"], "dataset.json"))
    dataset_json["labels"] = {"background": 0, "whole": [1, 2], "posterior": 2}
    dataset_json["regions_class_order"] = [1, 2]
    trainer = SAM3DMedTrainer(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    trainer.on_train_start()
    try:
        assert trainer.label_manager.has_regions and trainer.label_manager.num_segmentation_heads == 2
        trainer.on_train_epoch_start()
        loss = trainer.train_step(next(trainer.dataloader_train))["loss"]
        assert np.isfinite(loss)
        trainer.on_validation_epoch_start()
        out = trainer.validation_step(next(trainer.dataloader_val))
        assert out["tp_hard"].shape == (2,)  # one Dice per region
    finally:
        trainer.on_train_end()
