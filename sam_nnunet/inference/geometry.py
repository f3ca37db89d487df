"""Where a click lands in nnU-Net's preprocessed volume, following nnU-Net's own preprocessing of the case.

nnU-Net's preprocessing of an image (``DefaultPreprocessor.run_case``), whose properties record every step:
  1. read: the array as the reader returns it (SimpleITK / nibabel readers: the file's voxel index (i, j, k)
     reversed, i.e. array axes (k, j, i));
  2. transpose the axes by the plans' ``transpose_forward``;
  3. crop to the bounding box of nonzero voxels (``bbox_used_for_cropping``, half-open, after transposition);
  4. resample from ``shape_after_cropping_and_before_resampling`` to the planned spacing (the preprocessed shape),
     voxel centres mapped as skimage / nnU-Net's resampling map them: x_new = (x_old + 0.5) * new / old - 0.5.

Clicks follow the same steps. Coordinates are continuous voxel positions (a voxel's centre is an integer; its
extent is +-0.5 around it).
"""
from typing import Sequence

import numpy as np

# readers whose array axes are the file's voxel index reversed (SimpleITK's GetArrayFromImage; nnU-Net's nibabel
# reader transposes to match it)
REVERSED_INDEX_READERS = ("SimpleITKIO", "NibabelIO")


class ClickOutsideError(ValueError):
    """A click that does not lie in the image (or in the part of it nnU-Net segments)."""


def file_index_to_array(points_ijk: np.ndarray, reader_name: str) -> np.ndarray:
    """Voxel index in the image file (i, j, k: the order ITK-SNAP, 3D Slicer, SimpleITK and nibabel show) ->
    index in the array nnU-Net's reader returns."""
    if reader_name not in REVERSED_INDEX_READERS:
        raise ValueError(
            f"prompted prediction maps click coordinates for images read by {' or '.join(REVERSED_INDEX_READERS)}; "
            f"this model's plans read images with {reader_name}")
    return np.asarray(points_ijk, dtype=np.float64)[..., ::-1]


def array_index_to_file(points: np.ndarray) -> np.ndarray:
    """Inverse of ``file_index_to_array`` (for the readers it accepts)."""
    return np.asarray(points, dtype=np.float64)[..., ::-1]


def world_to_file_index(points_mm: np.ndarray, image_file: str, convention: str = "LPS") -> np.ndarray:
    """Physical points in mm (x, y, z) -> continuous voxel index (i, j, k) of ``image_file``, from its header.

    ``convention``: "LPS" (ITK, SimpleITK, ITK-SNAP, DICOM) or "RAS" (nibabel, 3D Slicer, FreeSurfer; x and y
    negated to reach ITK's LPS).
    """
    import SimpleITK as sitk

    if convention not in ("LPS", "RAS"):
        raise ValueError(f"world_convention must be 'LPS' or 'RAS', not {convention!r}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(image_file)
    reader.ReadImageInformation()
    dim = reader.GetDimension()
    if dim != 3:
        raise ValueError(f"{image_file} is a {dim}D image; world coordinates need 3D images")
    origin = np.array(reader.GetOrigin())
    spacing = np.array(reader.GetSpacing())
    direction = np.array(reader.GetDirection()).reshape(3, 3)
    points = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3).copy()
    if convention == "RAS":
        points[:, :2] *= -1
    # ITK: physical = origin + direction @ (spacing * index)
    return (np.linalg.solve(direction, (points - origin).T).T / spacing).reshape(np.shape(points_mm))


def array_index_to_preprocessed(points: np.ndarray, properties: dict, transpose_forward: Sequence[int],
                                preprocessed_shape: Sequence[int]) -> np.ndarray:
    """Continuous indices in the image array as nnU-Net's reader returns it (N, 3) -> positions in the
    preprocessed volume (N, 3), through transposition, cropping and resampling (the module docstring).

    ``properties``: nnU-Net's properties of the case (``shape_before_cropping``, ``bbox_used_for_cropping``,
    ``shape_after_cropping_and_before_resampling``). Raises ClickOutsideError (with the index of the offending
    click) for a click outside the image or in the zero border nnU-Net crops away.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    transposed = points[:, list(transpose_forward)]
    full = np.asarray(properties["shape_before_cropping"], dtype=np.float64)
    for n, p in enumerate(transposed):
        if np.any(p < -0.5) or np.any(p >= full - 0.5):
            shape = full[np.argsort(transpose_forward)].astype(int).tolist()
            raise ClickOutsideError(f"click {n} at array index {points[n].tolist()} lies outside the image (array "
                                    f"shape {shape})")
    bbox = np.asarray(properties["bbox_used_for_cropping"], dtype=np.float64)
    cropped = transposed - bbox[:, 0]
    crop_shape = np.asarray(properties["shape_after_cropping_and_before_resampling"], dtype=np.float64)
    for n, p in enumerate(cropped):
        if np.any(p < -0.5) or np.any(p >= crop_shape - 0.5):
            raise ClickOutsideError(
                f"click {n} at array index {points[n].tolist()} lies in the image's zero border, which nnU-Net crops "
                f"away before segmenting (it predicts background there)")
    new_shape = np.asarray(preprocessed_shape, dtype=np.float64)
    return (cropped + 0.5) * new_shape / crop_shape - 0.5


def preprocessed_to_array_index(points: np.ndarray, properties: dict, transpose_forward: Sequence[int],
                                preprocessed_shape: Sequence[int]) -> np.ndarray:
    """Inverse of ``array_index_to_preprocessed`` (no checks)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    crop_shape = np.asarray(properties["shape_after_cropping_and_before_resampling"], dtype=np.float64)
    cropped = (points + 0.5) * crop_shape / np.asarray(preprocessed_shape, dtype=np.float64) - 0.5
    transposed = cropped + np.asarray(properties["bbox_used_for_cropping"], dtype=np.float64)[:, 0]
    return transposed[:, np.argsort(transpose_forward)]


