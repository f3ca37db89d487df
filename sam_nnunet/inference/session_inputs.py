"""The interactive session's inputs checked as prompt files check theirs (``inference.prompt_file``): a position is
three finite numbers, a box two 3-D corners, a class a label name or an integer (not a bool), the world convention
LPS or RAS. Each refusal is a SessionError naming the input, instead of a numpy broadcast error, a True taken as
class 1, or a NaN corner that silently changes the mask.
"""
import math
from numbers import Integral, Real
from typing import Tuple, Union

import numpy as np

CONVENTIONS = ("LPS", "RAS")


class SessionError(ValueError):
    """An interaction that cannot be used; the message says why and what to do."""


def position(value, where: str) -> Tuple[float, float, float]:
    """Three finite numbers (a list, tuple or array of shape (3,)) as floats."""
    try:
        values = np.asarray(value, dtype=object).reshape(-1).tolist() if np.ndim(value) == 1 else None
    except (TypeError, ValueError):
        values = None
    if values is None or len(values) != 3 or not all(
            isinstance(v, Real) and not isinstance(v, (bool, np.bool_)) for v in values):
        raise SessionError(f"{where}: a position is three numbers [x, y, z], not {_shown(value)}")
    if not all(math.isfinite(v) for v in values):
        raise SessionError(f"{where}: {[float(v) for v in values]} is not a position (NaN or Infinity); give three "
                           f"finite coordinates")
    return tuple(float(v) for v in values)


def class_label(label, where: str) -> Union[int, str]:
    """A label name or integer value; a bool is refused (True would be taken as class 1)."""
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (Integral, str)):
        raise SessionError(f"{where}: the class must be a label name or integer value, not {label!r}")
    return label if isinstance(label, str) else int(label)


def convention(value) -> str:
    """"LPS" or "RAS", in any case ("ras" is RAS: there is no other reading of it)."""
    if not isinstance(value, str) or value.upper() not in CONVENTIONS:
        raise SessionError(f"world_convention must be \"LPS\" (ITK, SimpleITK, DICOM) or \"RAS\" (nibabel, 3D "
                           f"Slicer), not {value!r}")
    return value.upper()


def _shown(value) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 80 else text[:77] + "..."
