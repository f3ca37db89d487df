"""Interruption and resume (documentation/reliability.md): atomic checkpoints, safe reads, the choice of what --c
loads, damaged checkpoints under --c / --val, and the lock that allows one training per fold folder."""
import contextlib
import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import BIN, make_trainer, run_cli

from sam_nnunet import fold_lock
from sam_nnunet.errors import UserFacingExit
from sam_nnunet.trainers import SAMAdapterTrainer
from sam_nnunet.trainers import checkpoints as ck

TRAINER = "SAMAdapterTrainer"


def _checkpoint(epoch: int) -> dict:
    """The keys nnUNetTrainer.save_checkpoint writes, with plain values (numpy scalars as nnU-Net logs them)."""
    import numpy as np

    return {"network_weights": {"w": torch.ones(2)}, "optimizer_state": {"state": {}, "param_groups": []},
            "grad_scaler_state": None, "logging": {"train_losses": [np.float32(0.5)] * epoch},
            "_best_ema": np.float64(0.1), "current_epoch": epoch, "init_args": {"fold": 0, "device": torch.device("cpu")},
            "trainer_name": TRAINER, "inference_allowed_mirroring_axes": (0, 1, 2)}


def _truncate(path: str, keep: float = 0.5) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep)])


def test_damaged_and_unsafe_checkpoints_are_refused_with_the_reason(tmp_path):
    good = str(tmp_path / "good.pth")
    ck.atomic_torch_save(_checkpoint(3), good)
    assert ck.read_checkpoint(good)["current_epoch"] == 3 and ck.checkpoint_epoch(good) == 3
    cases = {"empty": (b"", "empty"), "text": (b"not a checkpoint", "not a PyTorch checkpoint"),
             "truncated": (open(good, "rb").read()[:-200], "truncated or corrupt")}
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ck.DamagedCheckpoint, match=reason):
            ck.read_checkpoint(str(tmp_path / name))
    torch.save({"a": 1}, str(tmp_path / "other.pth"))
    with pytest.raises(ck.DamagedCheckpoint, match="not an nnU-Net training checkpoint"):
        ck.read_checkpoint(str(tmp_path / "other.pth"))
    marker = tmp_path / "code_ran"
    torch.save(dict(_checkpoint(1), network_weights=_RunsCode(str(marker))), str(tmp_path / "evil.pth"))
    with pytest.raises(ck.DamagedCheckpoint, match="refused instead of unpickled"):
        ck.read_checkpoint(str(tmp_path / "evil.pth"))
    assert not marker.exists()


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_atomic_write_leaves_the_previous_file_whole_on_failure(tmp_path):
    path = str(tmp_path / "checkpoint_latest.pth")
    ck.atomic_torch_save(_checkpoint(1), path)
    with pytest.raises(RuntimeError):
        with ck.atomic_write(path) as f:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise RuntimeError("killed while writing")
    assert ck.checkpoint_epoch(path) == 1
    assert os.listdir(tmp_path) == ["checkpoint_latest.pth"]  # no temporary file left


def test_resume_uses_nnunets_pick_when_intact_else_the_newest_intact(tmp_path):
    folder = str(tmp_path)
    final, latest, best = (os.path.join(folder, n) for n in ck.RESUME_ORDER)
    for path, epoch in ((latest, 5), (best, 7)):
        ck.atomic_torch_save(_checkpoint(epoch), path)
    assert ck.choose_resume_checkpoint(folder, latest)[:2] == (latest, 5)  # nnU-Net's choice, as nnU-Net does
    ck.atomic_torch_save(_checkpoint(9), final)
    _truncate(final)
    path, epoch, damaged = ck.choose_resume_checkpoint(folder, final)
    assert (path, epoch) == (best, 7) and [d.path for d in damaged] == [final]
    _truncate(best)
    assert ck.choose_resume_checkpoint(folder, final)[:2] == (latest, 5)
    _truncate(latest)
    with pytest.raises(ck.DamagedCheckpoint) as e:
        ck.choose_resume_checkpoint(folder, final)
    assert e.value.path == final and sorted(o.path for o in e.value.others) == sorted([latest, best])


_HOLD_LOCK = """
import os, sys, time
from sam_nnunet import fold_lock
class Owner: pass
owner = Owner()
fold_lock.acquire(sys.argv[1], owner)
if os.fork() == 0:  # a child forked after the lock was taken, as nnU-Net forks its augmentation workers
    time.sleep(60)
    os._exit(0)
print("locked", flush=True)
time.sleep(60)
"""


