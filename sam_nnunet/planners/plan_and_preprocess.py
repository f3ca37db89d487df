"""``sam-nnunet plan_and_preprocess``: nnU-Net's fingerprinting, planning and preprocessing, with our planner.

nnU-Net's ``-pl`` only finds planner classes inside its own package, so this command does what
``nnUNetv2_plan_and_preprocess`` does through nnU-Net's own API functions, handing the planner over as a class
object: ``extract_fingerprints`` (nnU-Net's extractor), ``plan_experiment_dataset`` (our planner), ``preprocess``
(nnU-Net's preprocessor, reading the plans just written).
"""
import functools
from typing import Dict, List, Optional, Sequence, Union

from sam_nnunet.encoders.checkpoint import CheckpointError
from sam_nnunet.errors import UserFacingExit
from sam_nnunet.planners import PLANNERS
from sam_nnunet.planners.sam_planner import DEFAULT_TRAINER, PlanningError, SAMPlanner
from sam_nnunet.trainers.registry import trainer_classes

# nnU-Net's default worker counts per configuration (nnUNetv2_plan_and_preprocess)
DEFAULT_NUM_PROCESSES = {"2d": 8, "3d_fullres": 4, "3d_lowres": 8}


def find_planner(name: str):
    """A planner class by name: ours first, then nnU-Net's own (as ``nnUNetv2_plan_experiment -pl`` finds them)."""
    if name in PLANNERS:
        return PLANNERS[name]
    import nnunetv2
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    found = recursive_find_python_class(join(nnunetv2.__path__[0], "experiment_planning"), name,
                                        current_module="nnunetv2.experiment_planning")
    if found is None:
        raise UserFacingExit(f"no planner named {name!r}: sam-nnunet has {', '.join(PLANNERS)}; nnU-Net's own "
                             f"planners (e.g. ExperimentPlanner, nnUNetPlannerResEncM) are found by name too")
    return found


def default_trainers() -> List[str]:
    """Every sam-nnunet trainer, SAMAdapterTrainer first (it defines 3d_fullres)."""
    names = list(trainer_classes())
    return sorted(names, key=lambda n: n != DEFAULT_TRAINER)


def plan_and_preprocess(dataset_ids: Sequence[int], planner: str = "SAMPlanner",
                        trainers: Optional[Sequence[str]] = None, encoder: Union[None, str, Sequence[str]] = None,
                        gpu_memory_target: Optional[float] = None, configurations: Sequence[str] = ("3d_fullres",),
                        num_processes: Optional[Sequence[int]] = None, num_processes_fingerprint: int = 8,
                        verify_dataset_integrity: bool = False, clean: bool = False, no_preprocessing: bool = False,
                        overwrite_target_spacing: Optional[Sequence[float]] = None,
                        overwrite_plans_name: Optional[str] = None, verbose: bool = False) -> Dict[int, dict]:
    """Fingerprint, plan and preprocess each dataset; returns {dataset id: plans}."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiment_dataset,
                                                                      preprocess)

    planner_class = find_planner(planner)
    ours = isinstance(planner_class, type) and issubclass(planner_class, SAMPlanner)
    if ours:
        # every trainer by default: one that cannot be planned (yet) is left out with a warning, not fatal
        planner_class = functools.partial(planner_class, trainers=list(trainers or default_trainers()),
                                          encoder=encoder, skip_failing_trainers=not trainers)
    elif trainers or encoder:
        raise UserFacingExit(f"-tr and -encoder size plans for sam-nnunet trainers; {planner} is nnU-Net's planner "
                             f"and sizes a U-Net. Use -pl SAMPlanner, or drop -tr / -encoder.")

    print("Fingerprint extraction...")
    extract_fingerprints(list(dataset_ids), "DatasetFingerprintExtractor", num_processes_fingerprint,
                         verify_dataset_integrity, clean, verbose)
    print("Experiment planning...")
    all_plans, plans_identifier = {}, None
    for d in dataset_ids:
        try:
            plans, plans_identifier = plan_experiment_dataset(
                d, planner_class, gpu_memory_target, overwrite_target_spacing=overwrite_target_spacing,
                overwrite_plans_name=overwrite_plans_name)
        except (PlanningError, CheckpointError) as e:
            raise UserFacingExit(str(e)) from None
        all_plans[d] = plans
        print(summary(d, plans, plans_identifier))

    if not no_preprocessing:
        print("Preprocessing...")
        if num_processes is None:
            num_processes = [DEFAULT_NUM_PROCESSES.get(c, 4) for c in configurations]
        preprocess(list(dataset_ids), plans_identifier, list(configurations), list(num_processes), verbose,
                   show_progress_bar=verbose)
    return all_plans


def summary(dataset_id: int, plans: dict, plans_identifier: str) -> str:
    """What each 3D configuration was sized for, and the command that trains it."""
    lines = [f"\n{plans_identifier} for {plans['dataset_name']}:"]
    for name, cfg in plans["configurations"].items():
        record = cfg.get("sam_planner")
        if record is None:
            continue
        lines.append(
            f"  {name:<28} patch {cfg['patch_size']}, batch {cfg['batch_size']}: {record['trainer']} "
            f"({record['encoder']}) needs ~{record['estimated_memory_gb']:.2f} of {record['memory_target_gb']:g} GB "
            f"(batch size limited by {record['batch_size_limited_by']})")
        lines.append(f"  {'':<28} nnUNetv2_train {dataset_id} {name} FOLD -tr {record['trainer']} "
                     f"-p {plans_identifier}")
    for trainer, reason in plans.get("sam_planner_skipped", {}).items():
        lines.append(f"  WARNING: no configuration for {trainer}: {reason}")
    return "\n".join(lines)
