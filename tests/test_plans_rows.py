"""Rows on other nnU-Net plans (TRAINER@PLANS: ResEnc M) and a target spacing for every row, in learning-curve and
benchmark (evaluation.plans_rows): names, planning commands and the held-out cases beside --test-folder (fast; the
planners and nnU-Net are not run), and one learning curve with a ResEnc M row at a coarser spacing (slow)."""
import json
import os
import shlex
import subprocess
import sys

import pytest
from conftest import synthetic_curve_source

import sam_nnunet.evaluation.benchmark as benchmark
import sam_nnunet.evaluation.learning_curve as lc
from sam_nnunet.commands import CommandFailed
from sam_nnunet.evaluation.benchmark import BenchmarkSettings
from sam_nnunet.evaluation.learning_curve import BASELINE, CurveSettings, choose_test_set, run_key
from sam_nnunet.evaluation.plans_rows import (Row, display_suffix, key_suffix, parse_row, planning_arguments,
                                              plans_identifier)


def test_a_row_names_trainer_plans_and_encoder():
    assert parse_row("nnUNetTrainerShortRun") == Row("nnUNetTrainerShortRun")
    assert parse_row("nnUNetTrainerShortRun@nnUNetResEncUNetMPlans") == Row(
        "nnUNetTrainerShortRun", "nnUNetResEncUNetMPlans")
    row = parse_row("ZAP25DSAMTrainer@nnUNetResEncUNetMPlans:litemedsam")
    assert (row.trainer, row.plans, row.encoder, row.label) == (
        "ZAP25DSAMTrainer", "nnUNetResEncUNetMPlans", "litemedsam", "ZAP25DSAMTrainer@nnUNetResEncUNetMPlans")
    assert lc.trainer_spec("ZAP25DSAMTrainer@nnUNetResEncUNetMPlans:litemedsam") == ("ZAP25DSAMTrainer", "litemedsam")
    with pytest.raises(ValueError, match="nnUNetResEncUNetMPlans"):
        parse_row("nnUNetTrainer@ResEncM")  # the presets' own names only: listed in the message
    with pytest.raises(ValueError, match="TRAINER@PLANS"):
        parse_row("nnUNetTrainer@@x")
    with pytest.raises(ValueError, match="--encoder SAMAdapterTrainer=vit_b"):
        parse_row("SAMAdapterTrainer:vit_b", encoder_allowed=False)  # the benchmark names encoders apart
    assert display_suffix("nnUNetResEncUNetMPlans") == " (ResEnc M)" and display_suffix("nnUNetPlans") == ""


def test_plans_names_and_planning_arguments():
    assert plans_identifier("nnUNetPlans", None) == "nnUNetPlans"
    assert plans_identifier("nnUNetResEncUNetMPlans", [2, 2, 2]) == "nnUNetResEncUNetMPlans_2mm"
    assert plans_identifier("nnUNetPlans", [2.5, 1.25, 1.25]) == "nnUNetPlans_2.5x1.25x1.25mm"
    assert planning_arguments("nnUNetPlans", None) == []  # the command a user types for the default plans
    assert planning_arguments("nnUNetResEncUNetMPlans", None) == ["-pl", "nnUNetPlannerResEncM"]
    assert planning_arguments("nnUNetResEncUNetMPlans", [2, 2, 2]) == [
        "-pl", "nnUNetPlannerResEncM", "-overwrite_target_spacing", "2", "2", "2",
        "-overwrite_plans_name", "nnUNetResEncUNetMPlans_2mm"]
    # runs keys: unchanged for nnU-Net's plans at their spacing (results files already hold them), else suffixed
    assert key_suffix("nnUNetPlans", None) == ""
    assert run_key(BASELINE, None, 8, 0, 0, 600.0) + key_suffix("nnUNetResEncUNetMPlans", [2, 2, 2]) == \
        "nnUNetTrainerShortRun|-|n8|seed0|clicks0|budget600|nnUNetResEncUNetMPlans_2mm"


