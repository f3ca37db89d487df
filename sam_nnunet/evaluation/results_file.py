"""The results files the evaluation commands add to (learning-curve, interaction, benchmark JSON): read strictly,
written atomically with the last good copy kept beside them.

Such a file holds hours of measurements, and is committed to the repository as runs finish (so a merge conflict can
land in it). Read as "empty" when it is damaged, the next write would replace it with this run's rows alone: the
earlier runs gone without a word. So an existing file that is not a JSON object stops the command, before any work,
with one line naming it and how to recover; and every write first copies the current, readable file to
``<name>.bak`` (atomically), so that one bad write or one bad merge costs at most the last run.
"""
import json
import os
import shutil
from typing import Optional

from sam_nnunet.trainers.checkpoints import atomic_write


class ResultsFileError(ValueError):
    """A results file that cannot be read; the message names it and how to recover."""


def backup_path(path: str) -> str:
    return path + ".bak"


def read_results(path: str) -> Optional[dict]:
    """The JSON object in ``path``; None where there is no file. A file that is there but unreadable raises
    ResultsFileError (it is never taken for an empty one)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ResultsFileError(f"{path} cannot be read ({e.strerror}): fix its permissions, or give another "
                               f"output file") from None
    try:
        data = json.loads(raw)
        reason = None if isinstance(data, dict) else f"it holds a JSON {type(data).__name__}, not an object"
    except ValueError as e:  # also invalid UTF-8
        line = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        reason = ("it holds a merge conflict" if b"\n<<<<<<< " in b"\n" + raw else
                  "it is empty" if not raw.strip() else f"it is not valid JSON{line} (truncated or edited?)")
    if reason is None:
        return data
    bak = backup_path(path)
    restore = (f"restore the last good copy (cp {bak} {path}; it lacks at most the last run)"
               if _readable(bak) else "move it away to start a new file")
    raise ResultsFileError(f"{path} cannot be read: {reason}. It holds earlier results, so nothing was run or "
                           f"written: repair it, or {restore}, then run the command again")


def _readable(path: str) -> bool:
    try:
        with open(path) as f:
            return isinstance(json.load(f), dict)
    except (OSError, ValueError):
        return False


def write_results(path: str, data: dict, indent: int = 2) -> None:
    """Write ``data`` to ``path`` atomically; the file it replaces, where readable, becomes ``<path>.bak`` (also
    atomically: a copy, then a rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if _readable(path):
        with atomic_write(backup_path(path)) as out, open(path, "rb") as current:
            shutil.copyfileobj(current, out)
    with atomic_write(path) as f:
        f.write(json.dumps(data, indent=indent).encode())
