"""SAM2_3dMedTrainer: SAM 2 loading (official layout, size inference, errors), the network's shapes and invariants,
its losses, frozen weights through nnU-Net training, and the stock nnU-Net command line on hippocampus cases."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import make_trainer, run_cli, write_official_sam_checkpoint
from sam_nnunet.encoders.checkpoint import CheckpointError, read_state_dict
from sam_nnunet.encoders.pretrained import choose_encoder
from sam_nnunet.encoders.registry import identify_checkpoint
from sam_nnunet.encoders.sam2_hiera import SAM2_CONFIGS, build_sam2
from sam_nnunet.networks.sam2_3dmed import SAM2_3dMedNetwork

TRAINER = "SAM2_3dMedTrainer"


def write_official_sam2_checkpoint(path: str, name: str = "sam2_test", seed: int = 0) -> dict:
    """A SAM 2 checkpoint as Meta publishes them: ``{"model": SAM2Base state dict}``, random non-trivial weights."""
    torch.manual_seed(seed)
    model = build_sam2(name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = model.state_dict()
    torch.save({"model": state}, path)
    return state


@pytest.fixture(scope="module")
def tiny_sam2_checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("sam2ckpt") / "sam2_test.pt")
    return path, write_official_sam2_checkpoint(path)


def tiny_network(inputs=1, classes=3, regions=False, seed=0) -> SAM2_3dMedNetwork:
    torch.manual_seed(seed)
    return SAM2_3dMedNetwork(inputs, classes, encoder="sam2_test", regions=regions)


# ---- SAM 2 models and checkpoints ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, config", [("sam2_hiera_t", "configs/sam2/sam2_hiera_t.yaml"),
                                          ("sam2.1_hiera_t", "configs/sam2.1/sam2.1_hiera_t.yaml")])
def test_explicit_build_equals_official_hydra_build(name, config):
    from sam2.build_sam import build_sam2 as official_build

    ours = build_sam2(name).state_dict()
    official = official_build(config, ckpt_path=None, device="cpu").state_dict()
    assert ours.keys() == official.keys()
    assert all(ours[k].shape == official[k].shape for k in ours)


def test_every_size_and_release_is_inferred_from_a_checkpoint():
    with torch.device("meta"):  # real state dicts (shapes only) of the two tiny-encoder releases and the test size
        for name in ("sam2_hiera_t", "sam2.1_hiera_t", "sam2_test"):
            assert identify_checkpoint(build_sam2(name).state_dict(), "ckpt").name == name
    for name, cfg in SAM2_CONFIGS.items():  # every size: the keys and shapes inference reads
        state = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(cfg.embed_dim, 3, 7, 7),
                 **{f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(cfg.depth)},
                 "memory_attention.norm.weight": torch.zeros(cfg.d_model)}
        if cfg.version == "2.1":
            state["no_obj_embed_spatial"] = torch.zeros(1, cfg.mem_dim)
        assert identify_checkpoint(state, "ckpt").name == name


def test_parameter_counts_of_info():
    # built on the meta device, as `sam-nnunet info` does; the numbers in documentation/sam2_3dmed.md
    from sam_nnunet.info import parameter_counts

    counts = parameter_counts("SAM2_3dMedTrainer", "sam2.1_hiera_t", 1, 2)
    assert (counts["trainable"], counts["frozen"], counts["added"]) == (11_524_386, 27_769_698, 331_586)
    assert counts["image_encoder (frozen)"] == 27_219_136 and counts["srpp_head (training only)"] == 330_881
    assert parameter_counts("SAM2_3dMedTrainer", "sam2_hiera_t", 1, 4)["added"] == 331_586 + 2 * 256


def test_official_layout_round_trip(tiny_sam2_checkpoint, sam_env):
    path, state = tiny_sam2_checkpoint
    assert isinstance(torch.load(path, weights_only=True)["model"], dict)  # the official wrapping
    sam_env.setenv("nnUNet_SAM_checkpoint", path)
    choice = choose_encoder("SAM2_3dMedTrainer", ("sam2",))
    assert choice.encoder.name == "sam2_test"
    net = tiny_network()
    net.load_pretrained(choice.state_dict, path)
    loaded = net.sam2.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_bad_checkpoints_say_what_to_do(tiny_sam2_checkpoint, tmp_path, sam_env):
    path, state = tiny_sam2_checkpoint
    # a SAM (ViT) checkpoint for a SAM 2 trainer
    vit = str(tmp_path / "sam_vit_test.pth")
    write_official_sam_checkpoint(vit)
    sam_env.setenv("nnUNet_SAM_checkpoint", vit)
    with pytest.raises(CheckpointError, match="cannot use the encoder vit_test.*sam2.1_hiera_t"):
        choose_encoder("SAM2_3dMedTrainer", ("sam2",))
    # the size named differs from the checkpoint's
    sam_env.setenv("nnUNet_SAM_checkpoint", path)
    sam_env.setenv("nnUNet_SAM_encoder", "sam2.1_hiera_t")
    with pytest.raises(CheckpointError, match="is a sam2_test checkpoint but nnUNet_SAM_encoder=sam2.1_hiera_t"):
        choose_encoder("SAM2_3dMedTrainer", ("sam2",))
    # a Hiera of no official size
    odd = dict(state)
    odd["image_encoder.trunk.patch_embed.proj.weight"] = torch.zeros(40, 3, 7, 7)
    with pytest.raises(CheckpointError, match="width 40 and depth 5, which is none of the official sizes"):
        identify_checkpoint(odd, "odd.pt")
    # a checkpoint with a tensor missing fails the strict load, naming it
    partial = {k: v for k, v in state.items() if k != "memory_encoder.out_proj.weight"}
    with pytest.raises(CheckpointError, match="1 missing .e.g. memory_encoder.out_proj.weight"):
        tiny_network().load_pretrained(partial, "partial.pt")
    # a file that is no checkpoint
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(path, "rb").read()[:4096])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint.*truncated"):
        read_state_dict(str(truncated))


def test_importing_trainers_does_not_import_sam2():
    # sam2's import initialises Hydra globally; only building a SAM 2 network may do that
    code = "import sys, sam_nnunet.trainers, sam_nnunet.info; print('sam2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False" and out.stderr == ""


def test_missing_sam2_package_says_how_to_install(synthetic_dataset, monkeypatch, sam_env):
    from sam_nnunet.errors import UserFacingExit
    from sam_nnunet.trainers import SAM2_3dMedTrainer

    monkeypatch.setitem(sys.modules, "sam2", None)  # `import sam2` now fails as if it were not installed
    sam_env.setenv("nnUNet_SAM_encoder", "sam2_test")
    with pytest.raises(UserFacingExit, match=r"pip install 'sam-nnunet\[sam2\]'"):
        make_trainer(SAM2_3dMedTrainer, synthetic_dataset)


def test_frame_geometry():
    from sam_nnunet.blocks.frames import frame_geometry, frames_to_slices, slices_to_frames

    g = frame_geometry(56, 40)  # hippocampus: x4, padded to 224; the stride-4 masks are the voxel grid
    assert (g.rh, g.rw, g.size, g.grid, g.mask_hw) == (224, 160, 224, 14, (56, 40))
    i, j = torch.meshgrid(torch.arange(56.0), torch.arange(40.0), indexing="ij")
    x = (0.3 * i - 0.7 * j + 2).expand(3, 2, 56, 40)  # a linear image: bilinear resampling keeps it exactly
    frames = slices_to_frames(x, g)
    assert frames.shape == (3, 2, 224, 224) and frames[..., 160:].abs().sum() == 0
    # each 4x4 block of the frame is one voxel of the slice: block means (stand-ins for stride-4 logits) map back
    # onto the voxels (away from the border, where bilinear upsampling clamps)
    back = frames_to_slices(torch.nn.functional.avg_pool2d(frames, 4), g)
    torch.testing.assert_close(back[..., 1:-1, 1:-1], x[..., 1:-1, 1:-1])
    capped = frame_geometry(300, 100, upsample=4, max_image_size=1024)  # never above SAM 2's 1024
    assert capped.size == 1024 and capped.rh == 1024
    assert frames_to_slices(torch.randn(1, 1, 256, 256), capped).shape == (1, 1, 300, 100)
    with pytest.raises(ValueError, match="multiple of 32"):
        frame_geometry(10, 10, max_image_size=100)


def test_network_with_scaled_frames():
    # a slice larger than max_image_size / upsample: scaled less than x4 and logits resized back
    torch.manual_seed(0)
    net = SAM2_3dMedNetwork(1, 2, encoder="sam2_test", max_image_size=64).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 2, 30, 21)).shape == (1, 2, 2, 30, 21)


# ---- network -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("patch, inputs, classes, regions", [
    ((5, 19, 13), 1, 2, False),   # odd sizes, binary
    ((3, 17, 7), 2, 4, False),    # two modalities (1x1x1 projection), three foreground labels
    ((4, 16, 16), 4, 3, True),    # four channels, three regions
    ((1, 9, 24), 3, 3, False),    # one slice, RGB-like input
])
def test_output_shapes(patch, inputs, classes, regions):
    net = tiny_network(inputs, classes, regions)
    x = torch.randn(2, inputs, *patch)
    with torch.no_grad():
        net.eval()
        logits = net(x)
        net.train()
        out = net(x)
    objects = classes if regions else classes - 1
    assert logits.shape == (2, classes, *patch)
    assert out["logits"].shape == (2, classes, *patch)
    assert out["boundary"].shape == (2, objects, *patch)
    assert out["slice_positions"].shape == (2, patch[0], patch[0])
    if not regions:  # constant background logit: softmax over [0, object logits]
        assert torch.count_nonzero(logits[:, 0]) == 0


def test_srpp_is_dropped_at_inference_and_state_dict_strict_loads():
    net = tiny_network().eval()
    x = torch.randn(1, 1, 4, 12, 10)
    with torch.no_grad():
        before = net(x)
        for p in net.slice_position.parameters():
            p.add_(torch.randn_like(p))
        after = net(x)
    assert torch.equal(before, after)
    # nnU-Net's predictor builds the network anew and strict-loads the training state dict
    clone = tiny_network(seed=1)
    clone.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(clone.eval()(x), after)


def test_both_directions_reach_every_slice():
    # a change in the last slice changes the first slice's prediction (through the backward pass) and vice versa
    net = tiny_network().eval()
    with torch.no_grad():
        net.object_prompts.normal_()
        x = torch.randn(1, 1, 5, 12, 12)
        base = net(x)
        for changed, observed in ((4, 0), (0, 4)):
            y = x.clone()
            y[:, :, changed] += 3.0
            assert not torch.allclose(net(y)[:, :, observed], base[:, :, observed])


def test_torch_compile_traces_the_forward():
    # dynamo captures the whole forward (slice loop, SAM 2's memory bank) as one graph: nothing breaks compilation
    net = tiny_network().eval()
    x = torch.randn(1, 1, 3, 12, 10)
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x))


# ---- losses ------------------------------------------------------------------------------------------------------
def test_boundary_targets_and_balanced_bce():
    from sam_nnunet.losses.boundary import balanced_bce_with_logits, boundary_targets

    mask = torch.zeros(1, 1, 2, 7, 7)
    mask[..., 2:5, 2:5] = 1
    b = boundary_targets(mask)
    assert b[0, 0, 0, 3, 3] == 0 and b[0, 0, 0, 2, 2] == 1 and b[0, 0, 0, 1, 2] == 1 and b[0, 0, 0, 0, 0] == 0
    assert torch.equal(b[:, :, 0], b[:, :, 1])  # in-plane: no boundary between slices
    perfect = balanced_bce_with_logits(20 * (2 * b - 1), b)
    assert perfect < 1e-6 < balanced_bce_with_logits(torch.zeros_like(b), b)
    # boundary and background voxels weigh half each whatever their counts
    torch.testing.assert_close(balanced_bce_with_logits(torch.full_like(b, 2.0), b),
                               0.5 * (torch.nn.functional.softplus(torch.tensor(-2.0)) +
                                      torch.nn.functional.softplus(torch.tensor(2.0))))
    # unlabelled voxels do not count
    valid = torch.ones_like(b)
    valid[..., 0, :] = 0
    noisy = torch.zeros_like(b)
    noisy[..., 0, :] = 50
    assert balanced_bce_with_logits(noisy + 20 * (2 * b - 1), b, valid) < 1e-6


def test_slice_position_target():
    from sam_nnunet.losses.slice_position import relative_slice_positions, slice_position_loss

    target = relative_slice_positions(5)
    assert target[0, 4] == 1 and target[4, 0] == -1 and target[1, 3] == 0.5
    assert slice_position_loss(target[None].repeat(2, 1, 1)) == 0


def test_loss_wrapper_targets_for_labels_ignore_and_regions():
    from sam_nnunet.losses.sam2_3dmed import SAM2_3dMedLoss

    labels = torch.tensor([0, 1, 2, 3]).view(1, 1, 1, 1, 4)
    masks, valid = SAM2_3dMedLoss(None, False, 3, 0.1, 0.5).object_masks(labels, 2)
    assert masks[0, :, 0, 0].tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]] and valid.flatten().tolist() == [1, 1, 1, 0]
    regions = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1]]).float().view(1, 3, 1, 1, 3)  # last: ignore mask
    masks, valid = SAM2_3dMedLoss(None, True, 9, 0.1, 0.5).object_masks(regions, 2)
    assert masks.shape[1] == 2 and valid.flatten().tolist() == [1, 1, 0]
    # eval-mode output (a tensor): the segmentation loss alone
    wrapper = SAM2_3dMedLoss(lambda o, t: o.sum(), False, None, 0.1, 0.5)
    assert wrapper(torch.ones(2, 3), None) == 6


def test_srpp_and_bd_losses_decrease_when_overfitting():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from sam_nnunet.losses.sam2_3dmed import SAM2_3dMedLoss

    net = tiny_network().train()
    seg = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                         weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    loss = SAM2_3dMedLoss(seg, False, None, srpp_weight=1.0, bd_weight=1.0)
    # two labels in six slices of noise; the first slice has no label 1
    zz, yy, xx = torch.meshgrid(torch.arange(6), torch.arange(16), torch.arange(16), indexing="ij")
    target = torch.zeros(1, 1, 6, 16, 16)
    target[:, 0][:, ((yy - 6) ** 2 + (xx - 7) ** 2 < 16) & (zz > 0)] = 1
    target[:, 0][:, (yy - 12) ** 2 + (xx - 9) ** 2 < 6] = 2
    x = target + 0.3 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(net.trainable_parameters(), lr=1.5e-3)
    history = []
    for _ in range(20):
        optimizer.zero_grad()
        loss(net(x), target).backward()
        optimizer.step()
        history.append({k: v.item() for k, v in loss.last_terms.items()})
    first = history[0]  # the initial weights' losses
    last = {k: np.mean([h[k] for h in history[-3:]]) for k in history[0]}
    assert last["srpp"] < 0.6 * first["srpp"], history
    assert last["bd"] < first["bd"] - 0.02, history
    assert last["segmentation"] < first["segmentation"], history


# ---- trainer ------------------------------------------------------------------------------------------------------
def test_trainer_loads_weights_after_init_and_keeps_frozen_weights(synthetic_dataset, tiny_sam2_checkpoint, sam_env):
    from sam_nnunet.trainers import SAM2_3dMedTrainer

    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json

    path, state = tiny_sam2_checkpoint
    sam_env.setenv("nnUNet_SAM_checkpoint", path)
    sam_env.setenv("nnUNet_SAM_iterations_per_epoch", "1")
    sam_env.setenv("nnUNet_n_proc_DA", "0")  # in-process data augmentation: quick start-up, no worker processes
    sam_env.setenv("nnUNet_SAM_skip_memory_check", "1")  # its SAM 2 trace costs more than this test (test_memory_check)
    # the default plans with 8 instead of 40 slices per patch (a fifth of the slice steps; the stock CLI test below
    # trains on unmodified default plans)
    plans = load_json(os.path.join(synthetic_dataset["preprocessed"], "nnUNetPlans.json"))
    plans["plans_name"] = "nnUNetPlans_sam2depth8"
    plans["configurations"]["3d_fullres"]["patch_size"][0] = 8
    save_json(plans, os.path.join(synthetic_dataset["preprocessed"], "nnUNetPlans_sam2depth8.json"))
    trainer = make_trainer(SAM2_3dMedTrainer, synthetic_dataset, plans_name="nnUNetPlans_sam2depth8")
    arch = trainer.plans_manager.plans["configurations"]["3d_fullres"]["architecture"]
    assert arch["arch_kwargs"]["encoder"] == "sam2_test" and arch["arch_kwargs"]["regions"] is False
    trainer.initialize()
    net = trainer.sam_network
    loaded = net.sam2.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)  # pretrained weights survive nnU-Net's init
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in net.parameters() if p.requires_grad}

    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach().clone() for n, b in net.named_buffers()}
    trained = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    trainer.on_train_start()
    try:
        trainer.on_train_epoch_start()
        outputs = [trainer.train_step(next(trainer.dataloader_train))]
        trainer.on_train_epoch_end(outputs)
    finally:
        trainer.on_train_end()
    assert {"loss_segmentation", "loss_srpp", "loss_bd"} <= outputs[0].keys()
    assert all(torch.equal(p, frozen[n]) for n, p in net.named_parameters() if not p.requires_grad)
    assert all(torch.equal(b, buffers[n]) for n, b in net.named_buffers())
    assert any(not torch.equal(p, trained[n]) for n, p in net.named_parameters() if p.requires_grad)


# ---- the stock nnU-Net command line --------------------------------------------------------------------------
@pytest.mark.slow
def test_stock_cli_trains_and_predicts(cli_dataset, cli_env, tmp_path):
    """nnUNetv2_train -tr SAM2_3dMedTrainer / nnUNetv2_predict on the shared CLI dataset (MSD hippocampus cases
    converted and planned with default plans; a generated dataset without ../shared/data), with the tiny random-weight
    sam2_test: plans name the network, the log shows the three loss terms, predictions are valid segmentations."""
    import SimpleITK as sitk

    env, dataset_id, raw = cli_env, cli_dataset["dataset_id"], cli_dataset["raw"]
    # the memory check skipped through the command line: its trace of 2 x 40 SAM 2 steps would take minutes here
    # (test_memory_check.py tests the check)
    train_env = dict(env, nnUNet_SAM_encoder="sam2_test", nnUNet_SAM_allow_random_init="1",
                     nnUNet_SAM_num_epochs="1", nnUNet_SAM_iterations_per_epoch="1", nnUNet_n_proc_DA="0",
                     nnUNet_SAM_skip_memory_check="1")
    run_cli(["nnUNetv2_train", dataset_id, "3d_fullres", 0, "-tr", TRAINER, "-device", "cpu"], train_env)
    model = os.path.join(env["nnUNet_results"], os.path.basename(raw), f"{TRAINER}__nnUNetPlans__3d_fullres")
    arch = json.load(open(os.path.join(model, "plans.json")))["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"] == "sam_nnunet.networks.sam2_3dmed.SAM2_3dMedNetwork"
    assert arch["arch_kwargs"]["encoder"] == "sam2_test" and arch["arch_kwargs"]["regions"] is False
    fold = os.path.join(model, "fold_0")
    log = "".join(open(os.path.join(fold, f)).read() for f in os.listdir(fold) if f.startswith("training_log"))
    assert "RANDOM weights" in log and "train loss terms: segmentation" in log and ", srpp " in log and ", bd " in log
    assert "Memory check skipped (nnUNet_SAM_skip_memory_check=1)" in log
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))

    predictions = str(tmp_path / "pred")
    run_cli(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", predictions, "-d", dataset_id, "-c",
             "3d_fullres", "-tr", TRAINER, "-f", 0, "-device", "cpu", "-npp", 0, "-nps", 0, "--disable_tta"],
            dict(env, nnUNet_n_proc_DA="0"))
    images = sorted(f for f in os.listdir(os.path.join(raw, "imagesTs")) if f.endswith("_0000.nii.gz"))
    assert len(images) == 2
    for image_file in images:
        image = sitk.ReadImage(os.path.join(raw, "imagesTs", image_file))
        pred = sitk.ReadImage(os.path.join(predictions, image_file.replace("_0000.nii.gz", ".nii.gz")))
        assert pred.GetSize() == image.GetSize()
        assert np.allclose(pred.GetSpacing(), image.GetSpacing()) and np.allclose(pred.GetOrigin(), image.GetOrigin())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}
