"""SAMPlanner: nnU-Net's experiment planning with patch and batch size chosen for a SAM method's network.

Everything a dataset decides stays nnU-Net's: fingerprint, target spacing (median, with nnU-Net's rule for
anisotropic data), transposition, normalisation, resampling, the 2D configuration, the 3d_lowres decision. What
differs is how a 3D configuration's patch and batch size are found (``get_plans_for_configuration``):

1. candidate patches: nnU-Net's starting patch (aspect ratio from the spacing, volume of 256^3, clipped to the
   median image), each axis rounded up to a length the method's token grid takes without waste
   (``networks.token_grid.TokenGrid``, declared by the network class); then, as nnU-Net does, the axis that is
   largest relative to the median image shrinks step by step, each step to the next waste-free length;
2. the first candidate whose training step fits the memory target at nnU-Net's minimum batch size (2; 1 if even
   the smallest patch does not fit with 2). Memory is not a reference ratio as in nnU-Net but an absolute estimate
   traced from the network itself (``trainers.training_memory.TrainingMemoryEstimator``); an interpolation search
   over the candidates traces where the traces so far predict the limit, and bisects where the prediction is poor;
3. the largest batch size that fits, capped as in nnU-Net so a batch covers at most 5% of the dataset's voxels.

The plans are sized for one method, the first of ``trainers`` (default SAMAdapterTrainer): its sizes go into
``3d_fullres`` (and ``3d_lowres`` when nnU-Net creates one). Every further trainer gets its own configuration
``3d_fullres_<Trainer>`` that inherits ``3d_fullres`` (same spacing, same preprocessed data) and overrides patch
size, batch size and architecture. Each configuration records what it was sized for in ``sam_planner``; trainers
read only nnU-Net's standard fields.
"""
import functools
import json
import pydoc
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from sam_nnunet import settings
from sam_nnunet.encoders.checkpoint import read_state_dict
from sam_nnunet.encoders.contract import IntensityWindow, window_for_schemes
from sam_nnunet.encoders.pretrained import pick_encoder
from sam_nnunet.encoders.registry import identify_checkpoint
from sam_nnunet.networks.base import SAMNetworkBase
from sam_nnunet.networks.token_grid import UNALIGNED_GRID, TokenGrid
from sam_nnunet.trainers.registry import get_trainer_class
from sam_nnunet.trainers.training_memory import (TrainingMemoryEstimate, TrainingMemoryEstimator, TrainingSetup,
                                                 class_path)

DEFAULT_PLANS_NAME = "nnUNetSAMPlans"
DEFAULT_TRAINER = "SAMAdapterTrainer"
ESTIMATE_DESCRIPTION = ("peak tensor memory of one training step (fp32, AdamW), traced on fake tensors; CUDA context "
                        "and allocator overhead not included")


class PlanningError(ValueError):
    """A plan is impossible under the user's settings; the message names the fix."""


def variant_configuration_name(trainer: str, base: str = "3d_fullres") -> str:
    """Name of the configuration sized for a further trainer, e.g. ``3d_fullres_ZAP25DSAMTrainer``."""
    return f"{base}_{trainer}"


def resolve_encoder(trainer_class: type, requested: Union[None, str, Sequence[str]] = None) -> str:
    """The encoder a trainer is sized with: the first of ``requested`` (or what nnUNet_SAM_encoder /
    nnUNet_SAM_checkpoint name, as training will use) that the trainer adapts; otherwise the trainer's default
    encoder (as it trains without nnUNet_SAM_encoder / nnUNet_SAM_checkpoint)."""
    if requested is None:
        requested = settings.get_str(settings.ENCODER)
    if requested is None and settings.get_str(settings.CHECKPOINT):
        path = settings.get_str(settings.CHECKPOINT)
        requested = identify_checkpoint(read_state_dict(path), path).name
    requested = [requested] if isinstance(requested, str) else list(requested or ())
    return pick_encoder(trainer_class.encoder_families, requested, getattr(trainer_class, "default_encoder", None))


