"""The wall-clock training budget (trainers.budget) and ``sam-nnunet learning-curve`` end to end.

The end-to-end test runs the real command on a generated dataset (8 training + 2 labelled test cases, given as the
test folder): two training-set sizes, nnU-Net's trainer (nnUNetTrainerShortRun) and ZAP25DSAMTrainer with the tiny
random encoder, a 2-second budget; each size is planned with nnUNetv2_plan_and_preprocess, each run trained with
nnUNetv2_train ... all and predicted with nnUNetv2_predict (ZAP twice: the budget without and with the set-up;
nnU-Net's trainer, whose two clocks end in the same iteration, once; nnU-Net's sequential predictor, no worker
processes). Its cost is the start-up of those 12 nnU-Net commands (~15-25 s each on 2 cores), not the training.
"""
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import synthetic_curve_source

from sam_nnunet.evaluation.learning_curve import BASELINE, CurveSettings, cache_variant, run_key, same_reading
from sam_nnunet.trainers.budget import RECORD_FILE, WITH_SETUP_CHECKPOINT
from sam_nnunet.trainers.short_run import nnUNetTrainerShortRun


def test_budget_stops_within_one_iteration(synthetic_dataset, sam_env):
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json

    budget = 6.0
    sam_env.setenv("nnUNet_SAM_time_budget_seconds", str(budget))
    sam_env.setenv("nnUNet_n_proc_DA", "0")
    # nnU-Net's plans with a small patch and batch 1: many iterations in the budget, whatever the load (the first
    # iteration of the planned 40x48x40 x 2 took 12 s on 2 busy cores)
    plans = load_json(join(synthetic_dataset["preprocessed"], "nnUNetPlans.json"))
    plans["configurations"]["3d_fullres"].update({"patch_size": [16, 16, 16], "batch_size": 1})
    plans["continue_training"] = False  # as nnUNetv2_train passes it
    trainer = nnUNetTrainerShortRun(plans, "3d_fullres", "all",
                                    load_json(join(synthetic_dataset["preprocessed"], "dataset.json")),
                                    torch.device("cpu"))
    assert trainer.num_iterations_per_epoch == 250  # the budget, not the schedule, has to stop it mid-epoch
    ends, loop_start = [], []
    step, on_train_start = trainer.train_step, trainer.on_train_start

    def timed_step(batch):
        out = step(batch)
        ends.append(time.perf_counter())
        return out

    def timed_start():
        on_train_start()
        loop_start.append(time.perf_counter())

    trainer.train_step, trainer.on_train_start = timed_step, timed_start
    trainer.run_training()

    spent = [e - loop_start[0] for e in ends]
    assert len(spent) >= 2, spent
    # the first iteration ending past the budget is the last (perf_counter read just after the trainer's own)
    assert all(x < budget for x in spent[:-1]) and budget <= spent[-1] + 0.05, spent
    folder = trainer.output_folder
    record = json.load(open(os.path.join(folder, RECORD_FILE)))
    assert record["iterations"] == len(ends) and record["stopped_by_budget"]
    assert record["stopped_in_epoch"] == 0 and record["stopped_after_iteration_of_epoch"] == len(ends)
    assert record["budget_seconds"] == budget and record["setup_seconds"] > 0
    assert os.path.isfile(os.path.join(folder, "checkpoint_final.pth"))
    # counted with the set-up the budget ends no later: its checkpoint holds at most as many iterations
    assert record["with_setup"]["checkpoint"] == WITH_SETUP_CHECKPOINT
    assert record["with_setup"]["iterations"] <= record["iterations"]
    assert os.path.isfile(os.path.join(folder, WITH_SETUP_CHECKPOINT))
    log = open(trainer.log_file).read()
    assert f"stopped after iteration {len(ends)} of epoch 0 ({len(ends)} training iterations" in log

    trainer.perform_actual_validation()  # fold all validates on its own training cases: skipped under a budget
    assert not os.path.isdir(os.path.join(folder, "validation"))
    assert "Final validation skipped" in open(trainer.log_file).read()


