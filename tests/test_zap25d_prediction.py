"""ZAP-2.5DSAM prediction through nnU-Net's predictor: every pseudo-slice of a case encoded once per mirroring
(``ZAP25DNetwork.predict_volume``, ``sam_nnunet.nnunet_prediction``), counted on a case that needs several tiles."""
import math
from types import SimpleNamespace

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

from sam_nnunet import nnunet_prediction
from sam_nnunet.blocks.plane_prompts import PLANE_LAYOUTS
from sam_nnunet.networks.zap25d import ZAP25DNetwork

PATCH = (8, 12, 8)


def _predictor(net, mirroring=False, gaussian=True) -> nnUNetPredictor:
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=gaussian, use_mirroring=mirroring,
                                device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    # what the sliding window reads: the patch, the number of outputs, the mirror axes
    predictor.network, predictor.allowed_mirroring_axes = net, (0, 1, 2)
    predictor.configuration_manager = SimpleNamespace(patch_size=list(PATCH))
    predictor.label_manager = SimpleNamespace(num_segmentation_heads=3)
    return predictor


def _counting(net) -> list:
    """Pseudo-slices passed through the frozen encoder, appended per call."""
    seen, forward = [], net.encoder.forward
    net.encoder.forward = lambda groups, **kw: (seen.append(groups.shape[0]), forward(groups, **kw))[1]
    return seen


def _net(seed=0) -> ZAP25DNetwork:
    torch.manual_seed(seed)
    net = ZAP25DNetwork(1, 3, "vit_test", encoder_batch=3).eval()
    with torch.no_grad():  # a decoder that is not near zero everywhere
        for p in net.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def test_a_case_within_the_patch_is_predicted_as_nnunet_does():
    net = _net()
    image = torch.randn(1, 7, 12, 5)  # one tile: padded to the patch like nnU-Net, then the network on it
    for mirroring in (False, True):
        # without the Gaussian: nnU-Net sums the weighted tiles in half precision, and the Gaussian of a patch this
        # small (sigma 1 voxel) falls below it at the borders
        plain, weighted, tiles = (_predictor(net, mirroring, gaussian) for gaussian in (False, True, False))
        for predictor in (plain, weighted, tiles):
            predictor.allowed_mirroring_axes = (0, 2)
        ours = plain.predict_sliding_window_return_logits(image)
        tiled = nnunet_prediction._NNUNET_METHOD(tiles, image).float()
        assert ours.shape == tiled.shape == (3, 7, 12, 5)
        torch.testing.assert_close(ours, tiled, atol=2e-3, rtol=2e-3)
        weighted = weighted.predict_sliding_window_return_logits(image)
        torch.testing.assert_close(weighted, ours)  # one window: the Gaussian cancels


def test_every_pseudo_slice_is_encoded_once_per_mirroring_on_a_case_of_several_tiles():
    net = _net()
    image = torch.randn(1, 13, 12, 13)  # 3 x 1 x 3 tiles of 8 x 12 x 8 with nnU-Net's half-tile steps
    shape = tuple(image.shape[1:])
    tiles = math.prod(len(s) for s in compute_steps_for_sliding_window(shape, PATCH, 0.5))
    per_tile = sum(math.ceil(p / net.pool) for p in PATCH)
    pseudo_slices = sum(math.ceil(s / net.pool) for s in shape)

    seen = _counting(net)
    nnunet_prediction._NNUNET_METHOD(_predictor(net), image)
    assert sum(seen) == tiles * per_tile == 63  # nnU-Net's 3D tiles
    for mirroring, passes in ((False, 1), (True, 2)):
        seen.clear()
        predictor = _predictor(net, mirroring)
        predictor.allowed_mirroring_axes = (0,)
        logits = predictor.predict_sliding_window_return_logits(image)
        assert logits.shape == (3, *shape) and torch.isfinite(logits).all()
        assert sum(seen) == passes * pseudo_slices == passes * 11  # whole slices, decoded in windows
        assert max(seen) <= net.encoder_batch  # encoded in bounded chunks


def test_slices_of_more_than_four_windows_are_encoded_window_by_window():
    net = _net()
    image = torch.randn(1, 8, 12, 40)  # axial slices 12 x 40: 5 windows' worth of tokens
    padded = [math.ceil(s / net.pool) * net.pool for s in image.shape[1:]]
    expected = 0
    for axis in (2, 3, 4):
        rows, cols = PLANE_LAYOUTS[net.plane_layout][axis]
        size, window = (padded[rows - 2], padded[cols - 2]), (PATCH[rows - 2], PATCH[cols - 2])
        grid, whole = net.encoder.grid(*window), net.encoder.grid(*size)
        windows = math.prod(len(s) for s in compute_steps_for_sliding_window(size, window, 0.5))
        per_slice = windows if whole[0] * whole[1] > 4 * grid[0] * grid[1] else 1
        expected += padded[axis - 2] // net.pool * per_slice
    seen = _counting(net)
    logits = _predictor(net).predict_sliding_window_return_logits(image)
    assert logits.shape == (3, 8, 12, 40) and torch.isfinite(logits).all()
    assert sum(seen) == expected == 2 * 9 + 3 * 9 + 10  # axial, coronal: 9 windows each; sagittal: one


def test_one_window_per_orientation_equals_the_forward_of_the_whole_case():
    net = _net(1)
    x = torch.randn(1, 1, 8, 12, 8)
    with torch.no_grad():
        torch.testing.assert_close(net.predict_volume(x, PATCH), net(x), atol=1e-5, rtol=1e-5)
        longer = torch.randn(1, 1, 8, 12, 20)  # W: slices of the sagittal plane; in-plane in the other two
        rows, cols = PLANE_LAYOUTS[net.plane_layout][4]
        assert {rows, cols} == {2, 3}
        sagittal = net._predict_orientation(longer, 4, PATCH, 0.5, True)
        planes, spatial = net.embed(longer)
        torch.testing.assert_close(sagittal, net._plane_logits(planes[4], 4), atol=1e-5, rtol=1e-5)


def test_predictors_with_their_own_tiles_keep_them():
    from sam_nnunet.inference.predictor import PromptedPredictor

    net = _net()
    assert nnunet_prediction.whole_case_network(_predictor(net)) is net
    assert nnunet_prediction.whole_case_network(_predictor(torch.compile(net))) is net
    prompted = PromptedPredictor(device=torch.device("cpu"))
    prompted.network = net
    assert nnunet_prediction.whole_case_network(prompted) is None
    other = _predictor(torch.nn.Conv3d(1, 3, 1))
    assert nnunet_prediction.whole_case_network(other) is None
