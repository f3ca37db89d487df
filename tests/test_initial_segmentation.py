"""Any segmentation as round 0 (issue 35): ``predict-prompted --initial-segmentation`` and the prompt file's
``"initial_segmentation"`` take label files in nnU-Net's naming, check each against its image with one clear message
(another shape, spacing, orientation or origin; labels the model lacks), and hand it to the first correction as its
mask prompt exactly; a case without prompts is written as given."""
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn
from test_interaction import model_folder  # noqa: F401  (the tiny ZAP25DSAMTrainer_prompted model folder)
from test_session import EchoNetwork, _predictor, setup  # noqa: F401

from sam_nnunet import cli
from sam_nnunet.inference.initial_segmentation import (InitialSegmentationError, check_initial_segmentation,
                                                       initial_logits)
from sam_nnunet.inference.predict import CasePrompts, predict_prompted, predict_rounds
from sam_nnunet.prompts.clicks import click_label


def _test_cases(synthetic_dataset):
    raw = synthetic_dataset["raw"]
    cases = sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(os.path.join(raw, "imagesTs")))
    return raw, cases


def _initial_folder(tmp_path, raw, cases, change=None):
    """labelsTs with its labels eroded by one voxel along axis 0 (an imperfect start); ``change(image) -> image``
    applied to the first case's file."""
    folder = tmp_path / "initial"
    folder.mkdir(exist_ok=True)
    for case in cases:
        image = sitk.ReadImage(os.path.join(raw, "labelsTs", case + ".nii.gz"))
        array = sitk.GetArrayFromImage(image)
        array[1:] = np.where(array[:-1] == 0, 0, array[1:])  # a shifted boundary: not the reference
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        if change is not None and case == cases[0]:
            out = change(out)
        sitk.WriteImage(out, str(folder / (case + ".nii.gz")))
    return str(folder)


def test_a_case_without_prompts_is_written_as_given_and_prompts_correct_it(model_folder, synthetic_dataset,
                                                                           tmp_path):
    folder, _ = model_folder
    raw, cases = _test_cases(synthetic_dataset)
    initial = _initial_folder(tmp_path, raw, cases)
    prompt_file = tmp_path / "prompts.json"
    # relative to the prompt file; only the second case is corrected
    prompt_file.write_text(json.dumps({"coordinates": "voxel", "initial_segmentation": "initial",
                                       "cases": {cases[1]: [{"point": [18, 22, 18], "class": 1}]}}))
    out = str(tmp_path / "out")
    predict_prompted(os.path.join(raw, "imagesTs"), out, folder, [0], prompts_file=str(prompt_file),
                     disable_tta=True)
    given = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(initial, cases[0] + ".nii.gz")))
    written = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, cases[0] + ".nii.gz")))
    np.testing.assert_array_equal(written, given)  # no prompt: round 0 is the answer
    record = json.load(open(os.path.join(out, "clicks.json")))
    assert record["initial_segmentation"] == os.path.abspath(initial)
    assert os.path.isfile(os.path.join(out, cases[1] + ".nii.gz"))

    # the same through the CLI flag; the flag and the file naming two folders is refused
    cli.main(["predict-prompted", "-i", os.path.join(raw, "imagesTs"), "-o", str(tmp_path / "cli"), "-m", folder,
              "-f", "0", "--prompts", str(prompt_file), "--initial-segmentation", initial, "--disable-tta"])
    other = shutil.copytree(initial, str(tmp_path / "other"))
    with pytest.raises(SystemExit, match="two initial segmentations"):
        cli.main(["predict-prompted", "-i", os.path.join(raw, "imagesTs"), "-o", str(tmp_path / "x"), "-m", folder,
                  "-f", "0", "--prompts", str(prompt_file), "--initial-segmentation", other])


def _flip_direction(image):
    image.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    return image


def _move_origin(image):
    image.SetOrigin((5.0, 0.0, 0.0))
    return image


def _respace(image):
    image.SetSpacing((1.0, 1.0, 2.0))
    return image


def _crop(image):
    return image[:, :, :-2]


def _unknown_label(image):
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = 7
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


@pytest.mark.parametrize("change, message", [
    (_crop, r"has shape \[34, 44, 36\], the image \[36, 44, 36\]"),
    (_respace, r"has spacing \(2, 1, 1\) mm, the image \(1, 1, 1\) mm: resample it onto the image's grid"),
    (_flip_direction, r"has orientation \(direction\) \(-1, 0, 0, 0, 1, 0, 0, 0, 1\), the image \(1, 0, 0"),
    (_move_origin, r"has origin \(5, 0, 0\) mm, the image \(0, 0, 0\) mm"),
    (_unknown_label, r"holds values \[7\] that are no label of this model \(labels: "),
])
def test_bad_initial_segmentations_get_one_message_before_any_prediction(model_folder, synthetic_dataset, tmp_path,
                                                                          change, message):
    folder, _ = model_folder
    raw, cases = _test_cases(synthetic_dataset)
    initial = _initial_folder(tmp_path, raw, cases, change)
    out = tmp_path / "out"
    prompt_file = tmp_path / "prompts.json"
    prompt_file.write_text(json.dumps({"coordinates": "voxel", "cases": {cases[1]: [{"point": [18, 22, 18],
                                                                                       "class": 1}]}}))
    with pytest.raises(SystemExit, match=f"case '{cases[0]}': the initial segmentation .*{message}"):
        cli.main(["predict-prompted", "-i", os.path.join(raw, "imagesTs"), "-o", str(out), "-m", folder, "-f", "0",
                  "--prompts", str(prompt_file), "--initial-segmentation", initial])
    assert not out.exists()  # refused before anything was written


