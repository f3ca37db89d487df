"""Estimate vs measured training memory of SAMAdapterTrainer's network, as a Markdown table for
documentation/planner.md.

    PYTHONPATH=. python scripts/planner_memory_report.py [--vit-b] [--default-malloc]

Estimates are traced on fake tensors (sam_nnunet.planners.memory); measurements are the peak resident memory of a
fresh process running two real CPU training steps (sam_nnunet.planners.measure). Memory does not depend on CPU
contention, so the numbers are valid on a busy machine; the load average is printed for the record.
"""
import argparse
import os
import platform

import torch

from sam_nnunet.planners.measure import measure_training_memory
from sam_nnunet.planners.memory import TrainingMemoryEstimator, TrainingSetup
from sam_nnunet.trainers.sam_adapter import SAMAdapterTrainer

LABELS = {"background": 0, "anterior": 1, "posterior": 2}  # MSD hippocampus
RUNS = {
    "vit_test": [((32, 32, 32), 2), ((40, 56, 40), 2), ((48, 48, 48), 2), ((64, 64, 64), 2)],
    "vit_b": [((32, 32, 32), 1), ((40, 56, 40), 1), ((40, 56, 40), 2)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vit-b", action="store_true", help="also measure the real ViT-B size (minutes, ~3 GB)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="also measure with glibc's default heap policy (no MALLOC_MMAP_THRESHOLD_)")
    args = parser.parse_args()

    encoders = ["vit_test"] + (["vit_b"] if args.vit_b else [])
    header = "| encoder | patch | batch | parameters (MB) | estimate (MB) | measured (MB) | estimate / measured |"
    if args.default_malloc:
        header += " measured, default malloc (MB) |"
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for encoder in encoders:
        setup = TrainingSetup(SAMAdapterTrainer.network_class,
                              {"encoder": encoder, **SAMAdapterTrainer.network_kwargs}, 1, LABELS)
        estimator = TrainingMemoryEstimator(setup)
        sizes = RUNS[encoder]
        measured = measure_training_memory(setup, sizes)
        default = measure_training_memory(setup, sizes, fixed_mmap_threshold=False) if args.default_malloc else None
        for i, ((patch, batch), m) in enumerate(zip(sizes, measured)):
            e = estimator(patch, batch)
            row = (f"| {encoder} | {'x'.join(map(str, patch))} | {batch} | {e.parameter_bytes / 1e6:.1f} | "
                   f"{e.peak_bytes / 1e6:.1f} | {m.peak_bytes / 1e6:.1f} | {e.peak_bytes / m.peak_bytes:.3f} |")
            if default is not None:
                row += f" {default[i].peak_bytes / 1e6:.1f} |"
            rows.append(row)
    print("\n".join(rows))
    print(f"\ntorch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, fp32, 1 thread per "
          f"measurement; load average during the run: {os.getloadavg()}")


if __name__ == "__main__":
    main()
