"""Issue 37: the results files ``learning-curve``, ``interaction`` and ``benchmark`` add to are read strictly (a
damaged one stops the command before any work, naming it and the way back) and keep their last good copy as .bak;
trainer and encoder names are resolved before anything is planned or started; a failed benchmark worker's cause
is in the command's own output; the learning curve's smaller refusals. Nothing here trains: the steps after the
checks are replaced by functions that fail the test if reached."""
import json
import os

import pytest

import sam_nnunet.evaluation.benchmark as benchmark
import sam_nnunet.evaluation.learning_curve as learning_curve
from sam_nnunet.errors import UserFacingExit
from sam_nnunet.evaluation.interaction import evaluate_interaction, merge_interaction_file
from sam_nnunet.evaluation.learning_curve import CurveSettings, run_curve
from sam_nnunet.evaluation.machine import machine_line
from sam_nnunet.evaluation.results_file import ResultsFileError, read_results, write_results

GOOD = {"runs": [{"key": "earlier run"}]}


def _never(*args, **kwargs):
    raise AssertionError("work started before the inputs were checked")


@pytest.fixture
def curve(tmp_path, monkeypatch):
    """CurveSettings on a raw dataset of three labelled cases (file names only) with a test folder of two; planning,
    training and every command fail the test."""
    task = tmp_path / "Task01_Toy"
    task.mkdir()
    (task / "dataset.json").write_text("{}")
    raw = tmp_path / "work" / "nnunet" / "nnUNet_raw" / "Dataset001_Toy"  # as converted by an earlier run
    (raw / "labelsTr").mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "channel_names": {"0": "MRI"}}))
    for case in ("a", "b", "c"):
        (raw / "labelsTr" / f"{case}.nii.gz").write_bytes(b"")
    test = tmp_path / "test"
    for sub in ("imagesTs", "labelsTs"):
        (test / sub).mkdir(parents=True)
    for case in ("t1", "t2"):
        (test / "imagesTs" / f"{case}_0000.nii.gz").write_bytes(b"")
        (test / "labelsTs" / f"{case}.nii.gz").write_bytes(b"")
    for name in ("prepare_dataset", "run_training_and_readings", "run_command"):
        monkeypatch.setattr(learning_curve, name, _never)
    return CurveSettings(source=str(task), work_dir=str(tmp_path / "work"), test_folder=str(test),
                         output=str(tmp_path / "curve" / "learning_curve.json"), sizes=["2"],
                         trainers=["nnUNetTrainerShortRun"])


@pytest.mark.parametrize("content, reason", [
    (b'{"runs": [{"key": "a", "dice"', "it is not valid JSON at line 1 (truncated or edited?)"),
    (b'{"runs": [\n<<<<<<< HEAD\n{"key": "a"}\n=======\n{"key": "b"}\n>>>>>>> other\n]}', "it holds a merge conflict"),
    (b"", "it is empty"),
    (b"[1, 2]", "it holds a JSON list, not an object"),
])
def test_a_damaged_learning_curve_file_stops_the_command_and_is_kept(curve, content, reason):
    os.makedirs(os.path.dirname(curve.output))
    with open(curve.output, "wb") as f:
        f.write(content)
    with pytest.raises(ResultsFileError) as e:
        run_curve(curve)
    assert str(e.value).startswith(f"{curve.output} cannot be read: {reason}. It holds earlier results, so nothing "
                                   f"was run or written: repair it, or move it away to start a new file")
    with open(curve.output, "rb") as f:
        assert f.read() == content  # not replaced by an empty curve
    write_results(curve.output + ".bak", GOOD)  # with a last good copy, the message says how to restore it
    with pytest.raises(ResultsFileError, match=r"restore the last good copy \(cp .*learning_curve.json.bak "):
        run_curve(curve)


def test_every_write_keeps_the_file_it_replaces_as_bak(tmp_path):
    path = str(tmp_path / "results.json")
    write_results(path, GOOD)
    assert not os.path.exists(path + ".bak") and read_results(path) == GOOD
    write_results(path, {"runs": []})
    assert read_results(path) == {"runs": []} and read_results(path + ".bak") == GOOD
    with open(path, "w") as f:
        f.write("{broken")
    write_results(path, {"runs": [1]})  # an unreadable file never becomes the backup
    assert read_results(path + ".bak") == GOOD
    assert read_results(str(tmp_path / "none.json")) is None


def test_the_other_machine_refusal_reads_an_old_record_without_memory(curve):
    write_results(curve.output, {"runs": [{"key": "x"}], "test_cases": ["t1", "t2"],
                                 "machine": {"cpu": "Old CPU", "usable_cores": 96}})
    with pytest.raises(ValueError, match=r"holds runs measured on Old CPU, 96 cores, RAM not recorded, no GPU; "):
        run_curve(curve)
    assert machine_line({}) == "CPU not recorded, ? cores, RAM not recorded, no GPU; OS not recorded"


def test_a_test_folder_must_pair_every_image_with_its_label(curve):
    test = curve.test_folder
    open(os.path.join(test, "imagesTs", "t3_0000.nii.gz"), "wb").close()
    with pytest.raises(ValueError, match=r"labelsTs/ lacks 1 case\(s\) that imagesTs/ holds: t3; add them"):
        run_curve(curve)
    os.remove(os.path.join(test, "imagesTs", "t3_0000.nii.gz"))
    os.remove(os.path.join(test, "imagesTs", "t2_0000.nii.gz"))
    with pytest.raises(ValueError, match=r"imagesTs/ lacks 1 case\(s\) that labelsTs/ holds: t2"):
        run_curve(curve)


