"""nnU-Net's multi-GPU training (-num_gpus 2: one process per GPU, DistributedDataParallel) for every trainer, run as
two CPU processes of a gloo group."""
import os
import socket
import time

import pytest
import torch.multiprocessing as mp
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json

from ddp_worker import run_rank
from sam_nnunet.trainers.registry import trainer_classes

TIMEOUT_S = 300  # a rank waiting forever for a gradient that never comes is a failure, not a hung suite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_trainer_trains_in_a_two_process_ddp_group(synthetic_dataset, tmp_path, sam_env):
    tiny = {"sam_vit": "vit_test", "sam2": "sam2_test"}  # every trainer `sam-nnunet info` lists, its tiny encoder
    runs = [(name, tiny[cls.encoder_families[0]]) for name, cls in trainer_classes().items()]
    # a small patch (SAM 2 needs 8 slices) and a global batch of 2: one sample per rank
    plans = load_json(os.path.join(synthetic_dataset["preprocessed"], "nnUNetPlans.json"))
    plans["plans_name"] = "nnUNetPlans_ddp"
    plans["configurations"]["3d_fullres"].update({"patch_size": [8, 32, 32], "batch_size": 2})
    save_json(plans, os.path.join(synthetic_dataset["preprocessed"], "nnUNetPlans_ddp.json"))

    context = mp.spawn(run_rank, args=(2, _free_port(), synthetic_dataset, "nnUNetPlans_ddp", str(tmp_path),
                                       runs), nprocs=2, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP training did not finish within {TIMEOUT_S} s (a rank waits for the other)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
