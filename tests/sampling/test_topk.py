"""Tests for the window grid, the differentiable/plain/random top-k and the window helpers."""

import itertools
import math

import pytest
import torch
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

from nnunet_efficient.sampling.topk import (
    LOG_TINY,
    background_log_mask,
    gumbel_topk,
    random_foreground_indices,
    sample_gumbel,
    score_entropy,
    topk_indices,
)
from nnunet_efficient.sampling.windows import (
    crop_window,
    draw_random_window_start,
    grid_shape,
    window_grid,
    window_grid_steps,
    zoom_boxes,
)

# ---------------------------------------------------------------- window grid


@pytest.mark.parametrize(
    "image_shape, window, step",
    [
        ((32, 32, 32), (16, 16, 16), 0.5),
        ((110, 64, 64), (64, 64, 64), 0.5),
        ((155, 240, 240), (96, 160, 160), 0.5),
        ((480, 480, 288), (128, 128, 128), 0.5),
        ((37, 101, 53), (20, 32, 17), 0.25),
        ((37, 101, 53), (20, 32, 17), 0.7),
        ((37, 101, 53), (20, 32, 17), 1.0),
        ((512, 317), (256, 224), 0.5),  # 2D
    ],
)
def test_window_grid_equals_nnunet_compute_steps(image_shape, window, step):
    expected = compute_steps_for_sliding_window(image_shape, window, step)
    assert window_grid_steps(image_shape, window, step) == expected
    assert grid_shape(image_shape, window, step) == tuple(len(s) for s in expected)
    # C order: the last axis varies fastest, like torch.flatten of a grid-shaped tensor.
    assert window_grid(image_shape, window, step) == list(itertools.product(*expected))


def test_window_grid_reference_word_setup_has_196_candidates():
    assert grid_shape((480, 480, 288), (128, 128, 128), 0.5) == (7, 7, 4)


def test_window_grid_rejects_window_larger_than_image():
    with pytest.raises(ValueError, match="must fit in the image"):
        window_grid((32, 10, 32), (16, 16, 16))


def test_crop_window_is_the_expected_view():
    x = torch.arange(2 * 6 * 5).reshape(2, 6, 5)
    assert torch.equal(crop_window(x, (1, 2), (3, 2)), x[:, 1:4, 2:4])


# ---------------------------------------------------------------- gumbel top-k


def test_sample_gumbel_is_reproducible_and_finite():
    a = sample_gumbel((2, 1000), torch.Generator().manual_seed(3))
    b = sample_gumbel((2, 1000), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.isfinite(a).all()
    # Standard Gumbel mean is the Euler-Mascheroni constant.
    assert abs(a.mean().item() - 0.5772) < 0.1


def test_gumbel_topk_without_noise_picks_scores_in_descending_order():
    scores = torch.tensor([[0.5, 3.0, -1.0, 2.0, 1.0]])
    sel = gumbel_topk(scores, 3)
    assert sel.indices.tolist() == [[1, 3, 4]]
    assert torch.equal(sel.indices, topk_indices(scores, 3))


def test_gumbel_topk_follows_the_noise():
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    noise = torch.tensor([[0.1, 5.0, -2.0, 1.0]])
    assert gumbel_topk(scores, 2, noise).indices.tolist() == [[1, 3]]


def test_gumbel_topk_outputs_are_one_hot_and_soft_distributions():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 7, generator=g)
    sel = gumbel_topk(scores, 4, sample_gumbel((2, 7), g))
    assert sel.z.shape == sel.y.shape == (2, 4, 7)
    onehot = torch.nn.functional.one_hot(sel.indices, 7).float()
    assert torch.allclose(sel.z, onehot, atol=1e-6)
    assert torch.allclose(sel.y.sum(-1), torch.ones(2, 4))
    for row in sel.indices.tolist():
        assert len(set(row)) == len(row)
    # Sequential masking: a chosen candidate has zero soft weight at every later step.
    for b in range(2):
        for k in range(1, 4):
            assert torch.all(sel.y[b, k, sel.indices[b, :k]] == 0)


def test_gumbel_topk_straight_through_passes_gradient_to_scores():
    scores = torch.tensor([[1.0, 2.0, 0.5, -1.0]], requires_grad=True)
    sel = gumbel_topk(scores, 2)
    target = torch.tensor([1.0, -2.0, 3.0, 0.5])
    (sel.z * target).sum().backward()
    assert scores.grad is not None
    assert torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0


