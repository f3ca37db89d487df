"""Start-up memory check: will one training step of this trainer, at the planned patch and batch size, fit on the
device? Run before the first iteration (``SAMTrainerBase.on_train_start``), after the network and optimiser exist.

The step's memory is SAMPlanner's traced estimate (``sam_nnunet.trainers.training_memory``: peak tensor memory of a
training step in fp32, parameters, gradients, AdamW state and activations included), taken from the plans when
SAMPlanner sized this very configuration for this trainer, else from a cache in the model folder (shared by its
folds), else traced now. What the device offers: CUDA's free memory plus what PyTorch's allocator holds unused
(``torch.cuda.mem_get_info``), or the available RAM on the CPU (``psutil``); the parameters already on the device
are counted on both sides.

On CUDA nnU-Net trains under autocast (fp16), which needs less than the fp32 estimate: 0.65-0.75 of it for the ViT-B
networks, 0.46 for SAM2-3dMed on an H100 (documentation/cuda.md). The check stops only where even the trainer's
``cuda_autocast_memory_factor`` (the lowest ratio measured for it) times the estimate cannot fit, and says in the log
where the fp32 estimate would not.
"""
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import torch
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

from sam_nnunet import settings
from sam_nnunet.errors import UserFacingExit
from sam_nnunet.trainers.training_memory import TrainingMemoryEstimator, TrainingSetup, class_path

CACHE_FILE = "sam_memory_estimate.json"


@dataclass(frozen=True)
class DeviceMemory:
    """What a device offers for training: ``free_bytes`` usable now (parameters already there not counted in it),
    ``total_bytes``, and how it was found (for the message)."""
    free_bytes: int
    total_bytes: int
    description: str


def device_memory(device: torch.device, resident: int) -> Optional[DeviceMemory]:
    """Free memory of ``device`` besides the ``resident`` bytes already there (or the amount
    nnUNet_SAM_device_memory_gb names, less ``resident``); None where it cannot be known (e.g. MPS)."""
    given = settings.get_positive_float(settings.DEVICE_MEMORY_GB)
    if given is not None:
        return DeviceMemory(int(given * 1e9) - resident, int(given * 1e9),
                            f"{settings.DEVICE_MEMORY_GB}={given:g}")
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        # blocks PyTorch's allocator holds but does not use are free for the training step too
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return DeviceMemory(int(free), int(total), f"{device} ({torch.cuda.get_device_name(device)})")
    if device.type == "cpu":
        import psutil  # only the CPU check needs it

        vm = psutil.virtual_memory()
        return DeviceMemory(int(vm.available), int(vm.total), "the CPU (available RAM)")
    return None


def training_setup(trainer) -> TrainingSetup:
    """The training step of ``trainer`` as SAMPlanner traces it: the network its plans name, its loss, its deep
    supervision and its training clicks."""
    cm = trainer.configuration_manager
    clicks = type(trainer).training_clicks()
    return TrainingSetup(
        cm.network_arch_class_name, dict(cm.network_arch_init_kwargs),
        determine_num_input_channels(trainer.plans_manager, cm, trainer.dataset_json),
        trainer.dataset_json["labels"], trainer.dataset_json.get("regions_class_order"), bool(cm.batch_dice),
        trainer._get_deep_supervision_scales() if trainer.enable_deep_supervision else None,
        class_path(type(trainer)), clicks[0], clicks[1])


def _from_plans(trainer, patch: Tuple[int, ...], batch_size: int) -> Optional[int]:
    """SAMPlanner's estimate of this configuration, if it was sized for this trainer, encoder, patch and batch."""
    record = trainer.configuration_manager.configuration.get("sam_planner") or {}
    if record.get("trainer") != type(trainer).__name__ or \
            record.get("encoder") != trainer.configuration_manager.network_arch_init_kwargs.get("encoder") or \
            record.get("patch_size") != list(patch) or record.get("batch_size") != batch_size or \
            record.get("estimated_memory_gb") is None:
        return None
    return int(record["estimated_memory_gb"] * 1e9)


def estimate_step_memory(trainer, patch: Tuple[int, ...], batch_size: int) -> Tuple[int, str]:
    """(peak bytes of one training step, where the figure comes from)."""
    planned = _from_plans(trainer, patch, batch_size)
    if planned is not None:
        return planned, "SAMPlanner's estimate in the plans"
    setup = training_setup(trainer)
    key = {"setup": asdict(setup), "patch_size": list(patch), "batch_size": batch_size, "torch": torch.__version__}
    # in the model folder (all folds train the same step), not the fold's
    cache = os.path.join(trainer.output_folder_base, CACHE_FILE)
    try:
        with open(cache) as f:
            cached = json.load(f)
        if cached.get("key") == json.loads(json.dumps(key)):
            return int(cached["peak_bytes"]), f"traced earlier ({CACHE_FILE})"
    except (OSError, ValueError, AttributeError):
        pass
    trainer.print_to_log_file(f"Memory check: tracing one training step on fake tensors (seconds for small networks, "
                              f"minutes for SAM 2 on a CPU; cached in the model folder; "
                              f"{settings.SKIP_MEMORY_CHECK}=1 skips the check)")
    start = time.monotonic()
    with torch.random.fork_rng(devices=[]):  # building the estimator's network must not move training's RNG
        peak = TrainingMemoryEstimator(setup)(patch, batch_size).peak_bytes
    seconds = time.monotonic() - start
    if trainer.local_rank == 0:  # later starts (other folds, --c) read it instead of tracing again
        try:
            os.makedirs(trainer.output_folder_base, exist_ok=True)
            with open(cache, "w") as f:
                json.dump({"key": key, "peak_bytes": int(peak), "seconds": round(seconds, 1)}, f)
        except OSError:
            pass  # a read-only folder: the next start traces again
    return int(peak), f"traced now in {seconds:.1f} s"


