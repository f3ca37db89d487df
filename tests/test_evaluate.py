"""sam-nnunet evaluate: known answers for Dice, NSD and HD95 with anisotropic spacing, empty structures, means,
regions from dataset.json, the CSV and the command line."""
import csv
import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk

from sam_nnunet.metrics.evaluate import evaluate, evaluate_folders, parse_labels
from sam_nnunet.metrics.surface import image_diagonal_mm, surface_metrics

SHAPE = (20, 32, 32)        # (z, y, x)
SPACING = (3.0, 1.0, 0.5)   # mm per numpy axis (z, y, x): anisotropic


def box(lo, hi, shape=SHAPE, value=1, into=None):
    seg = np.zeros(shape, np.uint8) if into is None else into
    seg[tuple(slice(a, b) for a, b in zip(lo, hi))] = value
    return seg


def write(seg: np.ndarray, path: str, spacing=SPACING) -> None:
    image = sitk.GetImageFromArray(seg)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # SimpleITK: (x, y, z)
    sitk.WriteImage(image, path)


# ---- surface metrics of single masks ------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shift", [1, 2])
def test_shifted_box_hd95_is_shift_times_spacing(axis, shift):
    lo, hi = [4, 8, 8], [12, 24, 24]
    ref = box(lo, hi).astype(bool)
    lo[axis] += shift
    hi[axis] += shift
    pred = box(lo, hi).astype(bool)
    distance = shift * SPACING[axis]
    result = surface_metrics(ref, pred, SPACING, tolerance_mm=distance)
    assert result["HD95"] == pytest.approx(distance, abs=1e-5)
    assert result["NSD"] == pytest.approx(1.0)  # every boundary point lies within the shift
    below = surface_metrics(ref, pred, SPACING, tolerance_mm=distance - 0.01)["NSD"]
    assert 0.0 < below < 1.0


def test_identical_masks():
    ref = box([4, 8, 8], [12, 24, 24]).astype(bool)
    assert surface_metrics(ref, ref, SPACING, 0.0) == {"NSD": 1.0, "HD95": 0.0}


def test_nsd_of_congruent_objects_one_moved_far_is_one_half():
    # reference: boxes A and B; prediction: A and B moved 30 mm away. A's surfaces agree, B's are farther apart
    # than the tolerance, and A and B have the same surface area: NSD = 2|A| / 4|A| whatever the area weights
    a_lo, a_hi = [1, 2, 2], [5, 10, 10]
    ref = box(a_lo, a_hi)
    box([1, 20, 20], [5, 28, 28], into=ref)
    pred = box(a_lo, a_hi)
    box([11, 20, 20], [15, 28, 28], into=pred)
    assert surface_metrics(ref.astype(bool), pred.astype(bool), SPACING, 5.0)["NSD"] == pytest.approx(0.5)


def test_empty_structures_have_defined_values():
    empty = np.zeros(SHAPE, bool)
    full = box([4, 8, 8], [12, 24, 24]).astype(bool)
    diagonal = math.sqrt((20 * 3.0) ** 2 + 32 ** 2 + (32 * 0.5) ** 2)
    assert image_diagonal_mm(SHAPE, SPACING) == pytest.approx(diagonal)
    assert surface_metrics(empty, empty, SPACING, 5.0) == {"NSD": 1.0, "HD95": 0.0}
    assert surface_metrics(full, empty, SPACING, 5.0) == {"NSD": 0.0, "HD95": pytest.approx(diagonal)}
    assert surface_metrics(empty, full, SPACING, 5.0) == {"NSD": 0.0, "HD95": pytest.approx(diagonal)}


def test_single_slice_image_uses_in_plane_boundaries():
    ref = np.zeros((1, 32, 32), bool)
    ref[0, 8:24, 8:24] = True
    pred = np.roll(ref, 3, axis=2)
    assert surface_metrics(ref, pred, (999.0, 1.0, 0.5), 1.5)["HD95"] == pytest.approx(1.5)


def test_bad_arguments_are_refused():
    m = np.ones((4, 4, 4), bool)
    with pytest.raises(ValueError, match="shape"):
        surface_metrics(m, np.ones((4, 4, 5), bool), (1, 1, 1), 1.0)
    with pytest.raises(ValueError, match="tolerance"):
        surface_metrics(m, m, (1, 1, 1), -1.0)