def test_fold_lock_blocks_a_second_process_and_dies_with_its_holder(tmp_path):
    folder = str(tmp_path / "fold_0")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, folder], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(fold_lock.FoldBusy) as e:
            fold_lock.acquire(folder, object())
        assert f"pid {holder.pid} " in e.value.holder
        assert "is in use by another training" in fold_lock.busy_message(e.value)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        owner = type("Owner", (), {})()
        assert fold_lock.acquire(folder, owner)  # the forked child still runs; the lock went with its holder
        second = type("Owner", (), {})()
        assert fold_lock.acquire(folder, second)  # shared by the trainers of one process
        del owner, second
        # released with the last of them (other tests' trainers in this worker may still hold their own folders)
        assert not [p for p in fold_lock._HELD if p.startswith(os.path.realpath(folder))]
    finally:
        os.killpg(holder.pid, signal.SIGKILL)


def _log_text(folder: str) -> str:
    return "".join(open(f).read() for f in sorted(glob.glob(os.path.join(folder, "training_log_*.txt"))))


def _start(cmd, env, log_file: str) -> subprocess.Popen:
    # output to a file: a pipe nobody reads would block the training once full
    with open(log_file, "w") as out:
        return subprocess.Popen([os.path.join(BIN, cmd[0])] + cmd[1:], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: the test ends all it started


def _wait_for(condition, process: subprocess.Popen, log_file: str, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"exited ({process.returncode}) before {what}:\n{open(log_file).read()[-3000:]}"
        assert time.time() < deadline, f"no {what} after {timeout} s:\n{open(log_file).read()[-3000:]}"
        time.sleep(0.2)


@pytest.mark.slow
def test_training_killed_while_writing_a_checkpoint_resumes(cli_dataset, cli_env, sam_env, tmp_path):
    """A real nnUNetv2_train is SIGKILLed in the middle of writing checkpoint_final.pth; a second training of the
    fold is refused while the first runs; --c then resumes (past a damaged checkpoint_latest.pth) and finishes the
    training; --val's load of a damaged checkpoint_final.pth stops with the fix."""
    env, dataset_id, raw = cli_env, cli_dataset["dataset_id"], cli_dataset["raw"]
    train = ["nnUNetv2_train", str(dataset_id), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"]
    short = dict(env, nnUNet_SAM_encoder="vit_test", nnUNet_SAM_allow_random_init="1", nnUNet_SAM_num_epochs="2",
                 nnUNet_SAM_iterations_per_epoch="1", nnUNet_SAM_skip_memory_check="1")
    fold = os.path.join(env["nnUNet_results"], os.path.basename(raw), f"{TRAINER}__nnUNetPlans__3d_fullres",
                        "fold_0")
    logs = {name: str(tmp_path / f"{name}.log") for name in ("first", "second", "resume")}

    first = _start(train, dict(short, nnUNet_SAM_test_checkpoint_pause="checkpoint_final.pth"), logs["first"])
    started = [first]
    try:
        _killed_while_writing_then_resumed(train, short, env, fold, logs, started)
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    # --val (nnU-Net's maybe_load_checkpoint, in-process) with a damaged checkpoint_final.pth: the fix names --c
    from nnunetv2.run.run_training import maybe_load_checkpoint

    final = os.path.join(fold, "checkpoint_final.pth")
    _truncate(final)
    sam_env.setenv("nnUNet_results", env["nnUNet_results"])
    dataset = {"preprocessed": os.path.join(env["nnUNet_preprocessed"], os.path.basename(raw))}
    with pytest.raises(UserFacingExit, match=r"Cannot load .*checkpoint_final.pth: truncated or corrupt.*intact "
                                             r"\(checkpoint_best.pth, epoch \d\): `nnUNetv2_train .* --c` continues"):
        maybe_load_checkpoint(make_trainer(SAMAdapterTrainer, dataset), continue_training=False, validation_only=True)


def _killed_while_writing_then_resumed(train, short, env, fold, logs, started) -> None:
    """The command-line part of the test above; ``started`` collects the processes for the caller to end."""
    final, latest, best = (os.path.join(fold, n) for n in ck.RESUME_ORDER)
    first = started[0]
    lock = os.path.join(fold, fold_lock.LOCK_NAME)
    _wait_for(lambda: os.path.isfile(lock) and open(lock).read().startswith(f"pid {first.pid} "), first,
              logs["first"], "lock")
    # while the first trains, a second training of the fold is refused, naming the first
    second = _start(train, short, logs["second"])
    started.append(second)
    partial = os.path.join(fold, f".checkpoint_final.pth.{first.pid}.partial")
    _wait_for(lambda: os.path.isfile(partial) and os.path.getsize(partial) >= ck._PausingWriter.PAUSE_AFTER,
              first, logs["first"], "checkpoint_final.pth being written")
    assert second.wait(timeout=300) == 1
    refusal = open(logs["second"]).read()
    assert "is in use by another training" in refusal and f"pid {first.pid} " in refusal, refusal[-3000:]
    assert "Traceback" not in refusal

    os.kill(first.pid, signal.SIGKILL)  # the training process only: its forked augmentation workers live on
    first.wait()
    assert not os.path.exists(final) and os.path.isfile(partial)
    resumable = ck.read_checkpoint(best)  # whole, and readable with weights_only=True
    assert resumable["trainer_name"] == TRAINER and resumable["current_epoch"] in (1, 2)

    # a checkpoint_latest.pth truncated by hand: nnU-Net picks it for --c; we fall back to checkpoint_best.pth
    with open(best, "rb") as f, open(latest, "wb") as out:
        out.write(f.read()[:4096])
    resume = _start(train + ["--c"], dict(env, nnUNet_SAM_num_epochs="2", nnUNet_SAM_iterations_per_epoch="1",
                                          nnUNet_SAM_skip_memory_check="1"), logs["resume"])
    started.append(resume)
    # until the training is done (nnU-Net's final validation of the fold is not what this tests; the caller ends it)
    _wait_for(lambda: "Training done." in open(logs["resume"]).read(), resume, logs["resume"], "end of training")
    log = _log_text(fold)
    assert "checkpoint_latest.pth is damaged: truncated or corrupt" in log
    assert f"continuing from checkpoint_best.pth (epoch {resumable['current_epoch']}) instead" in log
    assert f"Removed .checkpoint_final.pth.{first.pid}.partial" in log
    done = ck.read_checkpoint(final)
    assert done["current_epoch"] == 2 and not os.path.exists(latest) and not os.path.exists(partial)
    # nnU-Net's own loader (the predictor's, weights_only=False) reads what we wrote
    assert torch.load(final, map_location="cpu", weights_only=False)["trainer_name"] == TRAINER


def test_damaged_checkpoints_stop_c_and_val_before_building_the_network(cli_dataset, sam_env, tmp_path):
    """nnU-Net's own maybe_load_checkpoint (what nnUNetv2_train --c / --val call) with a real trainer."""
    from nnunetv2.run.run_training import maybe_load_checkpoint

    sam_env.setenv("nnUNet_results", str(tmp_path / "results"))
    sam_env.setenv("nnUNet_SAM_encoder", "vit_test")
    dataset = {"preprocessed": os.path.join(cli_dataset["env"]["nnUNet_preprocessed"],
                                            os.path.basename(cli_dataset["raw"]))}
    trainer = make_trainer(SAMAdapterTrainer, dataset, continue_training=True)
    folder = trainer.output_folder
    for name, epoch in (("checkpoint_final.pth", 2), ("checkpoint_best.pth", 1)):
        ck.atomic_torch_save(_checkpoint(epoch), os.path.join(folder, name))
        _truncate(os.path.join(folder, name))
    with pytest.raises(UserFacingExit, match=r"Cannot continue the training: checkpoint_final.pth is damaged: "
                                             r"truncated or corrupt .*checkpoint_best.pth is damaged.*No intact "
                                             r"checkpoint is left in .*Train this fold anew"):
        maybe_load_checkpoint(trainer, continue_training=True, validation_only=False)
    assert trainer.network is None

    trainer = make_trainer(SAMAdapterTrainer, dataset)
    with pytest.raises(UserFacingExit, match=r"Cannot load .*checkpoint_final.pth: truncated or corrupt.*No intact "
                                             r"checkpoint is left .*nnUNetv2_train Dataset\d+_\w+ 3d_fullres 0 -tr "
                                             r"SAMAdapterTrainer -p nnUNetPlans"):
        maybe_load_checkpoint(trainer, continue_training=False, validation_only=True)
    assert trainer.network is None

