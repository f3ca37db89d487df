"""Boxes and the mask prompt through PromptedPredictor's tiles and mirrorings, prompt files with boxes and rounds
(voxel and world coordinates), and the interactive session: undo / reset, the frozen encoder run once per image
across interactions (counted), one clear message per bad input."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from sam_nnunet.inference.predict import CasePrompts, predict_rounds, resolve_case_prompts
from sam_nnunet.inference.predictor import PromptedPredictor
from sam_nnunet.inference.prompt_file import PromptFileError, parse_prompts
from sam_nnunet.inference.session import InteractiveSession, SessionError
from sam_nnunet.prompts.clicks import click_label

LABELS = {"background": 0, "Anterior": 1, "Posterior": 2}
DATASET_JSON = {"labels": LABELS, "file_ending": ".nii.gz"}


class EchoNetwork(nn.Module):
    """Mask output j = the mask prompt's channel j, +10 inside every box of class j + 1 (label-based: background
    logit 0). A mask or a box handed to the wrong tile, shifted or not mirrored with the tile shows."""
    takes_clicks = takes_boxes = True

    def forward(self, x, point_coords=None, point_labels=None, boxes=None, box_labels=None, mask_prompt=None):
        b, _, *size = x.shape
        logits = torch.zeros(b, 3, *size)
        if mask_prompt is not None:
            logits[:, 1:] = mask_prompt
        grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in size], indexing="ij"), -1)
        for i in range(b):
            for box, label in zip(boxes[i] if boxes is not None else [], box_labels[i] if boxes is not None else []):
                if label >= 0:
                    inside = ((grid >= box[0] - 0.01) & (grid <= box[1] + 0.01)).all(-1)
                    logits[i, int(label) // 2][inside] += 10
        return logits


def _plans(patch_size):
    """A small hand-made 3d_fullres plan (1 mm, z-score, no transpose), what nnU-Net's planner writes for the
    synthetic dataset but the patch: what the click predictor reads, without planning and preprocessing a dataset."""
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(patch_size), "median_image_size_in_voxels": [36.0, 44.0, 36.0], "spacing": [1.0] * 3,
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
        "architecture": {"network_class_name": "EchoNetwork", "arch_kwargs": {}, "_kw_requires_import": []},
        "batch_dice": False}
    plans = {"dataset_name": "Dataset990_SAMDemo", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": [1.0] * 3, "original_median_shape_after_transp": [36, 44, 36],
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {"0": {
                 "max": 243.4, "mean": 132.7, "median": 133.7, "min": 6.6, "percentile_00_5": 51.7,
                 "percentile_99_5": 208.9, "std": 31.6}},
             "configurations": {"3d_fullres": configuration}}
    pm = PlansManager(plans)
    dataset_json = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "anterior": 1, "posterior": 2},
                    "numTraining": 8, "file_ending": ".nii.gz"}
    return pm, pm.get_configuration("3d_fullres"), dataset_json


@pytest.fixture(scope="module")
def setup():
    return _plans([16, 16, 16])


def _predictor(setup, net, tiles="all", mirroring=True, gaussian=True):
    pm, cm, dataset_json = setup
    predictor = PromptedPredictor(tiles=tiles, tile_step_size=0.5, use_gaussian=gaussian, use_mirroring=mirroring,
                                  perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(net, pm, cm, [net.state_dict()], dataset_json, "EchoTrainer", (0, 1, 2))
    return predictor


SHAPE = (40, 30, 12)  # several tiles along the first two axes, padded to the patch along the third


def test_mask_prompt_and_boxes_round_trip_through_tiles_and_mirrorings(setup):
    # uniform blending: nnU-Net's Gaussian weights are tiny at the volume's corners, where half precision shows
    predictor = _predictor(setup, EchoNetwork(), gaussian=False)
    mask = torch.randn(2, *SHAPE)
    box = np.array([[[3.0, 5.0, 1.0], [30.0, 12.0, 10.0]]])
    logits = predictor.predict_logits_with_clicks(torch.randn(1, *SHAPE), np.zeros((0, 3)), np.zeros(0), box,
                                                  np.array([click_label(2)]), mask)
    logits = logits.float()  # nnU-Net accumulates the tiles in half precision
    torch.testing.assert_close(logits[1], mask[0], atol=1e-2, rtol=1e-2)  # the mask comes back where it was
    inside = torch.zeros(SHAPE, dtype=torch.bool)
    inside[3:31, 5:13, 1:11] = True
    torch.testing.assert_close(logits[2] - mask[1], 10.0 * inside, atol=2e-2, rtol=1e-2)
    # predict_rounds: round 1 gets round 0's mask logits as its mask prompt
    prompts = CasePrompts.of(boxes=box, box_labels=[click_label(2)], box_rounds=[0]).add(
        points=[[1.0, 1.0, 1.0]], labels=[click_label(1)], at_round=1)
    properties = {"shape_before_cropping": SHAPE, "bbox_used_for_cropping": [[0, s] for s in SHAPE],
                  "shape_after_cropping_and_before_resampling": SHAPE}
    last = predict_rounds(predictor, torch.randn(1, *SHAPE), prompts, properties)
    torch.testing.assert_close(last[2].float(), 20.0 * inside, atol=2e-2, rtol=1e-2)


class DriftNetwork(nn.Module):
    """Each click paints its class on the 3^3 voxels around it (on top of the mask prompt); with an odd number of
    clicks it also paints class 1 in the volume's first corner voxels: a change far from the newest click."""
    takes_clicks = takes_boxes = True

    def forward(self, x, point_coords=None, point_labels=None, boxes=None, box_labels=None, mask_prompt=None):
        b, _, *size = x.shape
        logits = torch.zeros(b, 3, *size)
        if mask_prompt is not None:
            logits[:, 1:] = mask_prompt
        for i in range(b):
            valid = [(p, int(label)) for p, label in zip(point_coords[i], point_labels[i]) if label >= 0]
            for p, label in valid:
                lo = [max(0, int(round(float(v))) - 1) for v in p]
                logits[i, label // 2, lo[0]:lo[0] + 3, lo[1]:lo[1] + 3, lo[2]:lo[2] + 3] += 10
            logits[i, 1, :2, :2, :2] += 10 if len(valid) % 2 else -10
        return logits


@pytest.mark.parametrize("merge", ["progressive", "none"])
def test_rounds_merge_a_correction_only_where_its_change_is_connected_to_it(setup, merge):
    predictor = _predictor(setup, DriftNetwork(), mirroring=False, gaussian=False)
    shape = (16, 16, 16)  # one tile
    properties = {"shape_before_cropping": shape, "bbox_used_for_cropping": [[0, s] for s in shape],
                  "shape_after_cropping_and_before_resampling": shape}
    prompts = CasePrompts.of(points=[[8.0, 8.0, 8.0]], labels=[click_label(2)]).add(
        points=[[12.0, 12.0, 12.0]], labels=[click_label(1)], at_round=1)
    segmentation = predict_rounds(predictor, torch.randn(1, *shape), prompts, properties, merge).float().argmax(0)
    assert (segmentation[7:10, 7:10, 7:10] == 2).all() and (segmentation[11:14, 11:14, 11:14] == 1).all()
    # round 1 took the corner away (an even number of clicks); connected to no new click, the merge puts it back
    assert bool((segmentation[:2, :2, :2] == 1).all()) == (merge == "progressive")
    assert int((segmentation > 0).sum()) == 27 + 27 + (8 if merge == "progressive" else 0)


def test_a_clicks_only_network_refuses_boxes(setup):
    class ClicksOnly(nn.Module):
        takes_clicks = True

        def forward(self, x, point_coords=None, point_labels=None):
            return torch.zeros(x.shape[0], 3, *x.shape[2:])

    predictor = _predictor(setup, ClicksOnly())
    with pytest.raises(ValueError, match="takes clicks but no boxes or previous mask"):
        predictor.predict_logits_with_clicks(torch.randn(1, 16, 16, 16), np.zeros((0, 3)), np.zeros(0),
                                             np.zeros((1, 2, 3)), np.array([2]))


def _image(tmp_path, size=(20, 16, 12), spacing=(2.0, 1.0, 3.0), origin=(10.0, -5.0, 3.0), flip=True):
    image = sitk.Image(*size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if flip:
        image.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    path = str(tmp_path / "case_0000.nii.gz")
    sitk.WriteImage(image, path)
    return image, path


def test_prompt_file_boxes_in_voxel_and_world_coordinates_and_rounds(tmp_path):
    image, path = _image(tmp_path)
    first, last = (2, 3, 4), (9, 12, 10)  # (i, j, k)
    data = {"coordinates": "voxel", "cases": {"c": {"rounds": [
        [{"box": [list(first), list(last)], "class": "Posterior"}],
        [{"point": [5, 5, 5], "class": 2, "positive": False}]]}}}
    prompts = resolve_case_prompts(parse_prompts(data), "c", path, "SimpleITKIO", DATASET_JSON, False)
    np.testing.assert_array_equal(prompts.boxes, [[first[::-1], last[::-1]]])  # nnU-Net's array axes (k, j, i)
    assert prompts.box_labels.tolist() == [click_label(2)] and prompts.num_rounds == 2
    assert prompts.point_rounds.tolist() == [1] and prompts.labels.tolist() == [click_label(0)]
    # world: the corners' physical positions (x flipped by the direction: the given "first" is not the lowest i)
    world = [list(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in c])) for c in (first, last)]
    for convention, sign in (("LPS", 1), ("RAS", -1)):
        corners = [[sign * c[0], sign * c[1], c[2]] for c in world]
        data = {"coordinates": "world", "world_convention": convention,
                "cases": {"c": [{"box": corners, "class": 1}]}}
        resolved = resolve_case_prompts(parse_prompts(data), "c", path, "SimpleITKIO", DATASET_JSON, False)
        np.testing.assert_allclose(resolved.boxes, [[first[::-1], last[::-1]]], atol=1e-6)