# ---- folders: nnU-Net's summary.json layout, means, CSV ----------------------------------------------------------
@pytest.fixture
def folders(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    # case a: label 1 shifted 2 voxels along z (6 mm), label 2 identical
    ref = box([4, 4, 4], [12, 14, 14])
    box([4, 18, 18], [12, 28, 28], value=2, into=ref)
    pred = box([6, 4, 4], [14, 14, 14])
    box([4, 18, 18], [12, 28, 28], value=2, into=pred)
    write(ref, str(ref_dir / "a.nii.gz"))
    write(pred, str(pred_dir / "a.nii.gz"))
    # case b: label 1 identical; label 2 absent from both
    ref_b = box([4, 4, 4], [12, 14, 14])
    write(ref_b, str(ref_dir / "b.nii.gz"))
    write(ref_b, str(pred_dir / "b.nii.gz"))
    # case c: label 1 identical; label 2 only in the prediction
    pred_c = ref_b.copy()
    box([4, 18, 18], [12, 28, 28], value=2, into=pred_c)
    write(ref_b, str(ref_dir / "c.nii.gz"))
    write(pred_c, str(pred_dir / "c.nii.gz"))
    return str(ref_dir), str(pred_dir)


def test_folder_summary_known_values(folders, tmp_path):
    ref_dir, pred_dir = folders
    out = str(tmp_path / "out" / "summary.json")
    summary = evaluate_folders(ref_dir, pred_dir, [1, 2], out, tolerance_mm=5.0)
    cases = {os.path.basename(c["prediction_file"]): c["metrics"] for c in summary["metric_per_case"]}
    diagonal = image_diagonal_mm(SHAPE, SPACING)

    assert cases["a.nii.gz"][1]["Dice"] == pytest.approx(6 / 8)        # 8 slices high, shifted by 2
    assert cases["a.nii.gz"][1]["HD95"] == pytest.approx(6.0)           # 2 voxels x 3 mm
    assert 0 < cases["a.nii.gz"][1]["NSD"] < 1                           # 6 mm > 5 mm tolerance on the caps
    assert (cases["a.nii.gz"][2]["Dice"], cases["a.nii.gz"][2]["NSD"], cases["a.nii.gz"][2]["HD95"]) == (1, 1, 0)
    assert math.isnan(cases["b.nii.gz"][2]["Dice"])                      # nnU-Net: both empty -> NaN
    assert (cases["b.nii.gz"][2]["NSD"], cases["b.nii.gz"][2]["HD95"]) == (1.0, 0.0)
    assert cases["c.nii.gz"][2]["Dice"] == 0
    assert (cases["c.nii.gz"][2]["NSD"], cases["c.nii.gz"][2]["HD95"]) == (0.0, pytest.approx(diagonal))
    for name in cases:  # nnU-Net's own keys are still there
        assert {"Dice", "IoU", "TP", "FP", "FN", "TN", "n_ref", "n_pred", "NSD", "HD95"} <= set(cases[name][1])

    # means: Dice skips the NaN of case b (nnU-Net's rule); NSD and HD95 count every case
    assert summary["mean"][2]["Dice"] == pytest.approx((1 + 0) / 2)
    assert summary["mean"][2]["NSD"] == pytest.approx((1 + 1 + 0) / 3)
    assert summary["mean"][2]["HD95"] == pytest.approx((0 + 0 + diagonal) / 3)
    assert (summary["cases_counted"]["2"]["Dice"], summary["cases_counted"]["2"]["NSD"]) == (2, 3)
    assert summary["foreground_mean"]["HD95"] == pytest.approx(
        (summary["mean"][1]["HD95"] + summary["mean"][2]["HD95"]) / 2)

    # written in nnU-Net's layout: its own loader reads it back
    from nnunetv2.evaluation.evaluate_predictions import load_summary_json
    loaded = load_summary_json(out)
    assert loaded["mean"][1]["HD95"] == pytest.approx(summary["mean"][1]["HD95"])
    assert loaded["evaluation"]["tolerance_mm"] == 5.0

    with open(out[:-5] + ".csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["label"]) for r in rows[:2]] == [("a", "1"), ("a", "2")]
    assert len(rows) == 3 * 2 + 2 + 1
    assert float(rows[0]["HD95"]) == pytest.approx(6.0)
    assert rows[-1]["case"] == "foreground_mean"


def test_missing_predictions_need_chill(folders, tmp_path):
    ref_dir, pred_dir = folders
    os.remove(os.path.join(pred_dir, "c.nii.gz"))
    with pytest.raises(ValueError, match="--chill"):
        evaluate_folders(ref_dir, pred_dir, [1], str(tmp_path / "s.json"))
    summary = evaluate_folders(ref_dir, pred_dir, [1], str(tmp_path / "s.json"), chill=True)
    assert summary["evaluation"]["num_cases"] == 2


def test_regions_from_dataset_json(folders, tmp_path):
    ref_dir, pred_dir = folders
    with open(os.path.join(pred_dir, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "whole": [1, 2], "two": [2]},
                   "regions_class_order": [1, 2], "numTraining": 3, "file_ending": ".nii.gz"}, f)
    summary = evaluate(ref_dir, pred_dir, str(tmp_path / "s.json"), tolerance_mm=5.0)
    assert set(summary["mean"]) == {(1, 2), (2,)}
    case_a = summary["metric_per_case"][0]["metrics"]
    assert case_a[(2,)]["HD95"] == 0.0
    assert case_a[(1, 2)]["HD95"] == pytest.approx(6.0)  # the union moves as label 1 moves


def test_parse_labels():
    assert parse_labels(["1", "2"]) == [1, 2]
    assert parse_labels(["1,2", "(2,)", "3"]) == [(1, 2), (2,), 3]
    with pytest.raises(ValueError):
        parse_labels(["a"])


def test_command_line(folders, tmp_path, capsys):
    from sam_nnunet.cli import main
    from sam_nnunet.errors import UserFacingExit

    ref_dir, pred_dir = folders
    out = str(tmp_path / "cli" / "summary.json")
    main(["evaluate", "-ref", ref_dir, "-pred", pred_dir, "-o", out, "-l", "1", "2", "--tolerance", "6"])
    printed = capsys.readouterr().out
    assert "3 cases" in printed and os.path.isfile(out) and os.path.isfile(out[:-5] + ".csv")
    with open(out) as f:
        assert json.load(f)["evaluation"]["tolerance_mm"] == 6.0
    with pytest.raises(UserFacingExit, match="which labels"):
        main(["evaluate", "-ref", ref_dir, "-pred", pred_dir, "-o", out])


def test_nsd_equals_deepmind_surface_distance():
    """The NSD the papers report (DeepMind's surface-distance) on random shapes with anisotropic spacing."""
    import scipy.ndimage as ndi
    import surface_distance  # a test dependency (setup.py extras "test")

    rng = np.random.default_rng(0)
    for spacing in ((3.0, 0.8, 1.1), (1.0, 1.0, 1.0)):
        ref = ndi.gaussian_filter(rng.standard_normal(SHAPE), 3) > 0.05
        pred = ndi.gaussian_filter(rng.standard_normal(SHAPE), 3) > 0.05
        for tolerance in (1.0, 3.0):
            expected = surface_distance.compute_surface_dice_at_tolerance(
                surface_distance.compute_surface_distances(ref, pred, spacing), tolerance)
            assert surface_metrics(ref, pred, spacing, tolerance)["NSD"] == pytest.approx(expected, abs=1e-5)


def test_labels_from_a_decathlon_dataset_json(folders, tmp_path):
    # a Decathlon download's dataset.json beside the reference folder (labelsTs/..): {"value": "name"}
    ref_dir, pred_dir = folders
    with open(os.path.join(os.path.dirname(ref_dir), "dataset.json"), "w") as f:
        json.dump({"name": "Toy", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a", "2": "b"},
                   "numTraining": 0, "training": [], "test": []}, f)
    summary = evaluate(ref_dir, pred_dir, str(tmp_path / "s.json"))
    assert set(summary["mean"]) == {1, 2}
    with open(os.path.join(os.path.dirname(ref_dir), "dataset.json"), "w") as f:
        json.dump({"labels": {"a": 1}, "file_ending": ".nii.gz"}, f)  # no background: nnU-Net refuses it
    with pytest.raises(ValueError, match="give the labels with -l"):
        evaluate(ref_dir, pred_dir, str(tmp_path / "s.json"))


# ---- geometry: a prediction in another grid is refused, naming case and cause -------------------------------------
def _write_image(array: np.ndarray, path: str, spacing_xyz, origin=(0.0, 0.0, 0.0), direction=None) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    image.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in direction))
    sitk.WriteImage(image, path)