# ---- boxes --------------------------------------------------------------------------------------------------------
# A box is its first and its last voxel (inclusive) along each axis; its extent is +-0.5 beyond them.
AXES = "ijk"


def world_box_to_file_index(first_mm, last_mm, image_file: str, convention: str = "LPS") -> np.ndarray:
    """Two opposite corners of a box in mm -> (2, 3) file index of the box enclosing all 8 corners (the header's
    direction may flip or rotate axes, so which corner is first is a question of the image, not of the user)."""
    lo, hi = np.asarray(first_mm, dtype=np.float64), np.asarray(last_mm, dtype=np.float64)
    corners = np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]]
                        for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    index = world_to_file_index(corners, image_file, convention)
    return np.stack([index.min(0), index.max(0)])


def check_box(box: np.ndarray, size, ordered: bool = True, axis_names: Sequence[str] = AXES) -> np.ndarray:
    """A box (2, 3) (first, last voxel; any index space of an image of ``size``) checked: ``ordered`` -> the first
    corner may not come after the last (inverted), it must hold at least one voxel centre on every axis (empty), and
    lie in the image. Raises ClickOutsideError saying which; returns the box as float (2, 3)."""
    box = np.asarray(box, dtype=np.float64).reshape(2, 3)
    first, last = box
    if ordered and np.any(last < first):
        axes = [axis_names[a] for a in np.flatnonzero(last < first)]
        raise ClickOutsideError(f"the box {box.tolist()} is inverted along {', '.join(axes)}: give its first (lowest) "
                                f"voxel, then its last")
    empty = np.ceil(first - 1e-6) > np.floor(last + 1e-6)
    if np.any(empty):
        raise ClickOutsideError(f"the box {np.round(box, 3).tolist()} is empty: it holds no voxel centre along "
                                f"{', '.join(axis_names[a] for a in np.flatnonzero(empty))}")
    size = np.asarray(size, dtype=np.float64)
    if np.any(first < -0.5) or np.any(last >= size - 0.5):
        raise ClickOutsideError(f"the box {np.round(box, 3).tolist()} lies (partly) outside the image (size "
                                f"{size.astype(int).tolist()} voxels, indices 0..size-1)")
    return box


def box_array_to_preprocessed(box: np.ndarray, properties: dict, transpose_forward: Sequence[int],
                              preprocessed_shape: Sequence[int]) -> np.ndarray:
    """A box (2, 3) in the image array as nnU-Net's reader returns it -> (2, 3) in the preprocessed volume:
    transposed, clipped to nnU-Net's crop (the zero border may cut a box; a box entirely in it is refused), and
    resampled so that the box covers the same extent (its edges, first - 0.5 and last + 0.5, map like nnU-Net's
    voxel borders)."""
    box = np.asarray(box, dtype=np.float64).reshape(2, 3)[:, list(transpose_forward)]
    bbox = np.asarray(properties["bbox_used_for_cropping"], dtype=np.float64)
    crop_shape = np.asarray(properties["shape_after_cropping_and_before_resampling"], dtype=np.float64)
    box = box - bbox[:, 0]
    first, last = np.maximum(box[0], 0), np.minimum(box[1], crop_shape - 1)
    if np.any(np.ceil(first - 1e-6) > np.floor(last + 1e-6)):
        raise ClickOutsideError("the box lies in the image's zero border, which nnU-Net crops away before "
                                "segmenting (it predicts background there)")
    ratio = np.asarray(preprocessed_shape, dtype=np.float64) / crop_shape
    new_first, new_last = first * ratio, (last + 1) * ratio - 1  # edge +- half a new voxel
    # a box thinner than a new voxel (downsampling): both corners at its centre
    centre = (new_first + new_last) / 2
    return np.stack([np.minimum(new_first, centre), np.maximum(new_last, centre)])
