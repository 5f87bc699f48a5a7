"""The tracking loss wrapper leaves nnU-Net's loss alone and maps errors by position inside the patch."""

import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunet_efficient.patch_performance.tracking import (
    PatchErrorTracker,
    PatchPerformanceLoss,
    accumulate_tiles,
    pad_to_patch,
)


def nnunet_loss(ignore_label=None):
    """nnU-Net's default loss with deep supervision, built as ``nnUNetTrainer._build_loss`` builds it."""
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=ignore_label, dice_class=MemoryEfficientSoftDiceLoss)
    return DeepSupervisionWrapper(loss, [4 / 7, 2 / 7, 1 / 7])


def deep_supervision_batch(seed, patch=(8, 12, 10), classes=3, ignore_label=None):
    generator = torch.Generator().manual_seed(seed)
    shapes = [patch, tuple(p // 2 for p in patch), tuple(p // 4 for p in patch)]
    outputs = [torch.randn((2, classes, *s), generator=generator, requires_grad=True) for s in shapes]
    high = classes + (1 if ignore_label is not None else 0)
    targets = [torch.randint(0, high, (2, 1, *s), generator=generator).float() for s in shapes]
    return outputs, targets


@pytest.mark.parametrize("ignore_label", [None, 3])
def test_wrapped_loss_and_gradients_equal_the_unwrapped_bit_for_bit(ignore_label):
    outputs, targets = deep_supervision_batch(0, ignore_label=ignore_label)
    plain = nnunet_loss(ignore_label)(outputs, targets)
    plain_grads = torch.autograd.grad(plain, outputs)

    tracker = PatchErrorTracker(3, (8, 12, 10), ignore_label=ignore_label)
    wrapped = PatchPerformanceLoss(nnunet_loss(ignore_label), tracker)(outputs, targets)
    wrapped_grads = torch.autograd.grad(wrapped, outputs)

    assert torch.equal(wrapped, plain)
    for g_wrapped, g_plain in zip(wrapped_grads, plain_grads):
        assert torch.equal(g_wrapped, g_plain)
    assert tracker.updates_seen, "the wrapper did not track"


def test_only_the_full_resolution_output_is_tracked():
    outputs, targets = deep_supervision_batch(1)
    tracker = PatchErrorTracker(3, (8, 12, 10))
    PatchPerformanceLoss(nnunet_loss(), tracker).track(outputs, targets)
    alone = PatchErrorTracker(3, (8, 12, 10))
    alone.update(outputs[0], targets[0])
    assert torch.equal(tracker.compute().error, alone.compute().error)


def test_disabled_wrapper_tracks_nothing():
    outputs, targets = deep_supervision_batch(2)
    wrapper = PatchPerformanceLoss(nnunet_loss(), PatchErrorTracker(3, (8, 12, 10)), enabled=False)
    wrapper(outputs, targets)
    assert not wrapper.tracker.updates_seen


def test_uniform_softmax_error_is_one_over_c_off_class_and_the_rest_on_class():
    # zero logits: p = 1/3 everywhere, so |p - y| is 2/3 where the voxel is of class c and 1/3 elsewhere
    target = torch.tensor([[0, 1], [2, 2]]).reshape(1, 1, 2, 2)
    tracker = PatchErrorTracker(3, (2, 2))
    tracker.update(torch.zeros(1, 3, 2, 2), target)
    error = tracker.compute().error
    onehot = torch.nn.functional.one_hot(target[0, 0], 3).permute(2, 0, 1).double()
    torch.testing.assert_close(error, torch.where(onehot == 1, 2 / 3, 1 / 3).double())


def test_ignored_and_negative_labels_are_not_counted():
    tracker = PatchErrorTracker(2, (1, 3), ignore_label=2)
    tracker.update(torch.zeros(2, 2, 1, 3), torch.tensor([[[0, 2, -1]], [[1, 2, 0]]]))
    result = tracker.compute()
    assert result.count.tolist() == [[2, 0, 1]]
    assert torch.isnan(result.error[:, 0, 1]).all()


def test_reset_forgets_and_means_are_per_position():
    tracker = PatchErrorTracker(2, (2,))
    says_1_then_0 = torch.tensor([[[-10.0, 10.0], [10.0, -10.0]]])  # (B=1, C=2, 2 positions)
    tracker.update(says_1_then_0, torch.tensor([[1, 0]]))  # right at both positions, then forgotten
    tracker.reset()
    tracker.update(says_1_then_0, torch.tensor([[0, 1]]))  # wrong, wrong
    tracker.update(says_1_then_0, torch.tensor([[1, 1]]))  # right, wrong
    error = tracker.compute().error[1]
    torch.testing.assert_close(error, torch.tensor([0.5, 1.0], dtype=torch.float64), atol=1e-6, rtol=0)


def test_labels_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match="label 3"):
        PatchErrorTracker(3, (2,)).update(torch.zeros(1, 3, 2), torch.tensor([[0, 3]]))


def test_padding_is_centred_like_nnunet_and_never_counted():
    padded = pad_to_patch(torch.ones(1, 3, 4), (6, 4), value=0.0)
    assert padded.shape == (1, 6, 4) and padded[0, :, 0].tolist() == [0, 1, 1, 1, 0, 0]
    tracker = PatchErrorTracker(2, (6, 4))
    windows = accumulate_tiles(tracker, lambda x: torch.zeros(x.shape[0], 2, 6, 4), torch.ones(1, 3, 4),
                               torch.zeros(3, 4, dtype=torch.long), step=0.5)
    assert windows == 1
    assert tracker.compute().count[:, 0].tolist() == [0, 1, 1, 1, 0, 0]