@pytest.mark.parametrize("box, message", [
    ([[2, 3, 4], [25, 12, 10]], r"click 0 \(a box\): the box .* lies \(partly\) outside the image \(size \[20, 16, 12\]"),
    ([[2, 13, 4], [9, 12, 10]], r"click 0 \(a box\): the box .* is inverted along j"),
    ([[2, 3, 4.2], [9, 12, 4.6]], r"click 0 \(a box\): the box .* is empty: it holds no voxel centre along k"),
])
def test_prompt_file_bad_boxes_are_named(tmp_path, box, message):
    _, path = _image(tmp_path)
    prompts = parse_prompts({"coordinates": "voxel", "cases": {"c": [{"box": box, "class": 1}]}})
    with pytest.raises(PromptFileError, match=message):
        resolve_case_prompts(prompts, "c", path, "SimpleITKIO", DATASET_JSON, False)


def test_prompt_file_box_messages():
    for entry, message in (({"box": [[1, 2, 3]], "class": 1}, '"box" must be two corners'),
                           ({"box": [[1, 2, 3], [4, 5, 6]], "class": 1, "positive": False}, "no negative box"),
                           ({"box": [[1, 2, 3], [4, 5, 6]]}, 'the box has no "class"')):
        with pytest.raises(PromptFileError, match=message):
            parse_prompts({"coordinates": "voxel", "cases": {"c": [entry]}})
    with pytest.raises(PromptFileError, match=r"\{\"rounds\": \[\[round 0\]"):
        parse_prompts({"coordinates": "voxel", "cases": {"c": {"rounds": {}}}})


