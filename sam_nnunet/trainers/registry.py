"""The trainers sam-nnunet offers, by name (``-tr``), as the planner, benchmark, demo and ``sam-nnunet info`` find
them."""
from typing import Dict, Optional

import sam_nnunet.trainers as trainers
import sam_nnunet.trainers.scales as scales


def trainer_classes() -> Dict[str, type]:
    """{name: class} of every method trainer and its prompted variants (the scale variants are found by name)."""
    return {name: getattr(trainers, name) for name in trainers.__all__ if name != "SAMTrainerBase"}


def find_trainer_class(name: str) -> Optional[type]:
    """A sam-nnunet trainer class by name, scale variants (``trainers.scales``, not in the registry) included; None
    for any other name."""
    return trainer_classes().get(name) or (getattr(scales, name) if name in scales.__all__ else None)


def get_trainer_class(name: str) -> type:
    """``find_trainer_class``, refusing any other name."""
    cls = find_trainer_class(name)
    if cls is None:
        raise ValueError(f"unknown trainer {name!r}; sam-nnunet trainers: {', '.join(trainer_classes())}")
    return cls
