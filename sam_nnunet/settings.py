"""Environment variables read by sam-nnunet (nnU-Net itself is configured the same way).

nnUNet_SAM_checkpoint            path of a SAM / MedSAM / SAM2 checkpoint (decides the model size)
nnUNet_SAM_encoder               encoder name where no checkpoint decides it (vit_b, vit_l, vit_h, vit_test, ...)
nnUNet_SAM_allow_random_init     1: allow training without pretrained weights (smoke tests; said loudly)
nnUNet_SAM_num_epochs            shorten training (smoke tests and demos): number of epochs
nnUNet_SAM_iterations_per_epoch  shorten training (smoke tests and demos): training iterations per epoch; also
                                 bounds the validation iterations per epoch
nnUNet_SAM_skip_memory_check     1: train without the start-up memory check (trainers.memory_check)
nnUNet_SAM_device_memory_gb      the memory check compares with this many GB instead of the device's free memory
                                 (e.g. to check plans for a smaller GPU)
nnUNet_SAM_test_checkpoint_pause for the interruption tests only: a checkpoint file name (checkpoint_final.pth);
                                 writing it stops for good after its first MiB, so that a test can kill the run there
nnUNet_SAM_cache_copies          ZAP trainers: augmented copies per case in the embedding cache (default 4; 0 trains
                                 without the cache, running the encoder at every step)
nnUNet_SAM_cache_build_first     1: under a time budget, build the whole embedding cache before the first iteration
                                 (timed as set-up) instead of encoding each copy when it is first drawn
nnUNet_SAM_cache_dir             where the embedding cache lives (default: the dataset's preprocessed folder)
nnUNet_SAM_time_budget_seconds   every trainer (nnUNetTrainerShortRun too): stop training after the first iteration
                                 that ends past this many seconds, then write checkpoint_final (trainers.budget)
nnUNet_SAM_cpu_bf16              prediction on the CPU by networks that declare cpu_bf16_prediction (ZAP-2.5DSAM
                                 and its prompted variant): "auto" (default) in bfloat16 where the CPU computes it
                                 natively (AVX-512 BF16 or AMX), "1" on every CPU, "0" never (float32, as nnU-Net)
"""
import os
from typing import Optional

CHECKPOINT = "nnUNet_SAM_checkpoint"
ENCODER = "nnUNet_SAM_encoder"
ALLOW_RANDOM_INIT = "nnUNet_SAM_allow_random_init"
NUM_EPOCHS = "nnUNet_SAM_num_epochs"
ITERATIONS_PER_EPOCH = "nnUNet_SAM_iterations_per_epoch"
SKIP_MEMORY_CHECK = "nnUNet_SAM_skip_memory_check"
DEVICE_MEMORY_GB = "nnUNet_SAM_device_memory_gb"
TEST_CHECKPOINT_PAUSE = "nnUNet_SAM_test_checkpoint_pause"

CACHE_COPIES = "nnUNet_SAM_cache_copies"
CACHE_DIR = "nnUNet_SAM_cache_dir"
CACHE_BUILD_FIRST = "nnUNet_SAM_cache_build_first"
TIME_BUDGET_SECONDS = "nnUNet_SAM_time_budget_seconds"
CPU_BF16 = "nnUNet_SAM_cpu_bf16"

_TRUE = ("1", "true", "t", "yes", "y", "on")


def get_str(name: str) -> Optional[str]:
    value = os.environ.get(name, "").strip()
    return value or None


def get_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def get_choice(name: str, choices: tuple, default: str) -> str:
    value = (get_str(name) or default).lower()
    if value not in choices:
        raise ValueError(f"{name}={value!r} must be one of {', '.join(choices)} (or unset for {default})")
    return value


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


def get_positive_float(name: str) -> Optional[float]:
    value = get_str(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0 or number == float("inf"):
        raise ValueError(f"{name}={value!r} must be a positive number (or unset)")
    return number


def get_non_negative_int(name: str) -> Optional[int]:
    value = get_str(name)
    if value is None:
        return None
    if not value.isdigit():
        raise ValueError(f"{name}={value!r} must be a whole number >= 0 (or unset for the default)")
    return int(value)