@dataclass
class PlannedMethod:
    """One trainer the plans are sized for, with its network as the trainer writes it into the plans. The planning
    rules are the trainer's and its network's own class methods (``SAMTrainerBase.label_kwargs``,
    ``planned_arch_kwargs``, ``training_clicks``; ``SAMNetworkBase.token_grid``,
    ``planned_deep_supervision_scales``): a variant trainer inherits them."""
    trainer: str
    trainer_class: type
    encoder: str
    network_class: str
    network_kwargs: Dict  # the encoder, its encoder_kwargs and the trainer's network_kwargs

    @functools.cached_property
    def network(self) -> type:  # asked by grid, declares_grid and deep_supervision_scales: located once
        network = pydoc.locate(self.network_class)
        if not isinstance(network, type):
            raise PlanningError(f"{self.trainer}.network_class {self.network_class!r} names no class")
        return network

    @property
    def declares_grid(self) -> bool:
        """False for a network that inherits SAMNetworkBase's any-length grid (or is no SAMNetworkBase at all)."""
        rule = getattr(self.network, "token_grid", None)
        return getattr(rule, "__func__", None) not in (None, SAMNetworkBase.token_grid.__func__)

    @property
    def clicks(self) -> Tuple[int, int]:
        """A prompted trainer's training clicks: per foreground class, anywhere ((0, 0) without prompts)."""
        return self.trainer_class.training_clicks()

    def arch_kwargs(self, spacing: Sequence[float], has_regions: bool = False,
                    window: Optional[IntensityWindow] = None) -> Dict:
        """The network's arguments for a configuration of this spacing (and labels: region-based or not; the input
        channels' intensity ``window``, which the trainer writes too: ``SAMTrainerBase.input_window``)."""
        maps = window is not None and self.trainer_class.maps_intensity(self.network_kwargs["encoder"])
        return {"input_window": window.to_kwargs() if maps else None, **self.network_kwargs,
                **self.trainer_class.label_kwargs(has_regions),
                **self.trainer_class.planned_arch_kwargs(spacing)}

    def grid(self, arch_kwargs: Dict) -> TokenGrid:
        return self.network.token_grid(arch_kwargs) if self.declares_grid else UNALIGNED_GRID

    def deep_supervision_scales(self, arch_kwargs: Dict) -> Optional[List[List[float]]]:
        rule = getattr(self.network, "planned_deep_supervision_scales", None)
        return rule(arch_kwargs) if rule else None

    def training_setup(self, arch_kwargs: Dict, input_channels: int, labels: Dict,
                       regions_class_order: Optional[List[int]] = None) -> TrainingSetup:
        """What one training step of this method needs, for the memory estimate (and its measurement)."""
        return TrainingSetup(self.network_class, dict(arch_kwargs), input_channels, labels, regions_class_order,
                             deep_supervision_scales=self.deep_supervision_scales(arch_kwargs),
                             trainer=class_path(self.trainer_class), clicks_per_class=self.clicks[0],
                             random_clicks=self.clicks[1])


def planned_method(trainer: str, encoder: Union[None, str, Sequence[str]] = None) -> PlannedMethod:
    """A sam-nnunet trainer as the planner sizes it (encoder as ``resolve_encoder`` decides)."""
    try:
        cls = get_trainer_class(trainer)
    except ValueError as e:
        raise PlanningError(str(e)) from None
    chosen = resolve_encoder(cls, encoder)
    return PlannedMethod(trainer, cls, chosen, cls.network_class,
                         {"encoder": chosen, **cls.encoder_kwargs(chosen), **cls.network_kwargs})


@dataclass(frozen=True)
class Sizing:
    arch_kwargs: Dict
    grid: TokenGrid
    patch_size: Tuple[int, ...]
    batch_size: int
    estimate: TrainingMemoryEstimate
    batch_size_limited_by: str


