"""Shared fixtures: an isolated nnU-Net environment, tiny SAM checkpoints in the official layout, and a small
preprocessed dataset. Nothing is downloaded; everything is written under pytest's temporary folders."""
import os
import shutil
import tempfile

import pytest
import torch

from helpers import write_official_sam_checkpoint
from sam_nnunet.nnunet_env import required_environment

_SESSION_ROOT = tempfile.mkdtemp(prefix="sam_nnunet_tests_")
# set before anything reads them: nnU-Net finds our trainers and writes only under the session folder
os.environ.update(required_environment(os.path.join(_SESSION_ROOT, "nnunet")))
os.environ.setdefault("nnUNet_def_n_proc", "2")
# (not nnUNet_n_proc_DA=0 here: nnU-Net's planner calls torch.set_num_threads() with it and fails on 0)
for _var in ("nnUNet_SAM_checkpoint", "nnUNet_SAM_encoder", "nnUNet_SAM_allow_random_init",
             "nnUNet_SAM_num_epochs", "nnUNet_SAM_iterations_per_epoch", "nnUNet_compile",
             "nnUNet_SAM_time_budget_seconds", "nnUNet_SAM_cache_build_first",
             "nnUNet_SAM_skip_memory_check", "nnUNet_SAM_device_memory_gb"):
    os.environ.pop(_var, None)
# the start-up memory check traces a training step (seconds to minutes per training start): tested on its own in
# test_memory_check.py (whose fixture removes this), skipped by every other training of the suite
SKIP_MEMORY_CHECK = {"nnUNet_SAM_skip_memory_check": "1"}
os.environ.update(SKIP_MEMORY_CHECK)


def synthetic_curve_source(tmp_path):
    """(raw folder, source dataset, environment) of the learning-curve end-to-end tests: 8 synthetic training cases
    and 2 test cases (dataset 990), the SAM settings of this shell dropped, the memory check skipped (the tool passes
    it on), in-process augmentation (no worker start-ups in trainings of seconds)."""
    from sam_nnunet.demo import make_synthetic_dataset
    from sam_nnunet.nnunet_env import required_environment

    raw = tmp_path / "raw"
    source = make_synthetic_dataset(str(raw), 990, num_train=8, num_test=2, seed=3)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("nnUNet_SAM_")}, **SKIP_MEMORY_CHECK}
    env.update(required_environment(), nnUNet_raw=str(raw), nnUNet_def_n_proc="2", nnUNet_n_proc_DA="0")
    return raw, source, env
# float32 prediction on every CPU, so that the suite's figures do not depend on the CPU's bfloat16 support (the
# choice itself: test_precision.py)
os.environ["nnUNet_SAM_cpu_bf16"] = "0"
for _key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.makedirs(os.environ[_key], exist_ok=True)
# the cores shared among pytest-xdist's workers (their subprocesses, e.g. nnUNetv2_train, set their own)
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))



# pytest-xdist (pytest.ini: -n 2 --dist loadfile) hands whole files to the workers in collection order: the longest
# first (measured on 2 cores), so that the two workers finish together instead of one running the last long file alone
LONGEST_FIRST = ("test_planner_end_to_end.py", "test_learning_curve.py", "test_sam2_3dmed.py", "test_decathlon.py",
                 "test_prompted_end_to_end.py", "test_planner_memory.py", "test_end_to_end.py", "test_benchmark.py",
                 "test_cuda_check.py", "test_zap25d_end_to_end.py", "test_sam3dmed_end_to_end.py", "test_ddp.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_ROOT, ignore_errors=True)


SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
HIPPOCAMPUS = os.path.join(SHARED_DATA, "Task04_Hippocampus")


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "sam_vit_test.pth")
    state = write_official_sam_checkpoint(path)
    return path, state


@pytest.fixture
def sam_env(monkeypatch):
    """Clean sam-nnunet variables for one test; returns monkeypatch to set them."""
    for var in ("nnUNet_SAM_checkpoint", "nnUNet_SAM_encoder", "nnUNet_SAM_allow_random_init",
                "nnUNet_SAM_num_epochs", "nnUNet_SAM_iterations_per_epoch",
                "nnUNet_SAM_time_budget_seconds", "nnUNet_SAM_cache_build_first",
                "nnUNet_SAM_device_memory_gb"):
        monkeypatch.delenv(var, raising=False)
    for var, value in SKIP_MEMORY_CHECK.items():
        monkeypatch.setenv(var, value)
    return monkeypatch


