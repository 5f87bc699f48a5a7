import math
import time

import numpy as np
import pytest
import torch

from nnunet_efficient.benchmark.measure import PeakMemory, StageTimer, count_macs, dice_per_class, mean_dice

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no cuda device"))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("grad_mode", [torch.inference_mode, torch.no_grad, torch.enable_grad])
def test_conv3d_macs_equal_closed_form(bias, grad_mode):
    conv = torch.nn.Conv3d(3, 5, kernel_size=3, padding=0, bias=bias)
    x = torch.randn(2, 3, 6, 7, 8)
    with grad_mode():
        y, macs = count_macs(conv, x)
    # Bias is not counted: N · C_out · C_in · k³ · output voxels.
    assert y.shape == (2, 5, 4, 5, 6)
    assert macs == 2 * 5 * 3 * 27 * (4 * 5 * 6)


def test_anisotropic_strided_grouped_conv_macs():
    conv = torch.nn.Conv3d(4, 6, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), groups=2)
    y, macs = count_macs(conv, torch.randn(1, 4, 5, 8, 8))
    assert y.shape == (1, 6, 5, 4, 4)
    assert macs == 6 * (4 // 2) * 9 * (5 * 4 * 4)


def test_linear_macs_equal_closed_form():
    lin = torch.nn.Linear(8, 3)
    _, macs = count_macs(lin, torch.randn(5, 8))
    assert macs == 5 * 8 * 3


def test_macs_sum_over_a_whole_callable_and_ignore_elementwise_ops():
    conv = torch.nn.Conv2d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 4, 4)

    def strategy(image, repeats):
        return sum(torch.relu(conv(image)) * 2 for _ in range(repeats))

    _, macs = count_macs(strategy, x, repeats=3)
    assert macs == 3 * (2 * 1 * 9 * 16)


def test_peak_memory_sees_allocation_inside_block():
    with PeakMemory() as mem:
        a = np.ones(200 * 2**20, dtype=np.uint8)  # ones, not empty: pages must be touched to count
        del a
    assert mem.method in ("hwm", "sample")
    assert mem.host_delta_mib >= 190
    assert mem.host_peak_mib >= mem.host_baseline_mib + 190
    assert mem.device_peak_mib is None


def test_peak_memory_ignores_allocation_freed_before_block():
    a = np.ones(200 * 2**20, dtype=np.uint8)
    del a
    with PeakMemory() as mem:
        b = np.ones(2**20, dtype=np.uint8)
        del b
    assert mem.host_delta_mib < 100


def test_peak_memory_sampling_fallback_sees_held_allocation():
    with PeakMemory(method="sample", interval_s=0.001) as mem:
        a = np.ones(200 * 2**20, dtype=np.uint8)
        time.sleep(0.05)  # the sampler only sees what lives longer than its interval
        del a
    assert mem.method == "sample"
    assert mem.host_delta_mib >= 190


def test_nested_peak_memory_keeps_outer_peak():
    with PeakMemory() as outer:
        a = np.ones(200 * 2**20, dtype=np.uint8)
        del a
        with PeakMemory() as inner:
            pass
    assert inner.host_delta_mib < 100
    assert outer.host_delta_mib >= 190


@pytest.mark.parametrize("device", [CUDA])
def test_peak_device_memory(device):
    torch.cuda.empty_cache()
    with PeakMemory(device) as mem:
        x = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)
        del x
    assert mem.device_peak_mib >= 64


class FakeClock:
    def __init__(self, ticks):
        self.ticks = iter(ticks)

    def __call__(self):
        return next(self.ticks)


def test_stage_timer_accumulates_per_stage():
    timer = StageTimer(clock=FakeClock([0.0, 1.0, 1.0, 3.5, 4.0, 4.25]))
    with timer.stage("preprocess"):
        pass
    with timer.stage("network"):
        pass
    with timer.stage("network"):
        pass
    assert timer.seconds == {"preprocess": 1.0, "network": 2.75}
    assert timer.total == 3.75


def test_stage_timer_refuses_nested_stages():
    timer = StageTimer()
    with timer.stage("network"), pytest.raises(RuntimeError, match="network"):
        with timer.stage("export"):
            pass


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_stage_timer_measures_real_time(device):
    timer = StageTimer(device)
    with timer.stage("export"):
        time.sleep(0.02)
    assert 0.015 < timer.seconds["export"] < 1.0


def test_dice_on_hand_made_arrays():
    ref = np.array([[1, 1, 0, 0], [2, 2, 2, 0]])
    pred = np.array([[1, 0, 0, 0], [2, 2, 0, 3]])
    dice = dice_per_class(pred, ref, [1, 2, 3, 4, (1, 2)])
    assert dice[1] == pytest.approx(2 * 1 / (2 + 0 + 1))  # 2/3
    assert dice[2] == pytest.approx(2 * 2 / (4 + 0 + 1))  # 4/5
    assert dice[3] == 0.0  # predicted but absent in the reference
    assert math.isnan(dice[4])  # absent in both
    assert dice[(1, 2)] == pytest.approx(2 * 3 / (6 + 0 + 2))  # 3/4
    assert list(dice) == [1, 2, 3, 4, (1, 2)]
    assert mean_dice(dice) == pytest.approx(np.mean([2 / 3, 4 / 5, 0.0, 3 / 4]))


def test_dice_ignores_ignore_label_voxels():
    ref = np.array([1, 1, 9, 9, 0])
    pred = np.array([1, 1, 1, 1, 0])
    assert dice_per_class(pred, ref, [1], ignore_label=9)[1] == 1.0
    assert dice_per_class(pred, ref, [1])[1] == pytest.approx(4 / 6)


def test_dice_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(np.zeros((2, 3)), np.zeros((3, 2)), [1])


def test_mean_dice_all_nan_is_nan():
    assert math.isnan(mean_dice({1: float("nan")}))
    assert math.isnan(mean_dice({}))


def test_dice_matches_nnunet_compute_metrics(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    rng = np.random.default_rng(0)
    ref = rng.integers(0, 3, size=(6, 7, 8)).astype(np.uint8)
    pred = ref.copy()
    flip = rng.random(ref.shape) < 0.3
    pred[flip] = rng.integers(0, 4, size=int(flip.sum()))  # label 3 only in the prediction
    ref[0, 0, :3] = 5  # ignore label
    for name, arr in (("ref", ref), ("pred", pred)):
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / f"{name}.nii.gz"))

    labels = [1, 2, 3, 4, (1, 2)]
    for ignore in (None, 5):
        expected = compute_metrics(str(tmp_path / "ref.nii.gz"), str(tmp_path / "pred.nii.gz"), SimpleITKIO(),
                                   labels, ignore_label=ignore)["metrics"]
        ours = dice_per_class(pred, ref, labels, ignore_label=ignore)
        for label in labels:
            np.testing.assert_equal(ours[label], expected[label]["Dice"])  # equal_nan for label 4
        assert math.isnan(ours[4])
