"""sam-nnunet msd-submission: task folder names, checks of the predictions, archive layout."""
import json
import os
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from sam_nnunet.evaluation.msd import make_submission, msd_task_name

DATASET = "Dataset981_Toy"


def _image(array, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


@pytest.fixture(scope="module")
def toy_task():
    """A converted test set (imagesTs/<case>_0000.nii.gz) in the session's nnUNet_raw."""
    raw = os.path.join(os.environ["nnUNet_raw"], DATASET)
    os.makedirs(os.path.join(raw, "imagesTs"), exist_ok=True)
    with open(os.path.join(raw, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 0,
                   "file_ending": ".nii.gz"}, f)
    for case in ("toy_001", "toy_002"):
        sitk.WriteImage(_image(np.zeros((6, 8, 10), np.float32)), os.path.join(raw, "imagesTs", f"{case}_0000.nii.gz"))
    return raw


def _predictions(folder, cases=("toy_001", "toy_002"), **kwargs):
    os.makedirs(folder, exist_ok=True)
    seg = np.zeros((6, 8, 10), np.uint8)
    seg[2:4, 2:5, 3:7] = kwargs.pop("value", 2)
    for case in cases:
        sitk.WriteImage(_image(seg, **kwargs), os.path.join(folder, f"{case}.nii.gz"))
    return folder


def test_task_names():
    assert msd_task_name("Dataset004_Hippocampus") == "Task04_Hippocampus"
    assert msd_task_name("Dataset010_Colon") == "Task10_Colon"
    with pytest.raises(ValueError):
        msd_task_name("Task04_Hippocampus")


def test_submission_layout_and_zip(toy_task, tmp_path):
    pred = _predictions(str(tmp_path / "pred"))
    open(os.path.join(pred, "summary.json"), "w").write("{}")  # other files of a prediction folder stay out
    out, archive = str(tmp_path / "submission"), str(tmp_path / "submission.zip")
    done = make_submission(pred, "981", out, zip_file=archive)
    assert done["task"] == "Task981_Toy" and done["cases"] == ["toy_001", "toy_002"]
    assert sorted(os.listdir(os.path.join(out, "Task981_Toy"))) == ["toy_001.nii.gz", "toy_002.nii.gz"]
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["Task981_Toy/toy_001.nii.gz", "Task981_Toy/toy_002.nii.gz"]


def test_predictions_that_do_not_fit_are_refused(toy_task, tmp_path):
    with pytest.raises(ValueError, match="1 of 2 test images have no prediction"):
        make_submission(_predictions(str(tmp_path / "a"), cases=("toy_001",)), DATASET, str(tmp_path / "o"))
    done = make_submission(str(tmp_path / "a"), DATASET, str(tmp_path / "o"), allow_missing=True)
    assert done["missing"] == ["toy_002"]
    with pytest.raises(ValueError, match="geometry"):
        make_submission(_predictions(str(tmp_path / "b"), spacing=(1.0, 1.0, 1.0)), DATASET, str(tmp_path / "o"))
    with pytest.raises(ValueError, match=r"label values \[7\]"):
        make_submission(_predictions(str(tmp_path / "c"), value=7), DATASET, str(tmp_path / "o"))


def test_command_line(toy_task, tmp_path, capsys):
    from sam_nnunet.cli import main
    from sam_nnunet.errors import UserFacingExit

    pred = _predictions(str(tmp_path / "pred"))
    main(["msd-submission", "-i", pred, "-d", DATASET, "-o", str(tmp_path / "sub"), "--zip", str(tmp_path / "s.zip"),
          "--task-name", "Task99_Toy"])
    assert "Task99_Toy: 2 predictions" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "sub" / "Task99_Toy" / "toy_001.nii.gz")
    with pytest.raises(UserFacingExit, match="does not exist"):
        main(["msd-submission", "-i", str(tmp_path / "none"), "-d", DATASET, "-o", str(tmp_path / "sub")])
