"""Training for corrections (issue 35): imperfect masks (eroded / dilated / shifted labels, a neighbour's mask) as
the previous mask, with a correction click per class at its largest error; the prompt-free patches stay
prompt-free; the trainer's simulated rounds start from them when imperfect_mask_probability says so."""
import types

import numpy as np
import pytest
import torch
from test_boxes_refinement import _tiny

from sam_nnunet.prompts.clicks import NO_CLICK, click_label
from sam_nnunet.prompts.imperfect import IMPERFECTIONS, imperfect_masks, imperfect_start


def _target(b=2, size=12):
    target = np.zeros((b, 1, size, size, size), np.int64)
    target[:, 0, 2:8, 2:8, 2:8] = 1
    target[:, 0, 8:11, 2:8, 2:8] = 2
    if b > 1:
        target[1, 0] = np.roll(target[1, 0], 2, axis=2)  # the neighbour differs
    return target


def test_each_imperfection():
    rng = np.random.default_rng(0)
    masks = np.stack([_target()[0, 0] == c for c in (1, 2)])
    eroded = imperfect_masks(masks, "erode", rng)
    assert (eroded <= masks).all() and eroded.sum() < masks.sum()
    dilated = imperfect_masks(masks, "dilate", rng)
    assert (dilated >= masks).all() and dilated.sum() > masks.sum() and not (dilated[0] & dilated[1]).any()
    shifted = imperfect_masks(masks, "shift", rng)
    assert shifted.any() and not np.array_equal(shifted, masks)
    neighbour = np.stack([_target()[1, 0] == c for c in (1, 2)])
    np.testing.assert_array_equal(imperfect_masks(masks, "neighbour", rng, neighbour), neighbour)
    assert not np.array_equal(imperfect_masks(masks, "neighbour", rng), masks)  # alone: shifted
    with pytest.raises(ValueError, match="imperfection must be one of erode, dilate"):
        imperfect_masks(masks, "blur", rng)


@pytest.mark.parametrize("kind", IMPERFECTIONS)
def test_the_start_and_its_corrections(kind):
    target = _target()
    mask, coords, labels = imperfect_start(target, 3, False, np.array([True, False]), np.random.default_rng(1),
                                           kinds=(kind,))
    assert mask.shape == (2, 2, 12, 12, 12) and set(np.unique(mask)) <= {-10.0, 10.0}
    assert (mask[1] == -10).all() and (labels[1] == NO_CLICK).all()  # prompt-free: no mask, no click
    start = np.where((mask[0] > 0).any(0), (mask[0] > 0).argmax(0) + 1, 0)
    clicked = labels[0] >= 0
    assert clicked.any()
    for p, label in zip(coords[0][clicked].astype(int), labels[0][clicked]):
        truth = target[0, 0][tuple(p)]
        assert start[tuple(p)] != truth and label == click_label(int(truth))  # at an error, saying the truth


def test_regions_start_with_inside_and_outside_clicks():
    target = _target(1)[:, 0]
    regions = np.stack([target > 0, target == 2], 1).astype(np.float32)  # (B, R, *S)
    mask, coords, labels = imperfect_start(regions, 2, True, np.array([True]), np.random.default_rng(0),
                                           kinds=("dilate",))
    assert mask.shape == (1, 2, 12, 12, 12)
    assert all(label % 2 == 1 for label in labels[0] if label >= 0)  # a dilation is removed by negative clicks


def test_the_trainer_starts_its_rounds_from_an_imperfect_mask(monkeypatch):
    from sam_nnunet.trainers.zap25d_prompted import ZAP25DSAMTrainer_prompted

    net = _tiny()
    trainer = ZAP25DSAMTrainer_prompted.__new__(ZAP25DSAMTrainer_prompted)
    trainer.network, trainer.is_ddp, trainer.device = net, False, torch.device("cpu")
    trainer.label_manager = types.SimpleNamespace(has_regions=False, ignore_label=None, num_segmentation_heads=3)
    trainer.refine_probability, trainer.max_refine_rounds, trainer.imperfect_mask_probability = 1.0, 1, 1.0
    decoded = []
    forward = net.forward
    monkeypatch.setattr(net, "forward", lambda x, *a, **k: decoded.append(k) or forward(x, *a, **k))
    target = torch.from_numpy(_target(2, 8).astype(np.float32))
    torch.manual_seed(0)
    batch = {"data": torch.randn(2, 1, 8, 8, 8), "target": [target]}
    prompts = trainer.sample_prompts(target, training=True)
    prompts["point_labels"][0, 0] = click_label(1)  # sample 0 prompted
    prompts["point_labels"][1] = NO_CLICK  # sample 1 prompt-free
    prompts["box_labels"][1] = NO_CLICK
    _, refined = trainer.simulate_interaction(batch, prompts)
    assert not decoded  # one round: the imperfect mask and its corrections are it
    assert refined["point_labels"].shape == (2, 2) and (refined["point_labels"][1] == NO_CLICK).all()
    assert (refined["point_labels"][0] >= 0).any() and (refined["box_labels"] == NO_CLICK).all()
    assert refined["mask_prompt"].shape == (2, 2, 8, 8, 8) and refined["mask_prompt"].abs().eq(10).all()
    trainer.max_refine_rounds = 3  # further rounds from the network's own predictions, a click slot each
    torch.manual_seed(1)
    _, refined = trainer.simulate_interaction(batch, prompts)
    assert refined["point_labels"].shape[1] == 2 + len(decoded) and len(decoded) <= 2
    assert "imperfect mask" in trainer.click_protocol() or trainer.refine_probability == 0
