"""Prompt files: structure checks with messages that name the entry, class resolution, clicks outside the image."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from sam_nnunet.inference.predict import resolve_prompt_clicks
from sam_nnunet.inference.prompt_file import (Click, PromptFileError, class_channels, click_point_label, load_prompts,
                                              parse_prompts)
from sam_nnunet.prompts.clicks import click_label

LABELS = {"background": 0, "Anterior": 1, "Posterior": 2}
DATASET_JSON = {"labels": LABELS, "file_ending": ".nii.gz"}


def _file(data):
    return {"coordinates": "voxel", "cases": {"hippocampus_001": data}}


def test_a_valid_file(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"coordinates": "world", "world_convention": "RAS", "cases": {
        "a": [{"point": [1, 2.5, 3], "class": "Anterior"}, {"point": [0, 0, 0], "class": 2, "positive": False}],
        "b": []}}))
    prompts = load_prompts(str(path))
    assert prompts.coordinates == "world" and prompts.world_convention == "RAS"
    assert prompts.cases["a"] == [Click((1.0, 2.5, 3.0), "Anterior", True), Click((0.0, 0.0, 0.0), 2, False)]
    assert prompts.cases["b"] == []


@pytest.mark.parametrize("data, message", [
    ([], "top level must be an object"),
    ({"cases": {"a": []}}, '"coordinates" must be "voxel"'),
    ({"coordinates": "mm", "cases": {"a": []}}, '"coordinates" must be "voxel"'),
    ({"coordinates": "world", "world_convention": "RSA", "cases": {"a": []}}, '"world_convention" must be'),
    ({"coordinates": "voxel", "case": {}}, r"unknown key\(s\) \['case'\]"),
    ({"coordinates": "voxel", "cases": {}}, '"cases" must be a non-empty object'),
    (_file({"point": [1, 2, 3]}), "case 'hippocampus_001': the clicks must be a list"),
    (_file([[1, 2, 3]]), "case 'hippocampus_001', click 0: a click is an object"),
    (_file([{"point": [1, 2, 3], "class": 1}, {"class": 1}]), 'click 1: the click has no "point"'),
    (_file([{"point": [1, 2, 3]}]), 'click 0: the click has no "class"'),
    (_file([{"point": [1, 2], "class": 1}]), '"point" must be three numbers'),
    (_file([{"point": [1, "2", 3], "class": 1}]), '"point" must be three numbers'),
    (_file([{"point": [1, 2, 3], "class": 1.5}]), '"class" must be a label name or integer'),
    (_file([{"point": [1, 2, 3], "class": 1, "positive": "yes"}]), '"positive" must be true or false'),
    (_file([{"point": [1, 2, 3], "class": 1, "positve": True}]), r"unknown key\(s\) \['positve'\]"),
])
def test_malformed_files_name_the_problem(data, message):
    with pytest.raises(PromptFileError, match=message):
        parse_prompts(data, "prompts.json")


def test_nan_or_infinite_click_names_case_and_click(tmp_path):
    path = tmp_path / "prompts.json"
    # what json.dump writes for float("nan") / float("inf"), and json.load reads back as floats
    path.write_text('{"coordinates": "voxel", "cases": {"hippocampus_001": [{"point": [3, 4, 5], "class": 1}, '
                    '{"point": [3, NaN, 5], "class": 1}]}}')
    with pytest.raises(PromptFileError, match=r"case 'hippocampus_001', click 1: \"point\" \[3, nan, 5\] is not a "
                                              r"position \(NaN or Infinity\)"):
        load_prompts(str(path))
    with pytest.raises(PromptFileError, match=r"case 'b', click 0: \"point\" \[1, 2, inf\] is not a position"):
        parse_prompts({"coordinates": "world", "cases": {"b": [{"point": [1, 2, float("inf")], "class": 1}]}})


def test_unreadable_files(tmp_path):
    with pytest.raises(PromptFileError, match="does not exist"):
        load_prompts(str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"coordinates": "voxel",\n "cases": {"a": [}\n}')
    with pytest.raises(PromptFileError, match="is not valid JSON: .* line 2, column"):
        load_prompts(str(broken))


def test_classes_resolve_to_click_labels():
    channels = class_channels(LABELS, has_regions=False)
    assert click_point_label(Click((0, 0, 0), "Posterior"), channels, False, "x") == click_label(2)
    assert click_point_label(Click((0, 0, 0), 1), channels, False, "x") == click_label(1)
    # label-based: "not Anterior" is background
    assert click_point_label(Click((0, 0, 0), 1, False), channels, False, "x") == click_label(0)
    assert click_point_label(Click((0, 0, 0), "background"), channels, False, "x") == click_label(0)
    with pytest.raises(PromptFileError, match="case 'a', click 3: class 'Hippocampus' is not a label of this model; "
                                              "its labels: background, Anterior, Posterior"):
        click_point_label(Click((0, 0, 0), "Hippocampus"), channels, False, "case 'a', click 3")
    with pytest.raises(PromptFileError, match="class 3 is not a label"):
        click_point_label(Click((0, 0, 0), 3), channels, False, "x")
    with pytest.raises(PromptFileError, match="negative background click says nothing"):
        click_point_label(Click((0, 0, 0), "background", False), channels, False, "x")
    # region-based: channels are the regions in dataset.json order; negative clicks mean "outside"
    regions = class_channels({"background": 0, "whole": [1, 2], "core": [2]}, has_regions=True)
    assert regions == {"whole": 0, "core": 1}
    assert click_point_label(Click((0, 0, 0), "core", False), regions, True, "x") == click_label(1, negative=True)


def test_clicks_outside_the_image_name_case_and_click(tmp_path):
    image = sitk.Image(20, 16, 12, sitk.sitkFloat32)  # (i, j, k) sizes
    image.SetSpacing((1.0, 1.0, 3.0))
    path = str(tmp_path / "case_0000.nii.gz")
    sitk.WriteImage(image, path)
    prompts = parse_prompts(_file([{"point": [19, 15, 11], "class": 1}, {"point": [3, 4, 12], "class": 2}]))
    with pytest.raises(PromptFileError, match=r"case 'hippocampus_001', click 1: voxel index \[3.0, 4.0, 12.0\] lies "
                                              r"outside the image \(size \[20, 16, 12\]"):
        resolve_prompt_clicks(prompts, "hippocampus_001", path, "SimpleITKIO", DATASET_JSON, False)
    prompts.cases["hippocampus_001"] = prompts.cases["hippocampus_001"][:1]
    points, labels = resolve_prompt_clicks(prompts, "hippocampus_001", path, "SimpleITKIO", DATASET_JSON, False)
    np.testing.assert_array_equal(points, [[11, 15, 19]])  # nnU-Net's array axes: (k, j, i)
    assert labels.tolist() == [click_label(1)]
    world = parse_prompts({"coordinates": "world", "cases": {"c": [{"point": [2.0, 3.0, 40.0], "class": 1}]}})
    with pytest.raises(PromptFileError, match=r"world position \[2.0, 3.0, 40.0\] mm \(LPS; voxel index "
                                              r"\[2.0, 3.0, 13.33\]\) lies outside"):
        resolve_prompt_clicks(world, "c", path, "SimpleITKIO", DATASET_JSON, False)
