"""Registry of the foundation-model encoders users can name with ``nnUNet_SAM_encoder``.

An encoder belongs to a family (``sam_vit``: SAM ViT-B/L/H and MedSAM; other families register themselves here as
they are added). A family knows how to recognise its checkpoints and infer the model size from one, so a checkpoint
decides the size and a trainer can say clearly at start-up which families it adapts.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

from sam_nnunet.encoders import litemedsam
from sam_nnunet.encoders.checkpoint import CheckpointError, WHERE_TO_GET
from sam_nnunet.encoders.contract import InputContract, contract_of
from sam_nnunet.encoders.sam2_hiera import SAM2_CONFIGS, infer_sam2_variant, recognises_sam2
from sam_nnunet.encoders.sam_vit import SAM_VIT_CONFIGS, infer_sam_vit_variant


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    family: str
    description: str
    # where the weights are when the user gives no path (a checkpoint shipped inside a package); None: user-given
    packaged_checkpoint: Optional[Callable[[], str]] = None


@dataclass(frozen=True)
class EncoderFamily:
    name: str
    description: str
    recognises: Callable[[Dict[str, torch.Tensor]], bool]
    infer_variant: Callable[[Dict[str, torch.Tensor], str], str]


ENCODERS: Dict[str, EncoderSpec] = {}
FAMILIES: Dict[str, EncoderFamily] = {}


def register_family(family: EncoderFamily) -> None:
    FAMILIES[family.name] = family


def register_encoder(spec: EncoderSpec) -> None:
    ENCODERS[spec.name] = spec


def get_encoder(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise CheckpointError(f"nnUNet_SAM_encoder={name!r} is not an encoder of sam-nnunet. Choose one of: "
                              f"{', '.join(sorted(ENCODERS))} (`sam-nnunet info` lists them).")
    return ENCODERS[name]


def input_contract(name: str) -> InputContract:
    """The input the encoder ``name`` was trained on (its family's official preprocessing)."""
    return contract_of(get_encoder(name).family)


def identify_checkpoint(state: Dict[str, torch.Tensor], path: str) -> EncoderSpec:
    """The encoder a state dict belongs to, from its keys and shapes; a clear error for anything else."""
    for family in FAMILIES.values():
        if family.recognises(state):
            return get_encoder(family.infer_variant(state, path))
    example = next(iter(state))
    raise CheckpointError(
        f"{path} is not a checkpoint of a model sam-nnunet knows (its first key is '{example}'; known: "
        f"{'; '.join(f.description for f in FAMILIES.values())}); {WHERE_TO_GET}.")


def _register_sam_vit() -> None:
    register_family(EncoderFamily(
        "sam_vit", "SAM / MedSAM ViT (image_encoder.blocks.*, image_encoder.patch_embed.*)",
        recognises=lambda s: "image_encoder.patch_embed.proj.weight" in s and
        any(k.startswith("image_encoder.blocks.") for k in s),
        infer_variant=infer_sam_vit_variant))
    for name, cfg in SAM_VIT_CONFIGS.items():
        register_encoder(EncoderSpec(name, "sam_vit", cfg.description))


def _register_sam2() -> None:
    # the configs only: the sam2 package itself is imported when a model is built
    register_family(EncoderFamily(
        "sam2", "SAM 2 / SAM 2.1 (image_encoder.trunk.*, memory_attention.*)",
        recognises=recognises_sam2, infer_variant=infer_sam2_variant))
    for name, cfg in SAM2_CONFIGS.items():
        register_encoder(EncoderSpec(name, "sam2", cfg.description))


def _register_litemedsam() -> None:
    register_family(EncoderFamily(
        "litemedsam", "LiteMedSAM TinyViT (image_encoder.patch_embed.seq.*, image_encoder.layers.*)",
        recognises=litemedsam.recognises, infer_variant=litemedsam.infer_variant))
    register_encoder(EncoderSpec(litemedsam.LITEMEDSAM.name, "litemedsam", litemedsam.LITEMEDSAM.description,
                                 packaged_checkpoint=litemedsam.packaged_checkpoint))


_register_sam_vit()
_register_sam2()
_register_litemedsam()
