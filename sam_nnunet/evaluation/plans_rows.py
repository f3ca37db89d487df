"""Rows of ``learning-curve`` and ``benchmark`` that train on other nnU-Net plans than ``nnUNetPlans``, and the
target spacing both tools can plan every row at.

A row is ``TRAINER[@PLANS][:ENCODER]``: ``nnUNetTrainerShortRun@nnUNetResEncUNetMPlans`` is nnU-Net's trainer on
the plans of ``nnUNetPlannerResEncM`` (nnU-Net's residual-encoder preset M, resenc_presets.md), with the budget of
the other rows. ``PLANS`` is one of nnU-Net's preset plans names (:data:`PLANNERS`): the tools plan them with their
own planner, as ``nnUNetv2_plan_and_preprocess -pl nnUNetPlannerResEncM`` does, when a row needs them.

A target spacing (``--target-spacing 2 2 2``) applies to every row alike: each preset is planned with nnU-Net's
``-overwrite_target_spacing`` under its own plans name (``nnUNetPlans_2mm``, ``nnUNetResEncUNetMPlans_2mm``), so
nnU-Net's default plans stay as they are. nnU-Net applies it to 3d_fullres only.
"""
import random
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

DEFAULT_PLANS = "nnUNetPlans"
# nnU-Net's preset plans names and the planner that writes each (nnunetv2.experiment_planning, 2.8.x)
PLANNERS: Dict[str, str] = {
    "nnUNetPlans": "ExperimentPlanner",
    "nnUNetResEncUNetMPlans": "nnUNetPlannerResEncM",
    "nnUNetResEncUNetLPlans": "nnUNetPlannerResEncL",
    "nnUNetResEncUNetXLPlans": "nnUNetPlannerResEncXL",
}
SHORT_NAMES = {"nnUNetResEncUNetMPlans": "ResEnc M", "nnUNetResEncUNetLPlans": "ResEnc L",
               "nnUNetResEncUNetXLPlans": "ResEnc XL"}
_ROW = re.compile(r"^([A-Za-z_]\w*)(?:@([A-Za-z_]\w*))?(?::([\w.\-]+))?$")


@dataclass(frozen=True)
class Row:
    trainer: str
    plans: Optional[str] = None    # a preset of PLANNERS; None: the tool's default plans
    encoder: Optional[str] = None

    @property
    def label(self) -> str:
        """The row's name without its encoder (a run folder, a benchmark row)."""
        return self.trainer + (f"@{self.plans}" if self.plans else "")


def parse_row(spec: str, encoder_allowed: bool = True) -> Row:
    """``TRAINER[@PLANS][:ENCODER]``; ValueError for another form or a plans name nnU-Net's presets lack."""
    match = _ROW.match(spec.strip())
    if not match:
        raise ValueError(f"trainer {spec!r}: give TRAINER, TRAINER@PLANS or TRAINER[@PLANS]:ENCODER "
                         f"(e.g. nnUNetTrainerShortRun@nnUNetResEncUNetMPlans)")
    trainer, plans, encoder = match.groups()
    if plans is not None and plans not in PLANNERS:
        raise ValueError(f"{spec}: {plans!r} is not a plans name the tool can plan; one of {', '.join(PLANNERS)}")
    if encoder and not encoder_allowed:
        raise ValueError(f"{spec}: name the encoder with --encoder {trainer}={encoder}")
    return Row(trainer, plans, encoder)


def row_plans(spec: str) -> str:
    """The preset a row trains on (``nnUNetPlans`` unless it names another)."""
    return parse_row(spec).plans or DEFAULT_PLANS


def display_suffix(plans: Optional[str]) -> str:
    """`` (ResEnc M)`` for a row on a preset other than the default plans, else ''."""
    if not plans or plans == DEFAULT_PLANS:
        return ""
    return f" ({SHORT_NAMES.get(plans, plans)})"


def check_spacing(spacing: Optional[Sequence[float]]) -> Optional[List[float]]:
    if spacing is None:
        return None
    spacing = [float(v) for v in spacing]
    if len(spacing) != 3 or any(not v > 0 for v in spacing):
        raise ValueError(f"--target-spacing takes three positive numbers in mm (nnU-Net's axis order), not {spacing}")
    return spacing


def spacing_tag(spacing: Sequence[float]) -> str:
    """``2mm`` for an isotropic spacing, ``1x1x2.5mm`` else (a plans name: no spaces)."""
    text = [f"{v:g}" for v in spacing]
    return (text[0] if len(set(text)) == 1 else "x".join(text)) + "mm"


def plans_identifier(preset: str, spacing: Optional[Sequence[float]]) -> str:
    """The plans name a preset is written under: itself at its own spacing, ``<preset>_<spacing>`` at another."""
    return preset if spacing is None else f"{preset}_{spacing_tag(spacing)}"


def planning_arguments(preset: str, spacing: Optional[Sequence[float]]) -> List[str]:
    """What ``nnUNetv2_plan_and_preprocess`` needs beside ``-d`` and ``-c`` for this preset and spacing (nothing for
    nnU-Net's default plans at their own spacing: the command as a user types it)."""
    args = [] if preset == DEFAULT_PLANS else ["-pl", PLANNERS[preset]]
    if spacing is not None:
        args += ["-overwrite_target_spacing", *[f"{v:g}" for v in spacing],
                 "-overwrite_plans_name", plans_identifier(preset, spacing)]
    return args


def key_suffix(preset: str, spacing: Optional[Sequence[float]]) -> str:
    """What a learning-curve run key adds for a row on other plans: '' for nnUNetPlans at their own spacing (the
    keys runs already have)."""
    return "" if preset == DEFAULT_PLANS and spacing is None else f"|{plans_identifier(preset, spacing)}"


def held_out(cases: Sequence[str], num_test: int, seed: int) -> List[str]:
    """The ``num_test`` cases drawn with ``seed`` and left out of every training set (the same draw whether they
    are scored or another --test-folder is)."""
    if num_test >= len(cases):
        raise ValueError(f"the source has {len(cases)} labelled cases: cannot hold out {num_test}")
    return sorted(random.Random(seed).sample(sorted(cases), num_test))
