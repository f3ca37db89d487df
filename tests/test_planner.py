"""SAMPlanner: token grids, patch candidates, the memory estimate's accounting, sizing against a budget."""
import os

import numpy as np
import pytest
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from sam_nnunet.networks.sam_adapter import SAMAdapterNetwork
from sam_nnunet.networks.token_grid import TokenGrid
from sam_nnunet.planners.sam_planner import PlanningError, SAMPlanner, resolve_encoder
from sam_nnunet.trainers.sam_adapter import SAMAdapterTrainer
from sam_nnunet.trainers.training_memory import TrainingMemoryEstimator, TrainingSetup

LABELS = {"background": 0, "anterior": 1, "posterior": 2}


def adapter_grid(max_window: int = 8) -> TokenGrid:
    return SAMAdapterNetwork.token_grid({"max_window": max_window})


def test_sam_adapter_grid_fits_tokens_and_windows():
    grid = adapter_grid()
    assert grid.stride == (4, 4, 4)
    assert grid.fits(0, 128)                # the paper's patch: 32 tokens = 4 windows of 8
    assert grid.computed_tokens(0, 36) == 10  # 9 tokens -> 2 windows of 5: one padded token
    assert not grid.fits(0, 36) and not grid.fits(0, 38)
    assert grid.round_up(0, 36) == 40 and grid.round_up(0, 50) == 56 and grid.round_up(0, 3) == 16
    assert grid.next_smaller(0, 40) == 32    # 36 (9 tokens) wastes a token
    assert grid.next_smaller(0, 16) is None  # fewer than 4 tokens per axis
    assert adapter_grid(4).fits(0, 36)       # 9 tokens = 3 windows of 3 with windows of at most 4


def test_patch_candidates_start_like_nnunet_and_only_fit_the_grid():
    grid = adapter_grid()
    # MSD hippocampus: 1 mm, median 36x50x35; nnU-Net's own plan is 40x56x40
    candidates = SAMPlanner.patch_candidates(grid, (1.0, 1.0, 1.0), (36.0, 50.0, 35.0))
    assert candidates[0] == (40, 56, 40)
    assert candidates[-1] == (16, 16, 16)
    assert all(grid.fits(a, p[a]) for p in candidates for a in range(3))
    volumes = [np.prod(p) for p in candidates]
    assert all(a > b for a, b in zip(volumes, volumes[1:]))


def test_estimate_gives_frozen_parameters_no_gradient_or_optimiser_state():
    def estimate(train_stem):
        setup = TrainingSetup("planner_toys.FrozenStemNet", {"width": 16, "train_stem": train_stem}, 1, LABELS)
        return TrainingMemoryEstimator(setup)((24, 24, 24), 2)

    frozen, trained = estimate(False), estimate(True)
    stem_params = 16 * 1 * 5 ** 3 + 16
    assert frozen.parameter_bytes == trained.parameter_bytes
    # a trainable stem adds its gradient and AdamW's two moments (fp32), plus AdamW's step counters (2 tensors)
    assert trained.persistent_bytes - frozen.persistent_bytes == 3 * 4 * stem_params + 2 * 4
    # and backward through the stem needs the gradient w.r.t. its output: an activation-sized tensor more
    assert trained.peak_bytes - frozen.peak_bytes > 3 * 4 * stem_params + 16 * 24 ** 3 * 4


def test_resolve_encoder(sam_env):
    assert resolve_encoder(SAMAdapterTrainer) == "vit_b"
    assert resolve_encoder(SAMAdapterTrainer, "vit_l") == "vit_l"
    sam_env.setenv("nnUNet_SAM_encoder", "vit_test")
    assert resolve_encoder(SAMAdapterTrainer) == "vit_test"


class SAMAdapterTrainer_w4(SAMAdapterTrainer):
    """3DSAM-adapter with 3D windows of at most 4 tokens (a second method for the planner)."""
    network_kwargs = {"max_window": 4}


class DictOutputTrainer(SAMAdapterTrainer):
    """A method whose network returns a dict: nnU-Net's standard step cannot train it, nor trace it."""
    network_class = "planner_toys.DictOutputNet"
    network_kwargs = {}


@pytest.fixture
def second_method(monkeypatch):
    import sam_nnunet.trainers.registry as registry

    classes = {**registry.trainer_classes(), "SAMAdapterTrainer_w4": SAMAdapterTrainer_w4,
               "DictOutputTrainer": DictOutputTrainer}
    monkeypatch.setattr(registry, "trainer_classes", lambda: classes)