def _curve(args, env):
    cmd = [os.path.join(os.path.dirname(sys.executable), "sam-nnunet"), "learning-curve", *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_same_reading_only_when_the_set_up_cost_no_more_than_one_percent_of_the_iterations():
    assert same_reading(37, {"checkpoint": "checkpoint_final.pth", "iterations": 37})
    assert same_reading(287, {"checkpoint": WITH_SETUP_CHECKPOINT, "iterations": 286})      # 3 s of set-up
    assert not same_reading(396, {"checkpoint": WITH_SETUP_CHECKPOINT, "iterations": 380})  # a cache build's 4 %
    assert not same_reading(50, {"checkpoint": WITH_SETUP_CHECKPOINT, "iterations": 0})     # set-up > budget
    assert not same_reading(50, {})  # no with-set-up checkpoint: nothing to score


def test_a_cache_setting_is_another_run_of_the_sam_trainers_only():
    default = CurveSettings(source="Task04_Hippocampus")
    assert cache_variant(default, "ZAP25DSAMTrainer") == ""  # the trainers' own cache: the keys runs already have
    assert run_key("ZAP25DSAMTrainer", "litemedsam", 10, 0, 0, 1200.0) == \
        "ZAP25DSAMTrainer|litemedsam|n10|seed0|clicks0|budget1200"
    first = CurveSettings(source="Task04_Hippocampus", cache_copies=1, cache_build_first=True)
    assert cache_variant(first, "ZAP25DSAMTrainer") == "cache1-first"
    assert cache_variant(first, BASELINE) == ""  # nnUNetTrainer has no cache: its runs are shared
    assert run_key("ZAP25DSAMTrainer", "litemedsam", 10, 0, 0, 1200.0, "cache1-first").endswith("|cache1-first")
    default_first = CurveSettings(source="Task04_Hippocampus", cache_build_first=True)
    assert cache_variant(default_first, "ZAP25DSAMTrainer") == "cachedefault-first"


@pytest.mark.slow
def test_learning_curve_end_to_end_and_resume(tmp_path):
    # the memory check's skip is passed on by the tool (the ZAP step's trace would cost ~20 s per run here)
    raw, source, env = synthetic_curve_source(tmp_path)
    out = tmp_path / "doc" / "learning_curve.json"
    args = [990, "--test-folder", source, "--sizes", 3, 6, "--trainers", "nnUNetTrainerShortRun",
            "ZAP25DSAMTrainer:vit_test", "--budget", 2, "--allow-random-init", "--disable-tta", "--cache-copies", 1,
            "--prediction-processes", 0,
            "--work-dir", tmp_path / "work", "-o", out]
    _curve(args, env)

    result = json.load(open(out))
    assert result["test_cases"] == ["demo_008", "demo_009"] and result["machine"]["cores"]
    assert result["commit"] and len(result["load_average"]) == 3 and not result["failures"]
    assert "--prediction-processes 0" in result["command"]
    runs = {(r["trainer"], r["n_train"]): r for r in result["runs"]}
    assert set(runs) == {(t, n) for t in ("nnUNetTrainer", "ZAP25DSAMTrainer") for n in (3, 6)}
    for (trainer, n), r in runs.items():
        assert r["budget_seconds"] == 2 and r["clicks"] == 0 and r["seed"] == 0
        assert r["encoder"] == (None if trainer == "nnUNetTrainer" else "vit_test")
        assert r["cache"] == (None if trainer == "nnUNetTrainer" else "cache1")  # --cache-copies 1: its own runs
        assert r["iterations"] >= 1 and r["stopped_by_budget"]
        assert len(r["load_average"]) == len(r["load_average_after_training"]) == 3
        assert set(r["dice"]) == set(r["nsd"]) == set(r["hd95"]) == {"1", "2"}
        assert all(0 <= d <= 1 for d in r["dice"].values())
        assert len(r["training_cases"]) == n and not set(r["training_cases"]) & set(result["test_cases"])
        assert r["wall_seconds"] > r["setup_seconds"] >= r["cache_build_seconds"] > 0
        assert r["with_setup"]["iterations"] <= r["iterations"] and set(r["with_setup"]["dice"]) == {"1", "2"}
        assert r["with_setup"]["scored"] == ("checkpoint_final.pth" if same_reading(r["iterations"], r["with_setup"])
                                             else WITH_SETUP_CHECKPOINT)
        assert r["commit"] == result["commit"] and r["machine"].startswith(result["machine"]["cpu"])
    # nested subsets drawn with the seed; the ZAP run built its embedding cache (1 copy) inside the set-up
    assert set(runs["nnUNetTrainer", 3]["training_cases"]) < set(runs["nnUNetTrainer", 6]["training_cases"])
    assert runs["ZAP25DSAMTrainer", 3]["training_cases"] == runs["nnUNetTrainer", 3]["training_cases"]
    zap_log = open(runs["ZAP25DSAMTrainer", 3]["log"]).read()
    assert "nnUNetv2_train" in zap_log and "nnUNetv2_predict" in zap_log

    table = open(tmp_path / "doc" / "learning_curve.md").read()
    assert table.count("| nnUNetTrainer |") == 2 and table.count("| ZAP25DSAMTrainer [cache1] | vit_test |") == 2
    chart = tmp_path / "doc" / "learning_curve.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second invocation finds every run done: it trains and predicts nothing, and keeps the results
    before = os.path.getmtime(os.path.join(runs["nnUNetTrainer", 3]["log"]))
    proc = _curve(args, env)
    assert "learning-curve: nnUNetTrainer" not in proc.stdout and "4 runs" in proc.stdout
    assert os.path.getmtime(runs["nnUNetTrainer", 3]["log"]) == before
    again = json.load(open(out))
    assert [r["key"] for r in again["runs"]] == [r["key"] for r in result["runs"]]
    assert again["runs"] == result["runs"]

    # runs of other hardware in the file: refused before anything runs (a budget in seconds is other compute there)
    again["machine"]["cpu"] = "Another CPU"
    out.write_text(json.dumps(again))
    cmd = [os.path.join(os.path.dirname(sys.executable), "sam-nnunet"), "learning-curve", *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "give another --output for this machine" in proc.stderr, proc.stderr[-2000:]
    assert json.load(open(out))["runs"] == result["runs"]