class SAMPlanner(ExperimentPlanner):
    """nnU-Net ExperimentPlanner whose 3D configurations are sized for SAM trainers (see the module docstring).

    Arguments (beyond nnU-Net's):
      gpu_memory_target_in_gb: memory one training step may use, in GB (10^9 bytes) of tensor memory; nnU-Net's
        default of 8 is kept. Leave room for the CUDA context and allocator overhead (about 1-2 GB).
      plans_name: default ``nnUNetSAMPlans``.
      trainers: trainer class names to size for; the first one defines ``3d_fullres``.
      encoder: encoder(s) to size with (default: nnUNet_SAM_encoder / nnUNet_SAM_checkpoint as training reads them,
        else each trainer's default); each trainer takes the first one of a family it adapts, e.g.
        ``["vit_b", "sam2.1_hiera_b+"]``.
      skip_failing_trainers: a further trainer (not the first) that cannot be planned gets no configuration (the
        reason is in ``skipped``) instead of failing the planning.
    """

    def __init__(self, dataset_name_or_id: Union[str, int], gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = DEFAULT_PLANS_NAME,
                 overwrite_target_spacing: Union[List[float], Tuple[float, ...]] = None,
                 suppress_transpose: bool = False, trainers: Sequence[str] = (DEFAULT_TRAINER,),
                 encoder: Union[None, str, Sequence[str]] = None, skip_failing_trainers: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        if not trainers:
            raise PlanningError("SAMPlanner needs at least one trainer to size the plans for")
        if gpu_memory_target_in_gb <= 0:
            raise PlanningError(f"the memory target must be positive, got {gpu_memory_target_in_gb} GB")
        self.methods = [planned_method(t, encoder) for t in dict.fromkeys(trainers)]
        for name in [encoder] if isinstance(encoder, str) else encoder or ():
            if all(m.encoder != name for m in self.methods):
                raise PlanningError(f"-encoder {name} fits none of the trainers planned for "
                                    f"({', '.join(m.trainer for m in self.methods)}): `sam-nnunet info` lists which "
                                    f"encoders each trainer adapts")
        self.skip_failing_trainers = skip_failing_trainers
        self.skipped: Dict[str, str] = {}  # trainer -> why it got no configuration
        self._estimators: Dict[str, TrainingMemoryEstimator] = {}
        self._variants: Dict[str, Dict[str, dict]] = {}  # data identifier -> {trainer: configuration fields}

    # ---- methods and their networks ------------------------------------------------------------------------
    def label_manager(self):
        return LabelManager(self.dataset_json["labels"], self.dataset_json.get("regions_class_order"))

    def training_setup(self, method: PlannedMethod, arch_kwargs: Dict) -> TrainingSetup:
        channels = self.dataset_json.get("channel_names", self.dataset_json.get("modality"))
        return method.training_setup(arch_kwargs, len(channels), self.dataset_json["labels"],
                                     self.dataset_json.get("regions_class_order"))

    def estimator(self, method: PlannedMethod, arch_kwargs: Dict) -> TrainingMemoryEstimator:
        # trainers with the same network, arguments and loss builder share their traces (SAM2_3dMedTrainer_noAux:
        # SAM2_3dMedTrainer's loss with the auxiliary weights at 0, which computes the same terms)
        loss_builder = method.trainer_class._build_loss
        key = json.dumps([method.network_class, arch_kwargs, loss_builder.__module__, loss_builder.__qualname__],
                         sort_keys=True)
        if key not in self._estimators:
            self._estimators[key] = TrainingMemoryEstimator(self.training_setup(method, arch_kwargs))
        return self._estimators[key]

    # ---- sizing ----------------------------------------------------------------------------------------------
    @property
    def memory_budget_bytes(self) -> float:
        return self.UNet_vram_target_GB * 1e9

    @staticmethod
    def patch_candidates(grid: TokenGrid, spacing: Sequence[float], median_shape: Sequence[float]) -> List[Tuple]:
        """Waste-free patches from nnU-Net's starting patch down to the grid's minimum, largest first. Square axes
        (``TokenGrid.square``) start at the longest of them and shrink together."""
        inverse = 1 / np.array(spacing, dtype=float)
        initial = [round(i) for i in inverse * (256 ** 3 / np.prod(inverse)) ** (1 / 3)]
        initial = [min(i, j) for i, j in zip(initial, median_shape)]
        for axes in {grid.axes_of(a) for a in range(3)}:
            longest = max(initial[a] for a in axes)
            for a in axes:
                initial[a] = longest
        patch = [grid.round_up(axis, length) for axis, length in enumerate(initial)]
        candidates = [tuple(patch)]
        while True:
            # nnU-Net's rule: shrink the axis that is largest relative to the median image (stable: last on ties)
            order = np.argsort([p / m for p, m in zip(patch, median_shape)], kind="stable")[::-1]
            for axis in order:
                smaller = grid.next_smaller(int(axis), patch[axis])
                if smaller is not None:
                    for a in grid.axes_of(int(axis)):
                        patch[a] = smaller
                    break
            else:
                return candidates
            candidates.append(tuple(patch))

    def size_configuration(self, method: PlannedMethod, spacing: Sequence[float], median_shape: Sequence[float],
                           approximate_n_voxels_dataset: float) -> Sizing:
        """Patch and batch size of one method at one spacing: the largest waste-free patch that fits the memory
        target at the minimum batch size (2, else 1), then the largest batch size that fits, within nnU-Net's cap."""
        window = window_for_schemes(self.determine_normalization_scheme_and_whether_mask_is_used_for_norm()[0],
                                    self.dataset_fingerprint["foreground_intensity_properties_per_channel"])
        arch_kwargs = method.arch_kwargs(spacing, self.label_manager().has_regions, window)
        grid = method.grid(arch_kwargs)
        memory = MemorySearch(method, _traced(method, self.estimator, method, arch_kwargs), self.memory_budget_bytes)
        candidates = self.patch_candidates(grid, spacing, median_shape)
        for floor in sorted({self.UNet_min_batch_size, 1}, reverse=True):
            first = memory.largest_patch(candidates, floor)
            if first is not None:
                break
        else:
            smallest = memory.estimate(candidates[-1], 1)
            raise PlanningError(
                f"{method.trainer} with encoder {method.encoder} needs {smallest.peak_gb:.2f} GB to train even the "
                f"smallest patch {list(candidates[-1])} at batch size 1, more than the memory target of "
                f"{self.UNet_vram_target_GB:g} GB. Raise -gpu_memory_target or plan a smaller encoder (-encoder).")
        patch = candidates[first]
        cap = round(approximate_n_voxels_dataset * self.max_dataset_covered / np.prod(patch, dtype=np.float64))
        top = max(cap, floor)
        batch = memory.largest_batch(patch, floor, top)
        if batch < top:
            limited_by = "memory"
        elif cap > floor:
            limited_by = "dataset size (a batch covers at most 5% of the voxels, as in nnU-Net)"
        else:
            limited_by = "minimum batch size"
        return Sizing(arch_kwargs, grid, tuple(int(p) for p in patch), int(batch), memory.estimate(patch, batch),
                      limited_by)

    def method_fields(self, method: PlannedMethod, sizing: Sizing) -> dict:
        """What a configuration says for one method: nnU-Net's patch/batch/architecture, and what it was sized for."""
        return {
            "batch_size": sizing.batch_size,
            "patch_size": list(sizing.patch_size),
            "architecture": {"network_class_name": method.network_class, "arch_kwargs": dict(sizing.arch_kwargs),
                             "_kw_requires_import": []},
            "sam_planner": {
                "trainer": method.trainer,
                "encoder": method.encoder,
                "memory_target_gb": float(self.UNet_vram_target_GB),
                "estimated_memory_gb": round(sizing.estimate.peak_gb, 4),
                # what the estimate is for: the trainer's start-up memory check reuses it only while they are unchanged
                "patch_size": list(sizing.patch_size), "batch_size": sizing.batch_size,
                "estimate": ESTIMATE_DESCRIPTION,
                "token_grid": sizing.grid.describe() if method.declares_grid else
                "the network declares no token grid: any patch length",
                "batch_size_limited_by": sizing.batch_size_limited_by,
            },
        }

    # ---- nnU-Net's hooks ---------------------------------------------------------------------------------------
    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        if len(spacing) != 3:
            # the 2D configuration stays nnU-Net's U-Net plan: our trainers segment 3D patches
            return super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                       approximate_n_voxels_dataset, _cache)
        assert all(s > 0 for s in spacing), f"Spacing must be > 0! Spacing: {spacing}"
        median_shape = [float(m) for m in median_shape[:3]]
        primary, *others = self.methods
        plan = self._dataset_fields(spacing, median_shape, data_identifier)
        plan.update(self.method_fields(primary, self.size_configuration(
            primary, spacing, median_shape, approximate_n_voxels_dataset)))
        if data_identifier == self.generate_data_identifier("3d_fullres"):
            variants = self._variants[data_identifier] = {}
            for m in others:
                try:
                    variants[m.trainer] = self.method_fields(m, self.size_configuration(
                        m, spacing, median_shape, approximate_n_voxels_dataset))
                except PlanningError as e:
                    if not self.skip_failing_trainers:
                        raise
                    self.skipped[m.trainer] = str(e)
        return plan

    def _dataset_fields(self, spacing, median_shape, data_identifier: str) -> dict:
        # the fields of nnU-Net's configuration that the data decides, computed by nnU-Net's own methods
        resampling_data, resampling_data_kwargs, resampling_seg, resampling_seg_kwargs = self.determine_resampling()
        resampling_softmax, resampling_softmax_kwargs = self.determine_segmentation_softmax_export_fn()
        normalization_schemes, mask_is_used_for_norm = \
            self.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
        return {
            "data_identifier": data_identifier,
            "preprocessor_name": self.preprocessor_name,
            "batch_size": None,
            "patch_size": None,
            "median_image_size_in_voxels": median_shape,
            "spacing": spacing,
            "normalization_schemes": normalization_schemes,
            "use_mask_for_norm": mask_is_used_for_norm,
            "resampling_fn_data": resampling_data.__name__,
            "resampling_fn_seg": resampling_seg.__name__,
            "resampling_fn_data_kwargs": resampling_data_kwargs,
            "resampling_fn_seg_kwargs": resampling_seg_kwargs,
            "resampling_fn_probabilities": resampling_softmax.__name__,
            "resampling_fn_probabilities_kwargs": resampling_softmax_kwargs,
        }

    def save_plans(self, plans):
        fullres = plans["configurations"].get("3d_fullres")
        if fullres is not None:
            for trainer, fields in self._variants.get(fullres["data_identifier"], {}).items():
                plans["configurations"][variant_configuration_name(trainer)] = {"inherits_from": "3d_fullres",
                                                                                **fields}
        if self.skipped:
            plans["sam_planner_skipped"] = dict(self.skipped)
        super().save_plans(plans)


