"""Any segmentation of an image as round 0 of an interaction: nnUNetv2_predict's output, another model's, a saved or
hand-drawn one. The interactive session (``set_initial_segmentation``), ``predict-prompted --initial-segmentation``
and ``sam-nnunet interaction --initial-segmentation`` all go through the two functions here:

  - ``check_initial_segmentation``: one clear message per problem -- another shape, spacing, orientation or origin
    than the image (when the file's header is known), values that are no label of the model;
  - ``initial_logits``: the segmentation through nnU-Net's preprocessing of a segmentation (transpose, crop to the
    image's nonzero box, resample to the planned spacing, nearest neighbour as nnU-Net resamples labels), as logits
    of +-10 per output (label-based: background logit 0), so that the mask prompt of the next round
    (``corrections.mask_prompt``) is +-10 and its argmax is the segmentation. Exported back through nnU-Net it is
    the segmentation itself on a grid the plans do not resample (hippocampus); where they resample, it is
    nnU-Net's round trip of it.
"""
import os
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice

MASK_LOGIT = 10.0


class InitialSegmentationError(ValueError):
    """An initial segmentation that does not fit the image or the model; the message says which and why."""


def _close(a, b, tolerance: float = 1e-3) -> bool:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=tolerance, atol=tolerance))


def _shown(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in np.asarray(values, dtype=np.float64).ravel()) + ")"


def check_initial_segmentation(segmentation: np.ndarray, image_shape: Sequence[int], label_manager,
                               dataset_labels: dict, where: str = "the initial segmentation",
                               properties: Optional[dict] = None, image_properties: Optional[dict] = None,
                               error: type = InitialSegmentationError) -> np.ndarray:
    """``segmentation`` (*S) or (1, *S) as nnU-Net's reader returns it -> (*S), or ``error`` with one message.

    Checked in this order: shape (the image's array shape ``image_shape``); with both readers' ``properties``:
    spacing, then orientation (direction) and origin (SimpleITK's header; nibabel's affine); the values, which must
    be labels of the model (``label_manager.all_labels``; names from ``dataset_labels``)."""
    segmentation = np.asarray(segmentation)
    if segmentation.ndim == len(image_shape) + 1 and segmentation.shape[0] == 1:
        segmentation = segmentation[0]
    if tuple(segmentation.shape) != tuple(image_shape):
        raise error(f"{where} has shape {list(segmentation.shape)}, the image {list(image_shape)} (array axes of "
                    f"nnU-Net's reader): it must be a segmentation of this image, on its grid")
    if properties is not None and image_properties is not None:
        if "spacing" in properties and "spacing" in image_properties and \
                not _close(properties["spacing"], image_properties["spacing"]):
            raise error(f"{where} has spacing {_shown(properties['spacing'])} mm, the image "
                        f"{_shown(image_properties['spacing'])} mm: resample it onto the image's grid first")
        seg_h, img_h = properties.get("sitk_stuff"), image_properties.get("sitk_stuff")
        if seg_h and img_h:
            if not _close(seg_h["direction"], img_h["direction"]):
                raise error(f"{where} has orientation (direction) {_shown(seg_h['direction'])}, the image "
                            f"{_shown(img_h['direction'])}: the same voxels would lie elsewhere in the body")
            if not _close(seg_h["origin"], img_h["origin"], 1e-2):
                raise error(f"{where} has origin {_shown(seg_h['origin'])} mm, the image {_shown(img_h['origin'])} "
                            f"mm: it lies elsewhere in space than the image")
        seg_n, img_n = properties.get("nibabel_stuff"), image_properties.get("nibabel_stuff")
        if seg_n and img_n and "original_affine" in seg_n and "original_affine" in img_n and \
                not _close(seg_n["original_affine"], img_n["original_affine"], 1e-2):
            raise error(f"{where} has another affine (orientation / origin) than the image: the same voxels would "
                        f"lie elsewhere in the body")
    values = np.unique(segmentation)
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise error(f"{where} holds non-integer values; a segmentation holds the model's label values "
                    f"(labels: {dataset_labels})")
    unknown = sorted(set(values.astype(np.int64).tolist()) - set(label_manager.all_labels))
    if unknown:
        raise error(f"{where} holds values {unknown} that are no label of this model (labels: {dataset_labels})")
    return segmentation


def labels_to_logits(segmentation: np.ndarray, label_manager) -> torch.Tensor:
    """A label map (*S) (nnU-Net's values) -> logits (num_heads, *S) of +-``MASK_LOGIT`` (label-based: channel c
    is label c, the background channel 0, so the mask prompt is +-10; regions: inside / outside each region)."""
    lm = label_manager
    if lm.has_regions:
        inside = np.stack([np.isin(segmentation, np.atleast_1d(region)) for region in lm.foreground_regions])
    else:
        inside = np.stack([segmentation == c for c in range(lm.num_segmentation_heads)])
    logits = torch.from_numpy(np.where(inside, MASK_LOGIT, -MASK_LOGIT).astype(np.float32))
    if not lm.has_regions:
        logits[0] = 0  # ZAP's background logit
    return logits


def initial_logits(segmentation: np.ndarray, properties: dict, data_shape: Sequence[int], plans_manager,
                   configuration_manager, label_manager) -> torch.Tensor:
    """A checked segmentation (*S) of the image -> logits (num_heads, *data_shape) in the preprocessed volume that
    nnU-Net's preprocessing made with ``properties`` (its segmentation steps: transpose, crop, resample)."""
    pm, cm = plans_manager, configuration_manager
    crop = bounding_box_to_slice(properties["bbox_used_for_cropping"])
    seg = np.asarray(segmentation).transpose(pm.transpose_forward)[crop]
    spacing = [properties["spacing"][i] for i in pm.transpose_forward]
    if tuple(seg.shape) != tuple(data_shape):
        seg = cm.resampling_fn_seg(seg[None], tuple(data_shape), spacing, cm.spacing)[0]
    return labels_to_logits(seg, label_manager)


def read_initial_segmentation(folder: str, case: str, file_ending: str, reader, image_shape: Sequence[int],
                              image_properties: Optional[dict], label_manager, dataset_labels: dict
                              ) -> np.ndarray:
    """``folder/CASE{file_ending}`` (nnU-Net's naming of a label file, as nnUNetv2_predict writes it) read with the
    model's reader and checked against the image (``check_initial_segmentation``)."""
    path = os.path.join(folder, case + file_ending)
    if not os.path.isfile(path):
        raise InitialSegmentationError(f"case {case!r}: no initial segmentation {path} (nnU-Net's naming: "
                                       f"CASE{file_ending}, as nnUNetv2_predict writes it)")
    segmentation, properties = reader.read_seg(path)
    return check_initial_segmentation(segmentation, image_shape, label_manager, dataset_labels,
                                      f"case {case!r}: the initial segmentation {path}", properties,
                                      image_properties)


def initial_case(folder: Optional[str], case: str, file_ending: str, reader, properties: dict,
                 data_shape: Sequence[int], predictor) -> Tuple[Optional[np.ndarray], Optional[torch.Tensor]]:
    """(segmentation (*S), its logits in the preprocessed volume) of a case preprocessed with ``properties``, or
    (None, None) without a folder."""
    if folder is None:
        return None, None
    shape = properties["shape_before_cropping"]
    seg = read_initial_segmentation(folder, case, file_ending, reader, shape, properties,
                                    predictor.label_manager, predictor.dataset_json["labels"])
    return seg, initial_logits(seg, properties, data_shape, predictor.plans_manager,
                               predictor.configuration_manager, predictor.label_manager)