@pytest.fixture(scope="module")
def session_setup(setup):
    from sam_nnunet.networks.zap25d_prompted import ZAP25DPromptedNetwork

    torch.manual_seed(0)
    net = ZAP25DPromptedNetwork(1, 3, "vit_test", window_size=4).eval()
    with torch.no_grad():
        for p in net.prompt_encoder.parameters():
            p.normal_()
    return setup, net


def _session(session_setup, monkeypatch):
    setup, net = session_setup
    predictor = _predictor(setup, net, tiles="all", mirroring=False)
    session = InteractiveSession(predictor)
    encoded = []
    encode = net.encoder.forward
    monkeypatch.setattr(net.encoder, "forward", lambda g: encoded.append(g.shape[0]) or encode(g))
    return session, encoded


def test_session_encodes_the_image_once_and_undoes_and_resets(session_setup, monkeypatch):
    session, encoded = _session(session_setup, monkeypatch)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 14, 12, 10)).astype(np.float32)  # one 16^3 tile after padding
    session.set_image(image, {"spacing": [1.0, 1.0, 1.0]})
    assert (session.get_mask() == 0).all() and session.get_mask().shape == (14, 12, 10)
    first = session.add_box([2, 2, 2], [9, 8, 7], "anterior")
    first_logits = session.logits.clone()
    passes = sum(encoded)
    assert first.shape == (14, 12, 10) and passes == (16 + 16 + 16) // 4  # every pseudo-slice of the tile once
    second = session.add_click([5, 5, 5], 2)
    second_logits = session.logits.clone()
    assert (second_logits - first_logits).abs().amax() > 1e-3  # the click (and the mask prompt) changed it
    third = session.add_click([3, 3, 3], "anterior", positive=False)
    assert sum(encoded) == passes  # interactions run the decoder only
    assert session.interactions.point_rounds.tolist() == [1, 2] and session.interactions.box_rounds.tolist() == [0]
    np.testing.assert_array_equal(session.undo(), second)
    np.testing.assert_array_equal(session.undo(), first)
    assert torch.equal(session.logits, first_logits)
    assert len(session.interactions.labels) == 0
    # the same interaction again gives the same mask (the cache holds the encoder's output, not a prediction)
    np.testing.assert_array_equal(session.add_click([5, 5, 5], 2), second)
    torch.testing.assert_close(session.logits, second_logits)
    session.reset()
    assert (session.get_mask() == 0).all() and len(session.interactions.box_labels) == 0
    again = session.add_box([2, 2, 2], [9, 8, 7], "anterior")
    np.testing.assert_array_equal(again, first)
    torch.testing.assert_close(session.logits, first_logits)
    assert sum(encoded) == passes
    session.set_image(image, {"spacing": [1.0, 1.0, 1.0]})  # a new image: encoded again
    session.add_box([2, 2, 2], [9, 8, 7], 1)
    assert sum(encoded) == 2 * passes
    del third


