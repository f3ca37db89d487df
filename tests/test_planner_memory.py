"""The planner's memory estimate against the measured peak of real training steps (CPU, separate process)."""
import sys

import pytest

from sam_nnunet.planners.measure import measure_training_memory
from sam_nnunet.planners.sam_planner import planned_method

# per trainer: its tiny encoder and two sizes, around what the planner picks for it on the hippocampus; for ZAP larger
# patches (the tiny ZAP's whole step is ~25 MB at hippocampus sizes, where a few MB of process noise would decide),
# SAM 2 with fewer slices (its trace and training cost grow with them). Each size is measured in its own process.
RUNS = {
    "SAMAdapterTrainer": ("vit_test", [((32, 32, 32), 2), ((48, 48, 48), 2)]),
    "SAM3DMedTrainer": ("vit_test", [((32, 32, 32), 2), ((48, 48, 48), 2)]),
    "ZAP25DSAMTrainer": ("vit_test", [((64, 64, 64), 2), ((96, 96, 96), 1)]),
    "SAM2_3dMedTrainer": ("sam2_test", [((8, 32, 32), 2), ((16, 48, 48), 1)]),
}
LABELS = {"background": 0, "anterior": 1, "posterior": 2}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the measurement reads /proc (Linux)")
@pytest.mark.parametrize("trainer", list(RUNS))
def test_estimate_within_25_percent_of_measured_peak(trainer):
    from sam_nnunet.trainers.training_memory import TrainingMemoryEstimator

    encoder, sizes = RUNS[trainer]
    method = planned_method(trainer, encoder)
    setup = method.training_setup(method.arch_kwargs((1.0, 1.0, 1.0)), 1, LABELS)
    estimator = TrainingMemoryEstimator(setup)
    measured = measure_training_memory(setup, sizes)
    estimates = [estimator(patch, batch) for patch, batch in sizes]
    for (patch, batch), m, e in zip(sizes, measured, estimates):
        assert m.patch_size == patch and m.batch_size == batch
        assert abs(e.peak_bytes - m.peak_bytes) <= 0.25 * m.peak_bytes, \
            f"patch {patch}, batch {batch}: estimated {e.peak_bytes / 1e6:.1f} MB, measured {m.peak_bytes / 1e6:.1f} MB"
    # memory grows with the patch, in both
    assert measured[0].peak_bytes < measured[-1].peak_bytes and estimates[0].peak_bytes < estimates[-1].peak_bytes
