"""Tests for Distill-DSM: the depth shift on hand-made tensors, parameter counts by hand, free depth, shapes."""

import warnings

import pytest
import torch

from nnunet_efficient.errors import EfficientError
from nnunet_efficient.networks.distill_dsm import (
    DepthShiftModule,
    DistillDSMUNet,
    depth_shift,
    shifted_channels,
)

# The paper's / released network: widths 16/32/64/128/128, four in-plane poolings by 2.
PAPER = dict(n_stages=5, features_per_stage=[16, 32, 64, 128, 128], strides=[[1, 1, 1]] + [[1, 2, 2]] * 4)
SMALL = dict(n_stages=3, features_per_stage=[8, 16, 32], strides=[[1, 1, 1], [1, 2, 2], [1, 2, 2]])
# Thick slices along Z (axis 2) and in-plane pooling only along X at the second level, as nnU-Net
# plans anisotropic data.
ANISOTROPIC = dict(n_stages=3, features_per_stage=[8, 16, 32], strides=[[1, 1, 1], [2, 1, 1], [2, 2, 1]],
                   depth_axis=2)


def make_net(config=SMALL, in_channels=1, num_classes=3, seed=0, **kwargs):
    torch.manual_seed(seed)
    return DistillDSMUNet(input_channels=in_channels, num_classes=num_classes, **config, **kwargs)


def image(shape, channels=1, batch=1, seed=0):
    return torch.randn(batch, channels, *shape, generator=torch.Generator().manual_seed(seed))


def slice_stack(depth, channels, batch=1):
    """``(batch·depth, channels, 1, 1)`` whose value is ``1000·volume + 100·(slice+1) + channel``."""
    values = [[1000 * b + 100 * (t + 1) + c for c in range(channels)] for b in range(batch) for t in range(depth)]
    return torch.tensor(values, dtype=torch.float32)[:, :, None, None]


# ---------------------------------------------------------------- the shift


def test_shift_moves_exactly_the_forward_and_backward_channels_by_one_slice():
    x = slice_stack(depth=4, channels=6, batch=2)  # channels 0-1 forward, 2-3 backward, 4-5 untouched
    y = depth_shift(x, 4, 2, 2)[:, :, 0, 0].reshape(2, 4, 6)
    for b in range(2):
        for t in range(4):
            # forward part at slice t holds slice t-1 (slice "t" is 100·(t+1)); zeros at slice 0
            expected_forward = [0.0, 0.0] if t == 0 else [1000 * b + 100 * t + c for c in (0, 1)]
            # backward part at slice t holds slice t+1; zeros at the last slice
            expected_backward = [0.0, 0.0] if t == 3 else [1000 * b + 100 * (t + 2) + c for c in (2, 3)]
            untouched = [1000 * b + 100 * (t + 1) + c for c in (4, 5)]
            assert y[b, t].tolist() == expected_forward + expected_backward + untouched


def test_shift_never_crosses_from_one_volume_to_the_next():
    x = slice_stack(depth=3, channels=4, batch=2)
    y = depth_shift(x, 3, 2, 2)[:, :, 0, 0]
    assert y[3, :2].tolist() == [0.0, 0.0]  # first slice of volume 1: nothing from volume 0's last slice
    assert y[2, 2:].tolist() == [0.0, 0.0]  # last slice of volume 0: nothing from volume 1's first slice


def test_shift_module_output_is_forward_backward_retain_then_untouched_channels():
    # C = 16, alpha = 1/2: s = 8 channels into the conv -> F (2), B (2), R (4); 8 channels untouched.
    module = DepthShiftModule(16, alpha=0.5)
    assert module.shifted == 8 and module.conv.in_channels == module.conv.out_channels == 8
    with torch.no_grad():  # identity conv: output channel i = input channel i (centre tap), no bias
        module.conv.weight.zero_()
        module.conv.bias.zero_()
        for i in range(8):
            module.conv.weight[i, i, 1, 1] = 1.0
    x = slice_stack(depth=3, channels=16)
    y = module(x, 3)[:, :, 0, 0]
    assert y.shape == (3, 16)  # channel count preserved
    assert y[:, 0:2].tolist() == [[0, 0], [100, 101], [200, 201]]  # F: from slice t-1
    assert y[:, 2:4].tolist() == [[202, 203], [302, 303], [0, 0]]  # B: from slice t+1
    assert torch.equal(y[:, 4:], x[:, 4:, 0, 0])  # R (4-7) from the same slice, 8-15 untouched