def test_session_bad_input_one_message_each(session_setup, monkeypatch):
    session, _ = _session(session_setup, monkeypatch)
    with pytest.raises(SessionError, match=r"no image in this session yet: call set_image"):
        session.add_click([1, 1, 1], 1)
    with pytest.raises(SessionError, match="no image"):
        session.get_mask()
    session.set_image(np.zeros((1, 14, 12, 10), np.float32), {"spacing": [1.0, 1.0, 1.0]})
    cases = [
        (lambda: session.add_click([1, 1, 1], 3), r"class 3 is not a label of this model; its labels: background, "),
        (lambda: session.add_click([1, 1, 1], "Hippocampus"), "class 'Hippocampus' is not a label"),
        (lambda: session.add_box([1, 1, 1], [3, 3, 3], 7), "class 7 is not a label"),
        (lambda: session.add_click([1, 1, 14], 1), r"lies outside the image \(array shape \[14, 12, 10\]\)"),
        (lambda: session.add_box([1, 1, 1], [3, 3, 10], 1), r"lies \(partly\) outside the image"),
        (lambda: session.add_box([1, 5, 1], [3, 3, 3], 1), "is inverted along axis 1"),
        (lambda: session.add_box([1, 1, 1.2], [3, 3, 1.4], 1), "is empty: it holds no voxel centre along axis 2"),
        (lambda: session.add_box([1, 1, 1], [3, 3, 3], 1, positive=False), "no negative box"),
        (lambda: session.add_box([1, 1, 1], [3, 3, 3], "background"), "a box of the background says nothing"),
        (lambda: session.add_click([1, 1, 1], 0, positive=False), "a negative background click says nothing"),
        (lambda: session.add_click([1, 1, 1], 1, coordinates="world"), "world coordinates need the image's header"),
        (lambda: session.undo(), "nothing to undo"),
    ]
    for call, message in cases:
        with pytest.raises(SessionError, match=message):
            call()


def test_session_world_and_voxel_coordinates(session_setup, monkeypatch, tmp_path):
    """add_box / add_click in the file's voxel index (i, j, k) and in world mm (LPS and RAS) land on the same array
    voxels, with a header that flips an axis."""
    session, _ = _session(session_setup, monkeypatch)
    image, path = _image(tmp_path, size=(10, 12, 14), spacing=(1.0, 1.0, 1.0), origin=(10.0, -5.0, 3.0))
    session.set_image_file(path)
    first, last = (1, 2, 3), (6, 8, 9)  # (i, j, k)
    expected = [list(first[::-1]), list(last[::-1])]  # the reader's array axes (k, j, i)
    session.add_box(first, last, 1, coordinates="voxel")
    world = [list(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in c])) for c in (first, last)]
    session.add_box(world[0], world[1], 1, coordinates="world")
    session.world_convention = "RAS"
    session.add_box([-world[0][0], -world[0][1], world[0][2]], [-world[1][0], -world[1][1], world[1][2]], 1,
                    coordinates="world")
    session.add_click([-world[1][0], -world[1][1], world[1][2]], 2, coordinates="world")  # RAS
    np.testing.assert_allclose(session.interactions.boxes, [expected] * 3, atol=1e-6)
    np.testing.assert_allclose(session.interactions.points, [last[::-1]], atol=1e-6)
