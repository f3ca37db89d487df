"""Estimate vs measured training memory of the planned networks, as a Markdown table for documentation/planner.md.

    PYTHONPATH=. python scripts/planner_memory_report.py [--trainers T ...] [--real] [--default-malloc] [--first-step]

Estimates are traced on fake tensors (sam_nnunet.trainers.training_memory); measurements are the peak resident
memory of a fresh process running two real CPU training steps (sam_nnunet.planners.measure). Both use the network,
the trainer's own loss, deep supervision and optimiser the planner sizes for (1 mm spacing, one input channel, three
labels as in the MSD hippocampus). --real adds the real encoder sizes (ViT-B; ZAP also LiteMedSAM; SAM 2.1 Hiera-T
for SAM2). Memory does not depend on CPU contention, so the numbers are valid on a busy machine; the load average is
printed for the record.
"""
import argparse
import os
import platform

import torch

from sam_nnunet.planners.measure import measure_training_memory
from sam_nnunet.planners.sam_planner import planned_method
from sam_nnunet.trainers.training_memory import TrainingMemoryEstimator

LABELS = {"background": 0, "anterior": 1, "posterior": 2}  # MSD hippocampus
TINY = [((32, 32, 32), 2), ((40, 56, 40), 2), ((48, 48, 48), 2), ((64, 64, 64), 2)]
REAL = [((32, 32, 32), 1), ((40, 56, 40), 1), ((40, 56, 40), 2)]
# trainer -> [(encoder, sizes)]: the tiny test encoder, then (--real) the real sizes the planner sizes by default
RUNS = {
    "SAMAdapterTrainer": [("vit_test", TINY), ("vit_b", REAL)],
    "SAM3DMedTrainer": [("vit_test", TINY), ("vit_b", REAL)],
    # ZAP's own hippocampus candidate (36x52x36), nnU-Net's patch, larger patches where it saves most
    "ZAP25DSAMTrainer": [("vit_test", [((36, 52, 36), 2), ((40, 56, 40), 2), ((64, 64, 64), 2), ((64, 96, 96), 2)]),
                         ("vit_b", [((40, 56, 40), 1), ((40, 56, 40), 2)]),
                         ("litemedsam", [((32, 32, 32), 1), ((40, 56, 40), 1), ((40, 56, 40), 2)])],
    # prompted variants, traced and trained with every training click slot used
    "SAMAdapterTrainer_prompted": [("vit_test", [((40, 56, 40), 2), ((64, 64, 64), 2)]),
                                   ("vit_b", [((40, 56, 40), 1)])],
    "ZAP25DSAMTrainer_prompted": [("vit_test", [((40, 56, 40), 2), ((64, 64, 64), 2), ((64, 96, 96), 2)]),
                                  ("litemedsam", [((32, 32, 32), 1), ((40, 56, 40), 1)])],
    # square frames; memory grows with the slices (2 x D propagation steps keep their activations)
    "SAM2_3dMedTrainer": [("sam2_test", [((8, 32, 32), 2), ((16, 32, 32), 1), ((16, 48, 48), 1), ((24, 40, 40), 2)]),
                          ("sam2.1_hiera_t", [((16, 32, 32), 1), ((24, 40, 40), 1)])],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trainers", nargs="+", default=list(RUNS))
    parser.add_argument("--real", "--vit-b", action="store_true",
                        help="also measure the real encoder sizes (ViT-B, LiteMedSAM, SAM 2.1 Hiera-T: minutes each, "
                             "up to ~4 GB)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="also measure with glibc's default heap policy (no MALLOC_MMAP_THRESHOLD_)")
    parser.add_argument("--first-step", action="store_true",
                        help="also measure the first step at each size (warm-up on a tiny patch only: includes the "
                             "kernels oneDNN compiles and caches per shape)")
    parser.add_argument("--encoders", nargs="+", default=None, help="only these encoders (of RUNS)")
    args = parser.parse_args()

    header = ("| trainer | encoder | patch | batch | parameters (MB) | estimate (MB) | measured (MB) | "
              "estimate / measured |")
    if args.default_malloc:
        header += " measured, default malloc (MB) |"
    if args.first_step:
        header += " measured, first step at the size (MB) |"
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for trainer in args.trainers:
        for encoder, sizes in RUNS[trainer][:None if args.real else 1]:
            if args.encoders and encoder not in args.encoders:
                continue
            method = planned_method(trainer, encoder)
            setup = method.training_setup(method.arch_kwargs((1.0, 1.0, 1.0)), 1, LABELS)
            estimator = TrainingMemoryEstimator(setup)
            measured = measure_training_memory(setup, sizes, timeout=7200)
            extra = []
            if args.default_malloc:
                extra.append(measure_training_memory(setup, sizes, timeout=7200, fixed_mmap_threshold=False))
            if args.first_step:
                extra.append(measure_training_memory(setup, sizes, timeout=7200, warm_up_at_size=False))
            for i, ((patch, batch), m) in enumerate(zip(sizes, measured)):
                e = estimator(patch, batch)
                row = (f"| {trainer} | {encoder} | {'x'.join(map(str, patch))} | {batch} | "
                       f"{e.parameter_bytes / 1e6:.1f} | {e.peak_bytes / 1e6:.1f} | {m.peak_bytes / 1e6:.1f} | "
                       f"{e.peak_bytes / m.peak_bytes:.3f} |")
                row += "".join(f" {column[i].peak_bytes / 1e6:.1f} |" for column in extra)
                rows.append(row)
                print(row, flush=True)
    print("\n".join(rows))
    print(f"\ntorch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, fp32, 1 thread per "
          f"measurement; load average at the end of the run: {os.getloadavg()}")


if __name__ == "__main__":
    main()