@pytest.mark.parametrize("channels, alpha, expected", [(16, 1.0, 16), (16, 0.5, 8), (20, 0.5, 8), (6, 1.0, 4),
                                                       (128, 0.5, 64), (320, 0.5, 160)])
def test_shifted_channels_are_alpha_c_rounded_down_to_a_multiple_of_four(channels, alpha, expected):
    assert shifted_channels(channels, alpha) == expected


def test_too_few_channels_for_the_shift_is_one_clear_error():
    with pytest.raises(EfficientError, match="alpha=0.25 of 8 channels leaves 2"):
        DepthShiftModule(8, alpha=0.25)


# ---------------------------------------------------------------- parameters by hand


def _conv(c_in, c_out, k=3):
    return k * k * c_in * c_out + c_out  # weights + bias


def _block(c_in, c_mid, c_out, s):
    """conv + BN, [DSM: one 3x3 s -> s conv], conv + BN."""
    return _conv(c_in, c_mid) + 2 * c_mid + (_conv(s, s) if s else 0) + _conv(c_mid, c_out) + 2 * c_out


@pytest.mark.parametrize("alpha, released_total", [(1.0, 1_619_169), (0.5, 1_216_249)])
def test_parameter_count_by_hand(alpha, released_total):
    s = {c: int(alpha * c) for c in (16, 32, 64, 128)}  # all multiples of 4 here
    encoder = (_block(1, 16, 16, 0) + _block(16, 32, 32, s[32]) + _block(32, 64, 64, s[64])
               + _block(64, 128, 128, s[128]) + _block(128, 128, 128, s[128]))
    # the released Up blocks: concat -> ch_in // 2 (DSM) -> the next level's width
    decoder = (_block(256, 128, 64, s[128]) + _block(128, 64, 32, s[64]) + _block(64, 32, 16, s[32])
               + _block(32, 16, 16, s[16]))
    head = _conv(16, 1, k=1)
    assert encoder + decoder + head == released_total  # SPEC: 1.62 M (released, alpha 1), 1.22 M (paper, 1/2)
    # nnU-Net's deep supervision adds 1x1 heads on the lower decoder levels (widths 16, 32, 64)
    deep_heads = _conv(16, 1, k=1) + _conv(32, 1, k=1) + _conv(64, 1, k=1)
    net = make_net(PAPER, num_classes=1, alpha=alpha)
    assert sum(p.numel() for p in net.parameters()) == released_total + deep_heads


# ---------------------------------------------------------------- free depth, shapes, axes


def test_one_model_takes_any_depth():
    net = make_net().eval()
    with torch.no_grad():
        for depth in (1, 3, 8, 13):
            assert net(image((depth, 16, 8))).shape == (1, 3, depth, 16, 8)


def test_volumes_of_a_batch_do_not_mix():
    # the released code reshaped with a depth fixed at construction: another depth mixed volumes
    net = make_net().eval()
    x = image((5, 8, 8), batch=2)
    changed = x.clone()
    changed[1] = torch.randn(1, 5, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x)[0], net(changed)[0])
        assert not torch.equal(net(x)[1], net(changed)[1])


def test_slices_only_see_neighbours_within_the_depth_receptive_field():
    # 3 stages: DSMs in 2 encoder and 2 decoder blocks, each one slice each way -> 4 slices
    net = make_net().eval()
    x = image((12, 8, 8))
    changed = x.clone()
    changed[:, :, 0] += 10.0
    with torch.no_grad():
        difference = (net(x) - net(changed)).abs().amax(dim=(0, 1, 3, 4))
    assert (difference[:5] > 0).all() and (difference[5:] == 0).all()


@pytest.mark.parametrize("in_channels", [1, 2])
@pytest.mark.parametrize("deep_supervision", [False, True])
@pytest.mark.parametrize("config, shape", [(SMALL, (6, 16, 24)), (ANISOTROPIC, (16, 8, 5))],
                         ids=["isotropic", "anisotropic"])
