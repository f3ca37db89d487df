"""PromptedPredictor: every sliding-window tile gets the clicks inside it, mirrored with the tile; tile modes.

The network here is constructed so its answer is known: class c's logit is 1 within 1.5 voxels of a positive click
of class c it receives, 0 elsewhere. A click handed to the wrong tile, shifted, or not mirrored with the tile shows
up as a misplaced or missing ball.
"""

import numpy as np
import pytest
import torch
from helpers import plans_with_patch
from torch import nn

from sam_nnunet.inference.predictor import PromptedPredictor
from sam_nnunet.prompts.clicks import click_label


class BallsNetwork(nn.Module):
    takes_clicks = True

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.calls = []

    def forward(self, x, point_coords=None, point_labels=None):
        b, _, *size = x.shape
        grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in size], indexing="ij"), -1)
        logits = torch.zeros(b, self.num_classes, *size)
        n = 0 if point_coords is None else point_coords.shape[1]
        self.calls.append(0 if n == 0 else int((point_labels >= 0).sum()))
        for i in range(b):
            for p, label in zip(point_coords[i] if n else [], point_labels[i] if n else []):
                if label < 0:
                    continue
                channel, negative = divmod(int(label), 2)
                if not negative:
                    near = ((grid - p) ** 2).sum(-1) <= 1.5 ** 2
                    logits[i, channel][near] = 1.0
        return logits


def balls(shape, points, radius=1.5):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    mask = np.zeros(shape, dtype=bool)
    for p in points:
        mask |= ((grid - np.asarray(p)) ** 2).sum(-1) <= radius ** 2
    return mask


@pytest.fixture(scope="module")
def setup(synthetic_dataset):
    return plans_with_patch(synthetic_dataset["preprocessed"], [16, 16, 16])


def _predictor(setup, tiles):
    pm, cm, dataset_json = setup
    net = BallsNetwork(3)
    predictor = PromptedPredictor(tiles=tiles, tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                  perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(net, pm, cm, [net.state_dict()], dataset_json, "BallsTrainer", (0, 1, 2))
    predictor.check_network_takes_clicks()
    return predictor, net


# a 40 x 30 x 12 case: several tiles along the first two axes, padded to the patch along the third
SHAPE = (40, 30, 12)
CLICKS = np.array([[5.0, 6.0, 3.0], [20.0, 15.0, 6.0], [33.0, 25.0, 9.0], [24.0, 3.0, 2.0]])
LABELS = np.array([click_label(1), click_label(2), click_label(1), click_label(2, negative=True)])


def test_every_tile_gets_its_clicks_in_its_own_coordinates_and_mirrored(setup):
    predictor, net = _predictor(setup, "all")
    logits = predictor.predict_logits_with_clicks(torch.randn(1, *SHAPE), CLICKS, LABELS)
    assert logits.shape == (3, *SHAPE)
    np.testing.assert_array_equal(logits[1].numpy() > 0, balls(SHAPE, CLICKS[[0, 2]]))
    np.testing.assert_array_equal(logits[2].numpy() > 0, balls(SHAPE, CLICKS[[1]]))  # the negative click: no ball
    assert (logits[0] == 0).all()
    assert len(net.calls) % 8 == 0 and 0 in net.calls  # 8 mirrorings per tile; tiles without clicks run without


def test_clicked_tiles_only(setup):
    predictor, net = _predictor(setup, "clicked")
    logits = predictor.predict_logits_with_clicks(torch.randn(1, *SHAPE), CLICKS[:1], LABELS[:1])
    np.testing.assert_array_equal(logits[1].numpy() > 0, balls(SHAPE, CLICKS[:1]))
    assert net.calls and 0 not in net.calls  # tiles without a click are not predicted at all
    tiles_run = len(net.calls) // 8
    all_predictor, all_net = _predictor(setup, "all")
    all_predictor.predict_logits_with_clicks(torch.randn(1, *SHAPE), CLICKS[:1], LABELS[:1])
    assert tiles_run < len(all_net.calls) // 8


def test_one_tile_centred_on_the_clicks(setup):
    predictor, net = _predictor(setup, "centred")
    near = np.array([[18.0, 14.0, 5.0], [26.0, 20.0, 8.0]])
    logits = predictor.predict_logits_with_clicks(torch.randn(1, *SHAPE), near, np.array([click_label(1)] * 2))
    assert net.calls == [2] * 8  # a single tile (8 mirrorings) holding both clicks
    np.testing.assert_array_equal(logits[1].numpy() > 0, balls(SHAPE, near))
    # nothing predicted without clicks
    net.calls.clear()
    empty = predictor.predict_logits_with_clicks(torch.randn(1, *SHAPE), np.zeros((0, 3)), np.zeros(0))
    assert net.calls == [] and (empty == 0).all()


def test_network_without_clicks_is_refused(setup):
    predictor, _ = _predictor(setup, "all")
    predictor.network = nn.Conv3d(1, 3, 1)
    with pytest.raises(ValueError, match="takes no clicks. Predict it with nnUNetv2_predict"):
        predictor.check_network_takes_clicks()
    with pytest.raises(ValueError, match="tiles must be one of"):
        PromptedPredictor(tiles="some", device=torch.device("cpu"))
