"""Measured peak memory of real training steps on the CPU, to check ``memory.TrainingMemoryEstimator`` against.

Each measurement runs in a fresh Python process (nothing else in it allocates): after a warm-up step at the same
patch and batch size (one-off allocations of kernel libraries are not training memory: thread pools, and the kernels
oneDNN compiles and caches for each new tensor shape, a few MB per shape, which a training pays once), the
process's peak resident memory is reset (Linux: ``/proc/self/clear_refs``), the network, optimiser and batch are
created and two training steps run. Measured = peak resident memory - resident memory before the network was built.
``warm_up_at_size=False`` warms up on a tiny patch only, so that the first step at the size pays those caches.

glibc keeps freed blocks below its dynamic mmap threshold (up to 32 MB) in the heap, so the process peak of a
default process also holds memory that is free but not returned (measured here up to 2.5x the live tensors). The
child therefore runs with ``MALLOC_MMAP_THRESHOLD_=65536``: large blocks are mapped and unmapped at once, and the
process peak follows the live memory, plus what the estimate cannot see (kernel scratch, Python objects, the
allocator's own overhead). Smaller blocks stay in the heap: before each measurement ``malloc_trim`` returns the free
heap pages of the previous one (networks of many small tensors, such as the tiny SAM 2, would otherwise reuse them
and measure too little). Linux only.
"""
import gc
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import List, Sequence, Tuple

import torch

from sam_nnunet.trainers.training_memory import TrainingSetup, training_step

MMAP_THRESHOLD = "65536"


@dataclass(frozen=True)
class MeasuredMemory:
    patch_size: Tuple[int, ...]
    batch_size: int
    peak_bytes: int   # peak resident memory during network creation + two training steps, above the baseline


def measure_training_memory(setup, sizes: Sequence[Tuple[Sequence[int], int]], threads: int = 1,
                            timeout: float = 900, fixed_mmap_threshold: bool = True,
                            warm_up_at_size: bool = True) -> List[MeasuredMemory]:
    """Measure ``setup`` (a memory.TrainingSetup) at each (patch size, batch size), in one fresh subprocess.

    ``fixed_mmap_threshold=False`` measures with glibc's default heap policy (to show what it adds);
    ``warm_up_at_size=False`` includes the one-off kernel caches of the first step at a size."""
    request = {"setup": asdict(setup), "sizes": [[list(p), int(b)] for p, b in sizes], "threads": threads,
               "warm_up_at_size": bool(warm_up_at_size)}
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if fixed_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD
    result = subprocess.run([sys.executable, "-m", "sam_nnunet.planners.measure"], input=json.dumps(request),
                            capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement failed:\n{result.stderr[-4000:]}")
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    return [MeasuredMemory(tuple(r["patch_size"]), r["batch_size"], r["peak_bytes"]) for r in rows]


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}: measuring needs Linux")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak resident set) to the current resident set


def _release_free_heap() -> None:
    """Return free heap memory to the system (glibc's ``malloc_trim``; nothing elsewhere)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _run_steps(setup, patch_size, batch_size, steps: int = 2) -> None:
    network = setup.build_network()
    network.train()
    loss = setup.build_loss()
    optimizer = setup.build_optimizer(network)
    data, target = setup.make_batch(patch_size, batch_size)
    clicks = setup.make_clicks(patch_size, batch_size)
    for _ in range(steps):
        training_step(network, optimizer, loss, data, target, clicks)


def _main() -> None:
    request = json.loads(sys.stdin.read())
    torch.set_num_threads(int(request["threads"]))
    torch.manual_seed(0)
    setup = TrainingSetup(**request["setup"])
    _run_steps(setup, (16, 16, 16), 1, steps=1)  # warm-up
    rows = []
    for patch_size, batch_size in request["sizes"]:
        if request.get("warm_up_at_size", True):
            _run_steps(setup, patch_size, batch_size, steps=1)
        gc.collect()
        _release_free_heap()
        _reset_peak()
        baseline = _status_bytes("VmRSS")
        _run_steps(setup, patch_size, batch_size)
        peak = _status_bytes("VmHWM") - baseline
        rows.append({"patch_size": patch_size, "batch_size": batch_size, "peak_bytes": peak})
        gc.collect()
    print(json.dumps(rows))


if __name__ == "__main__":
    _main()
