"""Window selection helpers of the sparse sliding window, on hand-checkable masks."""

import pytest
import torch

from nnunet_efficient.sampling.sparse import covered_by, grow_mask, merge_sparse, windows_overlapping


def windows_1d(starts, width):
    return [(slice(None), slice(s, s + width)) for s in starts]


def test_grow_mask_is_a_cube_clipped_at_the_border():
    mask = torch.zeros(6, 6, 6, dtype=torch.bool)
    mask[1, 4, 3] = True
    grown = grow_mask(mask, 1)
    assert grown.sum() == 3 ** 3
    assert torch.equal(grown.nonzero().min(0).values, torch.tensor([0, 3, 2]))
    assert torch.equal(grown.nonzero().max(0).values, torch.tensor([2, 5, 4]))
    corner = torch.zeros(4, 4, 4, dtype=torch.bool)
    corner[0, 0, 0] = True
    assert grow_mask(corner, 2).sum() == 3 ** 3


@pytest.mark.parametrize("shape", [(9,), (9, 9)])
def test_grow_mask_by_zero_is_the_mask(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.7
    assert torch.equal(grow_mask(mask, 0), mask)


def test_windows_overlapping_and_covered_by():
    region = torch.zeros(12, dtype=torch.bool)
    region[4:8] = True
    fine = windows_1d([0, 2, 4, 6, 8], 4)
    chosen = windows_overlapping(region, fine)
    assert [s[1].start for s in chosen] == [2, 4, 6]
    assert covered_by(chosen, (12,)).nonzero().flatten().tolist() == list(range(2, 10))


def test_windows_overlapping_handles_2d_slicers_with_a_slice_index():
    region = torch.zeros(3, 8, 8, dtype=torch.bool)
    region[1, 0, 0] = True
    slicers = [(slice(None), d, slice(0, 4), slice(0, 4)) for d in range(3)]
    assert windows_overlapping(region, slicers) == [slicers[1]]


def test_merge_sparse_takes_fine_logits_only_where_fine_windows_cover():
    guide = torch.zeros(2, 12)
    fine = torch.full((2, 12), float("nan"))
    fine[:, 2:6] = 1.0
    merged = merge_sparse(guide, fine, windows_1d([2], 4))
    assert merged[0].tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
