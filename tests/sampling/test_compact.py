"""Merging window logits and mirrored passes into one compact buffer."""

import torch

from nnunet_efficient.sampling.compact import merge_pass_into, unflip_slices, window_weights


def test_compact_merge_adds_a_flipped_pass_in_the_unflipped_frame():
    assert unflip_slices((slice(0, 2), slice(1, 3)), (0,), (5, 4)) == (slice(3, 5), slice(1, 3))
    # one window over the left half of a 1 x 4 x 2 volume, flipped along axis 1: lands on the right half
    importance = torch.ones(1, 2, 2)
    weights = window_weights((1, 4, 2), [(0, 0, 0)], importance)
    total = torch.zeros(1, 1, 4, 2, dtype=torch.half)
    window = torch.arange(4.0).view(1, 1, 2, 2)
    merge_pass_into(total, weights, lambda a, b: torch.full((1, b - a, 4, 2), -1.0), [((0, 0, 0), window)],
                    importance, flip_axes=(1,))
    assert total[0, 0].tolist() == [[-1, -1], [-1, -1], [2, 3], [0, 1]]


def test_overlapping_windows_blend_by_importance_and_uncovered_voxels_keep_the_fallback():
    importance = torch.tensor([[[1.0, 3.0]]])  # (1, 1, 2) window
    starts = [(0, 0, 0), (0, 0, 1)]  # overlap on z = 1
    weights = window_weights((1, 1, 4), starts, importance)
    assert weights.flatten().tolist() == [1, 4, 3, 0]
    total = torch.zeros(1, 1, 1, 4, dtype=torch.float32)
    windows = [(starts[0], torch.full((1, 1, 1, 2), 2.0)), (starts[1], torch.full((1, 1, 1, 2), 6.0))]
    merge_pass_into(total, weights, lambda a, b: torch.full((1, b - a, 1, 4), -5.0), windows, importance)
    # z = 1: (3 * 2 + 1 * 6) / 4
    assert total.flatten().tolist() == [2.0, 3.0, 6.0, -5.0]
