"""Gaussian-weighted sliding-window aggregation with batched windows and batched mirroring.

Pure PyTorch: the caller supplies the network, the window slicers and the importance map, so
the same engine serves a stock nnU-Net model (with nnU-Net's own grid and Gaussian, for exact
parity) and any plugin strategy that evaluates a subset of windows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from nnunet_efficient.sampling.windows import window_grid_steps

Slicer = tuple  # (slice(None), *spatial slices or ints), as nnU-Net builds them


def sliding_window_slicers(image_size: Sequence[int], patch_size: Sequence[int], step: float) -> list[Slicer]:
    """nnU-Net's sliding-window grid as index tuples into a ``(C, *image_size)`` volume.

    Same windows in the same order as ``nnUNetPredictor`` evaluates them (the grid of
    :func:`~nnunet_efficient.sampling.windows.window_grid_steps`, last axis fastest). A 2D patch on
    a 3D volume (nnU-Net's 2D configurations) runs the 2D grid on every slice of the first axis.

    Args:
        image_size: spatial shape of the (padded) volume, each axis at least the patch.
        patch_size: window shape: as many axes as ``image_size``, or one fewer (2D on 3D).
        step: target step as a fraction of the patch, in (0, 1].

    Returns:
        One ``(slice(None), [slice index,] *spatial slices)`` tuple per window.

    Example:
        >>> [s[1:] for s in sliding_window_slicers((4, 6), (4, 4), 0.5)]
        [(slice(0, 4, None), slice(0, 4, None)), (slice(0, 4, None), slice(2, 6, None))]
    """
    image_size, patch_size = tuple(int(s) for s in image_size), tuple(int(p) for p in patch_size)
    if len(patch_size) == len(image_size) - 1:
        planes, image_size = range(image_size[0]), image_size[1:]
    elif len(patch_size) == len(image_size):
        planes = None
    else:
        raise ValueError(f"patch {patch_size} must have as many axes as the image {image_size}, or one fewer")
    grid = [tuple(slice(s, s + p) for s, p in zip(starts, patch_size))
            for starts in itertools.product(*window_grid_steps(image_size, patch_size, step))]
    if planes is None:
        return [(slice(None), *window) for window in grid]
    return [(slice(None), d, *window) for d in planes for window in grid]


@dataclass
class WindowRun:
    """What one inference pass evaluated.

    Attributes:
        windows: number of windows aggregated into the output.
        network_passes: number of network forward calls (batches × mirror variants).
        network_inputs: number of window-sized inputs the network saw (windows × mirror variants).
    """

    windows: int = 0
    network_passes: int = 0
    network_inputs: int = 0

    def __iadd__(self, other: WindowRun) -> WindowRun:
        self.windows += other.windows
        self.network_passes += other.network_passes
        self.network_inputs += other.network_inputs
        return self


def mirror_axes_combinations(mirror_axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """All non-empty combinations of spatial mirror axes, in nnU-Net's order.

    Args:
        mirror_axes: spatial axes (0-based, without batch and channel), or None for no TTA.

    Returns:
        Tensor axes (offset by 2 for batch and channel) to flip, one tuple per mirrored pass.
        The identity pass is not included.

    Example:
        >>> mirror_axes_combinations((0, 1))
        [(2,), (3,), (2, 3)]
    """
    if not mirror_axes:
        return []
    axes = [a + 2 for a in mirror_axes]
    return [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]


def predict_mirrored(network: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     mirror_axes: Sequence[int] | None) -> torch.Tensor:
    """Network output averaged over the mirrored copies of a batch of windows.

    Every mirror variant runs on the whole batch at once; the sum is taken in nnU-Net's order
    (identity first) so that ``batch == 1`` reproduces ``nnUNetPredictor`` exactly.

    Args:
        network: maps ``(B, C, *window)`` to ``(B, K, *window)`` logits.
        x: ``(B, C, *window)`` input windows.
        mirror_axes: spatial axes to mirror over, or None.

    Returns:
        ``(B, K, *window)`` averaged logits.
    """
    combos = mirror_axes_combinations(mirror_axes)
    if combos and max(combos[-1]) >= x.ndim:
        raise ValueError(f"mirror axes {tuple(mirror_axes)} do not fit a {x.ndim - 2}D input")
    prediction = network(x)
    for axes in combos:
        prediction += torch.flip(network(torch.flip(x, axes)), axes)
    if combos:
        prediction /= len(combos) + 1
    return prediction


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.no_grad()
def sliding_window_logits(network: Callable[[torch.Tensor], torch.Tensor], data: torch.Tensor,
                          slicers: Sequence[Slicer], num_classes: int, importance_map: torch.Tensor | float,
                          *, batch_size: int = 1, mirror_axes: Sequence[int] | None = None,
                          device: torch.device | str = "cpu", results_device: torch.device | str = "cpu",
                          accumulate_dtype: torch.dtype = torch.half,
                          on_window: Callable[[int], None] | None = None,
                          out: torch.Tensor | None = None) -> tuple[torch.Tensor, WindowRun]:
    """Aggregate importance-weighted window predictions into one logit volume.

    Args:
        network: maps ``(B, C, *window)`` to ``(B, num_classes, *window)`` logits.
        data: ``(C, *spatial)`` input, already padded to at least one window.
        slicers: one index tuple per window into ``data`` (``data[s]`` is ``(C, *window)``); the
            same tuples index the ``(num_classes, *spatial)`` output.
        num_classes: output channels of the network.
        importance_map: ``(*window)`` weights (a Gaussian for nnU-Net), or 1 for a plain average.
        batch_size: windows per network call. Mirrored copies of a batch run as separate calls
            of the same size, so peak activation memory grows with ``batch_size`` only.
        mirror_axes: spatial axes for mirroring test-time augmentation, or None.
        device: where the network runs.
        results_device: where the aggregation buffers live (``cpu`` when the device is small).
        accumulate_dtype: dtype of the aggregation buffers. nnU-Net uses float16; keep it for
            parity, use float32 when the logits may exceed float16's range.
        on_window: called with the number of windows finished after each batch (progress bars).
        out: ``(num_classes, *spatial)`` logits to write into instead of a new buffer (its dtype
            and device are then used): voxels that a window covers are replaced by the windows'
            aggregation, the others keep their values. Lets a second pass over some windows
            refine a first pass's logits without a second full-size buffer.

    Returns:
        ``(num_classes, *spatial)`` logits normalised by the summed importance (``out`` itself
        when given), and the :class:`WindowRun` counts.

    Memory: besides the ``(num_classes, *spatial)`` buffer and one ``(*spatial)`` weight volume,
    only window-sized tensors; the importance weighting runs a few classes at a time, so its
    temporary does not grow with the number of classes.

    Raises:
        ValueError: ``batch_size`` < 1 or no slicers.
        RuntimeError: the aggregated logits overflow ``accumulate_dtype``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not slicers:
        raise ValueError("no windows to evaluate")
    run = WindowRun()
    n_variants = len(mirror_axes_combinations(mirror_axes)) + 1
    if out is None:
        logits = torch.zeros((num_classes, *data.shape[1:]), dtype=accumulate_dtype, device=results_device)
    else:
        if tuple(out.shape) != (num_classes, *data.shape[1:]):
            raise ValueError(f"out has shape {tuple(out.shape)}, expected {(num_classes, *data.shape[1:])}")
        logits, accumulate_dtype, results_device = out, out.dtype, out.device
        for s in slicers:  # the covered voxels start from zero, as in a fresh buffer
            logits[s] = 0
    weights = torch.zeros(data.shape[1:], dtype=accumulate_dtype, device=results_device)
    if isinstance(importance_map, torch.Tensor):
        importance_map = importance_map.to(results_device)

    for batch in _batches(slicers, batch_size):
        x = torch.stack([data[s] for s in batch]).to(device)
        prediction = predict_mirrored(network, x, mirror_axes).to(results_device)
        for window_prediction, s in zip(prediction, batch):
            for classes in _class_chunks(num_classes):
                logits[(classes, *s[1:])] += window_prediction[classes] * importance_map
            weights[s[1:]] += importance_map
        run += WindowRun(len(batch), n_variants, n_variants * len(batch))
        if on_window is not None:
            on_window(len(batch))

    if out is not None:  # voxels no window covers are divided by 1 and keep their values
        weights.masked_fill_(weights == 0, 1)
    torch.div(logits, weights, out=logits)
    if any(torch.isinf(logits[classes]).any() for classes in _class_chunks(num_classes)):
        raise RuntimeError(f"aggregated logits overflow {accumulate_dtype}; accumulate in float32 instead")
    return logits, run


#: Classes weighted at once: bounds the float32 temporary of a window to this many classes.
CLASS_CHUNK = 8


def _class_chunks(num_classes: int) -> list[slice]:
    return [slice(c, min(c + CLASS_CHUNK, num_classes)) for c in range(0, num_classes, CLASS_CHUNK)]
