"""Helpers for tests (imported as `helpers`; pytest puts this folder on sys.path)."""
import contextlib
import fcntl
import json
import os
import subprocess
import sys

import torch

from sam_nnunet.trainers.checkpoints import atomic_write

BIN = os.path.dirname(sys.executable)


def run_cli(cmd, env, expect_ok: bool = True) -> subprocess.CompletedProcess:
    """Run a console script of this environment (nnUNetv2_*, sam-nnunet) as a user would; fail with its output."""
    proc = subprocess.run([os.path.join(BIN, cmd[0])] + [str(c) for c in cmd[1:]], env=env, capture_output=True,
                          text=True)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


@contextlib.contextmanager
def exclusive(lock_file: str):
    """Hold an exclusive lock on ``lock_file`` (created if missing) across processes: data that pytest-xdist's
    workers share is built by the first one that needs it while the other waits."""
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_json_atomically(path: str, data) -> None:
    """A JSON file another process never sees half-written."""
    with atomic_write(path) as f:
        f.write(json.dumps(data, indent=2).encode())


COARSE_PLANS = "ZAPTestPlans"


def write_coarse_plans(preprocessed: str, name: str = COARSE_PLANS, spacing=(3.0, 3.0, 3.0),
                       patch_size=(12, 20, 12), batch_size: int = 1) -> None:
    """nnU-Net's plans with a coarser 3d_fullres under another plans name (as a user would edit plans); by default
    3 mm, patch 12x20x12, batch 1: LiteMedSAM's encoder costs ~75 GFLOP per 256x256 pseudo-slice on a CPU; a
    hippocampus case at 3 mm is ~12x17x12 voxels, one tile."""
    with open(os.path.join(preprocessed, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    plans["plans_name"] = name
    plans["configurations"]["3d_fullres"].update(
        {"spacing": list(spacing), "patch_size": list(patch_size), "batch_size": batch_size,
         "data_identifier": f"{name}_3d_fullres"})
    write_json_atomically(os.path.join(preprocessed, name + ".json"), plans)


def preprocess_coarse_plans(cli_dataset: dict) -> str:
    """``write_coarse_plans`` for the shared ``cli_dataset`` and ``nnUNetv2_preprocess`` of it, once per test run (the
    tests that use LiteMedSAM on a CPU share it, on every pytest-xdist worker). Returns the plans name."""
    env, raw = cli_dataset["env"], cli_dataset["raw"]
    preprocessed = os.path.join(env["nnUNet_preprocessed"], os.path.basename(raw))
    done = os.path.join(cli_dataset["shared"], COARSE_PLANS + ".done")
    with exclusive(done + ".lock"):
        if not os.path.isfile(done):
            write_coarse_plans(preprocessed)
            run_cli(["nnUNetv2_preprocess", "-d", cli_dataset["dataset_id"], "-plans_name", COARSE_PLANS, "-c",
                     "3d_fullres", "-np", 2], env)
            open(done, "w").close()
    return COARSE_PLANS


def write_official_sam_checkpoint(path: str, name: str = "vit_test", seed: int = 0) -> dict:
    """A SAM checkpoint exactly as Meta publishes them: the plain state dict of ``Sam`` (image_encoder.*,
    prompt_encoder.*, mask_decoder.*), random but non-trivial weights. Returns the state dict."""
    from sam_nnunet.encoders.sam_vit import build_sam

    torch.manual_seed(seed)
    sam = build_sam(name)
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(0.01 * torch.randn_like(p))  # LayerNorms etc. must differ from any default init
    state = sam.state_dict()
    torch.save(state, path)
    return state


def make_trainer(trainer_class, dataset: dict, fold: int = 0, configuration: str = "3d_fullres",
                 plans_name: str = "nnUNetPlans", continue_training: bool = False):
    """Instantiate a trainer the way nnUNetv2_train does (get_trainer_from_args; --c: continue_training), on the
    CPU."""
    from batchgenerators.utilities.file_and_folder_operations import join, load_json

    plans = load_json(join(dataset["preprocessed"], plans_name + ".json"))
    plans["continue_training"] = continue_training
    dataset_json = load_json(join(dataset["preprocessed"], "dataset.json"))
    return trainer_class(plans=plans, configuration=configuration, fold=fold, dataset_json=dataset_json,
                         device=torch.device("cpu"))


def plans_with_patch(preprocessed: str, patch_size) -> tuple:
    """(PlansManager, 3d_fullres ConfigurationManager, dataset.json) of nnU-Net's plans in ``preprocessed`` with
    another patch size, as the click predictor reads them."""
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = load_json(join(preprocessed, "nnUNetPlans.json"))
    plans["configurations"]["3d_fullres"]["patch_size"] = list(patch_size)
    pm = PlansManager(plans)
    return pm, pm.get_configuration("3d_fullres"), load_json(join(preprocessed, "dataset.json"))
