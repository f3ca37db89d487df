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
nnUNet_SAM_seed                  every trainer: seed Python's, NumPy's and torch's generators and the embedding cache's
                                 draws at the start of training (a whole number; unset: nnU-Net's unseeded runs)
nnUNet_SAM_cpu_bf16              prediction on the CPU by networks that declare cpu_bf16_prediction (ZAP-2.5DSAM
                                 and its prompted variant): "auto" (default) in bfloat16 where the CPU computes it
                                 natively (AVX-512 BF16 or AMX), "1" on every CPU, "0" never (float32, as nnU-Net)

Every value is checked when a trainer or a predictor starts (``check_all``), before any work; a yes/no setting
takes 1/0, true/false, yes/no, on/off (anything else is refused, not read as "no"); an nnUNet_SAM_* name not listed
here is reported with its close matches (a typo would otherwise be ignored).
"""
import difflib
import os
from typing import List, Optional

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
SEED = "nnUNet_SAM_seed"

_TRUE = ("1", "true", "t", "yes", "y", "on")
_FALSE = ("0", "false", "f", "no", "n", "off")


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


def get_strict_flag(name: str) -> bool:
    """A yes/no setting: unset, 1/0, true/false, yes/no, on/off; anything else is refused (not read as "no")."""
    value = os.environ.get(name, "").strip().lower()
    if value and value not in _TRUE + _FALSE:
        raise ValueError(f"{name}={value!r} must be 1 or 0 (also true/false, yes/no, on/off; or unset for 0)")
    return value in _TRUE


CPU_BF16_CHOICES = ("auto", "1", "0")
# how each setting is read: every value is checked by check_all() when a trainer or predictor starts, so that a
# typo stops the command before any work instead of after hours (nnU-Net's final validation reads cpu_bf16)
_CHECKS = {
    ALLOW_RANDOM_INIT: get_strict_flag, SKIP_MEMORY_CHECK: get_strict_flag, CACHE_BUILD_FIRST: get_strict_flag,
    NUM_EPOCHS: get_positive_int, ITERATIONS_PER_EPOCH: get_positive_int,
    DEVICE_MEMORY_GB: get_positive_float, TIME_BUDGET_SECONDS: get_positive_float,
    CACHE_COPIES: get_non_negative_int, SEED: get_non_negative_int,
    CPU_BF16: lambda name: get_choice(name, CPU_BF16_CHOICES, "auto"),
    CHECKPOINT: get_str, ENCODER: get_str, CACHE_DIR: get_str, TEST_CHECKPOINT_PAUSE: get_str,
}


_WARNED = set()


def check_all(warn=None) -> None:
    """Check every nnUNet_SAM_* variable: raises ValueError naming the first bad value and what it takes. A name
    sam-nnunet does not read is not an error (another tool may own it) but ``warn`` (default: stderr) says so, with
    the close matches: a misspelt setting would otherwise be ignored without a word."""
    for name in sorted(_CHECKS):
        _CHECKS[name](name)
    unknown = sorted(k for k in os.environ if k.startswith("nnUNet_SAM_") and k not in _CHECKS)
    for name in unknown:
        if warn is None and name in _WARNED:
            continue  # once per process (the trainer checks at __init__ and again when it builds the network)
        _WARNED.add(name)
        close = difflib.get_close_matches(name, list(_CHECKS), n=2, cutoff=0.8)
        line = (f"sam-nnunet: WARNING: {name} is not a sam-nnunet setting and is ignored" +
                (f"; did you mean {' or '.join(close)}?" if close else "") + " (settings: sam_nnunet/settings.py)")
        if warn is None:
            import sys
            print(line, file=sys.stderr, flush=True)
        else:
            warn(line)


def known_settings() -> List[str]:
    return sorted(_CHECKS)