@pytest.mark.parametrize("k", [6, 7, 50])
def test_gumbel_topk_k_at_least_n_returns_all_candidates_without_nan(k):
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 6, generator=g, requires_grad=True)
    masked = scores + background_log_mask(torch.tensor([[True, False, True, False, False, True]] * 2))
    sel = gumbel_topk(masked, k, sample_gumbel((2, 6), g))
    assert sel.indices.shape == (2, 6)
    assert all(sorted(row) == list(range(6)) for row in sel.indices.tolist())
    assert torch.isfinite(sel.z).all() and torch.isfinite(sel.y).all()
    (sel.z * torch.arange(6.0)).sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert sorted(topk_indices(masked, k)[0].tolist()) == list(range(6))


def test_topk_prefers_foreground_then_best_background():
    scores = torch.tensor([[5.0, 9.0, 1.0, 7.0, 3.0, 8.0]])
    foreground = torch.tensor([[True, False, True, True, False, True]])
    masked = scores + background_log_mask(foreground)
    # Foreground by score (8, 7, 5, 1), then background by score (9, 3).
    expected = [5, 3, 0, 2, 1, 4]
    assert topk_indices(masked, 6).tolist() == [expected]
    assert gumbel_topk(masked, 6).indices.tolist() == [expected]


def test_background_mask_is_finite_log_tiny():
    mask = background_log_mask(torch.tensor([[True, False]]))
    assert mask.tolist() == [[0.0, pytest.approx(-87.33654475)]]
    assert LOG_TINY == pytest.approx(math.log(torch.finfo(torch.float32).tiny))


def test_gumbel_topk_rejects_infinite_scores():
    with pytest.raises(ValueError, match="finite"):
        gumbel_topk(torch.tensor([[0.0, float("-inf")]]), 1)


# ---------------------------------------------------------------- random foreground


def test_random_foreground_draws_only_foreground_while_it_lasts():
    foreground = torch.tensor([[False, True, False, True, True, False, False, False]])
    for seed in range(5):
        idx = random_foreground_indices(foreground, 2, torch.Generator().manual_seed(seed))[0].tolist()
        assert set(idx) <= {1, 3, 4} and len(set(idx)) == 2
    idx = random_foreground_indices(foreground, 5, torch.Generator().manual_seed(0))[0].tolist()
    assert set(idx[:3]) == {1, 3, 4} and len(set(idx)) == 5
    assert sorted(random_foreground_indices(foreground, 99)[0].tolist()) == list(range(8))


def test_random_foreground_is_reproducible_and_covers_all_foreground_cells():
    foreground = torch.ones(1, 10, dtype=torch.bool)
    a = random_foreground_indices(foreground, 3, torch.Generator().manual_seed(7))
    b = random_foreground_indices(foreground, 3, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(0)
    seen = {i for _ in range(50) for i in random_foreground_indices(foreground, 1, g)[0].tolist()}
    assert seen == set(range(10))


# ---------------------------------------------------------------- entropy


def test_score_entropy_hand_values():
    assert score_entropy(torch.zeros(2, 8)).item() == pytest.approx(math.log(8))
    assert score_entropy(torch.tensor([[100.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)
    masked = torch.zeros(1, 6) + background_log_mask(torch.tensor([[True, True, False, False, False, False]]))
    assert score_entropy(masked).item() == pytest.approx(math.log(2), abs=1e-4)


# ---------------------------------------------------------------- random window, zoom boxes


def test_random_window_start_is_valid_reproducible_and_hits_foreground():
    label = torch.zeros(1, 40, 30, 20, dtype=torch.long)
    label[0, 33, 2, 17] = 1
    window = (16, 16, 8)
    a = draw_random_window_start(label, window, torch.Generator().manual_seed(0), foreground_prob=1.0)
    b = draw_random_window_start(label, window, torch.Generator().manual_seed(0), foreground_prob=1.0)
    assert a == b
    assert crop_window(label[0], a, window).sum() == 1
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        s = draw_random_window_start(label, window, g, foreground_prob=0.0)
        assert all(0 <= si <= n - w for si, n, w in zip(s, (40, 30, 20), window, strict=True))


def test_zoom_boxes_grow_to_a_window_and_stay_inside():
    seg = torch.zeros(8, 8, 8, dtype=torch.long)
    seg[2:4, 2:4, 2:4] = 1  # full res [8, 16): grown to 16 around its centre
    seg[6:8, 6:8, 0:8] = 2  # full res [24, 32) x [0, 32): grown, then shifted inside
    boxes = zoom_boxes(seg, (32, 32, 32), (16, 16, 16))
    assert [(b.label, b.start, b.size) for b in boxes] == [
        (1, (4, 4, 4), (16, 16, 16)),
        (2, (16, 16, 0), (16, 16, 32)),
    ]
