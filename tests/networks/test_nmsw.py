"""Tests for the NMSW network: global branch, scorer, merge and the end-to-end passes."""


import pytest
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunet_efficient.networks.aggregation import (
    AggregationNet,
    blend_windows,
    blend_windows_into,
    gaussian_importance_map,
)
from nnunet_efficient.networks.nmsw import (
    ENTROPY_WEIGHT,
    GlobalBranch,
    NMSWNetwork,
    Scorer,
    downsample_label,
    foreground_on_grid,
    resize_linear_window,
    score_entropy,
)
from nnunet_efficient.sampling.topk import sample_gumbel
from nnunet_efficient.sampling.windows import crop_window, window_slices

NUM_CLASSES = 3


def make_unet(dim=3, in_channels=1, n_stages=3, deep_supervision=False, residual=False):
    torch.manual_seed(0)
    conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if dim == 3 else (nn.Conv2d, nn.InstanceNorm2d)
    kwargs = dict(
        input_channels=in_channels,
        n_stages=n_stages,
        features_per_stage=[4 * 2**i for i in range(n_stages)],
        conv_op=conv,
        kernel_sizes=3,
        strides=[1] + [2] * (n_stages - 1),
        num_classes=NUM_CLASSES,
        n_conv_per_stage_decoder=1,
        conv_bias=True,
        norm_op=norm,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision,
    )
    if residual:
        return ResidualEncoderUNet(n_blocks_per_stage=1, **kwargs)
    return PlainConvUNet(n_conv_per_stage=1, **kwargs)


def make_nmsw(dim=3, window=None, global_shape=None, **kwargs):
    window = window or (16,) * dim
    global_shape = global_shape or (12,) * dim
    torch.manual_seed(0)
    net = NMSWNetwork(make_unet(dim), make_unet(dim), NUM_CLASSES, window, global_shape, **kwargs)
    return net


def image(shape, seed=0):
    return torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(seed))


def covered_mask(spatial, starts, window):
    mask = torch.zeros(spatial, dtype=torch.bool)
    for s in starts:
        mask[window_slices(s, window)] = True
    return mask


# ---------------------------------------------------------------- global branch and scorer


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_global_branch_logits_equal_the_unet_and_features_are_half_resolution(residual, deep_supervision):
    unet = make_unet(residual=residual, deep_supervision=deep_supervision).eval()
    branch = GlobalBranch(unet)
    x = image((16, 16, 8))
    with torch.no_grad():
        logits, features = branch(x)
        expected = unet(x)
    expected = expected[0] if deep_supervision else expected
    assert torch.equal(logits, expected)
    assert features.shape == (1, branch.feature_channels, 8, 8, 4)
    assert branch.feature_channels == 8


def test_global_branch_with_one_decoder_stage_returns_input_resolution_features():
    branch = GlobalBranch(make_unet(n_stages=2).eval())
    logits, features = branch(image((8, 8, 8)))
    assert logits.shape == (1, NUM_CLASSES, 8, 8, 8)
    assert features.shape == (1, 4, 8, 8, 8) and branch.feature_channels == 4


def test_scorer_gives_one_clamped_score_per_candidate():
    scorer = Scorer(8)
    with torch.no_grad():
        scorer.head[-1].bias.fill_(1000.0)  # every score far above the clamp
    scores = scorer(torch.randn(2, 8, 5, 6, 3), (7, 7, 4))
    assert scores.shape == (2, 196)
    assert torch.all(scores == 70.0)


def test_foreground_on_grid_is_nearest_resized_argmax():
    logits = torch.zeros(1, NUM_CLASSES, 4, 4, 4)
    logits[0, 2, :2, :2, :2] = 1.0  # class 2 in the first octant only
    fg = foreground_on_grid(logits, (2, 2, 2))
    assert fg.tolist() == [[True] + [False] * 7]


def test_downsample_label_is_nearest_and_keeps_dtype():
    label = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    label[..., 4:, :, :] = 2
    low = downsample_label(label, (4, 4, 4))
    assert low.dtype == torch.long and set(low.unique().tolist()) == {0, 2}
    assert torch.equal(low[0, 0, :, 0, 0], torch.tensor([0, 0, 2, 2]))


# ---------------------------------------------------------------- aggregation


