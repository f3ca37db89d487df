"""Clicks through nnU-Net's preprocessing (transposition, cropping to nonzero, resampling), voxel and world."""
import copy
import os

import numpy as np
import pytest
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import load_json

from sam_nnunet.inference.geometry import (ClickOutsideError, array_index_to_preprocessed, file_index_to_array,
                                           preprocessed_to_array_index, world_to_file_index)

BLOB_IJK = (17.0, 9.0, 11.0)  # voxel index (i, j, k) in the file of a bright blob


def _case(path):
    """A (x, y, z) = 30 x 26 x 20 image, spacing (1, 1, 2) mm, zero outside x 4..25, y 3..22, z 2..17, with a
    Gaussian blob at BLOB_IJK."""
    zz, yy, xx = np.meshgrid(np.arange(20), np.arange(26), np.arange(30), indexing="ij")
    i, j, k = BLOB_IJK
    image = 1.0 + 10.0 * np.exp(-((xx - i) ** 2 + (yy - j) ** 2 + (zz - k) ** 2) / (2 * 1.5 ** 2))
    image[:, :, :4] = image[:, :, 26:] = 0
    image[:, :3] = image[:, 23:] = 0
    image[:2] = image[18:] = 0
    itk = sitk.GetImageFromArray(image.astype(np.float32))
    itk.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(itk, path)


@pytest.fixture(scope="module")
def preprocessed_case(synthetic_dataset, tmp_path_factory):
    """The case through nnU-Net's DefaultPreprocessor with plans that transpose (2, 0, 1) and resample to
    (0.8, 1.5, 1.25) mm (transposed order)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = copy.deepcopy(load_json(os.path.join(synthetic_dataset["preprocessed"], "nnUNetPlans.json")))
    plans["transpose_forward"], plans["transpose_backward"] = [2, 0, 1], [1, 2, 0]
    plans["configurations"]["3d_fullres"]["spacing"] = [0.8, 1.5, 1.25]
    dataset_json = load_json(os.path.join(synthetic_dataset["preprocessed"], "dataset.json"))
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    path = str(tmp_path_factory.mktemp("geometry") / "case_0000.nii.gz")
    _case(path)
    data, _, properties = cm.preprocessor_class(verbose=False).run_case([path], None, pm, cm, dataset_json)
    return data, properties, pm


def test_known_answer_and_the_blob_lands_there(preprocessed_case):
    data, properties, pm = preprocessed_case
    # by hand: array index (11, 9, 17); transposed (17, 11, 9); minus the crop start (4, 2, 3) -> (13, 9, 6) in a
    # (22, 16, 20) crop; resampled to round((1/0.8, 2/1.5, 1/1.25) * crop) = (28, 21, 16) voxels:
    # (x + 0.5) * new / old - 0.5
    assert tuple(data.shape[1:]) == (28, 21, 16)
    expected = [13.5 * 28 / 22 - 0.5, 9.5 * 21 / 16 - 0.5, 6.5 * 16 / 20 - 0.5]
    mapped = array_index_to_preprocessed(file_index_to_array([BLOB_IJK], "SimpleITKIO"), properties,
                                         pm.transpose_forward, data.shape[1:])
    np.testing.assert_allclose(mapped[0], expected, atol=1e-9)
    # the real preprocessing put the blob there: intensity centroid of its bright core
    volume = data[0]
    core = volume > volume.max() - 0.5 * (volume.max() - np.median(volume[volume != 0]))
    centroid = (np.argwhere(core) * volume[core][:, None]).sum(0) / volume[core].sum()
    np.testing.assert_allclose(centroid, expected, atol=0.35)
    # the inverse brings the click back
    np.testing.assert_allclose(preprocessed_to_array_index(mapped, properties, pm.transpose_forward, data.shape[1:]),
                               [[11.0, 9.0, 17.0]], atol=1e-9)


def test_clicks_outside_the_image_or_in_the_cropped_border_are_refused(preprocessed_case):
    data, properties, pm = preprocessed_case
    with pytest.raises(ClickOutsideError, match=r"click 1 .* lies outside the image \(array shape \[20, 26, 30\]\)"):
        array_index_to_preprocessed([[11, 9, 17], [11, 9, 30]], properties, pm.transpose_forward, data.shape[1:])
    with pytest.raises(ClickOutsideError, match="zero border, which nnU-Net crops away"):
        array_index_to_preprocessed([[11, 9, 2]], properties, pm.transpose_forward, data.shape[1:])
    # the faces of the first and last kept voxels are inside
    array_index_to_preprocessed([[1.6, 2.6, 3.6], [17.4, 22.4, 25.4]], properties, pm.transpose_forward,
                                data.shape[1:])


def test_world_coordinates_through_the_header(tmp_path):
    image = sitk.Image(12, 10, 8, sitk.sitkFloat32)
    image.SetSpacing((0.7, 1.1, 2.5))
    image.SetOrigin((-30.0, 12.0, 5.0))
    # axes permuted and flipped: i runs along -y, j along +z, k along -x
    image.SetDirection((0, 0, -1, -1, 0, 0, 0, 1, 0))
    path = str(tmp_path / "oblique.nii.gz")
    sitk.WriteImage(image, path)
    index = (3.0, 7.5, 2.0)
    lps = np.array(sitk.ReadImage(path).TransformContinuousIndexToPhysicalPoint(index))
    np.testing.assert_allclose(world_to_file_index([lps], path), [index], atol=1e-6)
    ras = lps * [-1, -1, 1]
    np.testing.assert_allclose(world_to_file_index([ras], path, "RAS"), [index], atol=1e-6)
    with pytest.raises(ValueError, match="'LPS' or 'RAS'"):
        world_to_file_index([lps], path, "LIP")
    with pytest.raises(ValueError, match="SimpleITKIO or NibabelIO"):
        file_index_to_array([index], "NibabelIOWithReorient")