def test_geometry_mismatches_are_refused_one_message_each(folders, tmp_path):
    from sam_nnunet.cli import main
    from sam_nnunet.errors import UserFacingExit

    ref_dir, pred_dir = folders
    ref_a = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(ref_dir, "a.nii.gz")))
    spacing_xyz = SPACING[::-1]
    # a: axes transposed (a numpy (z, y, x) array written as (x, y, z))
    _write_image(np.ascontiguousarray(ref_a.T), os.path.join(pred_dir, "a.nii.gz"), spacing_xyz)
    # b: origin shifted by 50 mm along z, same voxels
    ref_b = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(ref_dir, "b.nii.gz")))
    _write_image(ref_b, os.path.join(pred_dir, "b.nii.gz"), spacing_xyz, origin=(0, 0, 50))
    with pytest.raises(ValueError) as info:
        evaluate_folders(ref_dir, pred_dir, [1, 2], str(tmp_path / "s.json"))
    message = str(info.value)
    assert "2 geometry mismatch(es)" in message
    lines = [line.strip() for line in message.splitlines() if line.strip().startswith("case ")]
    assert len(lines) == 2
    assert lines[0].startswith("case a: the prediction has (20, 32, 32) voxels, the reference (32, 32, 20)")
    assert "Likely cause: transposed axes" in lines[0]
    assert lines[0].count("spacing (0.5, 1, 3) mm") == 2  # both grids named
    assert lines[0].count("direction (1, 0, 0, 0, 1, 0, 0, 0, 1)") == 2
    assert lines[1].startswith("case b: origin (0, 0, 50) mm, the reference (0, 0, 0) mm (50 mm apart")
    assert "Likely cause: wrong folder" in lines[1]
    assert not os.path.exists(tmp_path / "s.json")  # nothing scored
    # the command line: one clear message, no traceback
    with pytest.raises(UserFacingExit, match="case a: the prediction has"):
        main(["evaluate", "-ref", ref_dir, "-pred", pred_dir, "-o", str(tmp_path / "c.json"), "-l", "1"])