def test_the_planners_named_exist_in_nnunet_with_those_plans_names():
    import inspect

    from nnunetv2.experiment_planning.experiment_planners.residual_unets import residual_encoder_unet_planners as p

    from sam_nnunet.evaluation.plans_rows import PLANNERS
    for plans, planner in PLANNERS.items():
        if planner != "ExperimentPlanner":
            assert inspect.signature(getattr(p, planner).__init__).parameters["plans_name"].default == plans


def test_the_recorded_curve_command_keeps_spacing_rows_and_held_out_cases():
    from sam_nnunet.cli import build_parser
    s = CurveSettings(source="Task90_LeftAtrium", trainers=[BASELINE, f"{BASELINE}@nnUNetResEncUNetMPlans"],
                      target_spacing=[2, 2, 2], num_test=20, test_folder="/data/la_test").check()
    args = build_parser().parse_args(shlex.split(lc.command_line(s))[1:])
    assert args.trainers == s.trainers and args.target_spacing == [2.0, 2.0, 2.0]
    assert (args.num_test, args.test_seed, args.test_folder) == (20, 0, "/data/la_test")
    assert CurveSettings(source="x").check().num_test == 40  # the default hold-out without a test folder
    assert CurveSettings(source="x", test_folder="/t").check().num_test is None  # every case may train
    with pytest.raises(ValueError, match="three positive"):
        CurveSettings(source="x", target_spacing=[2, 2]).check()
    with pytest.raises(ValueError, match="not a plans name"):
        CurveSettings(source="x", trainers=[f"{BASELINE}@Other"]).check()


def _source(root, cases):
    for case in cases:
        for sub, name in (("labelsTr", case), ("imagesTr", case + "_0000")):
            os.makedirs(root / sub, exist_ok=True)
            (root / sub / f"{name}.nii.gz").write_bytes(b"")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "file_ending": ".nii.gz"}))
    return str(root)


def test_another_test_folder_scores_the_runs_of_the_held_out_command(tmp_path):
    cases = [f"la_{i:03d}" for i in range(30)]
    source = _source(tmp_path / "src", cases)
    held = CurveSettings(source=source, num_test=6).check()
    folder, test, pool = choose_test_set(held, source, ".nii.gz", str(tmp_path / "work"))
    assert len(test) == 6 and sorted(test + pool) == cases
    # the same command with --test-folder: the same training pool (so the same datasets and models), other cases
    other = tmp_path / "other"
    for case in ("std_001", "std_002"):
        for sub, name in (("labelsTs", case), ("imagesTs", case + "_0000")):
            os.makedirs(other / sub, exist_ok=True)
            (other / sub / f"{name}.nii.gz").write_bytes(b"")
    again = CurveSettings(source=source, num_test=6, test_folder=str(other)).check()
    folder2, test2, pool2 = choose_test_set(again, source, ".nii.gz", str(tmp_path / "work"))
    assert (folder2, test2, pool2) == (str(other), ["std_001", "std_002"], pool)
    # the tool's own held-out folder given as --test-folder: the same cases, the same runs
    assert choose_test_set(CurveSettings(source=source, num_test=6, test_folder=folder).check(), source, ".nii.gz",
                           str(tmp_path / "work"))[1:] == (test, pool)
    # without --num-test a test folder leaves every source case to training; a test case among them is refused
    assert choose_test_set(CurveSettings(source=source, test_folder=str(other)).check(), source, ".nii.gz",
                           str(tmp_path / "work"))[2] == cases
    with pytest.raises(ValueError, match="also training cases"):
        choose_test_set(CurveSettings(source=source, test_folder=folder).check(), source, ".nii.gz",
                        str(tmp_path / "work"))


