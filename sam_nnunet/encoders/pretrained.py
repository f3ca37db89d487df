"""Which encoder and which pretrained weights a training uses, decided from the environment."""
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional, Sequence

import torch

from sam_nnunet import settings
from sam_nnunet.encoders.checkpoint import (CheckpointError, WHERE_TO_GET, read_state_dict, refuse_nonfinite,
                                            sha256_of_file)
from sam_nnunet.encoders.registry import ENCODERS, EncoderSpec, get_encoder, identify_checkpoint

DEFAULT_ENCODER = "vit_b"


def adapts(families: Iterable[str], encoder: str) -> bool:
    """Whether a trainer adapting ``families`` can use ``encoder`` (a registered name)."""
    return get_encoder(encoder).family in tuple(families)


def pick_encoder(families: Iterable[str], requested: Sequence[str] = (), default: Optional[str] = None) -> str:
    """The one rule for which encoder a trainer runs with, used by the trainer, the planner and the benchmark: the
    first of ``requested`` of a family the trainer adapts; else ``default`` (an earlier run's encoder, the trainer's
    ``default_encoder``); else vit_b where it fits; else the first registered encoder of those families."""
    families = tuple(families)
    for name in requested:
        if adapts(families, name):
            return name
    if default:
        return default
    if ENCODERS[DEFAULT_ENCODER].family in families:
        return DEFAULT_ENCODER
    return next(name for name, spec in ENCODERS.items() if spec.family in families)


@dataclass
class PretrainedChoice:
    encoder: EncoderSpec
    checkpoint: Optional[str] = None
    state_dict: Optional[Dict[str, torch.Tensor]] = field(default=None, repr=False)
    _sha256: Optional[str] = field(default=None, repr=False)

    @property
    def has_weights(self) -> bool:
        return self.state_dict is not None

    @property
    def sha256(self) -> Optional[str]:
        if self.checkpoint and self._sha256 is None:
            self._sha256 = sha256_of_file(self.checkpoint)
        return self._sha256


def choose_encoder(method: str, families: Iterable[str], fallback: Optional[str] = None,
                   ignore_checkpoint: bool = False) -> PretrainedChoice:
    """Decide the encoder of a training from nnUNet_SAM_checkpoint / nnUNet_SAM_encoder.

    A checkpoint decides the model size (and must agree with nnUNet_SAM_encoder when both are set); without one,
    nnUNet_SAM_encoder names it, else ``fallback`` (the encoder of an earlier run in the same output folder), else
    vit_b. An encoder whose weights ship inside a package loads them from there. ``ignore_checkpoint``: leave
    nnUNet_SAM_checkpoint unread (the weights come from elsewhere). Raises CheckpointError with the fix in the message.
    """
    families = tuple(families)
    path = None if ignore_checkpoint else settings.get_str(settings.CHECKPOINT)
    named = settings.get_str(settings.ENCODER)
    named_spec = get_encoder(named) if named else None

    if path:
        state = read_state_dict(path)
        spec = identify_checkpoint(state, path)
        refuse_nonfinite(state, path)
        if named_spec is not None and named_spec.name != spec.name:
            raise CheckpointError(
                f"{settings.CHECKPOINT}={path} is a {spec.name} checkpoint but {settings.ENCODER}={named}. "
                f"Unset {settings.ENCODER} (the checkpoint decides the model size) or point "
                f"{settings.CHECKPOINT} at a {named} checkpoint.")
        check_family(method, spec, families)
        return PretrainedChoice(spec, path, state)

    spec = named_spec or get_encoder(pick_encoder(families, (), fallback))
    check_family(method, spec, families)
    if spec.packaged_checkpoint is not None:
        packaged = spec.packaged_checkpoint()
        state = read_state_dict(packaged, env_var=f"packaged {spec.name} weights")
        refuse_nonfinite(state, packaged, env_var=f"packaged {spec.name} weights")
        return PretrainedChoice(spec, packaged, state)
    return PretrainedChoice(spec)


def check_family(method: str, spec: EncoderSpec, families) -> None:
    if spec.family not in families:
        usable = sorted(n for n, s in ENCODERS.items() if s.family in families)
        raise CheckpointError(
            f"{method} cannot use the encoder {spec.name} ({spec.family}: {spec.description}); it adapts "
            f"{', '.join(families)} encoders: {', '.join(usable)}. Choose one of those with {settings.ENCODER} / "
            f"{settings.CHECKPOINT}, or a trainer that supports {spec.name} (`sam-nnunet info` lists them).")


def refuse_random_init_message(method: str, encoder: str,
                               example: str = "sam_vit_b_01ec64.pth or medsam_vit_b.pth") -> str:
    return (f"{method} will not train {encoder} from random weights: foundation-model trainers need pretrained "
            f"weights. Set {settings.CHECKPOINT}=/path/to/checkpoint (e.g. {example}; {WHERE_TO_GET}). "
            f"For a smoke test without weights set {settings.ALLOW_RANDOM_INIT}=1.")
