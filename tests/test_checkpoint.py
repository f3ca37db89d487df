"""Reading and loading SAM checkpoints: official layout round trip, resizing, and every bad-checkpoint case."""
import os

import numpy as np
import pytest
import torch

from sam_nnunet.encoders.checkpoint import CheckpointError, load_submodule_state, read_state_dict, sha256_of_file
from sam_nnunet.encoders.pretrained import choose_encoder
from sam_nnunet.encoders.registry import identify_checkpoint
from sam_nnunet.encoders.sam_vit import SAM_VIT_CONFIGS, build_sam_image_encoder, infer_sam_vit_variant


def test_round_trip_official_layout(tiny_sam_checkpoint):
    path, state = tiny_sam_checkpoint
    loaded = read_state_dict(path)
    assert set(loaded) == set(state)
    assert {k.split(".")[0] for k in loaded} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert identify_checkpoint(loaded, path).name == "vit_test"
    encoder = build_sam_image_encoder("vit_test")
    resized = load_submodule_state(encoder, loaded, "image_encoder.", path=path)
    assert resized == []
    for k, v in encoder.state_dict().items():
        torch.testing.assert_close(v, state["image_encoder." + k], rtol=0, atol=0)


def test_load_resizes_position_tables_to_the_model_grid(tiny_sam_checkpoint):
    path, state = tiny_sam_checkpoint
    cfg = SAM_VIT_CONFIGS["vit_test"]
    encoder = build_sam_image_encoder("vit_test", img_size=cfg.img_size // 2)  # token grid 16 -> 8
    resized = dict((k, new) for k, _, new in load_submodule_state(encoder, read_state_dict(path), "image_encoder."))
    assert resized["pos_embed"] == (1, 8, 8, cfg.embed_dim)
    g = cfg.global_attn_indexes[0]
    assert resized[f"blocks.{g}.attn.rel_pos_h"] == (15, cfg.embed_dim // cfg.num_heads)
    # windowed blocks do not depend on the image size and are loaded as they are
    assert not any(k.startswith("blocks.0.") for k in resized)
    expected = torch.nn.functional.avg_pool2d(state["image_encoder.pos_embed"].permute(0, 3, 1, 2), 2)
    torch.testing.assert_close(encoder.pos_embed.detach(), expected.permute(0, 2, 3, 1))


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h", "vit_test"])
def test_model_size_is_inferred_from_the_checkpoint(name):
    with torch.device("meta"):  # shapes only: no memory for ViT-H
        encoder = build_sam_image_encoder(name)
    state = {"image_encoder." + k: v for k, v in encoder.state_dict().items()}
    assert infer_sam_vit_variant(state) == name


def test_sha256_and_wrappers(tiny_sam_checkpoint, tmp_path):
    path, state = tiny_sam_checkpoint
    assert len(sha256_of_file(path)) == 64
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": {"module." + k: v for k, v in state.items()}}, wrapped)  # wrapper + DataParallel prefix
    assert set(read_state_dict(str(wrapped))) == set(state)


def test_choose_encoder_from_environment(tiny_sam_checkpoint, sam_env):
    path, _ = tiny_sam_checkpoint
    sam_env.setenv("nnUNet_SAM_checkpoint", path)
    choice = choose_encoder("SAMAdapterTrainer", ("sam_vit",))
    assert choice.encoder.name == "vit_test" and choice.has_weights and choice.checkpoint == path
    sam_env.setenv("nnUNet_SAM_encoder", "vit_test")  # agreeing is fine
    assert choose_encoder("SAMAdapterTrainer", ("sam_vit",)).encoder.name == "vit_test"
    sam_env.setenv("nnUNet_SAM_encoder", "vit_b")
    with pytest.raises(CheckpointError, match="is a vit_test checkpoint but nnUNet_SAM_encoder=vit_b"):
        choose_encoder("SAMAdapterTrainer", ("sam_vit",))
    sam_env.delenv("nnUNet_SAM_checkpoint")
    choice = choose_encoder("SAMAdapterTrainer", ("sam_vit",))
    assert choice.encoder.name == "vit_b" and not choice.has_weights
    sam_env.setenv("nnUNet_SAM_encoder", "vit_xl")
    with pytest.raises(CheckpointError, match="not an encoder of sam-nnunet.*vit_b"):
        choose_encoder("SAMAdapterTrainer", ("sam_vit",))


def test_family_check_names_the_usable_encoders(sam_env):
    sam_env.setenv("nnUNet_SAM_encoder", "vit_test")
    with pytest.raises(CheckpointError, match="cannot use the encoder vit_test"):
        choose_encoder("SomeSAM2Trainer", ("sam2",))


class _Exploit:
    """Unpickling this would create a file: a weights_only load must refuse before that happens."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def _bad_files(tmp_path, state):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a checkpoint\n")
    other_text = tmp_path / "readme.pth"
    other_text.write_text("hello\n")  # read as a (legacy) pickle: a different error inside torch
    pickled = tmp_path / "pickled.pth"
    torch.save({"weights": _Exploit(str(tmp_path / "pwned"))}, pickled)
    not_sd = tmp_path / "trainer_state.pth"
    torch.save({"epoch": 3, "lr": 0.1}, not_sd)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, other)
    truncated = tmp_path / "truncated.pth"
    full = tmp_path / "full.pth"
    torch.save(state, full)
    truncated.write_bytes(full.read_bytes()[: os.path.getsize(full) // 2])
    return {
        "missing": (str(tmp_path / "nope.pth"), "no such file"),
        "directory": (str(tmp_path), "is a directory"),
        "text": (str(text), "not a readable PyTorch checkpoint"),
        "other text": (str(other_text), "not a readable PyTorch checkpoint"),
        "pickled objects": (str(pickled), "weights_only=True"),
        "not a state dict": (str(not_sd), "not a model state dict"),
        "another model": (str(other), "not a checkpoint of a model sam-nnunet knows"),
        "truncated": (str(truncated), "not a readable PyTorch checkpoint"),
    }


def test_each_bad_checkpoint_gets_one_clear_message(tiny_sam_checkpoint, tmp_path, sam_env):
    _, state = tiny_sam_checkpoint
    for case, (path, message) in _bad_files(tmp_path, state).items():
        sam_env.setenv("nnUNet_SAM_checkpoint", path)
        with pytest.raises(CheckpointError) as info:
            choose_encoder("SAMAdapterTrainer", ("sam_vit",))
        assert message in str(info.value), case
        assert "nnUNet_SAM_checkpoint" in str(info.value) or path in str(info.value), case
    assert not (tmp_path / "pwned").exists()  # nothing was unpickled


def test_checkpoint_of_another_size_or_damaged_layout(tiny_sam_checkpoint, tmp_path):
    _, state = tiny_sam_checkpoint
    # a ViT of a depth no SAM size has
    fewer_blocks = {k: v for k, v in state.items() if not k.startswith("image_encoder.blocks.3.")}
    with pytest.raises(CheckpointError, match="width 64 and depth 3, which is none of the SAM sizes"):
        infer_sam_vit_variant(fewer_blocks)
    encoder = build_sam_image_encoder("vit_test")
    wrong_shape = dict(state)
    wrong_shape["image_encoder.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="1 of another shape"):
        load_submodule_state(encoder, wrong_shape, "image_encoder.")
    missing = {k: v for k, v in state.items() if k != "image_encoder.blocks.1.mlp.lin1.weight"}
    with pytest.raises(CheckpointError, match="1 missing"):
        load_submodule_state(encoder, missing, "image_encoder.")
    with pytest.raises(CheckpointError, match="no 'image_encoder.\\*' weights"):
        load_submodule_state(encoder, {"mask_decoder.x": torch.zeros(1)}, "image_encoder.")


def test_random_bytes_are_not_a_checkpoint_to_download_again(tmp_path, sam_env):
    # torch's weights-only unpickler answers most random files with "Unsupported operand", which read as if the
    # file held objects; the user must hear "download again"
    rng = np.random.default_rng(0)
    files = [rng.bytes(4096) for _ in range(20)]
    files.append(b"\x80\x02" + rng.bytes(4094))  # starts like a legacy torch pickle
    for i, content in enumerate(files):
        path = tmp_path / f"random_{i}.pth"
        path.write_bytes(content)
        sam_env.setenv("nnUNet_SAM_checkpoint", str(path))
        with pytest.raises(CheckpointError) as info:
            choose_encoder("SAMAdapterTrainer", ("sam_vit",))
        message = str(info.value)
        assert "not a readable PyTorch checkpoint" in message and "download it again" in message, (i, message)
        assert "objects other than tensors" not in message, (i, message)


def test_nan_or_inf_weights_are_refused_naming_the_tensors(tiny_sam_checkpoint, tmp_path, sam_env):
    _, state = tiny_sam_checkpoint
    broken = {k: v.clone() for k, v in state.items()}
    float_keys = [k for k, v in broken.items() if v.is_floating_point()]
    first, second = float_keys[3], float_keys[10]
    broken[first].view(-1)[:2] = float("nan")
    broken[second].view(-1)[0] = float("inf")
    path = tmp_path / "sam_nan.pth"
    torch.save(broken, path)  # the official layout, two damaged tensors
    sam_env.setenv("nnUNet_SAM_checkpoint", str(path))
    with pytest.raises(CheckpointError) as info:
        choose_encoder("SAMAdapterTrainer", ("sam_vit",))
    message = str(info.value)
    assert f"in 2 of its {len(state)} tensors" in message
    assert f"{first} (2 NaN, 0 Inf" in message and f"{second} (0 NaN, 1 Inf" in message
    assert message.index(first) < message.index(second)  # in the checkpoint's order
    assert "download it again" in message
