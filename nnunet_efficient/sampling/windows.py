"""Window geometry for NMSW: the candidate grid, cropping, the extra random window, zoom boxes.

Pure PyTorch (never imports nnunetv2). The candidate grid is nnU-Net's own evenly spaced
sliding-window grid, so "all candidates" is exactly the windows nnU-Net's predictor visits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def window_grid_steps(image_shape: Sequence[int], window_size: Sequence[int], step: float = 0.5) -> list[list[int]]:
    """Per-axis window start coordinates, exactly as nnU-Net's sliding window places them.

    For each axis: ``n = ceil((size - window) / (window * step)) + 1`` windows, evenly spaced
    between 0 and ``size - window`` with starts rounded to the nearest integer (half to even,
    like ``np.round``); a single window at 0 when ``n == 1``. Same rule as
    ``nnunetv2.inference.sliding_window_prediction.compute_steps_for_sliding_window``.

    Args:
        image_shape: spatial shape ``(X, Y, Z)`` (any number of axes) of the volume.
        window_size: window shape, same number of axes, each at most the image size.
        step: target step as a fraction of the window, in (0, 1].

    Returns:
        One list of start coordinates per axis.
    """
    image_shape, window_size = _check_shapes(image_shape, window_size)
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}.")
    steps = []
    for size, window in zip(image_shape, window_size, strict=True):
        n = math.ceil((size - window) / (window * step)) + 1
        if n > 1:
            actual = (size - window) / (n - 1)
            # Python's round() is half-to-even on floats, like the np.round nnU-Net uses.
            steps.append([int(round(actual * i)) for i in range(n)])
        else:
            steps.append([0])
    return steps


def window_grid(image_shape: Sequence[int], window_size: Sequence[int], step: float = 0.5) -> list[tuple[int, ...]]:
    """All candidate window starts, in C order over the grid (last axis fastest).

    Candidate ``n`` of the flattened grid (``torch.flatten`` of a ``grid_shape`` tensor) starts
    at ``window_grid(...)[n]``; the scorer's flattened output follows the same order.

    Args:
        image_shape: spatial shape ``(X, Y, Z)`` of the volume.
        window_size: window shape, same number of axes.
        step: target step as a fraction of the window, in (0, 1].

    Returns:
        ``N = prod(grid_shape)`` start tuples.
    """
    return list(itertools.product(*window_grid_steps(image_shape, window_size, step)))


def grid_shape(image_shape: Sequence[int], window_size: Sequence[int], step: float = 0.5) -> tuple[int, ...]:
    """Number of candidate windows along each axis, ``(n_x, n_y, n_z)``."""
    return tuple(len(s) for s in window_grid_steps(image_shape, window_size, step))


def window_slices(start: Sequence[int], window_size: Sequence[int]) -> tuple[slice, ...]:
    """Spatial slices of the window starting at ``start``."""
    return tuple(slice(int(s), int(s) + int(w)) for s, w in zip(start, window_size, strict=True))


def crop_window(x: torch.Tensor, start: Sequence[int], window_size: Sequence[int]) -> torch.Tensor:
    """Cut one window from the trailing spatial axes of ``x`` (a view, no copy).

    Args:
        x: tensor ``(..., X, Y, Z)``; the last ``len(window_size)`` axes are spatial.
        start: window start per spatial axis.
        window_size: window shape.

    Returns:
        ``(..., *window_size)`` view of ``x``.
    """
    return x[(..., *window_slices(start, window_size))]


def draw_random_window_start(
    label: torch.Tensor,
    window_size: Sequence[int],
    generator: torch.Generator | None = None,
    foreground_prob: float = 0.5,
) -> tuple[int, ...]:
    """Draw the start of NMSW's extra training window (the local loss's random window).

    As in the reference: anywhere in the volume (not on the candidate grid), centred on a
    uniformly drawn foreground voxel with probability ``foreground_prob`` (if there is any
    foreground), otherwise uniform over all valid starts. This is the only random part; the
    start is then passed to ``NMSWNetwork.forward_train``.

    Args:
        label: integer segmentation ``(X, Y, Z)`` or ``(1, X, Y, Z)``; foreground is ``> 0``.
        window_size: window shape; each axis at most the label's.
        generator: CPU generator for reproducible draws.
        foreground_prob: probability of centring on foreground.

    Returns:
        The window start, one int per spatial axis.
    """
    ndim = len(window_size)
    spatial = label.shape[-ndim:]
    image_shape, window_size = _check_shapes(spatial, window_size)
    max_start = [s - w for s, w in zip(image_shape, window_size, strict=True)]
    if torch.rand((), generator=generator).item() < foreground_prob:
        fg = torch.nonzero(label.reshape(spatial) > 0)
        if len(fg) > 0:
            i = int(torch.randint(len(fg), (), generator=generator))
            centre = fg[i].tolist()
            return tuple(min(max(c - w // 2, 0), m) for c, w, m in zip(centre, window_size, max_start, strict=True))
    return tuple(int(torch.randint(m + 1, (), generator=generator)) for m in max_start)


@dataclass(frozen=True)
class ZoomBox:
    """A per-class box for the zoom-in baseline, in full-resolution voxel coordinates.

    Attributes:
        label: the class the box was grown around.
        start: first voxel per axis.
        size: box shape per axis (at least the window where the image allows).
    """

    label: int
    start: tuple[int, ...]
    size: tuple[int, ...]

    @property
    def slices(self) -> tuple[slice, ...]:
        return window_slices(self.start, self.size)


def zoom_boxes(
    segmentation_lowres: torch.Tensor, image_shape: Sequence[int], window_size: Sequence[int]
) -> list[ZoomBox]:
    """Per-class bounding boxes of a low-resolution prediction, mapped to full resolution.

    Each class present (background 0 excluded) gets the bounding box of its voxels, scaled to
    full resolution (low-res voxel ``i`` covers ``[i*f, (i+1)*f)`` with ``f = full / low``, the
    geometry of ``align_corners=False`` resizing), then grown symmetrically to at least one
    window per axis and shifted to lie inside the image.

    Args:
        segmentation_lowres: integer label map ``(x, y, z)`` (e.g. argmax of the global logits).
        image_shape: full-resolution spatial shape ``(X, Y, Z)``.
        window_size: window shape; boxes are at least this large (capped at the image).

    Returns:
        One box per foreground class present, by increasing class.
    """
    low_shape = segmentation_lowres.shape
    if len(low_shape) != len(image_shape) or len(window_size) != len(image_shape):
        raise ValueError(
            f"segmentation_lowres {tuple(low_shape)}, image_shape {tuple(image_shape)} and "
            f"window_size {tuple(window_size)} must have the same number of axes."
        )
    boxes = []
    for label in torch.unique(segmentation_lowres).tolist():
        if label == 0:
            continue
        coords = torch.nonzero(segmentation_lowres == label)
        lo, hi = coords.min(0).values.tolist(), (coords.max(0).values + 1).tolist()
        start, size = [], []
        for a in range(len(image_shape)):
            f = image_shape[a] / low_shape[a]
            b0 = math.floor(lo[a] * f)
            b1 = min(math.ceil(hi[a] * f), image_shape[a])
            extent = min(max(b1 - b0, window_size[a]), image_shape[a])
            s = b0 - (extent - (b1 - b0)) // 2
            start.append(min(max(s, 0), image_shape[a] - extent))
            size.append(extent)
        boxes.append(ZoomBox(int(label), tuple(start), tuple(size)))
    return boxes


def _check_shapes(image_shape: Sequence[int], window_size: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    image_shape, window_size = tuple(int(i) for i in image_shape), tuple(int(w) for w in window_size)
    if len(image_shape) != len(window_size):
        raise ValueError(f"window_size {window_size} must have one entry per image axis {image_shape}.")
    if any(w < 1 or w > s for s, w in zip(image_shape, window_size, strict=True)):
        raise ValueError(
            f"window_size {window_size} must fit in the image {image_shape}: pad the image to at "
            f"least the window first (nnU-Net's predictor does the same)."
        )
    return image_shape, window_size