def _round_down(gb: float) -> str:
    """A memory target for the message: ``gb`` rounded down to two significant digits (21.6 -> 21, 0.018 -> 0.018)."""
    if gb <= 0:
        return "0.01"
    decimals = max(0, 1 - math.floor(math.log10(gb)))
    return f"{math.floor(gb * 10 ** decimals) / 10 ** decimals:.{decimals}f}"


def resident_bytes(network: torch.nn.Module) -> int:
    """Parameters and buffers of the network: already on the device when the check runs."""
    return sum(t.numel() * t.element_size() for t in list(network.parameters()) + list(network.buffers()))


def memory_refusal(trainer, peak: int, source: str, memory: DeviceMemory, resident: int,
                   device_type: str) -> Tuple[Optional[str], str]:
    """(the refusal message, or None where the step can fit; the line for the log)."""
    factor = float(getattr(trainer, "cuda_autocast_memory_factor", 1.0)) if device_type == "cuda" else 1.0
    need = peak * factor - resident  # what the step still has to allocate
    cm = trainer.configuration_manager
    patch = "x".join(map(str, cm.patch_size))
    what = (f"{type(trainer).__name__} at patch {patch}, batch {trainer.batch_size} per process (configuration "
            f"'{trainer.configuration_name}', encoder {cm.network_arch_init_kwargs.get('encoder')})")
    estimate = f"{peak / 1e9:.2f} GB for one training step in fp32 ({source})"
    if device_type == "cuda":
        estimate += f", at least {peak * factor / 1e9:.2f} GB with nnU-Net's autocast ({factor:g} x, cuda.md)"
    offered = (f"{memory.description} has {(memory.free_bytes + resident) / 1e9:.2f} GB of "
               f"{memory.total_bytes / 1e9:.2f} GB")
    line = f"Memory check: {what} needs {estimate}; {offered}"
    if need <= memory.free_bytes:
        if device_type == "cuda" and peak - resident > memory.free_bytes:
            line += " (fits only thanks to autocast: little room left)"
        return None, line + ": fits"
    target = _round_down((memory.free_bytes + resident) / 1e9 * 0.9)
    dataset = trainer.plans_manager.dataset_name
    dataset_id = int(dataset[7:10]) if dataset.startswith("Dataset") and dataset[7:10].isdigit() else dataset
    message = (
        f"not enough memory to train {what}: it needs {estimate}, but {offered}. It would run out of memory "
        f"after start-up. Plan patch and batch size for this memory: `sam-nnunet plan_and_preprocess -d "
        f"{dataset_id} -pl SAMPlanner -tr {type(trainer).__name__} -gpu_memory_target {target}`, then train with "
        f"`-p nnUNetSAMPlans` (configuration 3d_fullres); or lower batch_size in the plans. To train anyway, set "
        f"{settings.SKIP_MEMORY_CHECK}=1.")
    return message, line + ": does NOT fit"


def check_memory_before_training(trainer) -> None:
    """Stop (UserFacingExit) before the first iteration where the training step cannot fit on the device; log the
    check either way. Runs after ``initialize`` (network and optimiser on the device)."""
    if settings.get_flag(settings.SKIP_MEMORY_CHECK):
        trainer.print_to_log_file(f"Memory check skipped ({settings.SKIP_MEMORY_CHECK}=1)")
        return
    resident = resident_bytes(trainer.sam_network)
    try:
        memory = device_memory(trainer.device, resident)
    except ValueError as e:  # a malformed nnUNet_SAM_device_memory_gb
        raise UserFacingExit(str(e)) from None
    if memory is None:
        trainer.print_to_log_file(f"Memory check skipped: the free memory of {trainer.device} is unknown")
        return
    patch = tuple(int(p) for p in trainer.configuration_manager.patch_size)
    try:
        peak, source = estimate_step_memory(trainer, patch, int(trainer.batch_size))
    except Exception as e:  # a network the trace cannot run must not keep anyone from training
        trainer.print_to_log_file(f"Memory check skipped: the training step could not be traced "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return
    message, line = memory_refusal(trainer, peak, source, memory, resident, trainer.device.type)
    trainer.print_to_log_file(line)
    if message is not None:
        raise UserFacingExit(message)
