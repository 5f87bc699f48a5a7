"""NMSW's learned merge: per-window refinement, Gaussian blending, global fallback.

Pure PyTorch (never imports nnunetv2).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from nnunet_efficient.sampling.windows import window_slices


def gaussian_importance_map(
    window_size: Sequence[int],
    sigma_scale: float = 1.0 / 8,
    min_value: float = 1e-3,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Separable Gaussian weight over a window (the reference's MONAI importance map).

    Centred at ``(w - 1) / 2`` per axis with ``sigma = w * sigma_scale``, not rescaled, and
    clamped from below at ``min_value`` so that every voxel of a window has positive weight
    (a zero weight would make a covered voxel look uncovered and divide 0 by 0).

    Args:
        window_size: window shape ``(x, y, z)``.
        sigma_scale: sigma as a fraction of the window per axis (NMSW: 1/8).
        min_value: lower clamp of the map.
        device: device of the result.
        dtype: dtype of the result.

    Returns:
        ``(*window_size)`` tensor with values in ``[min_value, 1]``.
    """
    weight = torch.ones((), device=device, dtype=torch.float64)
    for w in window_size:
        x = torch.arange(w, device=device, dtype=torch.float64) - (w - 1) / 2.0
        g = torch.exp(-(x**2) / (2.0 * (w * sigma_scale) ** 2))
        weight = weight.unsqueeze(-1) * g
    return weight.clamp(min=min_value).to(dtype)


class AggregationNet(nn.Module):
    """Refines one window's logits from ``concat[local logits, global logits of that window]``.

    Four 3x3x3 convolutions 2C -> 2C -> 2C -> C -> C: LeakyReLU(0.1) after the first two, the
    last two linear, no normalisation (as the reference's ``LearnablePatchAgg``).

    Args:
        num_classes: C, the number of output classes.
        conv_op: ``nn.Conv3d`` (or ``nn.Conv2d`` for 2D windows).
    """

    def __init__(self, num_classes: int, conv_op: type[nn.Module] = nn.Conv3d):
        super().__init__()
        c = int(num_classes)
        self.num_classes = c
        self.layers = nn.Sequential(
            conv_op(2 * c, 2 * c, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            conv_op(2 * c, 2 * c, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            conv_op(2 * c, c, 3, padding=1),
            conv_op(c, c, 3, padding=1),
        )

    def forward(self, local_logits: torch.Tensor, global_logits: torch.Tensor) -> torch.Tensor:
        """Refine window logits.

        Args:
            local_logits: ``(W, C, x, y, z)`` local-branch logits of W windows.
            global_logits: ``(W, C, x, y, z)`` upsampled global logits cropped to the same windows.

        Returns:
            ``(W, C, x, y, z)`` refined logits.
        """
        return self.layers(torch.cat([local_logits, global_logits.to(local_logits.dtype)], dim=1))


def _window_regions(
    windows: Iterable[tuple[Sequence[int], torch.Tensor]], window: torch.Size
) -> Iterator[tuple[tuple[slice, ...], torch.Tensor]]:
    """``(start, logits)`` pairs → ``(spatial slices, logits)``, checking each window's shape."""
    for start, logits in windows:
        if logits.shape[1:] != window:
            raise ValueError(f"window logits {tuple(logits.shape)} do not match the importance map {tuple(window)}.")
        yield window_slices(start, window), logits


def blend_windows(
    fallback: torch.Tensor,
    windows: Iterable[tuple[Sequence[int], torch.Tensor]],
    importance: torch.Tensor,
) -> torch.Tensor:
    """Gaussian-blend window logits into a full volume; uncovered voxels keep ``fallback``.

    ``out = sum_w g_w * logits_w / sum_w g_w`` wherever at least one window lands, and exactly
    ``fallback`` elsewhere. ``windows`` may be a lazy iterator, so inference can compute one
    window at a time without holding all of them. Accumulates in float32.

    Args:
        fallback: ``(C, X, Y, Z)`` logits for voxels no window covers (NMSW: the upsampled
            global logits, detached).
        windows: ``(start, logits)`` pairs, ``start`` one int per spatial axis, ``logits``
            ``(C, *window)`` matching ``importance``'s shape.
        importance: ``(*window)`` positive weights, e.g. :func:`gaussian_importance_map`.

    Returns:
        ``(C, X, Y, Z)`` float32 blended logits (differentiable w.r.t. the window logits).
    """
    spatial = fallback.shape[1:]
    acc = torch.zeros(fallback.shape, device=fallback.device, dtype=torch.float32)
    weight = torch.zeros(spatial, device=fallback.device, dtype=torch.float32)
    importance = importance.to(device=fallback.device, dtype=torch.float32)
    for sl, logits in _window_regions(windows, importance.shape):
        acc[(slice(None), *sl)] += logits.float() * importance
        weight[sl] += importance
    covered = weight > 0
    # Dividing by 1 where uncovered (acc is 0 there) keeps the gradient finite; adding
    # fallback * 1 there (and * 0 elsewhere) returns the fallback bit for bit.
    out = acc / torch.where(covered, weight, torch.ones_like(weight))
    return out + fallback.float() * (~covered).to(torch.float32)


@torch.no_grad()
def blend_windows_into(
    out: torch.Tensor,
    windows: Iterable[tuple[Sequence[int], torch.Tensor]],
    importance: torch.Tensor,
) -> torch.Tensor:
    """Inference form of :func:`blend_windows`, writing into the fallback ``out`` itself.

    Same values as ``blend_windows(out, windows, importance)``, bit for bit (same accumulation
    order, float32), but without a full-volume accumulator and without autograd: besides ``out``
    it holds one float32 weight volume, so a large volume costs one logits buffer, not four.

    Args:
        out: float32 ``(C, X, Y, Z)`` fallback logits; overwritten with the result.
        windows: ``(start, logits)`` pairs as for :func:`blend_windows`.
        importance: ``(*window)`` positive weights.

    Returns:
        ``out``.
    """
    if out.dtype != torch.float32:
        raise ValueError(f"out must be float32 (the accumulator), got {out.dtype}.")
    weight = torch.zeros(out.shape[1:], device=out.device, dtype=torch.float32)
    importance = importance.to(device=out.device, dtype=torch.float32)
    for sl, logits in _window_regions(windows, importance.shape):
        region = out[(slice(None), *sl)]
        # A voxel's first window replaces its fallback; later ones add to the running sum.
        region.mul_(weight[sl] > 0)
        region.add_(logits.float() * importance)
        weight[sl] += importance
    return out.div_(weight.masked_fill_(weight == 0, 1.0))