def test_output_shapes(in_channels, deep_supervision, config, shape):
    net = make_net(config, in_channels=in_channels, deep_supervision=deep_supervision)
    out = net(image(shape, channels=in_channels, batch=2))
    if not deep_supervision:
        assert out.shape == (2, 3, *shape)
        return
    # nnU-Net's scales: 1 / cumulative product of the strides, the depth axis never pooled
    expected, scale = [], [1, 1, 1]
    for stride in config["strides"][:-1]:
        scale = [a * b for a, b in zip(scale, stride)]
        expected.append((2, 3, *(n // f for n, f in zip(shape, scale))))
    assert [tuple(o.shape) for o in out] == expected


def test_depth_axis_is_a_permutation_of_the_same_network():
    on_x = make_net(SMALL).eval()
    on_z = make_net(dict(SMALL, strides=[[1, 1, 1], [2, 2, 1], [2, 2, 1]]), depth_axis=2).eval()
    on_z.load_state_dict(on_x.state_dict())
    x = image((5, 16, 8))
    with torch.no_grad():
        torch.testing.assert_close(on_z(x.permute(0, 1, 3, 4, 2)), on_x(x).permute(0, 1, 3, 4, 2))


def test_traced_graph_runs_at_another_depth_and_batch():
    # what ONNX export needs: no depth baked into the graph, no branches on tensor values
    net = make_net().eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, image((4, 16, 8)))
        x = image((7, 16, 8), batch=3, seed=1)
        torch.testing.assert_close(traced(x), net(x))


def test_training_step_reaches_the_shift_convs():
    net = make_net().train()
    logits = net(image((4, 8, 8), batch=2))
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 3, (2, 4, 8, 8))).backward()
    shifts = [m for m in net.modules() if isinstance(m, DepthShiftModule)]
    assert len(shifts) == 4 and all(m.conv.weight.grad.abs().sum() > 0 for m in shifts)


# ---------------------------------------------------------------- memory estimate


def test_feature_map_size_by_hand_linear_in_voxels_with_the_heads():
    net = make_net()
    one = net.compute_conv_feature_map_size((4, 16, 8))
    # 4 slices of 16x8 -> 128, 32, 8 pixels per level; widths 8/16/32, DSM widths s = C/2: conv outputs
    encoder = (8 + 8) * 128 + (16 + 8 + 16) * 32 + (32 + 16 + 32) * 8
    decoder = 32 * 32 + (16 + 8 + 8) * 32 + 8 * 128 + (8 + 4 + 8) * 128 + 3 * 128  # upsampled, block, head
    assert one == 4 * (encoder + decoder)
    assert net.compute_conv_feature_map_size((8, 16, 8)) == 2 * one
    assert net.compute_conv_feature_map_size((4, 32, 16)) == 4 * one
    net.decoder.deep_supervision = True
    assert net.compute_conv_feature_map_size((4, 16, 8)) == one + 4 * 3 * 8 * 4  # level-1 head: 3 classes, 8x4 px


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("kwargs, message", [
    (dict(SMALL, strides=[[1, 1, 1], [2, 2, 2], [1, 2, 2]]), "pool along the depth axis 0"),
    (dict(SMALL, strides=[[1, 2, 2], [1, 2, 2], [1, 2, 2]]), "the first stride must be"),
    (dict(SMALL, features_per_stage=[8, 16]), "give 3 widths"),
    (dict(SMALL, alpha=0.0), "alpha=0.0 must be in"),
    (dict(SMALL, alpha=1.5), "alpha=1.5 must be in"),
    (dict(SMALL, depth_axis=3), "depth_axis=3"),
], ids=["depth-pooled", "first-stride", "widths", "alpha-0", "alpha-above-1", "axis"])
def test_bad_arguments_are_one_clear_error(kwargs, message):
    with pytest.raises(EfficientError, match=message) as error:
        DistillDSMUNet(input_channels=1, num_classes=2, **kwargs)
    assert "\n" not in str(error.value)


def test_input_not_divisible_in_plane_is_one_clear_error():
    with pytest.raises(EfficientError, match=r"divisible by \[1, 4, 4\]"):
        make_net()(image((5, 16, 10)))
