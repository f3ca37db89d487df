"""Trainer and encoder names of ``benchmark`` and ``learning-curve``, resolved before anything is planned,
preprocessed or started: a misspelt ``-tr`` is one line with the close matches, not a failed worker (or 138 s of
planning) first.

A name is resolved the way ``nnUNetv2_train -tr`` resolves it (nnU-Net's trainers, then the folders of
``nnUNet_extTrainer``: ours and any the user added). The names to compare with are read from the source files
(``class Name(``), so an unknown name costs no import of nnU-Net's hundreds of trainer variants.
"""
import difflib
import os
import re
from typing import Dict, List, Optional

from sam_nnunet.encoders.pretrained import adapts
from sam_nnunet.encoders.registry import ENCODERS
from sam_nnunet.nnunet_env import EXT_TRAINER, ext_trainer_dir
from sam_nnunet.trainers import schedules, scales
from sam_nnunet.trainers.budget import TimeBudgetMixin
from sam_nnunet.trainers.fusion import nnUNetTrainerSAMFusion
from sam_nnunet.trainers.registry import find_trainer_class
from sam_nnunet.trainers.short_run import nnUNetTrainerShortRun

_CLASS = re.compile(r"^class\s+(\w+)\s*[(:]", re.MULTILINE)


def sam_nnunet_trainers() -> Dict[str, type]:
    """Every trainer sam-nnunet puts on nnU-Net's ``-tr``: methods, prompted variants, scales, schedules, the
    shortened nnU-Net baseline and the fusion trainer."""
    names = {n: find_trainer_class(n) for n in scales.__all__}
    names.update({n: getattr(schedules, n) for n in schedules.__all__})
    from sam_nnunet.trainers.registry import trainer_classes
    names.update(trainer_classes())
    names[nnUNetTrainerShortRun.__name__] = nnUNetTrainerShortRun
    names[nnUNetTrainerSAMFusion.__name__] = nnUNetTrainerSAMFusion
    return names


def _class_names(folder: str) -> List[str]:
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".py"):
                try:
                    with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
                        found += _CLASS.findall(f.read())
                except OSError:
                    continue
    return found


def _other_folders() -> List[str]:
    """nnU-Net's trainer folder and the user's own nnUNet_extTrainer folders (ours is known by class)."""
    import nnunetv2
    folders = [os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer")]
    ours = os.path.abspath(ext_trainer_dir())
    folders += [p for p in os.environ.get(EXT_TRAINER, "").split(os.pathsep)
                if p.strip() and os.path.isdir(p) and os.path.abspath(p) != ours]
    return folders


def unknown_trainer_message(name: str, candidates: List[str], what: str) -> str:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=4, cutoff=0.6)
    return (f"{what} {name!r} is not a trainer nnUNetv2_train knows" +
            (f"; did you mean {', '.join(close)}?" if close else "") +
            " (`sam-nnunet info` lists sam-nnunet's trainers; yours must be in a folder listed in nnUNet_extTrainer)")


def resolve_trainer(name: str, what: str = "trainer") -> Optional[type]:
    """The class of a sam-nnunet trainer, None for a trainer of nnU-Net or of the user's nnUNet_extTrainer folders
    (found by name, not imported); raises ValueError for any other name."""
    ours = sam_nnunet_trainers()
    if name in ours:
        return ours[name]
    others = [n for folder in _other_folders() for n in _class_names(folder)]
    if name in others:
        return None
    raise ValueError(unknown_trainer_message(name, list(ours) + others, what))


def resolve_encoder(trainer: str, cls: Optional[type], encoder: str) -> None:
    """Refuse an encoder that is not registered, or that a sam-nnunet trainer does not adapt."""
    if encoder not in ENCODERS:
        close = difflib.get_close_matches(encoder, sorted(ENCODERS), n=3, cutoff=0.6)
        raise ValueError(f"encoder {encoder!r} (for {trainer}) is not one of sam-nnunet's encoders" +
                         (f"; did you mean {', '.join(close)}?" if close else "") +
                         f" (all: {', '.join(sorted(ENCODERS))})")
    if cls is None or not hasattr(cls, "encoder_families"):
        raise ValueError(f"{trainer} takes no SAM encoder: give {trainer} without one")
    if not adapts(cls.encoder_families, encoder):
        usable = [e for e in sorted(ENCODERS) if adapts(cls.encoder_families, e)]
        raise ValueError(f"{trainer} does not adapt the encoder {encoder}; it takes {', '.join(usable)}")


def resolve_budget_trainer(name: str) -> type:
    """A trainer the learning curve can run on a wall-clock budget (TimeBudgetMixin); raises ValueError else."""
    cls = resolve_trainer(name, "--trainers")
    if cls is None:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        cls = recursive_find_trainer_class_by_name(name)  # the user's own class may be a budget trainer
    if not issubclass(cls, TimeBudgetMixin):
        raise ValueError(f"{name} trains without the wall-clock budget (nnUNet_SAM_time_budget_seconds), so its "
                         f"runs would not be comparable: use {nnUNetTrainerShortRun.__name__} (nnUNetTrainer with "
                         f"the budget) or a sam-nnunet trainer")
    return cls
