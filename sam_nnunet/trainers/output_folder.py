"""Whether a training can write its results, checked before nnU-Net first writes there.

nnU-Net's trainer creates the fold folder and its log in ``__init__``: on a read-only results folder that is an
OSError traceback (new fold) or five silent "failed to log" retries per log line followed by a traceback at the
first checkpoint or validation file (existing fold).
"""
import os
import tempfile
from typing import Optional, Tuple

from nnunetv2.utilities.file_path_utilities import get_output_folder

from sam_nnunet.errors import UserFacingExit


def first_unwritable(folder: str) -> Optional[Tuple[str, str]]:
    """(the folder on the way to ``folder`` that blocks writing it, why) or None when ``folder`` can be written.

    Probes by creating a file in the deepest existing folder: permission bits do not tell for root, ACLs or
    read-only mounts."""
    existing = os.path.abspath(folder)
    while not os.path.isdir(existing):
        if os.path.lexists(existing):
            return existing, "is a file, not a folder"
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".sam_nnunet_write_test_", dir=existing)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        return existing, f"cannot be written ({e.strerror or e})"
    return None


def refuse_unwritable_results(trainer_name: str, plans: dict, configuration: str, fold) -> None:
    """UserFacingExit naming the folder and the fix when the fold's output folder cannot be written."""
    try:
        output_folder = get_output_folder(plans["dataset_name"], trainer_name, plans["plans_name"], configuration,
                                          fold)
    except (KeyError, RuntimeError, TypeError, ValueError):  # no nnUNet_results, odd plans: nnU-Net says so itself
        return
    blocked = first_unwritable(output_folder)
    if blocked is not None:
        where, why = blocked
        raise UserFacingExit(
            f"{trainer_name} writes this fold's results (log, checkpoints, validation) to {output_folder}, but "
            f"{where} {why}. Point nnUNet_results at a folder you can write (export nnUNet_results=/path), or make "
            f"{where} writable (permissions, a read-only mount).")
