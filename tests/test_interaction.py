"""sam-nnunet interaction: the interactive protocol (first box / clicks from the reference, correction rounds at the
largest error, the previous mask as prompt) on a tiny ZAP25DSAMTrainer_prompted model folder, trained and zero-shot
rows in one interaction.json; and the counts bars unchanged by boxes and the mask prompt (zero added parameters)."""
import glob
import json
import os

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json, maybe_mkdir_p, save_json

from sam_nnunet import cli
from sam_nnunet.evaluation.interaction import foreground_dice, reference_boxes
from sam_nnunet.networks.zap25d_prompted import ZAP25DPromptedNetwork
from sam_nnunet.prompts.clicks import click_label

TRAINER = "ZAP25DSAMTrainer_prompted"


@pytest.fixture(scope="module")
def model_folder(synthetic_dataset, tmp_path_factory, tiny_sam_checkpoint):
    """A model folder as ZAP25DSAMTrainer_prompted writes it (plans naming the network, dataset.json, fold_0's
    checkpoint), with the tiny encoder's pretrained weights and a perturbed decoder (the "trained" model)."""
    plans = load_json(os.path.join(synthetic_dataset["preprocessed"], "nnUNetPlans.json"))
    plans["configurations"]["3d_fullres"]["architecture"] = {
        "network_class_name": "sam_nnunet.networks.zap25d_prompted.ZAP25DPromptedNetwork",
        "arch_kwargs": {"encoder": "vit_test", "upsample": 2, "pool": 4, "window_size": 4, "plane_layout": 2,
                        "background_channel": True},
        "_kw_requires_import": []}
    folder = str(tmp_path_factory.mktemp("results") / synthetic_dataset["dataset_name"] /
                 f"{TRAINER}__nnUNetPlans__3d_fullres")
    maybe_mkdir_p(os.path.join(folder, "fold_0"))
    save_json(plans, os.path.join(folder, "plans.json"))
    save_json(load_json(os.path.join(synthetic_dataset["preprocessed"], "dataset.json")),
              os.path.join(folder, "dataset.json"))
    path, state = tiny_sam_checkpoint
    net = ZAP25DPromptedNetwork(1, 3, "vit_test", upsample=2, window_size=4)  # x2 in-plane: a quarter of the cost
    net.load_pretrained(state, path)
    with torch.no_grad():
        for p in net.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save({"network_weights": net.state_dict(), "trainer_name": TRAINER,
                "init_args": {"configuration": "3d_fullres", "fold": 0}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    case = sorted(os.path.basename(f)[:-len(".b2nd")] for f in glob.glob(
        os.path.join(synthetic_dataset["preprocessed"], "nnUNetPlans_3d_fullres", "*.b2nd"))
        if not f.endswith("_seg.b2nd"))[0]
    return folder, case


def test_interaction_rows_trained_and_zero_shot_in_one_file(model_folder, tmp_path, sam_env, tiny_sam_checkpoint):
    folder, case = model_folder
    out = str(tmp_path / "interaction" / "interaction.json")
    cli.main(["interaction", "-m", folder, "-f", "0", "--rounds", "1", "--cases", case, "-o", out])
    sam_env.setenv("nnUNet_SAM_checkpoint", tiny_sam_checkpoint[0])
    cli.main(["interaction", "-m", folder, "-f", "0", "--rounds", "0", "--cases", case, "-o", out,
              "--prompts", "box", "--zero-shot"])
    result = json.load(open(out))
    rows = result["rows"]
    trained = [r for r in rows if r["trained"]]
    assert {(r["prompt"], r["round"]) for r in trained} == {(p, r) for p in ("box", "clicks", "box+clicks")
                                                            for r in (0, 1)}
    zero = [r for r in rows if not r["trained"]]
    assert {(r["trainer"], r["prompt"], r["round"]) for r in zero} == {(TRAINER + "+zero-shot", "box", 0)}
    assert all(set(r) == {"trainer", "trained", "prompt", "round", "dice", "merge", "clicks", "adherence",
                          "adherence_positive", "adherence_negative", "changed_per_click",
                          "seconds_per_correction"} for r in rows)
    assert all(r["adherence"] is None for r in rows if r["round"] == 0)
    assert {r["merge"] for r in rows} == {"progressive"}
    assert all(r["dice"] is not None and 0 <= r["dice"] <= 1 for r in rows)  # every case has both classes
    assert result["cases"] == [case] and set(result["rounds_to_target"]) == {TRAINER, TRAINER + "+zero-shot"}
    assert len(result["per_case"][TRAINER]["box"][case]) == 2  # round 0 and 1
    table = open(out[:-len(".json")] + ".md").read()  # the table and the chart beside the JSON
    assert "| round 0 | round 1 |" in table and "no (zero-shot) | box | " in table
    assert os.path.getsize(out[:-len(".json")] + ".png") > 1000

    # one prompt kind again, with more rounds: its rows replace its own, the other kinds' stay
    sam_env.delenv("nnUNet_SAM_checkpoint")
    cli.main(["interaction", "-m", folder, "-f", "0", "--rounds", "2", "--cases", case, "-o", out, "--prompts", "box"])
    again = json.load(open(out))
    trained = {(r["prompt"], r["round"]) for r in again["rows"] if r["trained"]}
    assert trained == {("box", r) for r in (0, 1, 2)} | {(p, r) for p in ("clicks", "box+clicks") for r in (0, 1)}
    assert [r for r in again["rows"] if not r["trained"]] == zero
    assert set(again["per_case"][TRAINER]) == set(again["rounds_to_target"][TRAINER]) == {"box", "clicks", "box+clicks"}
    assert len(again["per_case"][TRAINER]["box"][case]) == 3

    # without the progressive merge: rows of their own, beside the merged ones
    cli.main(["interaction", "-m", folder, "-f", "0", "--rounds", "1", "--cases", case, "-o", out, "--prompts", "box",
              "--merge", "none"])
    plain = json.load(open(out))
    unmerged = [r for r in plain["rows"] if r["trainer"] == TRAINER + "+no-merge"]
    assert {(r["prompt"], r["round"], r["merge"]) for r in unmerged} == {("box", 0, "none"), ("box", 1, "none")}
    assert len(plain["rows"]) == len(again["rows"]) + 2
    # round 0 has no previous mask to merge into: the same Dice either way
    assert unmerged[0]["dice"] == next(r["dice"] for r in again["rows"] if r["trainer"] == TRAINER
                                       and r["prompt"] == "box" and r["round"] == 0)


def test_interaction_refuses_unknown_prompt_kinds(model_folder):
    from sam_nnunet.evaluation.interaction import evaluate_interaction

    folder, case = model_folder
    with pytest.raises(ValueError, match="prompt kinds are box, clicks, box\\+clicks"):
        evaluate_interaction(folder, 0, prompts=("lasso",), cases=[case])


def test_reference_boxes_and_dice():
    reference = np.zeros((6, 7, 8), dtype=np.int64)
    reference[1:3, 2:6, 3:4] = 2
    boxes = reference_boxes(reference, [1, 2], False)
    assert boxes.box_labels.tolist() == [click_label(2)] and boxes.boxes.tolist() == [[[1, 2, 3], [2, 5, 3]]]
    assert foreground_dice(reference, reference, [1, 2], False) == 1.0
    assert foreground_dice(np.zeros_like(reference), reference, [1, 2], False) == 0.0


def test_counts_bars_unchanged_by_boxes_and_mask_prompts(capsys):
    """`sam-nnunet info`: ZAP25DSAMTrainer_prompted with boxes and the mask prompt has ZAP25DSAMTrainer's counts, the
    paper's 3,506,304 trainable and 0 added (the box corners and mask_downscaling are SAM's frozen prompt encoder)."""
    counts = {}
    for trainer in ("ZAP25DSAMTrainer", TRAINER):
        cli.main(["info", "--trainer", trainer, "--encoder", "vit_b", "--inputs", "1", "--outputs", "2", "--json"])
        counts[trainer] = json.loads(capsys.readouterr().out)
    assert counts[TRAINER]["trainable"] == counts["ZAP25DSAMTrainer"]["trainable"] == 3_506_304
    assert counts[TRAINER]["frozen"] == counts["ZAP25DSAMTrainer"]["frozen"]
    assert counts[TRAINER]["added"] == 0
    net = ZAP25DPromptedNetwork(1, 3, "vit_test")
    assert not any(p.requires_grad for p in net.prompt_encoder.mask_downscaling.parameters())
    assert not any(p.requires_grad for p in net.prompt_encoder.point_embeddings.parameters())


def test_predict_prompted_with_a_box_and_rounds(model_folder, synthetic_dataset, tmp_path):
    """sam-nnunet predict-prompted reads boxes and rounds from the prompt file, predicts the rounds and records them in
    clicks.json (itself a valid prompt file)."""
    import SimpleITK as sitk

    from sam_nnunet.inference.prompt_file import load_prompts

    folder, _ = model_folder
    images = os.path.join(synthetic_dataset["raw"], "imagesTs")
    case = sorted(f for f in os.listdir(images) if f.endswith("_0000.nii.gz"))[0][:-len("_0000.nii.gz")]
    size = sitk.ReadImage(os.path.join(images, case + "_0000.nii.gz")).GetSize()
    one = os.path.join(str(tmp_path), "in")
    os.makedirs(one)
    os.symlink(os.path.join(images, case + "_0000.nii.gz"), os.path.join(one, case + "_0000.nii.gz"))
    box = [[2, 3, 4], [min(s - 1, 14) for s in size]]
    prompts = {"coordinates": "voxel", "cases": {case: {"rounds": [[{"box": box, "class": 1}],
                                                               [{"point": [5, 6, 7], "class": 1,
                                                                 "positive": False}]]}}}
    path = str(tmp_path / "prompts.json")
    with open(path, "w") as f:
        json.dump(prompts, f)
    out = str(tmp_path / "out")
    cli.main(["predict-prompted", "-i", one, "-o", out, "-m", folder, "-f", "0", "--prompts", path, "--tiles",
              "clicked", "--disable_tta"])
    assert os.path.isfile(os.path.join(out, case + ".nii.gz"))
    record = load_prompts(os.path.join(out, "clicks.json"))
    assert record.round_of(case) == [0, 1] and [type(e).__name__ for e in record.cases[case]] == ["Box", "Click"]
    assert list(record.cases[case][0].first) == box[0] and list(record.cases[case][0].last) == box[1]
    # a box outside the image stops the command before any prediction, naming case and entry
    prompts["cases"][case] = [{"box": [[0, 0, 0], [size[0], 1, 1]], "class": 1}]
    with open(path, "w") as f:
        json.dump(prompts, f)
    with pytest.raises(SystemExit, match=rf"case '{case}', click 0 \(a box\): the box .* outside the image"):
        cli.main(["predict-prompted", "-i", one, "-o", str(tmp_path / "out2"), "-m", folder, "-f", "0", "--prompts",
                  path])


def test_interaction_table_says_when_no_case_reaches_the_target():
    from sam_nnunet.evaluation.report import interaction_table

    rows = [{"trainer": "T", "trained": True, "prompt": "box", "round": r, "dice": d, "merge": "progressive"}
            for r, d in enumerate([0.5, 0.6, 0.7])]
    rows += [{"trainer": "T", "trained": True, "prompt": "clicks", "round": r, "dice": d, "merge": "progressive"}
             for r, d in enumerate([0.8, 0.9, 0.95])]
    table = interaction_table({"rows": rows, "target_dice": 0.9,
                               "rounds_to_target": {"T": {"box": 3.0, "clicks": 1.5}}})
    assert "| T | yes | box | 0.500 | 0.600 | 0.700 | none within 2 |" in table
    assert "| T | yes | clicks | 0.800 | 0.900 | 0.950 | 1.5 |" in table


def test_test_folder_with_an_initial_segmentation_adherence_and_the_guarantee(model_folder, synthetic_dataset,
                                                                             tmp_path):
    """--test-folder: imagesTs + labelsTs never preprocessed with the model; initial+clicks starts from the given
    label files (round 0 is their Dice exactly), then a click per class and round; adherence in rows and table;
    --click-guarantee 0 makes every correction click hold at its voxel (a post-hoc rule: adherence 1 by
    construction), rows labelled +guarantee."""
    import SimpleITK as sitk

    folder, _ = model_folder
    raw = synthetic_dataset["raw"]
    initial = tmp_path / "initial"
    initial.mkdir()
    starts = {}
    for f in sorted(os.listdir(os.path.join(raw, "labelsTs"))):
        image = sitk.ReadImage(os.path.join(raw, "labelsTs", f))
        array = sitk.GetArrayFromImage(image)
        array[:, :, : array.shape[2] // 2] = 0  # half of each structure missing
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        sitk.WriteImage(out, str(initial / f))
        reference = sitk.GetArrayFromImage(image)
        starts[f[:-len(".nii.gz")]] = foreground_dice(array, reference, [1, 2], False)
    out = str(tmp_path / "interaction.json")
    cli.main(["interaction", "-m", folder, "--test-folder", raw, "--initial-segmentation", str(initial),
              "--prompts", "initial+clicks", "clicks", "--rounds", "2", "-o", out])
    result = json.load(open(out))
    assert result["cases"] == sorted(starts) and result["test_folder"] == os.path.abspath(raw)
    per_case = result["per_case"][TRAINER]["initial+clicks"]
    for case, dice in starts.items():
        assert per_case[case][0] == pytest.approx(dice, abs=1e-12)  # round 0 is the initial segmentation
    rows = [r for r in result["rows"] if r["prompt"] == "initial+clicks"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    first = rows[1]
    assert first["clicks"] >= 2 and 0 <= first["adherence"] <= 1 and first["changed_per_click"] >= 0
    assert first["adherence_positive"] is not None  # half of each structure is missing: positive clicks
    assert set(result["adherence"][TRAINER]) == {"initial+clicks", "clicks"}
    table = open(out[:-len(".json")] + ".md").read()
    assert "| trainer | prompt | correction clicks | adherence | positive | negative |" in table

    cli.main(["interaction", "-m", folder, "--test-folder", raw, "--initial-segmentation", str(initial),
              "--prompts", "initial+clicks", "--rounds", "1", "--click-guarantee", "0", "-o", out])
    guaranteed = json.load(open(out))["adherence"][TRAINER + "+guarantee"]["initial+clicks"]
    assert guaranteed["adherence"] == 1.0 and guaranteed["clicks"] >= 2

    with pytest.raises(SystemExit, match="initial\\+clicks starts from --initial-segmentation"):
        cli.main(["interaction", "-m", folder, "--test-folder", raw, "--prompts", "initial+clicks", "-o", out])
    with pytest.raises(SystemExit, match="needs imagesTs"):
        cli.main(["interaction", "-m", folder, "--test-folder", str(tmp_path), "-o", out])


def test_fold_cases_from_a_perfect_initial_segmentation(model_folder, synthetic_dataset, tmp_path):
    """initial+clicks on the fold's preprocessed cases, starting from the reference itself: Dice 1 at round 0 and
    after it, no correction click (adherence undefined, 0 clicks)."""
    folder, case = model_folder
    out = str(tmp_path / "interaction.json")
    cli.main(["interaction", "-m", folder, "--cases", case, "--prompts", "initial+clicks", "--rounds", "2",
              "--initial-segmentation", os.path.join(synthetic_dataset["preprocessed"], "gt_segmentations"),
              "-o", out])
    rows = json.load(open(out))["rows"]
    assert [r["dice"] for r in rows] == [1.0, 1.0, 1.0]
    assert [r["clicks"] for r in rows] == [None, 0, 0] and all(r["adherence"] is None for r in rows)
