"""nnU-Net training checkpoints that survive interruption: atomic writes, safe reads, and the choice of what to resume.

nnU-Net writes ``checkpoint_{best,latest,final}.pth`` in place with ``torch.save``: a SIGKILL (out-of-memory killer, a
cluster's time limit, a power cut) during the write leaves a truncated file, and ``--c`` / ``--val`` then fail with a
torch traceback. Our trainers write to a temporary file in the same folder, fsync it, rename it over the old file and
fsync the folder: at every moment the checkpoint on disk is either the previous one or the new one, whole.

Checkpoints are read with ``torch.load(weights_only=True)``: nnU-Net stores only tensors, plain Python types and
numpy scalars (the logged losses and Dice), allow-listed in ``NNUNET_SAFE_GLOBALS``; anything else is refused rather
than unpickled.

``checkpoint_to_load`` and ``hold_fold_lock`` are the trainer's hooks (SAMTrainerBase.load_checkpoint / initialize):
what --c and --val load, and the fold folder's lock (sam_nnunet.fold_lock) with the clean-up of an interrupted write.
"""
import contextlib
import os
import time
from typing import IO, Dict, Iterator, List, Tuple

import torch

from sam_nnunet import fold_lock, settings
from sam_nnunet.nnunet_checkpoint import NNUNET_CHECKPOINT_GLOBALS
from sam_nnunet.errors import UserFacingExit

# nnU-Net's order for --c (nnunetv2.run.run_training.maybe_load_checkpoint): the first that exists is loaded
RESUME_ORDER = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
# what nnUNetTrainer.load_checkpoint reads from a checkpoint
REQUIRED_KEYS = ("network_weights", "optimizer_state", "logging", "_best_ema", "current_epoch", "init_args")
PARTIAL_SUFFIX = ".partial"

# tensors, plain types and the numpy scalars of nnU-Net's training log: the same list as the model-folder loader
NNUNET_SAFE_GLOBALS: List = NNUNET_CHECKPOINT_GLOBALS


class DamagedCheckpoint(Exception):
    """A checkpoint file that cannot be used; ``reason`` says why in a few words."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason
        self.others: List["DamagedCheckpoint"] = []  # set by choose_resume_checkpoint


def read_checkpoint(path: str, map_location="cpu", mmap: bool = False) -> Dict:
    """An nnU-Net training checkpoint, read without unpickling code. Raises DamagedCheckpoint.

    mmap=True leaves the tensors on disk: a cheap check that the file is whole (a truncated zip archive loses its
    central directory, which sits at the end) and of the keys and epoch."""
    try:
        if os.path.getsize(path) == 0:
            raise DamagedCheckpoint(path, "empty (0 bytes)")
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":  # torch.save's zip archive; nnU-Net v2 writes nothing else
                raise DamagedCheckpoint(path, "not a PyTorch checkpoint (no zip archive at its start)")
        with torch.serialization.safe_globals(NNUNET_SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except DamagedCheckpoint:
        raise
    except OSError as e:
        raise DamagedCheckpoint(path, f"cannot be read ({e.strerror or e})") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged archive
        text = str(e)
        if "Weights only load failed" in text:
            reason = ("holds objects other than the tensors, plain types and numpy scalars nnU-Net stores; refused "
                      "instead of unpickled (a file not written by nnU-Net, or tampered with)")
        else:
            first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
            reason = f"truncated or corrupt ({first.split('. ')[0][:160]})"
        raise DamagedCheckpoint(path, reason) from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise DamagedCheckpoint(path, f"not an nnU-Net training checkpoint (no {', '.join(missing)})")
    return checkpoint


def checkpoint_epoch(path: str) -> int:
    """The epoch a checkpoint resumes at (nnU-Net stores current_epoch + 1). Raises DamagedCheckpoint."""
    return int(read_checkpoint(path, mmap=True)["current_epoch"])


def choose_resume_checkpoint(folder: str, chosen: str) -> Tuple[str, int, List[DamagedCheckpoint]]:
    """The checkpoint --c should load: ``chosen`` (nnU-Net's pick) when intact, else the intact one among the other
    checkpoint_{final,latest,best}.pth with the highest epoch. Returns (path, epoch, damaged files seen).
    Raises DamagedCheckpoint (of ``chosen``) when none is intact; its ``others`` lists the other damaged files."""
    damaged: List[DamagedCheckpoint] = []
    try:
        return chosen, checkpoint_epoch(chosen), damaged
    except DamagedCheckpoint as e:
        damaged.append(e)
    intact = []
    for name in RESUME_ORDER:
        path = os.path.join(folder, name)
        if os.path.abspath(path) == os.path.abspath(chosen) or not os.path.isfile(path):
            continue
        try:
            intact.append((checkpoint_epoch(path), -RESUME_ORDER.index(name), path))
        except DamagedCheckpoint as e:
            damaged.append(e)
    if not intact:
        error = damaged[0]
        error.others = damaged[1:]
        raise error
    epoch, _, path = max(intact)  # the newest; at equal epochs nnU-Net's order
    return path, epoch, damaged


def partial_path(path: str) -> str:
    """The temporary file a checkpoint is written to: hidden, in the same folder (os.replace is atomic only within
    one file system), named by the writing process."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{os.getpid()}{PARTIAL_SUFFIX}")


