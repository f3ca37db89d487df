"""The trainers sam-nnunet offers, by name (``-tr``), as the planner, benchmark, demo and ``sam-nnunet info`` find
them."""
from typing import Dict, Optional

import sam_nnunet.trainers as trainers
import sam_nnunet.trainers.scales as scales
import sam_nnunet.trainers.schedules as schedules

VARIANT_MODULES = (scales, schedules)  # variants found by name, not listed in the registry


def trainer_classes() -> Dict[str, type]:
    """{name: class} of every method trainer and its prompted variants (the scale variants are found by name)."""
    return {name: getattr(trainers, name) for name in trainers.__all__ if name != "SAMTrainerBase"}


def find_trainer_class(name: str) -> Optional[type]:
    """A sam-nnunet trainer class by name, the scale, schedule and recipe variants (``trainers.scales``,
    ``trainers.schedules``; not in the registry) included; None for any other name."""
    found = trainer_classes().get(name)
    for module in VARIANT_MODULES:
        if found is None and name in module.__all__:
            found = getattr(module, name)
    return found


def get_trainer_class(name: str) -> type:
    """``find_trainer_class``, refusing any other name."""
    cls = find_trainer_class(name)
    if cls is None:
        raise ValueError(f"unknown trainer {name!r}; sam-nnunet trainers: {', '.join(trainer_classes())}")
    return cls
