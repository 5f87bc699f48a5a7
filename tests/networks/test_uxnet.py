"""Tests for 3D UX-Net / RepUX-Net: Bayesian prior, folding, checkpoints, topology and shapes."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_efficient.errors import EfficientError
from nnunet_efficient.networks import uxnet
from nnunet_efficient.networks.uxnet import (
    BFMDepthwiseConv3d,
    RepUXNet,
    UXNet,
    bfm_prior,
    clamp_kernel,
)

NUM_CLASSES = 3
ISOTROPIC = dict(patch_size=(16, 16, 16), strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]])
# Thick slices: no pooling along the first axis until level 2, as nnU-Net plans anisotropic data.
ANISOTROPIC = dict(patch_size=(8, 32, 32), strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]])


def make_net(cls=RepUXNet, config=ISOTROPIC, in_channels=1, deep_supervision=False, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cls(input_channels=in_channels, num_classes=NUM_CLASSES, n_stages=len(config["strides"]),
               features_per_stage=(4, 8, 16, 32), deep_supervision=deep_supervision, **config, **kwargs)


def image(shape, channels=1, batch=1, seed=0):
    return torch.randn(batch, channels, *shape, generator=torch.Generator().manual_seed(seed))


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def bfm_convs(net):
    return [m for m in net.modules() if isinstance(m, BFMDepthwiseConv3d)]


# ---------------------------------------------------------------- Bayesian frequency prior


def test_bfm_prior_values_by_hand():
    bfm = bfm_prior((3, 3, 3))
    assert bfm[1, 1, 1].item() == 1.0  # centre: d = 0
    assert bfm[0, 1, 1].item() == pytest.approx(0.5)  # face neighbour: d = 1
    assert bfm[0, 0, 1].item() == pytest.approx(1 / (1 + math.sqrt(2)))  # edge: d = sqrt 2
    assert bfm[0, 0, 0].item() == pytest.approx(1 / (1 + math.sqrt(3)))  # corner: d = sqrt 3
    assert bfm_prior((3, 1, 5), alpha=2.0)[1, 0, 4].item() == pytest.approx(2 / (2 + 2))  # d = 2


def test_bfm_buffer_is_left_out_of_checkpoints_but_folded_state_is_kept():
    conv = BFMDepthwiseConv3d(2, (5, 3, 1))
    assert set(conv.state_dict()) == {"weight", "bias", "folded"}
    assert conv.bfm.shape == (1, 1, 5, 3, 1) and conv.folded.dtype == torch.bool and not conv.folded


def test_bfm_conv_applies_weight_times_prior_without_touching_the_parameter():
    conv = BFMDepthwiseConv3d(2, (3, 3, 3))
    before = conv.weight.detach().clone()
    x = image((5, 5, 5), channels=2)
    expected = F.conv3d(x, before * bfm_prior((3, 3, 3)), conv.bias, padding=1, groups=2)
    for _ in range(3):  # the reference multiplied its weight by the prior on every call
        out = conv(x)
    assert torch.equal(conv.weight, before)
    torch.testing.assert_close(out, expected)


def test_bfm_buffer_follows_the_module_dtype():
    conv = BFMDepthwiseConv3d(2, (3, 3, 3)).double()
    assert conv.bfm.dtype == torch.float64 and conv.folded.dtype == torch.bool
    assert conv(image((4, 4, 4), channels=2).double()).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_folding_on_the_gpu_keeps_outputs():
    net = make_net().cuda().eval()
    x = image((16, 16, 16)).cuda()
    with torch.no_grad():
        unfolded = net(x)
        net.fold_reparameterisation()
        folded = net(x)
    assert all(c.bfm.is_cuda for c in bfm_convs(net))
    assert relative_error(folded, unfolded) <= 1e-5


# ---------------------------------------------------------------- folding and training


def test_folded_and_unfolded_networks_agree():
    net = make_net().eval()
    x = image((16, 16, 16), seed=1)
    with torch.no_grad():
        unfolded = net(x)
        net.fold_reparameterisation()
        folded = net(x)
    assert net.is_folded and all(c.folded.item() for c in bfm_convs(net))
    assert relative_error(folded, unfolded) <= 1e-5


def test_folding_twice_changes_nothing():
    net = make_net()
    net.fold_reparameterisation()
    once = {k: v.clone() for k, v in net.state_dict().items()}
    net.fold_reparameterisation()
    assert all(torch.equal(once[k], v) for k, v in net.state_dict().items())


def test_one_adamw_step_changes_the_large_kernels():
    net = make_net().train()
    convs = bfm_convs(net)
    assert max(max(c.kernel_size) for c in convs) == 15  # 16^3 patch, level 1 is 8^3: k = min(21, 15)
    weights = [c.weight.detach().clone() for c in convs]
    effective = [c.effective_weight().detach().clone() for c in convs]
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    logits = net(image((16, 16, 16), batch=2))
    F.cross_entropy(logits, torch.randint(0, NUM_CLASSES, (2, 16, 16, 16))).backward()
    optimizer.step()
    for conv, w0, e0 in zip(convs, weights, effective):
        changed = conv.weight.detach() != w0
        assert changed.all(), f"{conv}: {int((~changed).sum())} taps did not train"
        assert not torch.allclose(conv.effective_weight().detach(), e0)


# ---------------------------------------------------------------- checkpoints


def test_unfolded_checkpoint_loads_into_a_folded_network():
    source = make_net(seed=0).eval()
    target = make_net(seed=1).eval()
    target.fold_reparameterisation()
    checkpoint = source.state_dict()
    saved = {k: v.clone() for k, v in checkpoint.items()}
    target.load_state_dict(checkpoint)
    assert all(torch.equal(saved[k], v) for k, v in checkpoint.items())  # the caller's dict is untouched
    assert target.is_folded and all(c.folded.item() for c in bfm_convs(target))
    x = image((16, 16, 16), seed=2)
    with torch.no_grad():
        assert relative_error(target(x), source(x)) <= 1e-5


def test_folded_checkpoint_loads_into_an_unfolded_network():
    source = make_net(seed=0).eval()
    raw = [c.weight.detach().clone() for c in bfm_convs(source)]
    source.fold_reparameterisation()
    target = make_net(seed=1).eval()
    target.load_state_dict(source.state_dict())
    assert not target.is_folded and not any(c.folded.item() for c in bfm_convs(target))
    for conv, w in zip(bfm_convs(target), raw):  # dividing by the prior recovers the raw weight
        torch.testing.assert_close(conv.weight.detach(), w)
    x = image((16, 16, 16), seed=2)
    with torch.no_grad():
        assert relative_error(target(x), source(x)) <= 1e-5


def test_checkpoint_without_folded_entry_is_refused():
    checkpoint = make_net().state_dict()
    key = next(k for k in checkpoint if k.endswith(".folded"))
    del checkpoint[key]
    with pytest.raises(EfficientError, match="no 'folded' entry") as error:
        make_net(seed=1).load_state_dict(checkpoint)
    assert key in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------- kernel clamping


@pytest.mark.parametrize("kernel", [(5, 5, 5), (7, 3, 5), (21, 13, 9)])
def test_fft_depthwise_conv_matches_conv3d_with_gradients(kernel):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 7, 5, requires_grad=True)
    weight = torch.randn(3, 1, *kernel, requires_grad=True)
    bias = torch.randn(3, requires_grad=True)
    fft = uxnet.depthwise_conv3d(x, weight, bias)  # autograd on the CPU: the FFT path
    direct = F.conv3d(x, weight, bias, padding=tuple(k // 2 for k in kernel), groups=3)
    assert fft.shape == direct.shape
    assert torch.allclose(fft, direct, rtol=1e-4, atol=1e-4)
    grads_fft = torch.autograd.grad((fft * direct.detach()).sum(), (x, weight, bias))
    grads_direct = torch.autograd.grad((direct * direct.detach()).sum(), (x, weight, bias))
    for a, b in zip(grads_fft, grads_direct):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-3 * b.abs().max().item())
    with torch.no_grad():  # inference keeps the plain grouped conv
        assert torch.equal(uxnet.depthwise_conv3d(x, weight, bias),
                           F.conv3d(x, weight, bias, padding=tuple(k // 2 for k in kernel), groups=3))


def test_clamp_kernel_by_hand():
    assert clamp_kernel(21, (20, 7, 1)) == (21, 13, 1)
    assert clamp_kernel(21, (10, 10, 10)) == (19, 19, 19)
    assert clamp_kernel(7, (4, 3, 2)) == (7, 5, 3)


def test_clamped_depthwise_conv_gives_the_unclamped_output():
    n = 4
    weight = torch.randn(2, 1, 21, 21, 21, generator=torch.Generator().manual_seed(0))
    x = image((n, n, n), channels=2)
    full = F.conv3d(x, weight, padding=10, groups=2)
    k = clamp_kernel(21, (n, n, n))[0]  # 7: the taps at offsets -3..3
    crop = slice(10 - k // 2, 10 + k // 2 + 1)
    clamped = F.conv3d(x, weight[:, :, crop, crop, crop], padding=k // 2, groups=2)
    torch.testing.assert_close(clamped, full)


@pytest.mark.parametrize("cls", [UXNet, RepUXNet])
def test_network_kernels_follow_the_clamping_rule(cls):
    net = make_net(cls, ANISOTROPIC)
    # Levels 1..3 of an (8, 32, 32) patch with strides (1,2,2), (2,2,2), (2,2,2).
    sizes = [(8, 16, 16), (4, 8, 8), (2, 4, 4)]
    k = 21 if cls is RepUXNet else 7
    assert net.kernel_sizes == [clamp_kernel(k, s) for s in sizes]
    for stage, size in zip(net.encoder.stages, sizes):
        for block in stage:
            kernel = tuple(block.dwconv.weight.shape[2:])
            assert kernel == clamp_kernel(k, size)
            assert all(kk <= 2 * n - 1 for kk, n in zip(kernel, size))


# ---------------------------------------------------------------- topology and shapes


@pytest.mark.parametrize("cls", [UXNet, RepUXNet])
@pytest.mark.parametrize("config", [ISOTROPIC, ANISOTROPIC], ids=["isotropic", "anisotropic"])
@pytest.mark.parametrize("in_channels", [1, 2])
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_output_shapes(cls, config, in_channels, deep_supervision):
    net = make_net(cls, config, in_channels, deep_supervision).eval()
    patch = config["patch_size"]
    with torch.no_grad():
        out = net(image(patch, in_channels, batch=2))
    if not deep_supervision:
        assert out.shape == (2, NUM_CLASSES, *patch)
        return
    expected, size = [], patch
    for s in config["strides"][:-1]:  # nnU-Net's scales: 1 / cumprod(strides), the last one dropped
        size = tuple(n // k for n, k in zip(size, s))
        expected.append((2, NUM_CLASSES, *size))
    assert [tuple(o.shape) for o in out] == expected


def test_toggling_decoder_deep_supervision_switches_the_output_type():
    net = make_net(UXNet).eval()
    x = image((16, 16, 16))
    with torch.no_grad():
        plain = net(x)
        net.decoder.deep_supervision = True  # what nnU-Net's trainer does
        deep = net(x)
    assert isinstance(plain, torch.Tensor) and isinstance(deep, list) and len(deep) == 3
    torch.testing.assert_close(deep[0], plain)


def test_reference_widths_map_to_the_reference_layers():
    torch.manual_seed(0)
    net = UXNet(1, 2, 5, [48, 96, 192, 384, 768], [[1, 1, 1]] + [[2, 2, 2]] * 4, (96, 96, 96))
    stem = net.encoder.stem[0]
    assert (stem.kernel_size, stem.stride, stem.padding) == ((7,) * 3, (2,) * 3, (3,) * 3)
    assert [stage[0].dwconv.in_channels for stage in net.encoder.stages] == [48, 96, 192, 384]
    assert [d[1].out_channels for d in net.encoder.downsample] == [96, 192, 384]
    assert [b.output_channels for b in net.decoder.skip_blocks] == [48, 96, 192, 384, 768]
    assert [t.in_channels for t in net.decoder.transpconvs] == [96, 192, 384, 768]
    assert net.kernel_sizes == [(7, 7, 7)] * 4  # 96^3: no clamping above 6^3 at level 4 (k = min(7, 11))
    assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(53.0, abs=0.05)  # paper: 53.0 M


def test_anisotropic_stem_keeps_the_unpooled_axis():
    net = make_net(UXNet, ANISOTROPIC)
    stem = net.encoder.stem[0]
    assert stem.kernel_size == (3, 7, 7) and stem.stride == (1, 2, 2) and stem.padding == (1, 3, 3)


def test_arguments_from_a_plans_json_build_the_network():
    arch_kwargs = json.loads(json.dumps({
        "n_stages": 4, "features_per_stage": [4, 8, 16, 32], "strides": [1, 2, 2, 2], "patch_size": [16, 16, 16],
        "kernel_size": 11, "blocks_per_stage": [1, 2, 1], "bfm_alpha": 2.0,
    }))
    net = RepUXNet(input_channels=2, num_classes=NUM_CLASSES, deep_supervision=False, **arch_kwargs)
    assert [len(s) for s in net.encoder.stages] == [1, 2, 1]
    assert net.kernel_sizes == [(11, 11, 11), (7, 7, 7), (3, 3, 3)]
    assert bfm_convs(net)[0].alpha == 2.0


def test_uxnet_fold_is_a_no_op():
    net = make_net(UXNet)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.fold_reparameterisation()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# ---------------------------------------------------------------- memory estimate


@pytest.mark.parametrize("cls", [UXNet, RepUXNet])
def test_feature_map_size_grows_linearly_with_voxels_and_with_width(cls):
    net = make_net(cls)
    small = net.compute_conv_feature_map_size((16, 16, 16))
    assert small > 0
    assert net.compute_conv_feature_map_size((32, 16, 16)) / small == pytest.approx(2, rel=0.02)
    assert net.compute_conv_feature_map_size((32, 32, 32)) / small == pytest.approx(8, rel=0.02)
    torch.manual_seed(0)
    wider = cls(1, NUM_CLASSES, 4, (8, 16, 32, 64), ISOTROPIC["strides"], ISOTROPIC["patch_size"])
    assert wider.compute_conv_feature_map_size((16, 16, 16)) > small


# ---------------------------------------------------------------- bad configurations


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_stages=3, strides=[[1, 1], [2, 2], [2, 2]], patch_size=(16, 16)), "3D only"),
        (dict(n_stages=3, strides=[[1, 1], [2, 2], [2, 2]], patch_size=(16, 16, 16)), "3D only"),
        (dict(n_stages=3, strides=[1, 2, 2], patch_size=(16, 16, 10)), r"patch_size \[16, 16, 10\].*\[4, 4, 4\]"),
        (dict(n_stages=3, strides=[2, 2, 2], patch_size=(16, 16, 16)), r"strides\[0\]"),
        (dict(n_stages=2, strides=[1, 2], patch_size=(16, 16, 16)), "at least 3"),
        (dict(n_stages=3, strides=[1, 2, 2, 2], patch_size=(16, 16, 16)), "one of each per stage"),
        (dict(n_stages=3, strides=[1, 2, 2], patch_size=(16, 16, 16), blocks_per_stage=[2, 2, 2]), "blocks_per_stage"),
        (dict(n_stages=3, strides=[1, 2, 2], patch_size=(16, 16, 16), kernel_size=6), "odd"),
    ],
    ids=["2d-patch", "2d-strides", "not-divisible", "first-stride", "two-stages", "lengths", "blocks", "even-kernel"],
)
def test_bad_configurations_raise_one_line_errors(kwargs, message):
    features = [4 * 2**i for i in range(kwargs["n_stages"])]
    with pytest.raises(EfficientError, match=message) as error:
        RepUXNet(input_channels=1, num_classes=2, features_per_stage=features, **kwargs)
    assert "\n" not in str(error.value)


def test_input_not_divisible_by_the_total_stride_is_refused():
    with pytest.raises(EfficientError, match="not divisible"):
        make_net(UXNet)(image((16, 16, 12)))
