"""scripts/cuda_check.py on the CPU (its checks and report; the GPU figures come from running it on a GPU), and the
torch settings the benchmark worker shares with nnUNetv2_train."""
import json
import os
import subprocess
import sys

import pytest
import torch

from sam_nnunet.evaluation.benchmark_worker import configure_torch

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "cuda_check.py")


def test_worker_sets_torch_as_nnunetv2_train():
    threads, benchmark, deterministic = torch.get_num_threads(), torch.backends.cudnn.benchmark, \
        torch.backends.cudnn.deterministic
    try:
        configure_torch(torch.device("cuda"), 7)  # flags only: no GPU needed
        assert torch.get_num_threads() == 1
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        configure_torch(torch.device("cpu"), 2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, deterministic


@pytest.mark.slow
def test_cuda_check_script_on_cpu(synthetic_dataset, tmp_path):
    out = tmp_path / "check"
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_SAM_")}
    env["nnUNet_n_proc_DA"] = "0"  # in-process augmentation: no worker start-ups for 4 iterations
    proc = subprocess.run([sys.executable, SCRIPT, "-d", "990", "-tr", "nnUNetTrainer", "SAMAdapterTrainer",
                           "NoSuchTrainer", "--encoder", "vit_test", "--allow-random-init", "--iterations", "3",
                           "--val-iterations", "1", "--warmup", "1", "--device", "cpu", "-o", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # NoSuchTrainer fails, the others not
    with open(out / "cuda_check.json") as f:
        report = json.load(f)
    runs = {r["trainer"]: r for r in report["runs"]}
    assert len(report["runs"]) == 3  # no torch.compile retry on the CPU
    assert runs["NoSuchTrainer"]["status"] == "FAILED" and "NoSuchTrainer" in runs["NoSuchTrainer"]["error"]
    for name in ("nnUNetTrainer", "SAMAdapterTrainer"):
        run = runs[name]
        assert run["status"] == "ok", run.get("traceback")
        assert all(run["checks"].values()) and set(run["checks"]) == {
            "losses_finite", "frozen_bit_identical", "trainable_updated", "parameters_finite", "prediction_ok"}
        assert len(run["losses"]) == 3 and run["seconds_per_iteration"] > 0 and not run["amp"]
        assert run["prediction"]["shape_ok"] and run["prediction"]["seconds"] > 0
    sam = runs["SAMAdapterTrainer"]
    assert sam["encoder"] == "vit_test" and sam["parameters"]["frozen"] > 0
    assert sam["memory"]["estimate_fp32_bytes"] > 0  # SAMPlanner's estimate of the same step
    assert "memory" not in runs["nnUNetTrainer"]  # the estimator builds sam-nnunet networks only
    table = (out / "cuda_check.md").read_text()
    assert "| SAMAdapterTrainer | vit_test | ok |" in table and "| NoSuchTrainer | – | FAILED" in table


def test_planner_estimates_zap_with_litemedsam():
    # found on the GPU check: TinyViT's constructor calls .item(), which failed under the estimator's FakeTensorMode
    # (DataDependentOutputException), so SAMPlanner could not size ZAP25DSAMTrainer with LiteMedSAM
    from sam_nnunet.encoders.litemedsam import build_litemedsam_image_encoder
    from sam_nnunet.trainers.training_memory import TrainingMemoryEstimator, TrainingSetup
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    setup = TrainingSetup("sam_nnunet.networks.zap25d.ZAP25DNetwork",
                          {"encoder": "litemedsam", "upsample": 4, "pool": 4, "window_size": 16,
                           "background_channel": True}, 1, {"background": 0, "a": 1, "b": 2})
    small, large = TrainingMemoryEstimator(setup)([16, 16, 16], 1), TrainingMemoryEstimator(setup)([16, 16, 16], 2)
    assert small.parameter_bytes > 5.7e6 * 4 and large.peak_bytes > small.peak_bytes > small.persistent_bytes
    with FakeTensorMode():
        encoder = build_litemedsam_image_encoder()
    assert all(isinstance(t, FakeTensor) for t in [*encoder.parameters(), *encoder.buffers()])
    assert not any(isinstance(p, FakeTensor) for p in build_litemedsam_image_encoder().parameters())