def _traced(method: PlannedMethod, function, *args):
    """Run a step of the memory estimate; a network or training step that cannot be traced on fake tensors becomes a
    PlanningError naming the trainer and the fix."""
    try:
        return function(*args)
    except Exception as e:
        raise PlanningError(
            f"the training step of {method.trainer} ({method.network_class}) could not be traced on fake tensors to "
            f"estimate its memory ({type(e).__name__}: {e}). A method whose network output is not nnU-Net's standard "
            f"one traces with its trainer's own _build_loss (documentation/planner.md, 'Adding a method').") from e


class MemorySearch:
    """The memory side of sizing one method: traced estimates against the budget, and the two searches over them.
    A trace costs seconds to minutes; the searches guess from the traces made so far where the limit lies."""

    def __init__(self, method: PlannedMethod, estimator: TrainingMemoryEstimator, budget_bytes: float) -> None:
        self.method, self.estimator, self.budget_bytes = method, estimator, budget_bytes

    def estimate(self, patch: Sequence[int], batch_size: int) -> TrainingMemoryEstimate:
        return _traced(self.method, self.estimator, patch, batch_size)

    def fits(self, patch: Sequence[int], batch_size: int) -> bool:
        return self.estimate(patch, batch_size).peak_bytes <= self.budget_bytes

    def predicted_fit(self, patch: Sequence[int], batch_size: int) -> Optional[bool]:
        """Whether the traces so far predict that this step fits, without tracing it (None: no prediction yet)."""
        peak = self.estimator.predicted_peak_bytes(patch, batch_size)
        return None if peak is None else peak <= self.budget_bytes

    def largest_patch(self, candidates: Sequence[Tuple[int, ...]], batch_size: int) -> Optional[int]:
        """Index of the first (largest) candidate patch that fits at this batch size; None if none does."""
        if self.fits(candidates[0], batch_size):  # the common case: one trace, no search
            return 0
        if not self.fits(candidates[-1], batch_size):
            return None
        return _first_true(len(candidates), lambda i: self.fits(candidates[i], batch_size),
                           _guess_from(lambda i: self.predicted_fit(candidates[i], batch_size)))

    def largest_batch(self, patch: Sequence[int], floor: int, top: int) -> int:
        """Largest batch size in [floor, top] that fits, given that ``floor`` fits: the first too large, minus one."""
        def too_large(i: int) -> bool:
            return not self.fits(patch, floor + 1 + i)

        def predicted_too_large(i: int) -> Optional[bool]:
            fit = self.predicted_fit(patch, floor + 1 + i)
            return None if fit is None else not fit

        first_too_large = _first_true(top - floor, too_large, _guess_from(predicted_too_large))
        return top if first_too_large is None else floor + first_too_large


