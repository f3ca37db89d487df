"""sam-nnunet benchmark: settings and messages (fast), and one real run of nnUNetTrainer + SAMAdapterTrainer +
ZAP25DSAMTrainer_prompted (automatic and with simulated clicks) (+ a trainer that does not exist) on the synthetic
dataset with a tiny budget (slow)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from sam_nnunet.evaluation.benchmark import BenchmarkSettings, parse_per_trainer, run_benchmark
from sam_nnunet.evaluation.benchmark_worker import parameter_counts
from sam_nnunet.evaluation.report import DOC_BEGIN, DOC_END, markdown_table


def test_parse_per_trainer():
    assert parse_per_trainer(["vit_b"], "--encoder") == {"*": "vit_b"}
    assert parse_per_trainer(["SAMAdapterTrainer=vit_test", "vit_b"], "--encoder") == {
        "SAMAdapterTrainer": "vit_test", "*": "vit_b"}
    with pytest.raises(ValueError, match="Trainer=NAME"):
        parse_per_trainer(["SAMAdapterTrainer="], "--encoder")
    with pytest.raises(ValueError, match="both for every trainer"):
        parse_per_trainer(["vit_b", "sam2.1_hiera_t"], "--encoder")  # a second name would silently win


def test_settings_are_checked(synthetic_dataset):
    s = BenchmarkSettings(dataset="990", trainers=["nnUNetTrainer"], iterations=10).resolve()
    assert s.dataset == synthetic_dataset["dataset_name"]
    assert s.val_iterations == 2 and s.device == "cpu" and s.threads >= 1
    with pytest.raises(ValueError, match="nnUNetv2_plan_and_preprocess"):
        BenchmarkSettings(dataset="977", trainers=["nnUNetTrainer"]).resolve()
    with pytest.raises(ValueError, match="not benchmarked"):
        BenchmarkSettings(dataset="990", trainers=["nnUNetTrainer"], encoders={"Other": "vit_b"}).resolve()
    with pytest.raises(ValueError, match="at least 1"):
        BenchmarkSettings(dataset="990", trainers=["nnUNetTrainer"], iterations=0).resolve()
    assert s.clicks == [1, 3, 10] and s.click_tiles is None  # the papers' click counts, their tiles
    with pytest.raises(ValueError, match="--clicks"):
        BenchmarkSettings(dataset="990", trainers=["nnUNetTrainer"], clicks=[0, 3]).resolve()


def test_parameter_counts_of_a_network_without_pretrained_parts():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    net[1].weight.requires_grad_(False)
    assert parameter_counts(net) == {"total": 26, "trainable": 18, "frozen": 8, "pretrained": 0, "added": 26}


@pytest.mark.slow
def test_benchmark_end_to_end(synthetic_dataset, tmp_path, capsys):
    from sam_nnunet.cli import main

    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nintro\n\n{DOC_BEGIN}\nold table\n{DOC_END}\n\nafter\n")
    out = tmp_path / "bench"
    # (an unknown trainer name is refused before any worker: tests/test_results_files.py)
    main(["benchmark", "-d", "990", "-tr", "nnUNetTrainer", "SAMAdapterTrainer", "ZAP25DSAMTrainer_prompted",
          "--encoder", "vit_test", "--allow-random-init", "--epochs", "1",
          "--iterations", "2", "--val-cases", "1", "--no-mirroring", "--threads", "2", "--clicks", "1", "3",
          "-o", str(out), "--update-doc", str(doc)])
    printed = capsys.readouterr().out
    assert "| nnUNetTrainer |" in printed and "| SAMAdapterTrainer | vit_test (RANDOM init)" in printed
    assert "| Trainer | Tiles | automatic | 1 click | 3 clicks |" in printed
    assert "| ZAP25DSAMTrainer_prompted | clicked | " in printed

    with open(out / "benchmark.json") as f:
        result = json.load(f)
    runs = {r["trainer"]: r for r in result["runs"]}
    baseline, sam, prompted = runs["nnUNetTrainer"], runs["SAMAdapterTrainer"], runs["ZAP25DSAMTrainer_prompted"]
    assert baseline["status"] == "ok" and sam["status"] == "ok" and prompted["status"] == "ok", prompted.get("error")
    assert not baseline["prompted"] and not sam["prompted"] and "clicks" not in sam and prompted["prompted"]
    # the prompted trainer: automatic (the common columns) and with 1 and 3 clicks on the same validation case
    clicks = prompted["clicks"]
    assert clicks["tiles"] == "clicked" and clicks["cases"] == prompted["prediction"]["cases"]
    assert set(clicks["counts"]) == {"1", "3"}
    for n in ("1", "3"):
        fg = clicks["counts"][n]["foreground_mean"]
        assert 0 <= fg["Dice"] <= 1 and 0 <= fg["NSD"] <= 1
        assert os.path.isfile(os.path.join(clicks["output_folder"], f"{n}_clicks", "clicks.json"))

    # the interaction protocol on the same case: three first prompts, 3 rounds each (the default); random weights
    # give no zero-shot row, and say so
    interaction = prompted["interaction"]
    assert interaction["cases"] == prompted["prediction"]["cases"] and "interaction" not in sam
    assert {(r["prompt"], r["round"]) for r in interaction["rows"]} == {
        (p, k) for p in ("box", "clicks", "box+clicks") for k in range(4)}
    assert all(r["trained"] and 0 <= r["dice"] <= 1 for r in interaction["rows"])
    assert "zero-shot needs pretrained weights" in interaction["zero_shot_skipped"]
    assert "| ZAP25DSAMTrainer_prompted | trained | box+clicks | " in printed and "| round 3 |" in printed

    # loader set-up timed apart from the steps; a two-iteration run does not build ZAP's embedding cache
    assert prompted["loaders"]["embedding_cache"] is False and "embedding_cache" not in baseline["loaders"]
    assert baseline["loaders"]["setup_seconds"] > 0

    # parameters: the U-Net is all trainable and all added; the SAM network has frozen pretrained parts
    p = baseline["parameters"]
    assert p["total"] == p["trainable"] == p["added"] > 0 and p["pretrained"] == p["frozen"] == 0
    p = sam["parameters"]
    assert p["total"] == p["trainable"] + p["frozen"] == p["pretrained"] + p["added"]
    assert p["frozen"] > 0 and p["pretrained"] > 0 and sam["encoder"] == "vit_test"

    for run in (baseline, sam, prompted):
        assert run["training"]["iterations"] == 2 and len(run["training"]["epoch_seconds"]) == 1
        assert run["training"]["seconds_per_iteration"] > 0
        assert run["memory"]["peak_rss_bytes"] > 100 * 2 ** 20
        assert len(run["prediction"]["cases"]) == 1 and run["prediction"]["seconds_per_case"] > 0
        prediction = os.path.join(out, "runs", run["trainer"], "predictions", run["prediction"]["cases"][0] +
                                  ".nii.gz")
        assert os.path.isfile(prediction)
        fg = run["metrics"]["foreground_mean"]
        assert 0 <= fg["Dice"] <= 1 and 0 <= fg["NSD"] <= 1 and fg["HD95"] >= 0
        assert set(run["metrics"]["mean"]) == {"1", "2"}
        # the model folder is the benchmark's own, not the user's nnUNet_results
        assert run["model_folder"].startswith(str(out))
        assert os.path.isfile(os.path.join(run["model_folder"], "fold_0", "checkpoint_final.pth"))

    assert result["machine"]["versions"]["nnunetv2"] and result["machine"]["cores"] >= 1
    for chart in ("accuracy", "parameters", "memory", "time"):
        assert (out / f"{chart}.png").stat().st_size > 1000
    text = doc.read_text()
    assert "old table" not in text and text.startswith("# Benchmarks") and text.rstrip().endswith("after")
    assert "| SAMAdapterTrainer |" in text and "![memory](benchmarks/memory.png)" in text
    assert (tmp_path / "benchmarks" / "time.png").is_file()
    # header + 3 trainers; header + 1 prompted trainer; header + its 3 first-prompt kinds (interaction)
    assert markdown_table(result).count("\n| ") == 4 + 2 + 4


def test_click_table_of_prompted_trainers():
    from sam_nnunet.evaluation.report import click_table

    def run(trainer, dice, clicks=None):
        return {"trainer": trainer, "status": "ok", "metrics": {"foreground_mean": {"Dice": dice, "NSD": 0.5}},
                **({"clicks": clicks} if clicks else {})}

    clicks = {"tiles": "centred", "counts": {"1": {"foreground_mean": {"Dice": 0.61234, "NSD": 0.7}},
                                             "10": {"foreground_mean": {"Dice": float("nan"), "NSD": 0.9}}}}
    result = {"settings": {"tolerance": 5.0}, "runs": [run("nnUNetTrainer", 0.8), run("P", 0.4, clicks)]}
    lines = click_table(result)
    assert "| Trainer | Tiles | automatic | 1 click | 10 clicks |" in lines
    assert lines[-1] == "| P | centred | 0.4000 / 0.5000 | 0.6123 / 0.7000 | – / 0.9000 |"
    assert click_table({"settings": {"tolerance": 5.0}, "runs": [run("nnUNetTrainer", 0.8)]}) == []


def test_update_doc_needs_markers(tmp_path):
    from sam_nnunet.evaluation.report import update_document
    doc = tmp_path / "d.md"
    doc.write_text("# no markers\n")
    with pytest.raises(ValueError, match="generated block"):
        update_document(str(doc), "table", [], str(doc))


def test_a_missing_doc_is_refused_before_any_training(tmp_path, monkeypatch):
    import sam_nnunet.evaluation.benchmark as benchmark

    def no_training(*args, **kwargs):
        raise AssertionError("a trainer ran before the --update-doc page was checked")

    monkeypatch.setattr(benchmark, "check_inputs", lambda s: None)
    monkeypatch.setattr(benchmark, "run_one", no_training)
    s = BenchmarkSettings(dataset="Dataset004_Hippocampus", trainers=["nnUNetTrainer"],
                          output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="no such file"):
        benchmark.run_benchmark(s, doc=str(tmp_path / "missing.md"), show_progress=False)
    (tmp_path / "plain.md").write_text("# no markers\n")
    with pytest.raises(ValueError, match="generated block"):
        benchmark.run_benchmark(s, doc=str(tmp_path / "plain.md"), show_progress=False)
    assert not (tmp_path / "out").exists()


def test_an_encoder_for_all_goes_to_the_trainers_of_its_family():
    from sam_nnunet.evaluation.benchmark import encoder_for

    trainers = ["nnUNetTrainer", "SAMAdapterTrainer", "SAM3DMedTrainer", "SAM2_3dMedTrainer",
                "SAM2_3dMedTrainer_noAux"]
    s = BenchmarkSettings(dataset="Dataset004_Hippocampus", trainers=trainers,
                          encoders={"*": "vit_b", "SAM2_3dMedTrainer_noAux": "sam2_test"})
    chosen = {t: encoder_for(s, t)["encoder"] for t in trainers}
    # SAM 2's trainer keeps its default (no vit_b for it); a named one wins; nnU-Net's trainer ignores the variable
    assert chosen == {"nnUNetTrainer": "vit_b", "SAMAdapterTrainer": "vit_b", "SAM3DMedTrainer": "vit_b",
                      "SAM2_3dMedTrainer": None, "SAM2_3dMedTrainer_noAux": "sam2_test"}
    s.encoders = {"*": "sam2.1_hiera_t"}
    assert encoder_for(s, "SAM2_3dMedTrainer")["encoder"] == "sam2.1_hiera_t"
    assert encoder_for(s, "SAMAdapterTrainer")["encoder"] is None


def test_the_recorded_command_reproduces_the_settings():
    import shlex

    from sam_nnunet.cli import build_parser
    from sam_nnunet.evaluation.benchmark import command_line

    s = BenchmarkSettings(dataset="Dataset004_Hippocampus", trainers=["nnUNetTrainer", "SAMAdapterTrainer"],
                          epochs=2, iterations=7, val_iterations=3, val_cases=4, mirroring=False, device="cpu",
                          threads=2, encoders={"SAMAdapterTrainer": "vit_b"}, checkpoints={"*": "/w/sam b.pth"},
                          allow_random_init=True, batch_size=2, output_dir="out dir", clicks=[1, 3],
                          click_tiles="all")
    args = build_parser().parse_args(shlex.split(command_line(s, "doc.md"))[1:])
    assert (args.dataset, args.trainers, args.epochs, args.iterations, args.val_iterations, args.val_cases) == (
        "Dataset004_Hippocampus", ["nnUNetTrainer", "SAMAdapterTrainer"], 2, 7, 3, 4)
    assert args.no_mirroring and args.allow_random_init and args.batch_size == 2 and args.output == "out dir"
    assert parse_per_trainer(args.encoder, "") == {"SAMAdapterTrainer": "vit_b"}
    assert parse_per_trainer(args.checkpoint, "") == {"*": "/w/sam b.pth"} and args.update_doc == "doc.md"
    assert args.clicks == [1, 3] and args.click_tiles == "all"
    s.clicks, s.click_tiles = [], None  # automatic only
    assert build_parser().parse_args(shlex.split(command_line(s))[1:]).clicks == []
    s.clicks = [1, 3, 10]  # the default is not repeated
    assert "--clicks" not in command_line(s) and build_parser().parse_args(shlex.split(command_line(s))[1:]).clicks \
        is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the inherited peak is a Linux behaviour")
def test_worker_peak_memory_is_its_own_not_the_launching_process():
    # a launching process larger than the worker will ever be: ru_maxrss would report the parent's peak in the child
    import numpy as np
    from sam_nnunet.evaluation.benchmark_worker import peak_rss_bytes

    ballast = np.ones(1024 ** 3 // 8 * 2, dtype=np.float64)  # 2 GiB, touched
    parent_peak = peak_rss_bytes()
    out = subprocess.run([sys.executable, "-c", "from sam_nnunet.evaluation.benchmark_worker import peak_rss_bytes; "
                          "print(peak_rss_bytes())"], capture_output=True, text=True, check=True)
    del ballast
    child_peak = int(out.stdout.strip().splitlines()[-1])
    assert parent_peak > 2 * 1024 ** 3
    assert 0 < child_peak < parent_peak - 1024 ** 3
