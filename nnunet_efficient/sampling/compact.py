"""Merging window logits into one compact (float16) full-volume buffer, mirrored passes included.

Pure PyTorch (never imports nnunetv2). The float32 merge of NMSW (``blend_windows_into``) needs a
float32 ``(C, *spatial)`` buffer per pass, and mirroring TTA adds one more for the sum: 4 to 12
bytes per voxel and class. Here every pass adds its share straight into a single buffer of any
dtype (float16: 2 bytes per voxel and class), in the unmirrored frame:

``total += flip(fallback · [uncovered] + Σ_w g_w · logits_w / W)``, ``W = Σ_w g_w``,

which is the Gaussian blend ``Σ g logits / Σ g`` where windows land and the fallback elsewhere,
the same value as ``blend_windows`` up to the rounding of the buffer. ``W`` depends on the
window positions only, so it is computed before any window is evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

#: Rows of the first spatial axis resized at once when filling the fallback.
SLAB = 8


def unflip_slices(slices: Sequence[slice], flip_axes: Sequence[int], spatial: Sequence[int]) -> tuple[slice, ...]:
    """Where a region of a volume flipped along ``flip_axes`` lies in the unflipped volume.

    Args:
        slices: spatial slices (explicit start and stop) in the flipped volume.
        flip_axes: flipped spatial axes (0-based, no batch or channel axis).
        spatial: spatial shape.

    Example:
        >>> unflip_slices((slice(0, 2), slice(1, 3)), (0,), (5, 4))
        (slice(3, 5, None), slice(1, 3, None))
    """
    out = []
    for axis, (s, n) in enumerate(zip(slices, spatial)):
        out.append(slice(n - s.stop, n - s.start) if axis in flip_axes else s)
    return tuple(out)


def add_flipped_(total: torch.Tensor, slices: Sequence[slice], values: torch.Tensor,
                 flip_axes: Sequence[int]) -> None:
    """``total[:, region] += values``, with ``values`` and ``slices`` given in the flipped frame.

    Args:
        total: ``(C, *spatial)`` buffer, any dtype (the sum is rounded to it).
        slices: the region in the flipped volume.
        values: ``(C, *region)`` in the flipped volume.
        flip_axes: flipped spatial axes (0-based).
    """
    region = unflip_slices(slices, flip_axes, total.shape[1:])
    if flip_axes:
        values = torch.flip(values, [a + 1 for a in flip_axes])
    total[(slice(None), *region)] += values.to(total.device)


def window_weights(spatial: Sequence[int], starts: Iterable[Sequence[int]], importance: torch.Tensor) -> torch.Tensor:
    """``W = Σ_w g_w``: the summed importance of the windows at ``starts`` (float32, ``(*spatial)``)."""
    weights = torch.zeros(tuple(spatial), dtype=torch.float32, device=importance.device)
    for start in starts:
        weights[tuple(slice(int(s), int(s) + w) for s, w in zip(start, importance.shape))] += importance
    return weights


def merge_pass_into(total: torch.Tensor, weights: torch.Tensor,
                    fallback: Callable[[int, int], torch.Tensor],
                    windows: Iterable[tuple[Sequence[int], torch.Tensor]], importance: torch.Tensor,
                    flip_axes: Sequence[int] = ()) -> None:
    """Add one pass's Gaussian blend (fallback where no window lands) to ``total``.

    Args:
        total: ``(C, *spatial)`` running sum over passes (e.g. float16).
        weights: ``(*spatial)`` float32 :func:`window_weights` of this pass's windows.
        fallback: ``fallback(a, b)`` returns this pass's fallback logits for rows ``a:b`` of the
            first spatial axis, ``(C, b - a, *spatial[1:])`` (computed slab by slab, so the full
            fallback is never held).
        windows: ``(start, logits (C, *window))`` pairs, evaluated lazily one at a time.
        importance: ``(*window)`` positive weights (those ``weights`` was computed with).
        flip_axes: spatial axes this pass's input was flipped along (its output is flipped back).
    """
    spatial = tuple(weights.shape)
    rest = tuple(slice(0, n) for n in spatial[1:])
    for a in range(0, spatial[0], SLAB):
        b = min(a + SLAB, spatial[0])
        uncovered = weights[a:b] == 0
        if uncovered.any():
            add_flipped_(total, (slice(a, b), *rest), fallback(a, b) * uncovered, flip_axes)
    importance = importance.to(weights.device)
    for start, logits in windows:
        region = tuple(slice(int(s), int(s) + w) for s, w in zip(start, importance.shape))
        add_flipped_(total, region, logits.float() * (importance / weights[region]), flip_axes)
