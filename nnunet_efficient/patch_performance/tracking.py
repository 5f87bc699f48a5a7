"""Accumulate a per-class error by position inside the patch (SPEC 7, after patchperformance, MICCAI 2020).

The error measure, for softmax outputs ``p`` (classes ``c``) and one-hot targets ``y``, is the
per-class absolute error ``|p_c - y_c|`` of every voxel. Because ``y_c`` is 0 or 1 it is linear
in ``p_c`` (``1 - p_c`` on the class, ``p_c`` off it), so the error of a blend of overlapping
windows is the same blend of their errors: that is what lets
:mod:`nnunet_efficient.patch_performance.recommendation` predict other sliding-window steps from
one map. Alongside it the tracker sums ``p_c * y_c`` (the soft true positives), so soft Dice
``2 TP / (2 TP + error)`` can be formed from the same sums.

Pure PyTorch (never imports nnunetv2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nnunet_efficient.sampling.windows import window_grid, window_slices


@dataclass
class PatchPerformanceMap:
    """What :meth:`PatchErrorTracker.compute` returns: means by position inside the patch.

    Attributes:
        error: ``(C, *patch)`` mean ``|p_c - y_c|`` per class and position; NaN where no voxel was counted.
        true_positive: ``(C, *patch)`` mean ``p_c * y_c`` (soft true positives), NaN where no voxel was counted.
        count: ``(*patch)`` voxels counted at each position (ignored and padding voxels are not).
    """

    error: torch.Tensor
    true_positive: torch.Tensor
    count: torch.Tensor

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(self.count.shape)

    @property
    def num_classes(self) -> int:
        return int(self.error.shape[0])


class PatchErrorTracker:
    """Sums, per class and position inside the patch, ``|p_c - y_c|`` and ``p_c * y_c`` over updates.

    Args:
        num_classes: softmax channels ``C`` of the network (background included).
        patch_size: spatial shape of the patches that will be passed to :meth:`update`.
        ignore_label: a label value whose voxels are not counted (nnU-Net's ignore label), or None.
            Negative labels are never counted (padding, or nnU-Net's "outside the mask" -1).

    Example:
        >>> tracker = PatchErrorTracker(3, (32, 32, 32))
        >>> tracker.update(logits, target)            # (B, 3, 32, 32, 32), (B, 1, 32, 32, 32)
        >>> error_map = tracker.compute().error       # (3, 32, 32, 32)
    """

    def __init__(self, num_classes: int, patch_size: Sequence[int], ignore_label: int | None = None):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (softmax over background and classes), got {num_classes}")
        self.num_classes = int(num_classes)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.ignore_label = ignore_label
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._error: torch.Tensor | None = None
        self._true_positive: torch.Tensor | None = None
        self._count: torch.Tensor | None = None

    @property
    def updates_seen(self) -> bool:
        return self._count is not None

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of patches.

        Args:
            logits: ``(B, C, *patch)`` network output before softmax (detached here, never modified).
            target: ``(B, 1, *patch)`` or ``(B, *patch)`` integer labels (float tensors holding
                integers are accepted, as nnU-Net's data loaders produce them).

        Raises:
            ValueError: shapes that do not match the tracker, or labels outside ``[0, C)`` that
                are neither negative nor the ignore label.
        """
        logits = logits.detach()
        target = target.detach()
        if target.ndim == logits.ndim:
            target = target[:, 0]
        expected = (self.num_classes, *self.patch_size)
        if tuple(logits.shape[1:]) != expected or tuple(target.shape) != (logits.shape[0], *self.patch_size):
            raise ValueError(f"expected logits (B, {', '.join(map(str, expected))}) and a matching target, got "
                             f"{tuple(logits.shape)} and {tuple(target.shape)}")
        target = target.to(logits.device).long()
        valid = target >= 0
        if self.ignore_label is not None:
            valid &= target != self.ignore_label
        labels = torch.where(valid, target, 0)
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(f"label {int(labels.max())} is outside [0, {self.num_classes}) and not the ignore "
                             f"label ({self.ignore_label})")
        # float32 softmax even under autocast: float16 probabilities would round the small errors away
        probabilities = torch.softmax(logits.float(), 1)
        onehot = nn.functional.one_hot(labels, self.num_classes).movedim(-1, 1).to(probabilities.dtype)
        weight = valid.unsqueeze(1).to(probabilities.dtype)
        error = ((probabilities - onehot).abs() * weight).sum(0)
        true_positive = (probabilities * onehot * weight).sum(0)
        count = valid.sum(0)
        if self._count is None:
            # float64 sums: a map adds up millions of voxels per position over a validation set
            dtype = torch.float32 if logits.device.type == "mps" else torch.float64
            zeros = torch.zeros(expected, dtype=dtype, device=logits.device)
            self._error, self._true_positive = zeros, zeros.clone()
            self._count = torch.zeros(self.patch_size, dtype=dtype, device=logits.device)
        self._error += error.to(self._error)
        self._true_positive += true_positive.to(self._true_positive)
        self._count += count.to(self._count)

    def compute(self) -> PatchPerformanceMap:
        """The map: sums divided by the number of voxels counted at each position (on the CPU, float64).

        Raises:
            RuntimeError: nothing was accumulated since the last :meth:`reset`.
        """
        if self._count is None:
            raise RuntimeError("no patches were accumulated")
        count = self._count.detach().cpu().double()
        # 0/0 -> NaN marks positions that never saw a counted voxel (always padding, always ignored)
        return PatchPerformanceMap(self._error.detach().cpu().double() / count,
                                   self._true_positive.detach().cpu().double() / count, count)


def full_resolution(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The full-resolution element of a deep-supervision list (nnU-Net puts it first), or the tensor itself."""
    return output[0] if isinstance(output, (list, tuple)) else output


class PatchPerformanceLoss(nn.Module):
    """A loss that also feeds a :class:`PatchErrorTracker`, returning the wrapped loss untouched.

    The tracker sees detached copies under ``no_grad`` (and before the loss, so a loss that worked
    in place could not alter what is tracked): the returned value and its gradients are those of
    ``loss`` bit for bit. With deep supervision (lists of outputs and targets, as nnU-Net's
    ``DeepSupervisionWrapper`` takes them) only the first, full-resolution pair is tracked.

    Args:
        loss: the loss to wrap, called as ``loss(output, target, *args, **kwargs)``.
        tracker: where the errors go.
        enabled: track on every call; switch off (``.enabled = False``) to use the wrapper as a
            plain pass-through, e.g. while training on augmented patches.
    """

    def __init__(self, loss: nn.Module | Callable, tracker: PatchErrorTracker, enabled: bool = True):
        super().__init__()
        self.loss = loss
        self.tracker = tracker
        self.enabled = enabled

    def track(self, output: torch.Tensor | Sequence[torch.Tensor],
              target: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Feed the tracker from one (output, target) pair, deep-supervision lists allowed."""
        self.tracker.update(full_resolution(output), full_resolution(target))

    def forward(self, output, target, *args, **kwargs):
        if self.enabled:
            self.track(output, target)
        return self.loss(output, target, *args, **kwargs)


def pad_to_patch(x: torch.Tensor, patch_size: Sequence[int], value: float) -> torch.Tensor:
    """Pad the trailing spatial axes of ``x`` to at least ``patch_size``, centred as nnU-Net's predictor pads.

    Like ``acvl_utils``' ``pad_nd_image``: half the missing voxels below, the rest (one more when
    odd) above.
    """
    pads = []
    for size, patch in zip(reversed(x.shape[-len(patch_size):]), reversed(tuple(patch_size))):
        missing = max(int(patch) - int(size), 0)
        pads += [missing // 2, missing - missing // 2]
    return nn.functional.pad(x, pads, value=value) if any(pads) else x


@torch.no_grad()
def accumulate_tiles(tracker: PatchErrorTracker, predict: Callable[[torch.Tensor], torch.Tensor],
                     image: torch.Tensor, label: torch.Tensor, step: float = 0.5, batch_size: int = 1) -> int:
    """Tile one volume with nnU-Net's sliding-window grid and feed every window to ``tracker``.

    The volume is padded to at least one patch as nnU-Net's predictor pads it (image with 0,
    label with -1, so padding is never counted); windows are nnU-Net's grid at ``step``
    (:func:`nnunet_efficient.sampling.windows.window_grid`).

    Args:
        tracker: receives ``(logits, labels)`` of every batch of windows.
        predict: maps ``(B, C_in, *patch)`` windows to ``(B, C, *patch)`` logits (or a deep-supervision
            list whose first element is that); it moves the input to its device itself.
        image: ``(C_in, *spatial)`` preprocessed volume.
        label: ``(*spatial)`` or ``(1, *spatial)`` integer labels of the same volume.
        step: sliding-window step as a fraction of the patch, in (0, 1].
        batch_size: windows per ``predict`` call.

    Returns:
        The number of windows evaluated.
    """
    patch = tracker.patch_size
    if label.ndim == image.ndim:
        label = label[0]
    if tuple(label.shape) != tuple(image.shape[1:]):
        raise ValueError(f"label shape {tuple(label.shape)} differs from the image's {tuple(image.shape[1:])}")
    image = pad_to_patch(image, patch, 0.0)
    label = pad_to_patch(label.long(), patch, -1)
    starts = window_grid(image.shape[1:], patch, step)
    for first in range(0, len(starts), batch_size):
        batch = starts[first:first + batch_size]
        x = torch.stack([image[(slice(None), *window_slices(s, patch))] for s in batch])
        y = torch.stack([label[window_slices(s, patch)] for s in batch])
        tracker.update(full_resolution(predict(x)), y)
    return len(starts)