def _guess_from(predicted: Callable[[int], Optional[bool]]) -> Callable[[int, int], Optional[int]]:
    """A ``_first_true`` guess from predictions: the first index in [lo, hi) predicted True, else hi - 1 (the
    neighbour of a known True, to confirm it); None while any prediction in the range is missing. Asked again after
    every trace, so the guesses sharpen."""
    def guess(lo: int, hi: int) -> Optional[int]:
        values = [predicted(i) for i in range(lo, hi)]
        return None if None in values else next((lo + k for k, v in enumerate(values) if v), hi - 1)
    return guess


def _first_true(n: int, predicate, guess: Optional[Callable[[int, int], Optional[int]]] = None) -> Optional[int]:
    """Smallest i in [0, n) with predicate(i), for a predicate that is False...False True...True; None if none.

    Interpolation search: ``guess(lo, hi)`` names the index in [lo, hi) to evaluate next (None: the midpoint); it is
    asked again after every evaluation of the (expensive) predicate. A guess that leaves more than half of the range
    is followed by a bisection step, so at most about twice the evaluations of plain bisection are made.
    """
    lo, hi = 0, n  # the answer is in [lo, hi]; hi == n means "none found yet"
    bisect = False
    while lo < hi:
        g = None if bisect or guess is None else guess(lo, hi)
        mid = (lo + hi) // 2 if g is None else min(max(g, lo), hi - 1)
        size = hi - lo
        if predicate(mid):
            hi = mid
        else:
            lo = mid + 1
        bisect = g is not None and hi - lo > size // 2
    return lo if lo < n else None
