"""Environment variables read by sam-nnunet (nnU-Net itself is configured the same way).

nnUNet_SAM_checkpoint            path of a SAM / MedSAM / SAM2 checkpoint (decides the model size)
nnUNet_SAM_encoder               encoder name where no checkpoint decides it (vit_b, vit_l, vit_h, vit_test, ...)
nnUNet_SAM_allow_random_init     1: allow training without pretrained weights (smoke tests; said loudly)
nnUNet_SAM_num_epochs            shorten training (smoke tests and demos): number of epochs
nnUNet_SAM_iterations_per_epoch  shorten training (smoke tests and demos): training iterations per epoch; also
                                 bounds the validation iterations per epoch
"""
import os
from typing import Optional

CHECKPOINT = "nnUNet_SAM_checkpoint"
ENCODER = "nnUNet_SAM_encoder"
ALLOW_RANDOM_INIT = "nnUNet_SAM_allow_random_init"
NUM_EPOCHS = "nnUNet_SAM_num_epochs"
ITERATIONS_PER_EPOCH = "nnUNet_SAM_iterations_per_epoch"

_TRUE = ("1", "true", "t", "yes", "y", "on")


def get_str(name: str) -> Optional[str]:
    value = os.environ.get(name, "").strip()
    return value or None


def get_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def get_positive_int(name: str) -> Optional[int]:
    value = get_str(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer (or unset for nnU-Net's default)")
    return number
