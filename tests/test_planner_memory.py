"""The planner's memory estimate against the measured peak of real training steps (CPU, separate process)."""
import sys

import pytest

from sam_nnunet.planners.measure import measure_training_memory
from sam_nnunet.planners.sam_planner import planned_method

# patch sizes the planner picks for the tiny encoder: below, at and above the hippocampus plan (40x56x40)
SIZES = [((32, 32, 32), 2), ((40, 56, 40), 2), ((48, 48, 48), 2)]
LABELS = {"background": 0, "anterior": 1, "posterior": 2}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the measurement reads /proc (Linux)")
@pytest.mark.parametrize("trainer", ["SAMAdapterTrainer", "SAM3DMedTrainer"])
def test_estimate_within_25_percent_of_measured_peak(trainer):
    from sam_nnunet.planners.memory import TrainingMemoryEstimator

    method = planned_method(trainer, "vit_test")
    setup = method.training_setup(method.arch_kwargs((1.0, 1.0, 1.0)), 1, LABELS)
    estimator = TrainingMemoryEstimator(setup)
    measured = measure_training_memory(setup, SIZES)
    estimates = [estimator(patch, batch) for patch, batch in SIZES]
    for (patch, batch), m, e in zip(SIZES, measured, estimates):
        assert m.patch_size == patch and m.batch_size == batch
        assert abs(e.peak_bytes - m.peak_bytes) <= 0.25 * m.peak_bytes, \
            f"patch {patch}, batch {batch}: estimated {e.peak_bytes / 1e6:.1f} MB, measured {m.peak_bytes / 1e6:.1f} MB"
    # memory grows with the patch, in both
    assert measured[0].peak_bytes < measured[2].peak_bytes and estimates[0].peak_bytes < estimates[2].peak_bytes
