"""A synthetic predictor that is worse in a border band of known width gives the map and step as designed.

The predictor reads the true label from the image (channel 0 holds it) and answers with confident
logits, except within ``band`` voxels of the window's faces, where it answers with zero logits. With
two classes its error there is exactly ``|1/2 - y| = 1/2`` for every voxel, and about 0 elsewhere.
"""

import math

import numpy as np
import pytest
import torch
from nnunetv2.inference.sliding_window_prediction import compute_gaussian

from nnunet_efficient.patch_performance.recommendation import (
    border_band,
    covering_step,
    position_weights,
    recommend_step,
)
from nnunet_efficient.patch_performance.tracking import PatchErrorTracker, PatchPerformanceMap, accumulate_tiles

CONFIDENT = 30.0  # softmax error e^-30: zero for every test tolerance


def gaussian(patch):
    return compute_gaussian(tuple(patch), 1 / 8, 10, torch.float32, torch.device("cpu"))


def band_mask(patch, band):
    """True within ``band[a]`` voxels of the faces of axis ``a``."""
    inside = np.ones(patch, dtype=bool)
    for axis, (size, width) in enumerate(zip(patch, band)):
        keep = np.zeros(size, dtype=bool)
        keep[width:size - width] = True
        inside &= keep.reshape([-1 if a == axis else 1 for a in range(len(patch))])
    return torch.from_numpy(~inside)


def border_band_predictor(patch, band):
    bad = band_mask(patch, band)

    def predict(x):
        labels = x[:, 0].long()
        logits = torch.nn.functional.one_hot(labels, 2).movedim(-1, 1).float() * 2 * CONFIDENT - CONFIDENT
        return torch.where(bad, 0.0, logits)

    return predict


def synthetic_map(patch, band, image_shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    label = (torch.rand(image_shape, generator=generator) < 0.3).long()
    tracker = PatchErrorTracker(2, patch)
    accumulate_tiles(tracker, border_band_predictor(patch, band), label[None].float(), label, step=0.5,
                     batch_size=4)
    return tracker.compute()


CASES = [  # (patch, band, image shape): 3D anisotropic, 3D isotropic, 2D
    ((16, 12, 20), (2, 1, 3), (40, 30, 44)),
    ((16, 16, 16), (3, 3, 3), (40, 40, 40)),
    ((24, 20), (4, 2), (70, 50)),
]


@pytest.mark.parametrize("patch, band, image_shape", CASES)
def test_map_shows_the_band_of_the_predictor(patch, band, image_shape):
    patch_map = synthetic_map(patch, band, image_shape)
    bad = band_mask(patch, band)
    for c in (0, 1):
        torch.testing.assert_close(patch_map.error[c][bad], torch.full_like(patch_map.error[c][bad], 0.5))
        assert patch_map.error[c][~bad].max() < 1e-9
    assert border_band(patch_map.error) == band


@pytest.mark.parametrize("patch, band, image_shape", CASES)
def test_band_is_cured_by_overlap_and_the_step_chosen_by_the_rule(patch, band, image_shape):
    patch_map = synthetic_map(patch, band, image_shape)
    rec = recommend_step(patch_map, gaussian(patch), [image_shape])
    by_step = {c.step: c for c in rec.candidates}
    assert rec.border_band == band
    assert rec.covering_step == math.floor(min((p - 2 * b) / p for p, b in zip(patch, band)) * 1000) / 1000
    assert rec.covering_step in by_step
    # the band costs Dice without overlap, and overlapping windows recover it
    assert by_step[1.0].expected_dice < by_step[0.5].expected_dice - rec.dice_tolerance
    assert rec.step < 1.0
    # the rule: the most efficient among the candidates within the tolerance of the best Dice
    best = max(c.expected_dice for c in rec.candidates)
    eligible = [c for c in rec.candidates if c.expected_dice >= best - rec.dice_tolerance]
    assert by_step[rec.step] in eligible
    assert by_step[rec.step].efficiency == max(c.efficiency for c in eligible)
    for c in rec.candidates:
        assert c.relative_time >= 1.0 - 1e-12 and (c.step < 1.0 or c.relative_time == 1.0)


def test_flat_map_keeps_step_one():
    patch, image_shape = (16, 12, 20), (40, 30, 44)
    patch_map = synthetic_map(patch, (0, 0, 0), image_shape)
    rec = recommend_step(patch_map, gaussian(patch), [image_shape])
    assert rec.border_band == (0, 0, 0)
    assert rec.step == 1.0
    dice = [c.expected_dice for c in rec.candidates]
    assert max(dice) - min(dice) < 1e-9, "overlap cannot change a flat map's expected Dice"


def test_a_wider_band_never_asks_for_less_overlap():
    patch, image_shape = (16, 16, 16), (48, 48, 48)
    steps = [recommend_step(synthetic_map(patch, (b, b, b), image_shape), gaussian(patch), [image_shape]).step
             for b in (1, 3, 5)]
    assert steps == sorted(steps, reverse=True)
    assert steps[-1] < steps[0]


@pytest.mark.parametrize("patch", [(16, 12, 20), (24, 20)])
@pytest.mark.parametrize("step", [1.0, 0.75, 0.5, 0.33])
def test_position_weights_are_shares_that_sum_to_one(patch, step):
    weights = position_weights(gaussian(patch), step, [[3 * p + 5 for p in patch], [p - 3 for p in patch]])
    assert weights.shape == patch and (weights >= 0).all()
    assert weights.sum() == pytest.approx(1.0)


def test_step_one_on_whole_windows_weighs_every_position_equally():
    patch = (8, 6, 10)
    weights = position_weights(gaussian(patch), 1.0, [[2 * p for p in patch]])
    np.testing.assert_allclose(weights, 1 / np.prod(patch))


def test_overlap_shifts_weight_to_the_patch_centre():
    patch = (16, 16)
    weights = position_weights(gaussian(patch), 0.5, [(64, 64)])
    assert weights[8, 8] > weights[0, 0] * 10


def test_covering_step():
    assert covering_step((4, 0), (32, 16)) == 0.75
    assert covering_step((0, 0), (32, 16)) == 1.0
    assert covering_step((8, 1), (16, 16)) is None


def test_no_foreground_falls_back_to_nnunet_default():
    patch = (8, 8)
    error = torch.zeros(2, *patch, dtype=torch.float64)
    empty = PatchPerformanceMap(error, torch.zeros_like(error), torch.ones(patch, dtype=torch.float64))
    rec = recommend_step(empty, gaussian(patch), [(20, 20)])
    assert rec.step == 0.5 and "no foreground" in rec.reason
