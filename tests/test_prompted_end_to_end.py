"""Both prompted trainers end to end through the command line, as a user runs them: MSD hippocampus cases (or a
generated dataset) converted and planned (the shared ``cli_dataset``) -> nnUNetv2_train -tr SAMAdapterTrainer_prompted
(tiny encoder) / ZAP25DSAMTrainer_prompted (real LiteMedSAM weights, on coarse 3 mm plans: see
``helpers.write_coarse_plans``) -> sam-nnunet predict-prompted with a prompt file, and with clicks simulated from
reference labels -> the benchmark interface (automatic vs clicks on the validation fold)."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import COARSE_PLANS, preprocess_coarse_plans, run_cli

from sam_nnunet.inference.prompt_file import load_prompts

# per trainer: plans, its paper's test protocol (tiles), the click protocol its training log states, extra
# predict-prompted options (LiteMedSAM on a CPU: no mirroring, 8x fewer forward passes), whether the user-error
# checks (independent of the trainer) run with it
SETUPS = {
    "SAMAdapterTrainer_prompted": {"plans": "nnUNetPlans", "tiles": "centred", "predict": [], "check_errors": True,
                                   "protocol": "10 positive per class present + 20 anywhere"},
    "ZAP25DSAMTrainer_prompted": {"plans": COARSE_PLANS, "tiles": "clicked", "predict": ["--disable_tta"],
                                  "check_errors": False,
                                  "protocol": "1-3 (uniform) distinct positive per class present + 0 anywhere"},
}


@pytest.fixture(scope="module", params=list(SETUPS))
def trained(request, cli_dataset, tmp_path_factory, tiny_sam_checkpoint):
    """The trainer trained for 1 x 2 iterations on fold 0. Returns (env, raw folder, model folder, setup)."""
    trainer, setup = request.param, SETUPS[request.param]
    env = dict(cli_dataset["env"], nnUNet_results=str(tmp_path_factory.mktemp("prompted_results")))
    dataset_id, raw = cli_dataset["dataset_id"], cli_dataset["raw"]
    train_env = dict(env, nnUNet_SAM_num_epochs="1", nnUNet_SAM_iterations_per_epoch="2")
    if setup["plans"] == COARSE_PLANS:
        preprocess_coarse_plans(cli_dataset)
        train_env.update(nnUNet_SAM_encoder="litemedsam", nnUNet_n_proc_DA="0")
    else:
        train_env.update(nnUNet_SAM_checkpoint=tiny_sam_checkpoint[0])
    run_cli(["nnUNetv2_train", dataset_id, "3d_fullres", 0, "-tr", trainer, "-p", setup["plans"], "-device", "cpu"],
        train_env)
    model = os.path.join(env["nnUNet_results"], os.path.basename(raw), f"{trainer}__{setup['plans']}__3d_fullres")
    return env, raw, model, setup


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
    env, raw, model, setup = trained
    assert os.path.isfile(os.path.join(model, "fold_0", "checkpoint_final.pth"))
    # nnU-Net's own final validation ran in the automatic mode
    assert os.path.isfile(os.path.join(model, "fold_0", "validation", "summary.json"))
    log = "".join(open(os.path.join(model, "fold_0", f)).read() for f in os.listdir(os.path.join(model, "fold_0"))
                  if f.startswith("training_log"))
    assert setup["protocol"] in log

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
    run_cli(["sam-nnunet", "predict-prompted", "-i", images, "-o", out, "-m", model, "-f", 0, "--prompts",
             prompt_file, "-npp", 1, *setup["predict"]], env)
    for case in cases:
        pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        ref = sitk.ReadImage(os.path.join(references, case + ".nii.gz"))
        assert pred.GetSize() == ref.GetSize() and np.allclose(pred.GetSpacing(), ref.GetSpacing())
    used = load_prompts(str(out / "clicks.json"))  # the record is itself a prompt file
    assert [c.point for c in used.cases[cases[0]]][:2] == [tuple(map(float, c["point"]))
                                                           for c in prompts["cases"][cases[0]][:2]]
    assert used.cases[cases[0]][2].label == names[0]  # a negative click is a background click (label-based)

    simulated = tmp_path / "simulated"
    proc = run_cli(["sam-nnunet", "predict-prompted", "-i", images, "-o", simulated, "-m", model, "-f", 0,
                    "--simulate-clicks", 3, "--reference", references, "--tiles", setup["tiles"], "-npp", 1,
                    *setup["predict"]], env)
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

    if not setup["check_errors"]:
        return
    # a click outside the image stops the command with the case named, before predicting
    prompts["cases"][cases[1]].append({"point": [500, 0, 0], "class": 1})
    prompt_file.write_text(json.dumps(prompts))
    proc = run_cli(["sam-nnunet", "predict-prompted", "-i", images, "-o", tmp_path / "bad", "-m", model, "-f", 0,
                    "--prompts", prompt_file], env, expect_ok=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"case '{cases[1]}', click 2: voxel index [500.0, 0.0, 0.0] lies outside the image" in proc.stderr
    assert not os.path.exists(tmp_path / "bad" / f"{cases[0]}.nii.gz")


@pytest.mark.slow
def test_automatic_versus_clicks_on_the_validation_fold(trained, monkeypatch):
    """The benchmark's interface: Dice of a validation case of the fold with 0 (automatic) and 1 simulated click."""
    from sam_nnunet.evaluation.prompted import evaluate_clicks_on_fold

    env, _, model, setup = trained
    monkeypatch.setenv("nnUNet_preprocessed", env["nnUNet_preprocessed"])
    automatic = json.load(open(os.path.join(model, "fold_0", "validation", "summary.json")))
    first = sorted(automatic["metric_per_case"], key=lambda c: c["reference_file"])[0]
    case = os.path.basename(first["reference_file"])[:-len(".nii.gz")]
    mirroring = "--disable_tta" not in setup["predict"]
    results = evaluate_clicks_on_fold(model, 0, num_clicks=(0, 1), cases=[case],  # one case: CPU time
                                      disable_tta=not mirroring)
    assert set(results) == {0, 1} and len(results[0]["metric_per_case"]) == 1
    if mirroring:  # the automatic mode through PromptedPredictor gives what nnU-Net's own (mirrored) validation gave
        for label, metrics in first["metrics"].items():
            assert results[0]["mean"][int(label)]["Dice"] == pytest.approx(metrics["Dice"], abs=1e-3, nan_ok=True)
    for n in (0, 1):
        assert 0.0 <= results[n]["foreground_mean"]["Dice"] <= 1.0 and "NSD" in results[n]["foreground_mean"]
    overview = json.load(open(os.path.join(model, "fold_0", "validation_clicks", "summary.json")))
    assert overview["tiles"] == setup["tiles"] and set(overview["foreground_mean"]) == {"0", "1"}
    assert overview["cases"] == [case]
    assert os.path.isfile(os.path.join(model, "fold_0", "validation_clicks", "1_clicks", "clicks.json"))
