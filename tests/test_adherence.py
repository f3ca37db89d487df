"""Correction clicks per class at each class's largest error, click adherence, and the click guarantee (a post-hoc
rule: the clicked voxel and its ball take the clicked class)."""
import numpy as np
import pytest
import torch

from sam_nnunet.prompts.adherence import class_correction_clicks, click_adherence
from sam_nnunet.prompts.clicks import click_label
from sam_nnunet.prompts.guarantee import guarantee_clicks


def test_one_click_per_class_at_its_largest_error():
    reference = np.zeros((12, 12, 12), np.int64)
    reference[2:6, 2:6, 2:6] = 1
    reference[7:11, 2:6, 2:6] = 2
    prediction = reference.copy()
    prediction[2:6, 2:6, 2:4] = 0           # class 1 half missing: a positive click of class 1
    prediction[2:5, 8:11, 8:11] = 2         # class 2 where there is nothing: a background click
    points, labels = class_correction_clicks(prediction, reference, [1, 2], False)
    assert labels.tolist() == [click_label(1), click_label(0)]
    assert reference[tuple(points[0].astype(int))] == 1 and prediction[tuple(points[0].astype(int))] == 0
    assert prediction[tuple(points[1].astype(int))] == 2 and reference[tuple(points[1].astype(int))] == 0
    assert class_correction_clicks(reference, reference, [1, 2], False)[0].shape == (0, 3)
    # regions: inside / outside
    points, labels = class_correction_clicks(prediction, reference, [(1, 2), (2,)], True)
    assert labels.tolist() == [click_label(0), click_label(1, negative=True)]


def test_adherence_of_positive_and_removing_clicks():
    segmentation = np.zeros((5, 5, 5), np.int64)
    segmentation[1, 1, 1] = 1
    points = np.array([[1, 1, 1], [2, 2, 2], [1.2, 0.9, 1.1], [3, 3, 3]], float)
    labels = np.array([click_label(1), click_label(2), click_label(0), click_label(0)])
    followed, positive = click_adherence(segmentation, points, labels, [1, 2], False)
    assert followed.tolist() == [True, False, False, True] and positive.tolist() == [True, True, False, False]
    followed, positive = click_adherence(segmentation, points[:2], [click_label(0), click_label(0, True)],
                                         [(1, 2)], True)
    assert followed.tolist() == [True, True] and positive.tolist() == [True, False]


def test_the_guarantee_sets_the_clicked_ball_and_later_clicks_win():
    logits = torch.zeros(3, 9, 9, 9)
    logits[1] = 5  # class 1 everywhere
    out = guarantee_clicks(logits, [[4, 4, 4], [4, 4, 5]], [click_label(0), click_label(2)], False, 1)
    seg = out.argmax(0)
    assert seg[4, 4, 4] == 2 and seg[4, 4, 6] == 2 and seg[3, 4, 4] == 0 and seg[4, 4, 3] == 0
    assert (seg == 0).sum() == 7 - 2 and (seg == 2).sum() == 7  # a 7-voxel ball each, the later one on top
    assert seg[0, 0, 0] == 1 and torch.equal(logits[:, 0], out[:, 0])
    assert guarantee_clicks(logits, [[4, 4, 4]], [click_label(0)], False, None) is logits
    regions = guarantee_clicks(torch.zeros(2, 4, 4, 4), [[1, 1, 1]], [click_label(1, negative=True)], True, 0)
    assert regions[1, 1, 1, 1] < 0 and (regions[0] == 0).all() and (regions[1] != 0).sum() == 1
    with pytest.raises(ValueError, match="radius must be >= 0"):
        guarantee_clicks(logits, [[4, 4, 4]], [click_label(0)], False, -1)
