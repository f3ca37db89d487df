"""What sam-nnunet offers and what each trainer costs in parameters (``sam-nnunet info``)."""
import pydoc
from typing import Dict

import torch

from sam_nnunet.encoders.pretrained import check_family
from sam_nnunet.encoders.registry import ENCODERS, FAMILIES, get_encoder
from sam_nnunet.trainers.registry import get_trainer_class, trainer_classes


def parameter_counts(trainer: str, encoder: str, inputs: int, outputs: int) -> Dict:
    """Trainable / frozen / added parameter counts of a trainer's network, built on the meta device (no memory,
    no weights, seconds on a CPU)."""
    cls = get_trainer_class(trainer)
    spec = get_encoder(encoder)
    check_family(trainer, spec, cls.encoder_families)
    if inputs < 1 or outputs < 1:
        raise ValueError("--inputs and --outputs must be positive")
    network_class = pydoc.locate(cls.network_class)
    with torch.device("meta"):
        net = network_class(input_channels=inputs, num_classes=outputs, encoder=encoder, **cls.encoder_kwargs(encoder),
                            **cls.network_kwargs)
    report = net.parameter_report()
    return {"trainer": trainer, "encoder": encoder, "network": cls.network_class, "inputs": inputs,
            "outputs": outputs, **report, **getattr(net, "parameter_notes", lambda: {})()}


def describe() -> str:
    lines = ["Trainers (nnUNetv2_train DATASET 3d_fullres FOLD -tr NAME):"]
    for name, cls in trainer_classes().items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        lines.append(f"  {name:<24} encoders: {', '.join(cls.encoder_families):<10} {doc}")
    lines.append("")
    lines.append("Encoders (nnUNet_SAM_encoder=NAME, or decided by nnUNet_SAM_checkpoint):")
    for name, spec in ENCODERS.items():
        lines.append(f"  {name:<24} {spec.family:<10} {spec.description}")
    lines.append("")
    lines.append("Checkpoint families recognised: " + "; ".join(f.description for f in FAMILIES.values()))
    return "\n".join(lines)
