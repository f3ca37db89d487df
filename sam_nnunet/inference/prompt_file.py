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

Boxes and interaction rounds (ZAP25DSAMTrainer_prompted): an entry ``{"box": [[i0, j0, k0], [i1, j1, k1]], "class":
1}`` is a box from its first to its last voxel (inclusive; world coordinates: two opposite corners in mm). A case may
instead hold ``{"rounds": [[entries of round 0], [entries added in round 1], ...]}``: each round is predicted with
every entry so far and the previous round's prediction as mask prompt; the last round is written.

Starting from an existing segmentation (nnUNetv2_predict's output): ``"initial_segmentation": "FOLDER"`` (relative to
the prompt file's folder, or absolute; label files CASE.nii.gz) makes each case's segmentation there round 0 and every
round of the file a correction of it (as ``predict-prompted --initial-segmentation FOLDER``).
"""
import json
import math
import os
from dataclasses import dataclass, field
from numbers import Real
from typing import Dict, List, Optional, Union

from sam_nnunet.prompts.clicks import click_label

CLICK_KEYS = ("point", "class", "positive")
BOX_KEYS = ("box", "class", "positive")
FILE_KEYS = ("coordinates", "world_convention", "cases", "initial_segmentation")


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message says where and what to fix."""


@dataclass(frozen=True)
class Click:
    """One click as the user gave it (coordinates in the file's convention, class as named)."""
    point: tuple
    label: Union[int, str]
    positive: bool = True


@dataclass(frozen=True)
class Box:
    """One box as the user gave it: its first and last voxel (or two opposite corners in world coordinates)."""
    first: tuple
    last: tuple
    label: Union[int, str]


@dataclass
class Prompts:
    coordinates: str                  # "voxel" or "world"
    world_convention: str             # "LPS" or "RAS" (world coordinates only)
    cases: Dict[str, List[Union[Click, Box]]]
    rounds: Dict[str, List[int]] = field(default_factory=dict)  # the round of each entry of a case (default 0)
    initial_segmentation: Optional[str] = None  # folder of label files: round 0 of every case, the file's rounds after

    def round_of(self, case: str) -> List[int]:
        return self.rounds.get(case, [0] * len(self.cases.get(case, [])))


def _position(value, key: str, where: str) -> tuple:
    if not isinstance(value, list) or len(value) != 3 or not all(
            isinstance(v, Real) and not isinstance(v, bool) for v in value):
        raise PromptFileError(f"{where}: \"{key}\" must be three numbers [x, y, z], not {value!r}")
    if not all(math.isfinite(v) for v in value):
        # JSON readers accept NaN / Infinity; such a prompt lies nowhere and would be dropped without a word
        raise PromptFileError(f"{where}: \"{key}\" {value!r} is not a position (NaN or Infinity); give three "
                              f"finite coordinates or remove the entry")
    return tuple(float(v) for v in value)


def _box(raw: dict, where: str) -> Box:
    unknown = sorted(set(raw) - set(BOX_KEYS))
    if unknown:
        raise PromptFileError(f"{where}: unknown key(s) {unknown}; a box has {', '.join(BOX_KEYS)}")
    if "class" not in raw:
        raise PromptFileError(f"{where}: the box has no \"class\"")
    corners = raw["box"]
    if not isinstance(corners, list) or len(corners) != 2:
        raise PromptFileError(f"{where}: \"box\" must be two corners [[x0, y0, z0], [x1, y1, z1]] (first and "
                              f"last voxel), not {corners!r}")
    first, last = (_position(c, "box", where) for c in corners)
    label = raw["class"]
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise PromptFileError(f"{where}: \"class\" must be a label name or integer value, not {label!r}")
    if raw.get("positive", True) is not True:
        raise PromptFileError(f"{where}: a box is positive (\"class c is in here\"): SAM's prompt encoder has no "
                              f"negative box; correct with negative clicks instead")
    return Box(first, last, label)


def _click(raw, where: str) -> Union[Click, Box]:
    if not isinstance(raw, dict):
        raise PromptFileError(f"{where}: a click is an object like "
                              f'{{"point": [x, y, z], "class": 1, "positive": true}}, not {raw!r}')
    if "box" in raw:
        return _box(raw, where)
    unknown = sorted(set(raw) - set(CLICK_KEYS))
    if unknown:
        raise PromptFileError(f"{where}: unknown key(s) {unknown}; a click has {', '.join(CLICK_KEYS)}")
    for key in ("point", "class"):
        if key not in raw:
            raise PromptFileError(f"{where}: the click has no \"{key}\"")
    point = _position(raw["point"], "point", where)
    label = raw["class"]
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise PromptFileError(f"{where}: \"class\" must be a label name or integer value, not {label!r}")
    positive = raw.get("positive", True)
    if not isinstance(positive, bool):
        raise PromptFileError(f"{where}: \"positive\" must be true or false, not {positive!r}")
    return Click(point, label, positive)


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
    initial = data.get("initial_segmentation")
    if initial is not None and (not isinstance(initial, str) or not initial):
        raise PromptFileError(f"{source}: \"initial_segmentation\" must be a folder (a string), not {initial!r}")
    parsed, rounds = {}, {}
    for case, clicks in cases.items():
        if isinstance(clicks, dict) and "rounds" in clicks:
            if set(clicks) != {"rounds"} or not isinstance(clicks["rounds"], list) or not clicks["rounds"] or \
                    not all(isinstance(r, list) for r in clicks["rounds"]):
                raise PromptFileError(f"{source}, case {case!r}: a case is a list of clicks and boxes, or "
                                      f"{{\"rounds\": [[round 0], [round 1], ...]}}")
            entries = [(r, c) for r, entries in enumerate(clicks["rounds"]) for c in entries]
        elif isinstance(clicks, list):
            entries = [(0, c) for c in clicks]
        else:
            raise PromptFileError(f"{source}, case {case!r}: the clicks must be a list (or {{\"rounds\": [[round 0], "
                                  f"[round 1], ...]}})")
        parsed[case] = [_click(c, f"{source}, case {case!r}, click {i}") for i, (_, c) in enumerate(entries)]
        rounds[case] = [r for r, _ in entries]
    return Prompts(coordinates, convention, parsed, rounds, initial)


def load_prompts(path: str) -> Prompts:
    """Read and check a prompt file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise PromptFileError(f"prompt file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    prompts = parse_prompts(data, path)
    if prompts.initial_segmentation is not None:  # relative to the prompt file
        prompts.initial_segmentation = os.path.join(os.path.dirname(os.path.abspath(path)),
                                                    prompts.initial_segmentation)
    return prompts


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


def box_label(box: Box, channels: Dict[Union[str, int], int], has_regions: bool, where: str) -> int:
    """The network's ``box_labels`` value of a box (``sam_nnunet.prompts.boxes``)."""
    if box.label not in channels:
        names = [k for k in channels if isinstance(k, str)]
        raise PromptFileError(f"{where}: class {box.label!r} is not a label of this model; its labels: "
                              f"{', '.join(names)}" + ("" if has_regions else " (or their integer values)"))
    if not has_regions and channels[box.label] == 0:
        raise PromptFileError(f"{where}: a box of the background says nothing; give the box of a class")
    return click_label(channels[box.label])


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
