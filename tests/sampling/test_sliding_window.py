"""The batched, mirrored sliding-window engine on small synthetic volumes."""

import itertools

import pytest
import torch

from nnunet_efficient.sampling.sliding_window import (
    mirror_axes_combinations,
    predict_mirrored,
    sliding_window_logits,
    sliding_window_slicers,
)


def grid_slicers(shape, window, step):
    starts = [sorted({*range(0, s - w + 1, step), s - w}) for s, w in zip(shape, window)]
    return [(slice(None), *[slice(a, a + w) for a, w in zip(corner, window)])
            for corner in itertools.product(*starts)]


class CountingConv(torch.nn.Module):
    """A fixed random conv net (not mirror-symmetric) that records the batch sizes it sees."""

    def __init__(self, channels_in=2, classes=3, dims=3):
        super().__init__()
        torch.manual_seed(0)
        conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
        self.conv = conv(channels_in, classes, 3, padding=1)
        self.batch_sizes = []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        return self.conv(x)


def test_mirror_combinations_follow_nnunet_order():
    assert mirror_axes_combinations((0, 1, 2)) == [(2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    assert mirror_axes_combinations(None) == []


def test_identity_network_with_uniform_weights_returns_the_input():
    data = torch.randn(3, 12, 10, 8)
    logits, run = sliding_window_logits(lambda x: x.clone(), data, grid_slicers((12, 10, 8), (6, 6, 4), 2), 3,
                                        1.0, accumulate_dtype=torch.float32)
    torch.testing.assert_close(logits, data)
    assert run.windows == len(grid_slicers((12, 10, 8), (6, 6, 4), 2))


def test_gaussian_weighting_of_a_constant_prediction_is_that_constant():
    importance = torch.rand(4, 4, 4) + 0.1
    slicers = grid_slicers((8, 8, 8), (4, 4, 4), 2)
    logits, _ = sliding_window_logits(lambda x: torch.full((x.shape[0], 2, 4, 4, 4), 3.0), torch.zeros(1, 8, 8, 8),
                                      slicers, 2, importance, accumulate_dtype=torch.float32)
    torch.testing.assert_close(logits, torch.full((2, 8, 8, 8), 3.0))


@pytest.mark.parametrize("batch_size", [2, 3, 64])
@pytest.mark.parametrize("mirror_axes", [None, (0, 1, 2)])
def test_batched_windows_equal_unbatched(batch_size, mirror_axes):
    net = CountingConv()
    data = torch.randn(2, 16, 12, 10)
    slicers = grid_slicers((16, 12, 10), (8, 6, 6), 4)
    importance = torch.rand(8, 6, 6) + 0.5
    reference, _ = sliding_window_logits(net, data, slicers, 3, importance, mirror_axes=mirror_axes,
                                         accumulate_dtype=torch.float32)
    batched, run = sliding_window_logits(net, data, slicers, 3, importance, batch_size=batch_size,
                                         mirror_axes=mirror_axes, accumulate_dtype=torch.float32)
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=1e-5)
    variants = 8 if mirror_axes else 1
    assert run.network_inputs == len(slicers) * variants
    assert max(net.batch_sizes[-run.network_passes:]) == min(batch_size, len(slicers))


def test_mirroring_averages_the_flipped_predictions():
    net = CountingConv(1, 1)
    x = torch.randn(2, 1, 6, 6, 6)
    expected = (net(x) + torch.flip(net(torch.flip(x, (2,))), (2,))) / 2
    torch.testing.assert_close(predict_mirrored(net, x, (0,)), expected)


def test_two_dimensional_windows():
    net = CountingConv(1, 2, dims=2)
    data = torch.randn(1, 12, 12)
    slicers = grid_slicers((12, 12), (6, 6), 3)
    one, _ = sliding_window_logits(net, data, slicers, 2, 1.0, mirror_axes=(0, 1), accumulate_dtype=torch.float32)
    many, _ = sliding_window_logits(net, data, slicers, 2, 1.0, batch_size=4, mirror_axes=(0, 1),
                                    accumulate_dtype=torch.float32)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)


def test_float16_overflow_is_reported():
    with pytest.raises(RuntimeError, match="overflow"):
        sliding_window_logits(lambda x: torch.full((x.shape[0], 1, 4, 4, 4), 1e6), torch.zeros(1, 4, 4, 4),
                              grid_slicers((4, 4, 4), (4, 4, 4), 4), 1, 1.0)


def test_invalid_batch_size_is_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        sliding_window_logits(lambda x: x, torch.zeros(1, 4, 4, 4), grid_slicers((4, 4, 4), (4, 4, 4), 4), 1, 1.0,
                              batch_size=0)


def test_refining_in_place_replaces_only_the_covered_voxels():
    importance = torch.rand(4, 4, 4) + 0.1
    data = torch.randn(1, 8, 8, 8)
    net = CountingConv(channels_in=1, classes=20)  # more classes than one weighting chunk
    first = torch.full((20, 8, 8, 8), 7.0, dtype=torch.half)
    some = grid_slicers((8, 8, 8), (4, 4, 4), 2)[:3]  # windows inside [0, 4) x [0, 4) x [0, 8)
    refined, _ = sliding_window_logits(net, data, some, 20, importance, out=first)
    alone, _ = sliding_window_logits(net, data, some, 20, importance)
    assert refined is first
    covered = torch.zeros(8, 8, 8, dtype=torch.bool)
    for s in some:
        covered[s[1:]] = True
    assert torch.equal(refined[:, covered], alone[:, covered])
    assert (refined[:, ~covered] == 7.0).all() and (~covered).any()



@pytest.mark.parametrize("patch, image", [((16, 16, 16), (16, 40, 33)), ((20, 20, 20), (57, 20, 101)),
                                          ((8, 12), (5, 8, 30)), ((64, 64), (1, 64, 64))],
                         ids=["3d", "3d_uneven", "2d_on_3d", "2d_single_slice"])
@pytest.mark.parametrize("step", [0.25, 0.33, 0.5, 1.0])
def test_slicers_are_the_windows_nnunet_visits_in_its_order(patch, image, step):
    from types import SimpleNamespace

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    nnunet = nnUNetPredictor(device=torch.device("cpu"))
    nnunet.configuration_manager, nnunet.tile_step_size = SimpleNamespace(patch_size=list(patch)), step
    assert sliding_window_slicers(image, patch, step) == nnunet._internal_get_sliding_window_slicers(image)


def test_slicers_of_two_windows_side_by_side():
    assert [s[1:] for s in sliding_window_slicers((4, 8), (4, 4), 1.0)] == [(slice(0, 4), slice(0, 4)),
                                                                            (slice(0, 4), slice(4, 8))]
