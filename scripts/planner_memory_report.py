"""Estimate vs measured training memory of the planned networks, as a Markdown table for documentation/planner.md.

    PYTHONPATH=. python scripts/planner_memory_report.py [--trainers T ...] [--vit-b] [--default-malloc]

Estimates are traced on fake tensors (sam_nnunet.planners.memory); measurements are the peak resident memory of a
fresh process running two real CPU training steps (sam_nnunet.planners.measure). Both use the network, loss, deep
supervision and optimiser the planner sizes for (1 mm spacing, one input channel, three labels as in the MSD
hippocampus). Memory does not depend on CPU contention, so the numbers are valid on a busy machine; the load average
is printed for the record.
"""
import argparse
import os
import platform

import torch

from sam_nnunet.planners.measure import measure_training_memory
from sam_nnunet.planners.memory import TrainingMemoryEstimator
from sam_nnunet.planners.sam_planner import planned_method

LABELS = {"background": 0, "anterior": 1, "posterior": 2}  # MSD hippocampus
RUNS = {
    "vit_test": [((32, 32, 32), 2), ((40, 56, 40), 2), ((48, 48, 48), 2), ((64, 64, 64), 2)],
    "vit_b": [((32, 32, 32), 1), ((40, 56, 40), 1), ((40, 56, 40), 2)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trainers", nargs="+", default=["SAMAdapterTrainer", "SAM3DMedTrainer"])
    parser.add_argument("--vit-b", action="store_true", help="also measure the real ViT-B size (minutes, ~3 GB)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="also measure with glibc's default heap policy (no MALLOC_MMAP_THRESHOLD_)")
    args = parser.parse_args()

    encoders = ["vit_test"] + (["vit_b"] if args.vit_b else [])
    header = ("| trainer | encoder | patch | batch | parameters (MB) | estimate (MB) | measured (MB) | "
              "estimate / measured |")
    if args.default_malloc:
        header += " measured, default malloc (MB) |"
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for trainer in args.trainers:
        for encoder in encoders:
            method = planned_method(trainer, encoder)
            setup = method.training_setup(method.arch_kwargs((1.0, 1.0, 1.0)), 1, LABELS)
            estimator = TrainingMemoryEstimator(setup)
            sizes = RUNS[encoder]
            measured = measure_training_memory(setup, sizes)
            default = measure_training_memory(setup, sizes, fixed_mmap_threshold=False) \
                if args.default_malloc else None
            for i, ((patch, batch), m) in enumerate(zip(sizes, measured)):
                e = estimator(patch, batch)
                row = (f"| {trainer} | {encoder} | {'x'.join(map(str, patch))} | {batch} | "
                       f"{e.parameter_bytes / 1e6:.1f} | {e.peak_bytes / 1e6:.1f} | {m.peak_bytes / 1e6:.1f} | "
                       f"{e.peak_bytes / m.peak_bytes:.3f} |")
                if default is not None:
                    row += f" {default[i].peak_bytes / 1e6:.1f} |"
                rows.append(row)
            print(rows[-1], flush=True)
    print("\n".join(rows))
    print(f"\ntorch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, fp32, 1 thread per "
          f"measurement; load average during the run: {os.getloadavg()}")


if __name__ == "__main__":
    main()
