"""Prompt files: the clicks of a user, per case, for ``sam-nnunet predict-prompted --prompts FILE``.

Format (JSON; documentation/prompts.md has the full description):

    {
      "coordinates": "voxel",              "voxel": index (i, j, k) in the image file, as viewers show it
                                           "world": physical position (x, y, z) in mm
      "world_convention": "LPS",           only for "world": "LPS" (ITK, default) or "RAS" (nibabel, Slicer)
      "cases": {
        "hippocampus_001": [               case identifier = image file name without _0000.nii.gz
          {"point": [20, 31, 17], "class": 1, "positive": true},
          {"point": [25, 30, 17], "class": "Posterior", "positive": false}
        ]
      }
    }

``class`` is a label name of the model's dataset.json or (label-based models) its integer value; ``positive``
defaults to true.
"""
import json
import math
from dataclasses import dataclass
from numbers import Real
from typing import Dict, List, Union

from sam_nnunet.prompts.clicks import click_label

CLICK_KEYS = ("point", "class", "positive")
FILE_KEYS = ("coordinates", "world_convention", "cases")


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message says where and what to fix."""


@dataclass(frozen=True)
class Click:
    """One click as the user gave it (coordinates in the file's convention, class as named)."""
    point: tuple
    label: Union[int, str]
    positive: bool = True


@dataclass
class Prompts:
    coordinates: str                  # "voxel" or "world"
    world_convention: str             # "LPS" or "RAS" (world coordinates only)
    cases: Dict[str, List[Click]]


def _click(raw, where: str) -> Click:
    if not isinstance(raw, dict):
        raise PromptFileError(f"{where}: a click is an object like "
                              f'{{"point": [x, y, z], "class": 1, "positive": true}}, not {raw!r}')
    unknown = sorted(set(raw) - set(CLICK_KEYS))
    if unknown:
        raise PromptFileError(f"{where}: unknown key(s) {unknown}; a click has {', '.join(CLICK_KEYS)}")
    for key in ("point", "class"):
        if key not in raw:
            raise PromptFileError(f"{where}: the click has no \"{key}\"")
    point = raw["point"]
    if not isinstance(point, list) or len(point) != 3 or not all(
            isinstance(v, Real) and not isinstance(v, bool) for v in point):
        raise PromptFileError(f"{where}: \"point\" must be three numbers [x, y, z], not {point!r}")
    if not all(math.isfinite(v) for v in point):
        # JSON readers accept NaN / Infinity; such a click lies nowhere and would be dropped without a word
        raise PromptFileError(f"{where}: \"point\" {point!r} is not a position (NaN or Infinity); give three "
                              f"finite coordinates or remove the click")
    label = raw["class"]
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise PromptFileError(f"{where}: \"class\" must be a label name or integer value, not {label!r}")
    positive = raw.get("positive", True)
    if not isinstance(positive, bool):
        raise PromptFileError(f"{where}: \"positive\" must be true or false, not {positive!r}")
    return Click(tuple(float(v) for v in point), label, positive)


def parse_prompts(data, source: str = "the prompt file") -> Prompts:
    """Check the structure of a loaded prompt file; raise PromptFileError naming the offending entry."""
    if not isinstance(data, dict):
        raise PromptFileError(f"{source}: the top level must be an object with \"coordinates\" and \"cases\"")
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise PromptFileError(f"{source}: unknown key(s) {unknown}; allowed: {', '.join(FILE_KEYS)}")
    coordinates = data.get("coordinates")
    if coordinates not in ("voxel", "world"):
        raise PromptFileError(f"{source}: \"coordinates\" must be \"voxel\" (index in the image file) or \"world\" "
                              f"(mm), not {coordinates!r}")
    convention = data.get("world_convention", "LPS")
    if convention not in ("LPS", "RAS"):
        raise PromptFileError(f"{source}: \"world_convention\" must be \"LPS\" or \"RAS\", not {convention!r}")
    cases = data.get("cases")
    if not isinstance(cases, dict) or not cases:
        raise PromptFileError(f"{source}: \"cases\" must be a non-empty object {{case identifier: [clicks]}}")
    parsed = {}
    for case, clicks in cases.items():
        if not isinstance(clicks, list):
            raise PromptFileError(f"{source}, case {case!r}: the clicks must be a list")
        parsed[case] = [_click(c, f"{source}, case {case!r}, click {i}") for i, c in enumerate(clicks)]
    return Prompts(coordinates, convention, parsed)


def load_prompts(path: str) -> Prompts:
    """Read and check a prompt file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise PromptFileError(f"prompt file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    return parse_prompts(data, path)


def class_channels(dataset_labels: Dict[str, Union[int, List[int]]], has_regions: bool) -> Dict[Union[str, int], int]:
    """{label name or integer value: output channel} of a model, from its dataset.json ``labels``.

    Label-based: channel = label value (nnU-Net's labels are consecutive), background included.
    Region-based: channel = position among the regions (dataset.json order, background and ignore skipped).
    """
    channels: Dict[Union[str, int], int] = {}
    if has_regions:
        region = 0
        for name, value in dataset_labels.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            if name == "ignore" or all(v == 0 for v in values):
                continue
            channels[name] = region
            region += 1
    else:
        for name, value in dataset_labels.items():
            if name == "ignore":
                continue
            channels[name] = int(value)
            channels[int(value)] = int(value)
    return channels


def click_point_label(click: Click, channels: Dict[Union[str, int], int], has_regions: bool, where: str) -> int:
    """The network's ``point_labels`` value of a click (see ``sam_nnunet.prompts.clicks``)."""
    if click.label not in channels:
        names = [k for k in channels if isinstance(k, str)]
        raise PromptFileError(f"{where}: class {click.label!r} is not a label of this model; its labels: "
                              f"{', '.join(names)}" + ("" if has_regions else " (or their integer values)"))
    channel = channels[click.label]
    if has_regions:
        return click_label(channel, negative=not click.positive)
    if channel == 0 and not click.positive:
        raise PromptFileError(f"{where}: a negative background click says nothing; give a positive click of the "
                              f"class that is there instead")
    # label-based: "not class c" is taken as background (see sam_nnunet.prompts.clicks)
    return click_label(channel if click.positive else 0)
