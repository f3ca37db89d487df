"""Click sampling from nnU-Net targets (training) and from reference labels (evaluation)."""
import numpy as np
import torch

from sam_nnunet.prompts.clicks import NO_CLICK, click_label, sample_clicks_from_target
from sam_nnunet.prompts.simulate import case_rng, simulate_clicks


def _target():
    t = torch.zeros(3, 1, 8, 9, 10, dtype=torch.int16)
    t[0, 0, 2:4, 3:5, 4:6] = 1
    t[0, 0, 6, 6, 6] = 2          # a single voxel of class 2
    t[1, 0, 0, 0, 0] = 2          # no class 1 in sample 1
    return t                      # sample 2: background only


def _labels_at(target, coords):
    idx = coords.long()
    return torch.stack([target[b, 0][idx[b, :, 0], idx[b, :, 1], idx[b, :, 2]] for b in range(target.shape[0])])


def test_label_based_training_clicks_follow_the_target():
    target = _target()
    g = torch.Generator().manual_seed(0)
    coords, labels = sample_clicks_from_target(target, 3, False, positives_per_class=10, random_clicks=20,
                                               generator=g)
    assert coords.shape == (3, 2 * 10 + 20, 3) and labels.shape == (3, 40)
    assert coords.dtype == torch.float32 and labels.dtype == torch.long
    # every click's label is what the target says at it (class c -> 2c: "this voxel is class c")
    valid = labels != NO_CLICK
    assert torch.equal(2 * _labels_at(target, coords).long()[valid], labels[valid])
    # 10 positive clicks per class present; absent classes leave empty slots
    assert (labels[0, :10] == click_label(1)).all() and (labels[0, 10:20] == click_label(2)).all()
    assert (coords[0, 10:20] == torch.tensor([6.0, 6.0, 6.0])).all()  # with replacement from one voxel
    assert (labels[1, :10] == NO_CLICK).all() and (labels[1, 10:20] == click_label(2)).all()
    assert (labels[2, :20] == NO_CLICK).all() and (labels[2, 20:] == click_label(0)).all()
    # the random clicks cover the patch, not just the foreground
    assert len({tuple(c) for c in coords[2, 20:].tolist()}) > 10


def test_zap_style_counts_prompt_free_share_and_ignore_label():
    target = _target()
    g = torch.Generator().manual_seed(1)
    counts = set()
    for _ in range(30):
        _, labels = sample_clicks_from_target(target[:1], 3, False, positives_per_class=3, random_clicks=0,
                                              min_positives_per_class=1, generator=g)
        counts.add(int((labels[0, :3] != NO_CLICK).sum()))
    assert counts == {1, 2, 3}  # k ~ U{1, 2, 3}
    _, labels = sample_clicks_from_target(target, 3, False, prompt_free_probability=1.0, generator=g)
    assert (labels == NO_CLICK).all()
    ignored = target.clone()
    ignored[:, :, :, :, 7:] = 3  # nnU-Net's ignore label
    coords, labels = sample_clicks_from_target(ignored, 3, False, random_clicks=200, ignore_label=3, generator=g)
    assert (coords[..., 2][labels != NO_CLICK] < 7).all()


def test_region_based_clicks_say_inside_or_outside():
    t = _target()[:, 0]
    regions = torch.stack([t > 0, t == 2], dim=1)  # (B, 2, ...) as nnU-Net's region targets
    g = torch.Generator().manual_seed(2)
    coords, labels = sample_clicks_from_target(regions, 2, True, positives_per_class=2, random_clicks=50, generator=g)
    idx = coords.long()
    checked = 0
    for b in range(regions.shape[0]):
        for n in range(labels.shape[1]):
            if labels[b, n] == NO_CLICK:
                continue
            region, negative = divmod(int(labels[b, n]), 2)
            assert bool(regions[b, region][tuple(idx[b, n])]) == (not negative)
            checked += 1
    assert checked > 100


def test_simulated_clicks_are_distinct_reference_voxels_per_class_and_reproducible():
    ref = np.zeros((1, 10, 12, 14), dtype=np.uint8)
    ref[0, 2:6, 2:6, 2:6] = 1
    ref[0, 8, 9, 10] = 2
    points, labels = simulate_clicks(ref, [1, 2, 3], False, 3, case_rng(0, "case_a"))
    assert labels.tolist() == [click_label(1)] * 3 + [click_label(2)] * 3  # class 3 absent: no click
    assert len({tuple(p) for p in points[:3]}) == 3
    assert all(ref[0][tuple(p.astype(int))] == 1 for p in points[:3])
    assert (points[3:] == [8, 9, 10]).all()
    again, _ = simulate_clicks(ref, [1, 2, 3], False, 3, case_rng(0, "case_a"))
    other, _ = simulate_clicks(ref, [1, 2, 3], False, 3, case_rng(1, "case_a"))
    assert np.array_equal(points, again) and not np.array_equal(points[:3], other[:3])
    # region-based: regions are tuples of labels, channels are region positions
    points, labels = simulate_clicks(ref, [(1, 2), (2,)], True, 1, case_rng(0, "case_a"))
    assert labels.tolist() == [click_label(0), click_label(1)]


def test_distinct_positive_clicks():
    target = _target()
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        coords, labels = sample_clicks_from_target(target, 3, False, positives_per_class=3, random_clicks=0,
                                                   generator=g, distinct_positives=True)
        assert len({tuple(c) for c in coords[0, :3].tolist()}) == 3  # class 1 has 8 voxels: three distinct ones
        assert torch.equal(_labels_at(target, coords)[0, :3], torch.ones(3, dtype=torch.int16))
    # class 2 has a single voxel: it is clicked three times rather than clicks landing elsewhere
    assert (coords[0, 3:6] == torch.tensor([6.0, 6.0, 6.0])).all() and (labels[0, 3:6] == click_label(2)).all()
