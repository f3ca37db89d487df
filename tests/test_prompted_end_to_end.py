"""Prompted 3DSAM-adapter end to end through the command line, as a user runs it: convert MSD hippocampus cases (or
generate a dataset) -> plan_and_preprocess -> nnUNetv2_train -tr SAMAdapterTrainer_prompted -> sam-nnunet
predict-prompted with a prompt file, and with clicks simulated from reference labels -> the benchmark interface."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import HIPPOCAMPUS

from sam_nnunet.demo import make_msd_subset, make_synthetic_dataset
from sam_nnunet.nnunet_env import required_environment
from sam_nnunet.prompts.prompt_file import load_prompts

BIN = os.path.dirname(sys.executable)
TRAINER = "SAMAdapterTrainer_prompted"


def run(cmd, env, expect_ok=True):
    proc = subprocess.run([os.path.join(BIN, cmd[0])] + [str(c) for c in cmd[1:]], env=env, capture_output=True,
                          text=True)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_sam_checkpoint):
    """Fresh nnU-Net folders, a converted dataset, and SAMAdapterTrainer_prompted trained for 1 x 2 iterations.
    Returns (env, raw folder, model folder)."""
    root = tmp_path_factory.mktemp("prompted_e2e")
    env = dict(os.environ)
    env.update(required_environment(str(root / "nnunet")))
    env.update({"nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "2"})
    for var in list(env):
        if var.startswith("nnUNet_SAM_"):
            del env[var]
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key], exist_ok=True)
    if os.path.isdir(HIPPOCAMPUS):
        task = make_msd_subset(HIPPOCAMPUS, str(root / "msd"), num_train=6, num_test=2)
        run(["nnUNetv2_convert_MSD_dataset", "-i", task, "-np", "2"], env)
        dataset_id, raw = 4, os.path.join(env["nnUNet_raw"], "Dataset004_Hippocampus")
        os.symlink(os.path.join(task, "labelsTs"), os.path.join(raw, "labelsTs"))
    else:  # without ../shared/data: a generated dataset
        dataset_id = 990
        raw = make_synthetic_dataset(env["nnUNet_raw"], dataset_id, num_train=6, num_test=2)
    run(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", "3d_fullres", "-np", "2"], env)
    train_env = dict(env, nnUNet_SAM_checkpoint=tiny_sam_checkpoint[0], nnUNet_SAM_num_epochs="1",
                     nnUNet_SAM_iterations_per_epoch="2")
    run(["nnUNetv2_train", dataset_id, "3d_fullres", 0, "-tr", TRAINER, "-device", "cpu"], train_env)
    model = os.path.join(env["nnUNet_results"], os.path.basename(raw), f"{TRAINER}__nnUNetPlans__3d_fullres")
    return env, raw, model


def _one_voxel_per_class(label_file):
    """{label: voxel index (i, j, k) in the file} of a voxel inside each foreground class."""
    labels = sitk.GetArrayFromImage(sitk.ReadImage(label_file))  # (k, j, i)
    found = {}
    for value in np.unique(labels)[1:]:
        voxels = np.argwhere(labels == value)
        found[int(value)] = voxels[len(voxels) // 2][::-1].tolist()
    return found


@pytest.mark.slow
def test_train_then_predict_with_a_prompt_file_and_with_simulated_clicks(trained, tmp_path):
    env, raw, model = trained
    assert os.path.isfile(os.path.join(model, "fold_0", "checkpoint_final.pth"))
    # nnU-Net's own final validation ran in the automatic mode
    assert os.path.isfile(os.path.join(model, "fold_0", "validation", "summary.json"))
    log = "".join(open(os.path.join(model, "fold_0", f)).read() for f in os.listdir(os.path.join(model, "fold_0"))
                  if f.startswith("training_log"))
    assert "10 positive per class present + 20 anywhere" in log

    images, references = os.path.join(raw, "imagesTs"), os.path.join(raw, "labelsTs")
    cases = sorted(f[:-len(".nii.gz")] for f in os.listdir(references) if f.endswith(".nii.gz"))
    names = {v: k for k, v in json.load(open(os.path.join(raw, "dataset.json")))["labels"].items()}
    prompts = {"coordinates": "voxel", "cases": {
        case: [{"point": p, "class": names[c] if c == 1 else c, "positive": True}
               for c, p in _one_voxel_per_class(os.path.join(references, case + ".nii.gz")).items()]
        for case in cases}}
    prompts["cases"][cases[0]].append({"point": [0, 0, 0], "class": 2, "positive": False})
    prompt_file = tmp_path / "prompts.json"
    prompt_file.write_text(json.dumps(prompts))

    out = tmp_path / "prompted"
    run(["sam-nnunet", "predict-prompted", "-i", images, "-o", out, "-m", model, "-f", 0, "--prompts", prompt_file,
         "-npp", 1], env)
    for case in cases:
        pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        ref = sitk.ReadImage(os.path.join(references, case + ".nii.gz"))
        assert pred.GetSize() == ref.GetSize() and np.allclose(pred.GetSpacing(), ref.GetSpacing())
    used = load_prompts(str(out / "clicks.json"))  # the record is itself a prompt file
    assert [c.point for c in used.cases[cases[0]]][:2] == [tuple(map(float, c["point"]))
                                                           for c in prompts["cases"][cases[0]][:2]]
    assert used.cases[cases[0]][2].label == names[0]  # a negative click is a background click (label-based)

    simulated = tmp_path / "simulated"
    proc = run(["sam-nnunet", "predict-prompted", "-i", images, "-o", simulated, "-m", model, "-f", 0,
                "--simulate-clicks", 3, "--reference", references, "--tiles", "centred", "-npp", 1], env)
    assert "Dice against the reference" in proc.stdout
    summary = json.load(open(simulated / "summary.json"))
    assert set(summary["mean"]) == {"1", "2"} and len(summary["metric_per_case"]) == len(cases)
    clicks = load_prompts(str(simulated / "clicks.json"))
    for case in cases:
        labels = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(references, case + ".nii.gz")))
        assert len(clicks.cases[case]) == 3 * len(np.unique(labels)[1:])
        for click in clicks.cases[case]:  # every simulated click lies in its class
            i, j, k = (int(round(v)) for v in click.point)
            assert names[int(labels[k, j, i])] == click.label and click.positive

    # a click outside the image stops the command with the case named, before predicting
    prompts["cases"][cases[1]].append({"point": [500, 0, 0], "class": 1})
    prompt_file.write_text(json.dumps(prompts))
    proc = run(["sam-nnunet", "predict-prompted", "-i", images, "-o", tmp_path / "bad", "-m", model, "-f", 0,
                "--prompts", prompt_file], env, expect_ok=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"case '{cases[1]}', click 2: voxel index [500.0, 0.0, 0.0] lies outside the image" in proc.stderr
    assert not os.path.exists(tmp_path / "bad" / f"{cases[0]}.nii.gz")


@pytest.mark.slow
def test_automatic_versus_clicks_on_the_validation_fold(trained, monkeypatch):
    """The benchmark's interface: Dice of the fold's validation cases with 0 (automatic) and 1 simulated click."""
    from sam_nnunet.evaluation.prompted import evaluate_clicks_on_fold

    env, _, model = trained
    monkeypatch.setenv("nnUNet_preprocessed", env["nnUNet_preprocessed"])
    results = evaluate_clicks_on_fold(model, 0, num_clicks=(0, 1))
    assert set(results) == {0, 1}
    automatic = json.load(open(os.path.join(model, "fold_0", "validation", "summary.json")))
    assert len(results[0]["metric_per_case"]) == len(automatic["metric_per_case"])
    # the automatic mode through PromptedPredictor gives what nnU-Net's own validation of the model gave
    for label, metrics in automatic["mean"].items():
        assert results[0]["mean"][int(label)]["Dice"] == pytest.approx(metrics["Dice"], abs=1e-3, nan_ok=True)
    for n in (0, 1):
        assert 0.0 <= results[n]["foreground_mean"]["Dice"] <= 1.0 and "NSD" in results[n]["foreground_mean"]
    overview = json.load(open(os.path.join(model, "fold_0", "validation_clicks", "summary.json")))
    assert overview["tiles"] == "centred" and set(overview["foreground_mean"]) == {"0", "1"}
    assert os.path.isfile(os.path.join(model, "fold_0", "validation_clicks", "1_clicks", "clicks.json"))