def test_a_resenc_row_is_planned_with_its_planner_at_the_target_spacing(tmp_path, monkeypatch):
    source = _source(tmp_path / "src", ["a", "b", "c"])
    env = {k: str(tmp_path / "nnunet" / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in env.values():
        os.makedirs(folder)
    commands = []

    def fake_run(cmd, env, log):
        commands.append([str(c) for c in cmd])
        pre = os.path.join(env["nnUNet_preprocessed"], "Dataset600_LC3s0")
        os.makedirs(pre, exist_ok=True)
        names = [cmd[cmd.index("-overwrite_plans_name") + 1]] if "-overwrite_plans_name" in cmd else ["nnUNetPlans"]
        for name in names:
            with open(os.path.join(pre, name + ".json"), "w") as f:
                json.dump({"plans_name": name, "configurations": {"3d_fullres": {"batch_size": 2}}}, f)
        return 1.0

    monkeypatch.setattr(lc, "run_command", fake_run)
    s = CurveSettings(source=source, target_spacing=[2, 2, 2], configuration_override={"batch_size": 1}).check()
    name, plans = lc.prepare_dataset(s, source, ["a", "b", "c"], 3, 0, env, str(tmp_path / "work"), "log",
                                     "nnUNetResEncUNetMPlans")
    assert (name, plans) == ("Dataset600_LC3s0", "nnUNetResEncUNetMPlans_2mm_LearningCurvePlans")
    plan_cmd, preprocess_cmd = commands
    assert plan_cmd[0] == "nnUNetv2_plan_and_preprocess" and plan_cmd[plan_cmd.index("-pl") + 1] == \
        "nnUNetPlannerResEncM"
    assert plan_cmd[plan_cmd.index("-overwrite_target_spacing") + 1:][:3] == ["2", "2", "2"]
    assert preprocess_cmd[preprocess_cmd.index("-plans_name") + 1] == plans
    written = json.load(open(os.path.join(env["nnUNet_preprocessed"], name, plans + ".json")))
    assert written["configurations"]["3d_fullres"]["batch_size"] == 1
    # the default row of the same dataset: nnU-Net's planner at the same spacing, its own plans; each planned once
    s.configuration_override = None
    assert lc.prepare_dataset(s, source, ["a", "b", "c"], 3, 0, env, str(tmp_path / "work"), "log")[1] == \
        "nnUNetPlans_2mm"
    assert "-pl" not in commands[2] and "nnUNetPlans_2mm" in commands[2]
    lc.prepare_dataset(s, source, ["a", "b", "c"], 3, 0, env, str(tmp_path / "work"), "log")
    assert len(commands) == 3


def test_benchmark_rows_on_other_plans(tmp_path, monkeypatch):
    import nnunetv2.paths

    pre = tmp_path / "pre"
    os.makedirs(pre / "Dataset004_Hippocampus")
    (pre / "Dataset004_Hippocampus" / "nnUNetPlans.json").write_text(json.dumps({"configurations": {"3d_fullres": {}}}))
    monkeypatch.setattr(nnunetv2.paths, "nnUNet_preprocessed", str(pre))
    monkeypatch.setattr(nnunetv2.paths, "nnUNet_raw", str(tmp_path / "raw"))
    os.makedirs(tmp_path / "raw" / "Dataset004_Hippocampus" / "imagesTr")
    commands = []

    def fake_plan(cmd, env, log):
        commands.append([str(c) for c in cmd])
        (pre / "Dataset004_Hippocampus" / "nnUNetResEncUNetMPlans.json").write_text(
            json.dumps({"configurations": {"3d_fullres": {}}}))

    monkeypatch.setattr(benchmark, "run_command", fake_plan)
    s = BenchmarkSettings(dataset="Dataset004_Hippocampus", output_dir=str(tmp_path / "out"), threads=2,
                          trainers=["nnUNetTrainer", "nnUNetTrainer@nnUNetResEncUNetMPlans"])
    s.resolve_names()
    benchmark.check_inputs(s)  # the default plans exist; ResEnc M's are planned with its planner
    assert commands == [["nnUNetv2_plan_and_preprocess", "-d", "004", "-c", "3d_fullres", "-np", "2", "-npfp", "2",
                         "-pl", "nnUNetPlannerResEncM"]]
    benchmark.check_inputs(s)
    assert len(commands) == 1  # planned once
    assert benchmark.encoder_for(BenchmarkSettings(dataset="d", trainers=[], encoders={"SAMAdapterTrainer": "x"}),
                                 "SAMAdapterTrainer@nnUNetResEncUNetMPlans")["encoder"] == "x"
    own = BenchmarkSettings(dataset="d", trainers=[], encoders={"SAMAdapterTrainer": "x",
                                                                "SAMAdapterTrainer@nnUNetResEncUNetMPlans": "y"})
    assert [benchmark.encoder_for(own, t)["encoder"] for t in ("SAMAdapterTrainer",
                                                               "SAMAdapterTrainer@nnUNetResEncUNetMPlans")] == ["x", "y"]
    with pytest.raises(ValueError, match="twice"):
        BenchmarkSettings(dataset="d", trainers=["nnUNetTrainer", "nnUNetTrainer"]).resolve_names()

    # each row: its own run folder, the bare trainer and the row's plans for the worker
    def no_worker(cmd, env, log, progress):
        open(log, "w").close()
        raise CommandFailed("the worker failed", 1)

    monkeypatch.setattr(benchmark, "run_command", no_worker)
    result = benchmark.run_one(s, "nnUNetTrainer@nnUNetResEncUNetMPlans", 1, show_progress=False)
    spec = json.load(open(tmp_path / "out" / "runs" / "nnUNetTrainer@nnUNetResEncUNetMPlans" / "spec.json"))
    assert (spec["trainer"], spec["plans"]) == ("nnUNetTrainer", "nnUNetResEncUNetMPlans")
    assert result["trainer"] == "nnUNetTrainer@nnUNetResEncUNetMPlans" and result["status"] == "failed"
    s.target_spacing = [2, 2, 2]
    assert benchmark.row_plans(s, "nnUNetTrainer") == "nnUNetPlans_2mm"


@pytest.mark.slow
def test_learning_curve_with_a_resenc_m_row_at_a_coarser_spacing(tmp_path):
    raw, source, env = synthetic_curve_source(tmp_path)
    out = tmp_path / "lc.json"
    args = ["990", "--test-folder", source, "--sizes", "4", "--trainers", BASELINE,
            f"{BASELINE}@nnUNetResEncUNetMPlans", "--budget", "2", "--target-spacing", "2", "2", "2",
            "--disable-tta", "--prediction-processes", "0", "--work-dir", str(tmp_path / "work"), "-o", str(out)]
    cmd = [os.path.join(os.path.dirname(sys.executable), "sam-nnunet"), "learning-curve", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.load(open(out))
    runs = {r["trainer"]: r for r in result["runs"]}
    assert set(runs) == {"nnUNetTrainer", "nnUNetTrainer (ResEnc M)"} and not result["failures"]
    for r in runs.values():  # the same budget, the same training cases, each on its plans at 2 mm
        assert r["stopped_by_budget"] and r["iterations"] >= 1 and r["budget_seconds"] == 2
        assert r["target_spacing"] == [2.0, 2.0, 2.0]
    assert runs["nnUNetTrainer"]["plans"] == "nnUNetPlans_2mm"
    resenc = runs["nnUNetTrainer (ResEnc M)"]
    assert resenc["plans"] == "nnUNetResEncUNetMPlans_2mm" and resenc["key"].endswith("|nnUNetResEncUNetMPlans_2mm")
    assert resenc["training_cases"] == runs["nnUNetTrainer"]["training_cases"]
    model = tmp_path / "work" / "nnunet" / "nnUNet_results" / resenc["dataset"] / \
        f"{BASELINE}__nnUNetResEncUNetMPlans_2mm__3d_fullres"
    configuration = json.load(open(model / "plans.json"))["configurations"]["3d_fullres"]
    assert configuration["spacing"] == [2.0, 2.0, 2.0]
    assert configuration["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    # another spacing in the same results file is refused (its runs would not compare)
    proc = subprocess.run(cmd[:-len(args)] + [a if a != "2" else "3" for a in args], env=env, capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "another target spacing" in proc.stderr