def test_prediction_at_2mm_against_1mm_reference_is_refused(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    ref = box([4, 4, 4], [12, 12, 12], shape=(16, 16, 16))
    _write_image(ref, str(ref_dir / "case_1.nii.gz"), (1, 1, 1))
    _write_image(ref[::2, ::2, ::2], str(pred_dir / "case_1.nii.gz"), (2, 2, 2))  # resampled to 2 mm
    with pytest.raises(ValueError, match=r"case case_1: the prediction has \(8, 8, 8\) voxels, the reference "
                                         r"\(16, 16, 16\) \(prediction size \(8, 8, 8\), spacing \(2, 2, 2\) mm.*"
                                         r"reference size \(16, 16, 16\), spacing \(1, 1, 1\) mm.*Likely cause: "
                                         r"another resampling"):
        evaluate_folders(str(ref_dir), str(pred_dir), [1], str(tmp_path / "s.json"))
    # the same voxels with a 2 mm header: the spacing alone differs
    _write_image(ref, str(pred_dir / "case_1.nii.gz"), (2, 2, 2))
    with pytest.raises(ValueError, match=r"case case_1: spacing \(2, 2, 2\) mm, the reference \(1, 1, 1\) mm"):
        evaluate_folders(str(ref_dir), str(pred_dir), [1], str(tmp_path / "s.json"))


def test_float_noise_in_the_headers_is_accepted(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    ref = box([4, 4, 4], [12, 12, 12], shape=(16, 16, 16))
    direction = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # oblique: not the identity
    _write_image(ref, str(ref_dir / "case_1.nii.gz"), (0.8, 0.8, 2.5), (-120.25, 80.5, 33.0), direction)
    noisy_direction = tuple(d + 3e-7 for d in direction)
    _write_image(ref, str(pred_dir / "case_1.nii.gz"), (0.8 * (1 + 2e-6), 0.8, 2.5 * (1 - 2e-6)),
                 (-120.25 + 2e-4, 80.5 - 1e-4, 33.0 + 3e-5), noisy_direction)
    summary = evaluate_folders(str(ref_dir), str(pred_dir), [1], str(tmp_path / "s.json"))
    assert summary["mean"][1]["Dice"] == 1.0 and summary["mean"][1]["HD95"] == 0.0