@pytest.mark.parametrize("window", [(16, 16, 16), (16, 12, 8), (9, 10)])
def test_gaussian_importance_map_shape_range_and_symmetry(window):
    g = gaussian_importance_map(window)
    assert g.shape == window
    assert g.min() >= 1e-3 and g.max() <= 1.0
    assert torch.allclose(g, g.flip(list(range(len(window)))))
    centre = tuple(w // 2 for w in window)
    assert g[centre] == g.max()


def test_blending_identical_windows_returns_the_window_logits():
    window = (8, 6, 4)
    logits = torch.randn(NUM_CLASSES, *window)
    fallback = torch.randn(NUM_CLASSES, 12, 10, 9)
    start = (2, 3, 5)
    out = blend_windows(fallback, [(start, logits)] * 3, gaussian_importance_map(window))
    assert torch.allclose(out[(slice(None), *window_slices(start, window))], logits, atol=1e-6)


@pytest.mark.parametrize("spatial, window", [((20, 18, 12), (8, 8, 6)), ((20, 17), (8, 6))])
def test_blending_windows_cut_from_one_volume_returns_that_volume_where_covered(spatial, window):
    volume = torch.randn(NUM_CLASSES, *spatial)
    fallback = torch.randn(NUM_CLASSES, *spatial)
    starts = [(0,) * len(spatial), (3,) * len(spatial), (5, 2, 1)[: len(spatial)]]
    windows = [(s, crop_window(volume, s, window)) for s in starts]
    out = blend_windows(fallback, windows, gaussian_importance_map(window))
    covered = covered_mask(spatial, starts, window)
    assert torch.allclose(out[:, covered], volume[:, covered], atol=1e-5)
    assert torch.equal(out[:, ~covered], fallback[:, ~covered])


@pytest.mark.parametrize("spatial, window", [((20, 18, 12), (8, 8, 6)), ((20, 17), (8, 6))])
def test_in_place_blending_equals_blending_bit_for_bit(spatial, window):
    fallback = torch.randn(NUM_CLASSES, *spatial)
    starts = [(0,) * len(spatial), (3,) * len(spatial), (5, 2, 1)[: len(spatial)], (3,) * len(spatial)]
    windows = [(s, torch.randn(NUM_CLASSES, *window)) for s in starts]
    importance = gaussian_importance_map(window)
    expected = blend_windows(fallback, windows, importance)
    out = fallback.clone()
    assert blend_windows_into(out, windows, importance) is out
    assert torch.equal(out, expected)


@pytest.mark.parametrize(
    "low, size, start, window",
    [((1, 3, 6, 10, 4), (17, 23, 9), (0, 5, 2), (8, 8, 7)),   # upsampling, window at the border
     ((1, 2, 6, 9, 4), (17, 9, 12), (9, 1, 5), (8, 8, 7)),    # one axis at its own size
     ((2, 3, 12, 8), (30, 8), (11, 0), (19, 8)),               # 2D, batch of 2
     ((1, 1, 20, 20, 20), (12, 15, 20), (3, 4, 2), (9, 11, 6))]  # downsampling
)
def test_window_of_a_linear_resize_equals_the_crop_of_the_full_resize(low, size, start, window):
    x = torch.randn(*low, generator=torch.Generator().manual_seed(1))
    full = F.interpolate(x, size=size, mode="trilinear" if len(size) == 3 else "bilinear", align_corners=False)
    got = resize_linear_window(x, size, start, window)
    assert got.shape == (*low[:2], *window)
    assert torch.allclose(got, crop_window(full, start, window), atol=1e-5)


def test_prediction_without_autograd_equals_the_differentiable_merge():
    net = make_nmsw(window=(16, 16, 8), global_shape=(12, 16, 8)).eval()
    x = image((20, 28, 12))
    differentiable = net.forward_infer(x, k=4)
    with torch.no_grad():
        in_place = net.forward_infer(x, k=4)
    assert in_place["window_starts"] == differentiable["window_starts"]
    assert torch.allclose(in_place["logits"], differentiable["logits"], atol=1e-5)


def test_aggregation_net_channels_and_depth():
    agg = AggregationNet(NUM_CLASSES)
    convs = [m for m in agg.modules() if isinstance(m, nn.Conv3d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(6, 6), (6, 6), (6, 3), (3, 3)]
    assert all(c.kernel_size == (3, 3, 3) for c in convs)
    out = agg(torch.randn(2, NUM_CLASSES, 6, 6, 6), torch.randn(2, NUM_CLASSES, 6, 6, 6))
    assert out.shape == (2, NUM_CLASSES, 6, 6, 6)


# ---------------------------------------------------------------- training pass


def test_training_gradient_reaches_the_scorer_through_the_topk():
    net = make_nmsw()
    x = image((32, 32, 32))
    g = torch.Generator().manual_seed(0)
    n = net.num_candidates(x.shape[2:])
    assert n == 27
    out = net.forward_train(x, noise=sample_gumbel((1, n), g), random_window_start=[(5, 3, 9)])
    target = torch.randint(0, NUM_CLASSES, (1, 32, 32, 32), generator=g)
    # A loss on the aggregated output only: the scores reach it solely through y_k[n*].
    F.cross_entropy(out["logits"], target).backward()
    for conv in (net.scorer.head[0], net.scorer.head[-1]):
        assert conv.weight.grad is not None
        assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0
    # The scorer trains the global backbone, but the merge sees detached global logits.
    enc_grad = next(net.global_branch.unet.encoder.parameters()).grad
    assert enc_grad is not None and enc_grad.abs().sum() > 0
    assert net.global_branch.unet.decoder.seg_layers[-1].weight.grad is None


def test_training_outputs_shapes_and_random_window():
    net = make_nmsw(k_train=2)
    x = image((32, 32, 32))
    n = net.num_candidates(x.shape[2:])
    start = (5, 3, 9)
    out = net.forward_train(x, noise=sample_gumbel((1, n), torch.Generator().manual_seed(1)), random_window_start=start)
    assert out["logits"].shape == (1, NUM_CLASSES, 32, 32, 32)
    assert out["global_logits"].shape == (1, NUM_CLASSES, 12, 12, 12)
    assert out["scores"].shape == out["masked_scores"].shape == (1, 27)
    assert out["z"].shape == out["y"].shape == (1, 2, 27)
    assert out["local_logits"].shape == (1, 3, NUM_CLASSES, 16, 16, 16)
    assert out["local_starts"][0][-1] == start and out["local_starts"][0][:2] == out["window_starts"][0]
    # The random window is the plain local net on the raw crop (no y weighting).
    with torch.no_grad():
        expected = net.local_net(crop_window(x, start, (16, 16, 16)))
    assert torch.allclose(out["local_logits"][0, -1], expected[0], atol=1e-5)
    loss = ENTROPY_WEIGHT * score_entropy(out["masked_scores"])
    assert torch.isfinite(loss)


def test_training_with_k_at_least_n_uses_every_window_without_nan():
    net = make_nmsw(k_train=100)
    x = image((24, 24, 24))
    n = net.num_candidates(x.shape[2:])
    assert n == 8
    out = net.forward_train(x, noise=sample_gumbel((1, n), torch.Generator().manual_seed(2)))
    assert sorted(out["indices"][0].tolist()) == list(range(n))
    assert torch.isfinite(out["logits"]).all()
    out["logits"].square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


# ---------------------------------------------------------------- inference


class _StubGlobal(nn.Module):
    feature_channels = 4

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits, torch.zeros(1, 4, 2, 2, 2)


class _StubScorer(nn.Module):
    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def forward(self, features, grid):
        return self.scores


def test_inference_picks_the_highest_scoring_foreground_windows():
    net = make_nmsw().eval()
    x = image((24, 24, 24))  # grid 2 x 2 x 2
    logits = torch.zeros(1, NUM_CLASSES, 2, 2, 2)
    foreground = [True, False, True, True, False, True, False, False]
    logits.view(1, NUM_CLASSES, 8)[0, 1, torch.tensor(foreground)] = 5.0
    net.global_branch = _StubGlobal(logits)
    net.scorer = _StubScorer(torch.tensor([[5.0, 9.0, 1.0, 7.0, 3.0, 8.0, 2.0, 0.0]]))
    starts, _ = net.grid(x.shape[2:])
    out = net.forward_infer(x, k=3)
    assert out["indices"].tolist() == [[5, 3, 0]]
    assert out["window_starts"] == [[starts[5], starts[3], starts[0]]]
    # Past the foreground cells, the best-scoring background ones come next.
    assert net.forward_infer(x, k=6)["indices"].tolist() == [[5, 3, 0, 2, 1, 4]]


@pytest.mark.parametrize(
    "dim, spatial, window, global_shape",
    [
        (3, (24, 24, 24), (16, 16, 16), (12, 12, 12)),
        (3, (20, 28, 12), (16, 16, 8), (12, 16, 8)),
        (2, (40, 28), (16, 16), (20, 16)),
    ],
)
def test_inference_takes_the_global_prediction_exactly_where_no_window_lands(dim, spatial, window, global_shape):
    net = make_nmsw(dim, window, global_shape).eval()
    x = image(spatial)
    out = net.forward_infer(x, k=1)
    expected = F.interpolate(out["global_logits"], size=spatial, mode="bilinear" if dim == 2 else "trilinear")
    covered = covered_mask(spatial, out["window_starts"][0], window)
    assert covered.any() and not covered.all()
    assert torch.equal(out["logits"][0][:, ~covered], expected[0][:, ~covered])
    assert not torch.allclose(out["logits"][0][:, covered], expected[0][:, covered])


def test_inference_is_deterministic_and_k_at_least_n_degrades_to_all_windows():
    net = make_nmsw().eval()
    x = image((24, 24, 24))
    a, b = net.forward_infer(x, k=2), net.forward_infer(x, k=2)
    assert torch.equal(a["logits"], b["logits"])
    big = net.forward_infer(x, k=1000)
    assert sorted(big["indices"][0].tolist()) == list(range(8))
    assert torch.isfinite(big["logits"]).all()
    every = net.forward_all_windows(x)
    assert every["indices"][0].tolist() == list(range(8))
    assert torch.allclose(big["logits"], every["logits"], atol=1e-5)


def test_training_without_noise_selects_the_inference_topk():
    net = make_nmsw(k_train=3).eval()
    x = image((24, 24, 24))
    with torch.no_grad():
        train = net.forward_train(x)
    infer = net.forward_infer(x, k=3)
    assert torch.equal(train["indices"], infer["indices"])


def test_random_foreground_strategy_and_zoom_boxes():
    net = make_nmsw().eval()
    x = image((24, 24, 24))
    g = torch.Generator().manual_seed(0)
    out = net.forward_infer(x, k=3, strategy="random_fg", generator=g)
    assert out["indices"].shape == (1, 3)
    fg = out["foreground"][0]
    n_fg = int(fg.sum())
    assert fg[out["indices"][0][: min(3, n_fg)]].all()
    glob = net.global_pass(x)
    idx = net.choose_windows(glob, 2, "random_fg", torch.Generator().manual_seed(0))
    assert idx.shape == (1, 2)
    assert glob.foreground[0][idx[0][: min(2, n_fg)]].all()
    assert net.choose_windows(glob, strategy="global").shape == (1, 0)
    boxes = net.zoom_boxes(out["global_logits"], (24, 24, 24))[0]
    present = set(out["global_logits"].argmax(1).unique().tolist()) - {0}
    assert {b.label for b in boxes} == present
    assert all(all(s >= w for s, w in zip(b.size, (16, 16, 16), strict=True)) for b in boxes)
    with pytest.raises(ValueError, match="strategy"):
        net.forward_infer(x, strategy="nope")


def test_global_shape_not_divisible_by_the_global_stride_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        make_nmsw(global_shape=(12, 12, 10))


def test_local_net_keeps_stock_state_dict_keys():
    net = make_nmsw()
    local = make_unet()
    net.local_net.load_state_dict(local.state_dict())
    keys = net.state_dict().keys()
    assert {f"local_net.{k}" for k in local.state_dict()} <= set(keys)


def test_forward_on_a_canvas_is_the_whole_nmsw_inference_not_the_local_net():
    net = make_nmsw().eval()
    x = image((24, 24, 24))
    with torch.no_grad():
        logits = net(x)
        assert torch.equal(logits, net.forward_infer(x)["logits"])  # k_infer windows, learned merge
        assert logits.shape == (1, 3, 24, 24, 24)
        # the global branch matters: a global head biased to class 2 changes voxels no window covers
        net.global_branch.unet.decoder.seg_layers[-1].bias.add_(torch.tensor([0.0, 0.0, 30.0]))
        assert not torch.equal(net(x), logits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_and_inference_run_on_cuda():
    net = make_nmsw(k_train=2).cuda()
    x = image((24, 24, 24)).cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    out = net.forward_train(x, noise=sample_gumbel((1, 8), g), random_window_start=(0, 4, 8))
    out["logits"].mean().backward()
    assert net.scorer.head[0].weight.grad.is_cuda
    for strategy in ("nmsw", "random_fg", "all"):
        res = net.eval().forward_infer(x, k=2, strategy=strategy, generator=torch.Generator().manual_seed(0))
        assert res["logits"].is_cuda and torch.isfinite(res["logits"]).all()