def remove_partial_files(folder: str) -> List[str]:
    """Deletes temporary checkpoint files left by a killed run. Only safe while holding the fold lock (no other writer
    can exist). Returns the names removed."""
    removed = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.startswith(".checkpoint_") and name.endswith(PARTIAL_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
                removed.append(name)
    return removed


def fsync_folder(folder: str) -> None:
    # the rename itself is durable only once the folder's entry is on disk
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[IO[bytes]]:
    """A binary file object that becomes ``path`` only when the block ends without error (flush, fsync, rename,
    fsync of the folder); on error or interruption ``path`` is untouched and the temporary file is removed (or, after
    SIGKILL, left behind as ``.<name>.<pid>.partial``, which nothing reads)."""
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as raw:
            pause = settings.get_str(settings.TEST_CHECKPOINT_PAUSE)
            yield _PausingWriter(raw) if pause and pause == os.path.basename(path) else raw
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_folder(os.path.dirname(os.path.abspath(path)))


def atomic_torch_save(obj, path: str) -> None:
    with atomic_write(path) as f:
        torch.save(obj, f)


class _PausingWriter:
    """For the interruption test only (nnUNet_SAM_test_checkpoint_pause): stops for good once 1 MiB of the
    checkpoint is on disk, so that a test can kill a real training in the middle of writing it."""

    PAUSE_AFTER = 1 << 20

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.written = raw, 0

    def write(self, data) -> int:
        n = self.raw.write(data)
        self.written += n
        if self.written >= self.PAUSE_AFTER:
            self.raw.flush()
            os.fsync(self.raw.fileno())
            time.sleep(3600)
        return n

    def flush(self) -> None:
        self.raw.flush()


def intact_checkpoints(folder: str, exclude: str) -> List[Tuple[str, int]]:
    """(name, epoch) of the intact checkpoint_{final,latest,best}.pth in a folder but ``exclude``, nnU-Net's order."""
    found = []
    for name in RESUME_ORDER:
        path = os.path.join(folder, name)
        if name != exclude and os.path.isfile(path):
            with contextlib.suppress(DamagedCheckpoint):
                found.append((name, checkpoint_epoch(path)))
    return found


def _train_command(trainer, *flags: str) -> str:
    pm = trainer.plans_manager
    return " ".join(["nnUNetv2_train", pm.dataset_name, trainer.configuration_name, str(trainer.fold), "-tr",
                     trainer.__class__.__name__, "-p", pm.plans_name, *flags])


def checkpoint_to_load(trainer, filename: str) -> str:
    """The file ``trainer.load_checkpoint(filename)`` should read, after checking it; ends the run with one message
    naming the damaged file and the fix where nothing usable is left.

    The first load of a --c run (nnU-Net picked final, else latest, else best) falls back to the newest intact
    checkpoint of the fold and says so in the log; any other load (--val, --val_best) must read the file it names.

    The check reads the file with weights_only=True (tensors memory-mapped, not read); nnU-Net's load_checkpoint then
    reads the path it is given, with weights_only=False, but only a file that passed. (Handing it the dict instead is
    not possible: nnunetv2 2.8's load_checkpoint accepts a dict in its signature only.)"""
    folder = trainer.output_folder
    resuming = (getattr(trainer, "sam_continue_training", False)
                and not trainer.was_initialized  # --c loads before training; --val_best after it
                and os.path.basename(filename) in RESUME_ORDER
                and os.path.abspath(os.path.dirname(filename)) == os.path.abspath(folder))
    if resuming:
        try:
            path, epoch, damaged = choose_resume_checkpoint(folder, filename)
        except DamagedCheckpoint as e:
            names = ", ".join(os.path.basename(d.path) for d in [e] + e.others)
            raise UserFacingExit(
                f"Cannot continue the training: {_reasons([e] + e.others)}. No intact checkpoint is left in "
                f"{folder}. Train this fold anew (the same command without --c overwrites {names}), or put back a "
                f"copy of a checkpoint.") from None
        if damaged:
            trainer.print_to_log_file(f"WARNING: {_reasons(damaged)}; continuing from {os.path.basename(path)} "
                                      f"(epoch {epoch}) instead")
        else:
            trainer.print_to_log_file(f"Continuing from {os.path.basename(path)} (epoch {epoch})")
        return path
    try:
        read_checkpoint(filename, mmap=True)
    except DamagedCheckpoint as e:
        intact = intact_checkpoints(folder, exclude=os.path.basename(filename))
        if intact:
            fix = (f"The fold's other checkpoints are intact ({', '.join(f'{n}, epoch {ep}' for n, ep in intact)}): "
                   f"`{_train_command(trainer, '--c')}` continues the training from the newest and writes a new "
                   f"checkpoint_final.pth; then validate again.")
        else:
            fix = (f"No intact checkpoint is left in {folder}: put back a copy of {os.path.basename(filename)}, or "
                   f"train this fold anew (`{_train_command(trainer)}`).")
        raise UserFacingExit(f"Cannot load {filename}: {e.reason}. {fix}") from None
    return filename


def _reasons(errors: List[DamagedCheckpoint]) -> str:
    return "; ".join(f"{os.path.basename(e.path)} is damaged: {e.reason}" for e in errors)


def hold_fold_lock(trainer) -> None:
    """Takes the lock of the trainer's fold folder (rank 0 only, once per trainer), or ends the run with the message.
    Then clears temporary checkpoint files of an interrupted run: holding the lock, no other writer can exist."""
    if trainer.local_rank != 0 or trainer.output_folder is None or getattr(trainer, "_holds_fold_lock", False):
        return
    try:
        locked = fold_lock.acquire(trainer.output_folder, trainer)
    except fold_lock.FoldBusy as e:
        raise UserFacingExit(fold_lock.busy_message(e)) from None
    trainer._holds_fold_lock = True
    if locked:
        for name in remove_partial_files(trainer.output_folder):
            trainer.print_to_log_file(f"Removed {name}: a checkpoint an interrupted run left half-written")
