"""One training per fold folder: an exclusive OS lock on ``<fold folder>/training.lock``.

Two ``nnUNetv2_train`` runs of one fold into one folder overwrite each other's checkpoints, and the first one's
final validation then scores the second one's files. The lock is a POSIX record lock (``fcntl.lockf``): the kernel
drops it when the holding process ends, however it ends (SIGKILL included), so a lock file left behind by a killed
run never blocks ``--c``; its content (pid, host, start time, command) is only there for the message. Not
``flock``: an flock belongs to the open file, which nnU-Net's data-augmentation workers inherit when they are forked,
and workers orphaned by a killed training would keep the fold locked; a POSIX lock belongs to the process alone.
(Its one pitfall, that closing any descriptor of the file drops the process's lock, is why this module opens the
file once per process.)

DDP: nnU-Net spawns one process per GPU, each with its own trainer. Only rank 0 (the rank that writes checkpoints and
the validation summary) takes the lock; the other ranks of that run follow it, and a second run's rank 0 stops, which
makes torch.multiprocessing.spawn end that run's other ranks.

Within one process, trainers of the same folder share the lock (tests and in-process tools build several); it is
released when the last of them is garbage-collected or the process exits.
"""
import errno
import os
import socket
import sys
import time
import weakref
from typing import Dict, List

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks; trainings are not locked there
    fcntl = None

LOCK_NAME = "training.lock"

# lock file path -> [open file holding the lock, number of trainers using it]
_HELD: Dict[str, List] = {}


class FoldBusy(Exception):
    """Another process holds the fold's lock; ``holder`` is what it wrote into the lock file."""

    def __init__(self, folder: str, holder: str) -> None:
        super().__init__(folder)
        self.folder, self.holder = folder, holder


def acquire(folder: str, owner: object) -> bool:
    """Takes the lock of ``folder`` for ``owner`` (released when ``owner`` is collected or the process ends).
    Returns False where the platform has no POSIX locks. Raises FoldBusy."""
    if fcntl is None:
        return False
    os.makedirs(folder, exist_ok=True)
    path = os.path.realpath(os.path.join(folder, LOCK_NAME))
    if path not in _HELD:
        f = open(path, "a+")  # not "w": truncating before holding the lock would erase the holder's description
        try:
            fcntl.lockf(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                f.close()
                raise
            f.seek(0)
            holder = f.read().strip()
            f.close()
            raise FoldBusy(folder, holder) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                f"{' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:])}\n")
        f.flush()
        _HELD[path] = [f, 0]
    _HELD[path][1] += 1
    weakref.finalize(owner, _release, path)
    return True


def _release(path: str) -> None:
    entry = _HELD.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _HELD[path]
        entry[0].close()  # closing the descriptor drops the lock; the file stays (harmless, reused next time)


def busy_message(error: FoldBusy) -> str:
    holder = error.holder or "a process that did not say which"
    return (f"{error.folder} is in use by another training ({holder}). Two trainings of one fold into one folder "
            f"overwrite each other's checkpoints and validation. Wait until it ends or stop it (a stopped run "
            f"continues with --c), or train this one into another folder (another fold, -p plans or trainer).")


