"""A 3D click carried to the slices near it in every plane (``ZAP25DPromptedNetwork(click_slice_reach=r)``): with
a reach the click is on the pseudo-slices within r of its own along each orientation and on no other, so voxels
whose pseudo-slices are all farther do not depend on it; without (None, the paper and older models) every
pseudo-slice of every orientation gets it."""
import pytest
import torch

from sam_nnunet.blocks.plane_prompts import click_pseudo_slices
from sam_nnunet.networks.zap25d_prompted import ZAP25DPromptedNetwork
from sam_nnunet.prompts.clicks import click_label


def test_click_pseudo_slices():
    coords = torch.tensor([[[0.0, 5.0, 15.4]]])
    near = click_pseudo_slices(coords, 2, 4, 4, 1)[0, :, 0]  # along D: voxel 0 -> pseudo-slice 0
    assert near.tolist() == [True, True, False, False]
    assert click_pseudo_slices(coords, 3, 4, 4, 0)[0, :, 0].tolist() == [False, True, False, False]
    assert click_pseudo_slices(coords, 4, 4, 4, 1)[0, :, 0].tolist() == [False, False, True, True]


def _net(reach):
    torch.manual_seed(0)
    net = ZAP25DPromptedNetwork(1, 3, "vit_test", window_size=4, click_slice_reach=reach).eval()
    with torch.no_grad():
        for p in net.prompt_encoder.parameters():
            p.normal_()
    return net


@pytest.mark.parametrize("reach", [None, 0, 1])
def test_far_voxels_do_not_depend_on_a_click_within_reach_only(reach):
    net = _net(reach)
    x = torch.randn(1, 1, 16, 16, 16)
    labels = torch.tensor([[click_label(1)]])
    with torch.no_grad():
        encoded = net.encoded(x)
        a = net(encoded, torch.tensor([[[1.0, 1.0, 1.0]]]), labels)
        b = net(encoded, torch.tensor([[[2.0, 3.0, 2.0]]]), labels)  # pseudo-slice 0 along every axis too
    # pseudo-slices 2 and 3 (centres 9.5, 13.5): the decoder's outputs per pseudo-slice are interpolated between
    # their centres, so voxels from 10 on depend on these two only
    far = (slice(None), slice(None), slice(10, None), slice(10, None), slice(10, None))
    near = (slice(None), slice(None), slice(0, 4), slice(0, 4), slice(0, 4))
    assert (a[near] - b[near]).abs().amax() > 1e-4  # where the click is, its position matters
    if reach is None:
        assert (a[far] - b[far]).abs().amax() > 1e-4  # every slice has it
    else:
        torch.testing.assert_close(a[far], b[far])


def test_reach_is_checked():
    with pytest.raises(ValueError, match="click_slice_reach is None or a number of pseudo-slices >= 0"):
        ZAP25DPromptedNetwork(1, 3, "vit_test", window_size=4, click_slice_reach=-1)