def test_the_initial_segmentation_is_the_first_corrections_mask_prompt_exactly(setup):  # noqa: F811
    """A network that returns its mask prompt: the first correction's prediction is the initial segmentation, so
    its mask prompt was exactly the segmentation (+-10), on the preprocessed grid nnU-Net made."""
    predictor = _predictor(setup, EchoNetwork(), mirroring=False, gaussian=False)
    pm, cm, dataset_json = setup
    lm = predictor.label_manager
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 20, 18, 14)).astype(np.float32) + 5
    data, _, properties = cm.preprocessor_class(verbose=False).run_case_npy(image, None, {"spacing": [1.0] * 3},
                                                                             pm, cm, dataset_json)
    drawn = np.zeros((20, 18, 14), np.uint8)
    drawn[3:12, 4:15, 2:6], drawn[3:12, 4:15, 6:11] = 1, 2
    logits = initial_logits(drawn, properties, data.shape[1:], pm, cm, lm)
    click = CasePrompts.of(points=[[5, 5, 5]], labels=[click_label(1)])
    out = predict_rounds(predictor, torch.from_numpy(data), click, properties, "none", logits)
    np.testing.assert_array_equal(out.argmax(0).numpy(), drawn)
    torch.testing.assert_close(predictor.mask_prompt_of(out).float(), predictor.mask_prompt_of(logits))
    # no prompt: the initial logits themselves
    assert predict_rounds(predictor, torch.from_numpy(data), CasePrompts.of(), properties, "none", logits) is logits
    with pytest.raises(InitialSegmentationError, match=r"has shape \[20, 18\], the image \[20, 18, 14\]"):
        check_initial_segmentation(drawn[..., 0], drawn.shape, lm, dataset_json["labels"])
    with pytest.raises(InitialSegmentationError, match="holds non-integer values"):
        check_initial_segmentation(drawn + 0.5, drawn.shape, lm, dataset_json["labels"])


def test_a_click_flips_its_voxel_with_the_guarantee_rule(setup):  # noqa: F811
    """The guarantee (a post-hoc rule, not the network): a network that ignores clicks (EchoNetwork returns its
    mask prompt) still gives each clicked voxel, and its 1-voxel ball, the clicked class; earlier clicks stay."""
    from sam_nnunet.inference.session import InteractiveSession, SessionError

    predictor = _predictor(setup, EchoNetwork(), mirroring=False, gaussian=False)
    image = np.random.default_rng(0).normal(size=(1, 14, 12, 10)).astype(np.float32) + 5
    plain = InteractiveSession(predictor)
    plain.set_image(image, {"spacing": [1.0, 1.0, 1.0]})
    drawn = np.zeros((14, 12, 10), np.uint8)
    drawn[2:8, 2:8, 2:8] = 1
    plain.set_initial_segmentation(drawn)
    assert plain.add_click([10, 9, 7], 2)[10, 9, 7] == 0  # the network ignores the click

    session = InteractiveSession(predictor, click_guarantee=1)
    session.set_image(image, {"spacing": [1.0, 1.0, 1.0]})
    session.set_initial_segmentation(drawn)
    mask = session.add_click([10, 9, 7], 2)
    assert mask[10, 9, 7] == 2 and (mask == 2).sum() == 7  # the voxel and its 6 neighbours
    mask = session.add_click([4, 4, 4], "anterior", positive=False)  # removing: background
    assert mask[4, 4, 4] == 0 and mask[10, 9, 7] == 2 and (mask == 1).sum() == drawn.sum() - 7
    with pytest.raises(SessionError, match="click_guarantee is None or a radius"):
        InteractiveSession(predictor, click_guarantee=-1)


def test_clicked_tiles_without_a_prompt_keep_the_previous_mask(setup):  # noqa: F811
    """tiles="clicked": a tile no prompt reaches is not predicted; in a round with a previous mask (an initial
    segmentation) it gives that mask back instead of background, also without the progressive merge."""

    class Zeros(nn.Module):
        takes_clicks = takes_boxes = True

        def forward(self, x, point_coords=None, point_labels=None, boxes=None, box_labels=None, mask_prompt=None):
            return torch.zeros(x.shape[0], 3, *x.shape[2:])

    predictor = _predictor(setup, Zeros(), tiles="clicked", mirroring=False, gaussian=False)
    pm, cm, dataset_json = setup
    image = np.random.default_rng(0).normal(size=(1, 40, 30, 12)).astype(np.float32) + 5  # several 16^3 tiles
    data, _, properties = cm.preprocessor_class(verbose=False).run_case_npy(image, None, {"spacing": [1.0] * 3},
                                                                             pm, cm, dataset_json)
    drawn = np.zeros((40, 30, 12), np.uint8)
    drawn[30:38, 20:28, 2:10] = 2  # far from the click's tile
    logits = initial_logits(drawn, properties, data.shape[1:], pm, cm, predictor.label_manager)
    click = CasePrompts.of(points=[[2, 2, 2]], labels=[click_label(1)])
    out = predict_rounds(predictor, torch.from_numpy(data), click, properties, "none", logits).argmax(0).numpy()
    np.testing.assert_array_equal(out[24:], drawn[24:])  # tiles the click does not reach