def test_planner_sizes_patch_and_batch_to_the_budget(synthetic_dataset, second_method):
    pre = synthetic_dataset["preprocessed"]
    default_plans = open(join(pre, "nnUNetPlans.json"), "rb").read()
    target_gb = 0.06  # vit_test at the full 40x48x40 patch, batch 2, needs ~0.13 GB: the patch must shrink
    planner = SAMPlanner(synthetic_dataset["dataset_id"], gpu_memory_target_in_gb=target_gb,
                         plans_name="nnUNetSAMPlans_budget",
                         trainers=["SAMAdapterTrainer", "SAMAdapterTrainer_w4", "DictOutputTrainer"],
                         encoder="vit_test", skip_failing_trainers=True)
    plans = planner.plan_experiment()

    saved = load_json(join(pre, "nnUNetSAMPlans_budget.json"))
    assert saved["experiment_planner_used"] == "SAMPlanner"
    assert open(join(pre, "nnUNetPlans.json"), "rb").read() == default_plans  # nnU-Net's plans untouched
    assert saved["configurations"]["2d"]["architecture"]["network_class_name"].endswith("PlainConvUNet")

    fullres = saved["configurations"]["3d_fullres"]
    record = fullres["sam_planner"]
    assert (record["trainer"], record["encoder"]) == ("SAMAdapterTrainer", "vit_test")
    assert fullres["architecture"]["network_class_name"] == SAMAdapterTrainer.network_class
    assert fullres["architecture"]["arch_kwargs"] == {"encoder": "vit_test", "max_window": 8, "input_window": None}

    for name, trainer in (("3d_fullres", "SAMAdapterTrainer"), ("3d_fullres_SAMAdapterTrainer_w4",
                                                                 "SAMAdapterTrainer_w4")):
        method = next(m for m in planner.methods if m.trainer == trainer)
        cfg = {**saved["configurations"]["3d_fullres"], **saved["configurations"][name]}
        patch, batch = tuple(cfg["patch_size"]), cfg["batch_size"]
        arch_kwargs = cfg["architecture"]["arch_kwargs"]
        grid, estimate = method.grid(arch_kwargs), planner.estimator(method, arch_kwargs)
        assert all(grid.fits(a, p) for a, p in enumerate(patch))
        assert estimate(patch, batch).peak_bytes <= target_gb * 1e9
        assert cfg["sam_planner"]["estimated_memory_gb"] == pytest.approx(estimate(patch, batch).peak_gb, abs=1e-4)
        assert (cfg["sam_planner"]["patch_size"], cfg["sam_planner"]["batch_size"]) == (list(patch), batch)
        # nothing larger would have fitted: the previous candidate at the same batch floor, the next batch size
        candidates = planner.patch_candidates(grid, cfg["spacing"], cfg["median_image_size_in_voxels"])
        index = candidates.index(patch)
        assert index > 0 and estimate(candidates[index - 1], min(batch, 2)).peak_bytes > target_gb * 1e9
        if cfg["sam_planner"]["batch_size_limited_by"] == "memory":
            assert estimate(patch, batch + 1).peak_bytes > target_gb * 1e9
    variant = saved["configurations"]["3d_fullres_SAMAdapterTrainer_w4"]
    assert variant["inherits_from"] == "3d_fullres"
    assert variant["architecture"]["arch_kwargs"] == {"encoder": "vit_test", "max_window": 4, "input_window": None}
    assert "data_identifier" not in variant  # shares 3d_fullres's preprocessed data
    assert plans["configurations"]["3d_fullres"]["patch_size"] == fullres["patch_size"]
    # a method the trace cannot handle is left out, with the reason in the plans
    assert "3d_fullres_DictOutputTrainer" not in saved["configurations"]
    assert "could not be traced" in saved["sam_planner_skipped"]["DictOutputTrainer"]


def test_a_method_that_cannot_be_traced_is_a_planning_error(synthetic_dataset, second_method):
    planner = SAMPlanner(synthetic_dataset["dataset_id"], plans_name="nnUNetSAMPlans_untraceable",
                         trainers=["DictOutputTrainer"], encoder="vit_test")
    with pytest.raises(PlanningError, match="DictOutputTrainer .* could not be traced .* own _build_loss"):
        planner.size_configuration(planner.methods[0], (1.0, 1.0, 1.0), (36.0, 44.0, 36.0), 1e6)


def test_planner_says_what_to_do_when_nothing_fits(synthetic_dataset):
    planner = SAMPlanner(synthetic_dataset["dataset_id"], gpu_memory_target_in_gb=0.001,
                         plans_name="nnUNetSAMPlans_nothing_fits", encoder="vit_test")
    with pytest.raises(PlanningError, match="Raise -gpu_memory_target"):
        planner.plan_experiment()
    assert not os.path.exists(join(synthetic_dataset["preprocessed"], "nnUNetSAMPlans_nothing_fits.json"))


def test_plan_and_preprocess_rejects_sam_options_for_nnunet_planners():
    from sam_nnunet.errors import UserFacingExit
    from sam_nnunet.planners.plan_and_preprocess import plan_and_preprocess

    with pytest.raises(UserFacingExit, match="-pl SAMPlanner"):
        plan_and_preprocess([990], planner="ExperimentPlanner", trainers=["SAMAdapterTrainer"])
    with pytest.raises(UserFacingExit, match="no planner named"):
        plan_and_preprocess([990], planner="NoSuchPlanner")