@pytest.mark.parametrize("trainers, message", [
    (["nnUNetTrainerShortRn"], r"--trainers 'nnUNetTrainerShortRn' is not a trainer nnUNetv2_train knows; did you "
                               r"mean nnUNetTrainerShortRun"),
    (["ZAP25DSAMTrainer:litemedsm"], r"encoder 'litemedsm' \(for ZAP25DSAMTrainer\) is not one of sam-nnunet's "
                                     r"encoders; did you mean litemedsam"),
    (["SAM2_3dMedTrainer:vit_b"], r"SAM2_3dMedTrainer does not adapt the encoder vit_b; it takes "),
    (["nnUNetTrainer"], r"nnUNetTrainer trains without the wall-clock budget .* use nnUNetTrainerShortRun"),
])
def test_learning_curve_names_are_resolved_before_planning(curve, trainers, message):
    curve.trainers = ["nnUNetTrainerShortRun", *trainers]
    with pytest.raises(ValueError, match=message):
        run_curve(curve)
    assert not os.path.exists(os.path.join(curve.work_dir, "prepare.log"))


def test_interaction_checks_its_file_and_target_before_loading_the_model(tmp_path):
    out = str(tmp_path / "interaction.json")
    with open(out, "w") as f:
        f.write('{"rows": [')
    with pytest.raises(ResultsFileError, match=r"interaction.json cannot be read: it is not valid JSON"):
        evaluate_interaction(str(tmp_path / "no_model"), output_file=out)  # the model folder is never opened
    for target in (2.0, 0.0, -0.5):
        with pytest.raises(ValueError, match=r"--target-dice must be in \(0, 1\]"):
            evaluate_interaction(str(tmp_path / "no_model"), target_dice=target)
    os.remove(out)
    row = {"trainer": "T", "trained": True, "prompt": "box", "round": 0, "dice": 0.5, "merge": "progressive"}
    first = {"rows": [row], "rounds_to_target": {"T": {"box": 1.0}}, "per_case": {"T": {"box": {}}}}
    merge_interaction_file(out, first)
    second = {"rows": [dict(row, prompt="clicks")], "rounds_to_target": {"T": {"clicks": 2.0}},
              "per_case": {"T": {"clicks": {}}}}
    merged = merge_interaction_file(out, second)
    assert [r["prompt"] for r in merged["rows"]] == ["box", "clicks"]
    assert read_results(out + ".bak")["rows"] == [row]


def test_benchmark_names_are_resolved_before_any_worker(monkeypatch):
    monkeypatch.setattr(benchmark, "run_one", _never)
    for kwargs, message in (
            ({"trainers": ["nnUNetTrainer", "ZAP25DSAMTrainr"]},
             r"-tr 'ZAP25DSAMTrainr' is not a trainer nnUNetv2_train knows; did you mean ZAP25DSAMTrainer"),
            ({"trainers": ["ZAP25DSAMTrainer"], "encoders": {"ZAP25DSAMTrainer": "litemedsm"}},
             r"encoder 'litemedsm' \(for ZAP25DSAMTrainer\) is not one of sam-nnunet's encoders; did you mean "
             r"litemedsam"),
            ({"trainers": ["ZAP25DSAMTrainer"], "encoders": {"*": "vit_bb"}}, r"encoder 'vit_bb' .* did you mean")):
        with pytest.raises(ValueError, match=message):
            benchmark.BenchmarkSettings(dataset="Dataset004_Hippocampus", **kwargs).resolve()
    with pytest.raises(ValueError, match=r"'ZAP25DSAMTrainr' is not a trainer"):  # first, before the dataset
        benchmark.BenchmarkSettings(dataset="999", trainers=["ZAP25DSAMTrainr"]).resolve()
    # nnU-Net's own variants and the shorter schedules resolve
    benchmark.BenchmarkSettings(dataset="Dataset004_Hippocampus",
                                trainers=["nnUNetTrainer_250epochs", "ZAP25DSAMTrainer_100epochs"]).resolve()


def test_benchmark_keeps_its_last_result_and_prints_a_failed_workers_cause(tmp_path, monkeypatch, capsys):
    from sam_nnunet.cli import main

    out = tmp_path / "bench"
    out.mkdir()
    (out / "benchmark.json").write_text('{"runs": [')
    monkeypatch.setattr(benchmark, "check_inputs", lambda s: None)
    monkeypatch.setattr(benchmark, "run_one", _never)
    argv = ["benchmark", "-d", "Dataset004_Hippocampus", "-tr", "nnUNetTrainer", "-o", str(out)]
    with pytest.raises(UserFacingExit, match=r"benchmark.json cannot be read: it is not valid JSON"):
        main(argv)
    (out / "benchmark.json").write_text(json.dumps(GOOD))

    def failed(s, trainer, index, show_progress=True):
        return {"status": "failed", "trainer": trainer, "error": "the worker ended with status 1",
                "log": "log.txt", "log_tail": "Traceback (most recent call last):\nRuntimeError: the real cause\n"}
    monkeypatch.setattr(benchmark, "run_one", failed)
    with pytest.raises(UserFacingExit, match=r"nnUNetTrainer failed \(the cause above\)"):
        main(argv)
    err = capsys.readouterr().err
    assert "nnUNetTrainer failed: the worker ended with status 1 (log: log.txt)" in err
    assert "  | RuntimeError: the real cause" in err
    assert read_results(str(out / "benchmark.json.bak")) == GOOD
    assert read_results(str(out / "benchmark.json"))["runs"][0]["status"] == "failed"