@pytest.fixture(scope="session")
def synthetic_dataset():
    """Dataset990_SAMDemo (8 training + 2 test cases) planned and preprocessed for 3d_fullres with nnU-Net's API.

    Returns dict(dataset_id, dataset_name, raw, preprocessed)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)
    from sam_nnunet.demo import make_synthetic_dataset

    raw = make_synthetic_dataset(os.environ["nnUNet_raw"], 990, num_train=8, num_test=2, seed=0)
    extract_fingerprints([990], num_processes=2, check_dataset_integrity=True)
    plan_experiments([990])
    preprocess([990], configurations=("3d_fullres",), num_processes=(2,))
    name = os.path.basename(raw)
    return {"dataset_id": 990, "dataset_name": name, "raw": raw,
            "preprocessed": os.path.join(os.environ["nnUNet_preprocessed"], name)}


def shared_folder(tmp_path_factory, name: str):
    """A folder that every pytest-xdist worker of this run sees under the same path (without xdist, one of this
    session's); build what goes in it under ``helpers.exclusive``."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name


@pytest.fixture(scope="session")
def cli_dataset(tmp_path_factory):
    """A dataset prepared through the real command line, shared by the end-to-end tests: MSD Task04 hippocampus
    (10 training cases, 2 held-out labelled cases in imagesTs/labelsTs) converted with nnUNetv2_convert_MSD_dataset
    when ../shared/data is present, else a generated dataset; then nnUNetv2_plan_and_preprocess -c 3d_fullres.
    Built once per test run, by the first pytest-xdist worker that needs it (~1 minute on 2 cores): its
    splits_final.json is written here, as nnU-Net's first training would (seeded), so that no two trainings of the
    workers race to write it. Tests write only under names of their own (plans, nnUNet_results of ``cli_env``).

    Returns dict(env, dataset_id, raw, shared): env has its own nnU-Net folders and no nnUNet_SAM_* variables but
    the memory check's skip (SKIP_MEMORY_CHECK); shared is the folder for locks of data built on it. Tests that
    train use ``cli_env`` (a fresh nnUNet_results per test)."""
    import json

    from helpers import exclusive, run_cli, write_json_atomically
    from sam_nnunet.demo import make_msd_subset, make_synthetic_dataset

    root = shared_folder(tmp_path_factory, "cli_dataset")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("nnUNet_SAM_")}, **SKIP_MEMORY_CHECK}
    env.update(required_environment(str(root / "nnunet")))
    env.update({"nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "2"})
    record = str(root / "cli_dataset.json")
    os.makedirs(root, exist_ok=True)
    with exclusive(record + ".lock"):
        if not os.path.isfile(record):
            for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
                os.makedirs(env[key], exist_ok=True)
            if os.path.isdir(HIPPOCAMPUS):
                task = make_msd_subset(HIPPOCAMPUS, str(root / "msd"), num_train=10, num_test=2)
                run_cli(["nnUNetv2_convert_MSD_dataset", "-i", task, "-np", "2"], env)
                dataset_id, raw = 4, os.path.join(env["nnUNet_raw"], "Dataset004_Hippocampus")
                os.symlink(os.path.join(task, "labelsTs"), os.path.join(raw, "labelsTs"))  # held-out labels are ours
            else:  # a user without ../shared/data: a generated dataset
                dataset_id = 990
                raw = make_synthetic_dataset(env["nnUNet_raw"], dataset_id, num_train=10, num_test=2)
            run_cli(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", "3d_fullres", "-np", "2",
                     "--verify_dataset_integrity"], env)
            write_json_atomically(os.path.join(env["nnUNet_preprocessed"], os.path.basename(raw), "splits_final.json"),
                                  nnunet_default_splits(os.path.join(env["nnUNet_preprocessed"],
                                                                     os.path.basename(raw), "nnUNetPlans_3d_fullres")))
            write_json_atomically(record, {"dataset_id": dataset_id, "raw": raw})
        with open(record) as f:
            info = json.load(f)
    return {"env": env, "dataset_id": info["dataset_id"], "raw": info["raw"], "shared": str(root)}


def nnunet_default_splits(data_folder: str):
    """The 5-fold split nnU-Net's trainer writes on its first training (``nnUNetTrainer.do_split``: its seed, the
    sorted case identifiers of the preprocessed data)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    identifiers = sorted(infer_dataset_class(data_folder).get_identifiers(data_folder))
    return generate_crossval_split(identifiers, seed=12345, n_splits=5)


@pytest.fixture
def cli_env(cli_dataset, tmp_path):
    """The environment of ``cli_dataset`` with a fresh, empty nnUNet_results for this test."""
    env = dict(cli_dataset["env"], nnUNet_results=str(tmp_path / "nnUNet_results"))
    os.makedirs(env["nnUNet_results"])
    return env

