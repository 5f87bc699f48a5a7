"""Distill-DSM (MIDL 2021): a 2D U-Net run on every slice, with depth shift modules between slices.

A 3D patch ``(B, C, X, Y, Z)`` is cut into its ``D`` slices along the depth axis, and the slices
go through a 2D U-Net as one batch of ``B·D`` images (2D convs, BatchNorm + ReLU, max pooling,
bilinear upsampling). What makes it 2.5D is the depth shift module (DSM) between the two convs
of every block except the input block: from ``s ≈ αC`` of the block's ``C`` channels, one 3x3
conv makes a retain part ``R`` (``s/2`` channels), a forward part ``F`` and a backward part ``B``
(``s/4`` each); ``F`` at slice ``t`` is taken from slice ``t-1`` and ``B`` from slice ``t+1``, with
zeros beyond the first and last slice, and the output is ``[F_shifted, B_shifted, R, the other
C - s channels]``: the channel count is preserved, and every DSM widens the receptive field along
the depth axis by one slice each way. Never imports nnunetv2: nnU-Net builds it from the plans as
``cls(input_channels=..., num_classes=..., deep_supervision=..., **arch_kwargs)``.

Differences from the released code, all deliberate (SPEC section 6):

* ``alpha`` (the share of channels the DSM mixes) is a setting. The paper chooses 1/2; the
  released code has no such setting and mixes all channels, which is ``alpha = 1``. With the
  paper's widths 16/32/64/128/128 this gives 1.22 M parameters at 1/2 and the released 1.62 M
  at 1. ``s`` is ``αC`` rounded down to a multiple of 4, so that ``s/2`` and ``s/4`` are whole and
  the channel count is kept for any width (the released code loses channels when ``C/2`` is odd).
* The released code builds the three parts with three 3x3 convs reading the same ``s`` channels;
  here they are the output channels ``[F | B | R]`` of one ``s -> s`` conv: the same function, the
  same parameters (``9 s² + s``), one conv call.
* The released code fixes the number of slices when the model is built and reshapes
  ``(B·D, ...)`` with it, so another depth silently mixes slices of different volumes; here the
  depth is read from each input, so one model takes any depth (the sliding window of nnU-Net's
  predictor, a whole volume, an export with a dynamic depth axis).
* The topology follows the plans: ``depth_axis`` (the planner picks the lowest-resolution axis)
  and per-stage strides, whose depth component must be 1 (the depth is never pooled: the
  shifts need every slice at every level).

Topology. Levels ``l = 0..S-1``, widths ``f``, in-plane stride of level ``l`` = ``strides[l]``
without its depth component (``strides[0]`` all ones).

* Encoder: level 0 is a block ``input_channels -> f[0] -> f[0]`` without DSM; level ``l >= 1``
  max-pools by its stride and runs a block ``f[l-1] -> f[l] -> f[l]`` with a DSM on ``f[l]``.
* Decoder, ``k = S-2 .. 0``: bilinear upsampling (``align_corners=True``, as released) of the
  level ``k+1`` output by ``strides[k+1]``, concatenation ``[skip_k, upsampled]``, a block
  ``f[k] + w -> f[k] -> f[max(k-1, 0)]`` with a DSM on ``f[k]``, where ``w`` is the width of what
  came up (``f[S-1]`` from the bottleneck, ``f[k]`` after that). A 1x1 head per decoder level.

With ``f = [16, 32, 64, 128, 128]`` and strides 2 this is the released ``U_Net`` exactly (its
``Up`` blocks halve ``ch_in`` and end at the next level's width).

Export. The forward has no Python branches on tensor values and no in-place tricks: the shift
is ``F.pad`` + slicing on a ``(B, D, C, H, W)`` view, reshapes read the depth from the input, so
tracing at one depth gives a graph that runs at another.

Example:
    >>> net = DistillDSMUNet(input_channels=1, num_classes=3, n_stages=4, features_per_stage=[16, 32, 64, 128],
    ...                      strides=[[1, 1, 1], [1, 2, 2], [1, 2, 2], [1, 2, 2]], depth_axis=0)
    >>> net(torch.zeros(2, 1, 40, 56, 40)).shape  # any depth (axis 0), in-plane divisible by 8
    torch.Size([2, 3, 40, 56, 40])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_efficient.errors import EfficientError

__all__ = ["ConvBlock2d", "DepthShiftModule", "DistillDSMUNet", "depth_shift", "shifted_channels"]

#: The paper's share of channels in the depth shift module (the released code behaves like 1).
DEFAULT_ALPHA = 0.5

# torch.export (and the ONNX exporter built on it) since torch 2.5; older releases only trace
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def shifted_channels(channels: int, alpha: float) -> int:
    """Channels ``s`` a DSM mixes: ``alpha * channels`` rounded down to a multiple of 4.

    Args:
        channels: block width ``C``.
        alpha: share of the channels, in ``(0, 1]``.

    Returns:
        ``s`` (``R`` gets ``s/2``, ``F`` and ``B`` ``s/4`` each); 0 when ``alpha * C < 4``.

    Example:
        >>> shifted_channels(16, 0.5), shifted_channels(20, 0.5), shifted_channels(6, 1.0)
        (8, 8, 4)
    """
    return 4 * int(math.floor(alpha * channels / 4 + 1e-9))


def depth_shift(x: torch.Tensor, depth: int | torch.Tensor, n_forward: int, n_backward: int) -> torch.Tensor:
    """Shift channel groups of stacked slices by one slice along the depth, zero at the ends.

    Args:
        x: ``(B·D, C, H, W)``, the ``D`` slices of each volume consecutive (slice-major within a volume).
        depth: ``D``, the number of slices per volume (an int, or a traced size when exporting).
        n_forward: the first ``n_forward`` channels at slice ``t`` take their values from slice
            ``t - 1``; slice 0 gets zeros.
        n_backward: the next ``n_backward`` channels at slice ``t`` take theirs from slice ``t + 1``;
            the last slice gets zeros.

    Returns:
        ``(B·D, C, H, W)``; the remaining ``C - n_forward - n_backward`` channels are unchanged.
        Slices never cross from one volume to the next.
    """
    channels, height, width = x.shape[1:]
    volumes = x.reshape(-1, depth, channels, height, width)
    forward_part = volumes[:, :, :n_forward]
    backward_part = volumes[:, :, n_forward:n_forward + n_backward]
    rest = volumes[:, :, n_forward + n_backward:]
    # F.pad pads the last axes first: (W, H, C, D) pairs; one zero slice in front or behind, then
    # drop one at the other end, so slice t receives t-1 (forward) or t+1 (backward).
    forward_part = F.pad(forward_part, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1]
    backward_part = F.pad(backward_part, (0, 0, 0, 0, 0, 0, 0, 1))[:, 1:]
    return torch.cat((forward_part, backward_part, rest), dim=2).reshape(x.shape)


class DepthShiftModule(nn.Module):
    """Learned depth shift: ``[F_shifted, B_shifted, R, untouched]`` from ``s`` of ``C`` channels.

    Args:
        channels: ``C``, input = output channels.
        alpha: share of channels mixed, ``(0, 1]``; ``s`` = :func:`shifted_channels`\\ ``(C, alpha)``,
            at least 4.

    Attributes:
        conv: 3x3 ``s -> s`` conv whose outputs are ``F`` (``s/4``), ``B`` (``s/4``), ``R`` (``s/2``).
        shifted: ``s``.
    """

    def __init__(self, channels: int, alpha: float = DEFAULT_ALPHA):
        super().__init__()
        s = shifted_channels(channels, alpha)
        if s < 4:
            raise EfficientError(f"alpha={alpha} of {channels} channels leaves {alpha * channels:g} for the depth "
                                 f"shift module; it needs at least 4 (raise alpha or the width)")
        self.channels = int(channels)
        self.shifted = s
        self.conv = nn.Conv2d(s, s, 3, padding=1)

    def forward(self, x: torch.Tensor, depth: int | torch.Tensor) -> torch.Tensor:
        """Mix neighbouring slices.

        Args:
            x: ``(B·D, C, H, W)``, slices of a volume consecutive.
            depth: ``D``.

        Returns:
            ``(B·D, C, H, W)``.
        """
        s = self.shifted
        mixed = depth_shift(self.conv(x[:, :s]), depth, s // 4, s // 4)
        if s == self.channels:
            return mixed
        return torch.cat((mixed, x[:, s:]), dim=1)


class ConvBlock2d(nn.Module):
    """Two 3x3 conv + BatchNorm + ReLU, with an optional depth shift module between them.

    Args:
        in_channels: input width.
        mid_channels: width after the first conv (and of the DSM).
        out_channels: output width.
        alpha: DSM share of channels, or None for no DSM (the input block).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, alpha: float | None):
        super().__init__()
        # conv bias before BatchNorm is redundant but kept: the released parameter counts include it
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 3, padding=1), nn.BatchNorm2d(mid_channels),
                                   nn.ReLU(inplace=True))
        self.shift = None if alpha is None else DepthShiftModule(mid_channels, alpha)
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
                                   nn.ReLU(inplace=True))
        self.mid_channels = int(mid_channels)
        self.out_channels = int(out_channels)

    def forward(self, x: torch.Tensor, depth: int | torch.Tensor) -> torch.Tensor:
        """Args: x ``(B·D, in, H, W)``, depth ``D``. Returns: ``(B·D, out, H, W)``."""
        x = self.conv1(x)
        if self.shift is not None:
            x = self.shift(x, depth)
        return self.conv2(x)

    def feature_map_size(self, pixels: int) -> int:
        """Conv outputs per slice of ``pixels`` pixels: both convs and the DSM's."""
        shifted = 0 if self.shift is None else self.shift.shifted
        return (self.mid_channels + shifted + self.out_channels) * pixels


class DistillDSMEncoder(nn.Module):
    """Input block and pooled DSM blocks; returns every level's output (the skips)."""

    def __init__(self, input_channels: int, features: Sequence[int], strides: Sequence[Sequence[int]], alpha: float):
        super().__init__()
        self.pools = nn.ModuleList(nn.MaxPool2d(tuple(s), tuple(s)) for s in strides[1:])
        self.blocks = nn.ModuleList(
            [ConvBlock2d(input_channels, features[0], features[0], None)]
            + [ConvBlock2d(features[l - 1], features[l], features[l], alpha) for l in range(1, len(features))]
        )

    def forward(self, x: torch.Tensor, depth: int | torch.Tensor) -> list[torch.Tensor]:
        """Args: x ``(B·D, C_in, H, W)``. Returns: S tensors, level 0 first."""
        skips = [self.blocks[0](x, depth)]
        for pool, block in zip(self.pools, self.blocks[1:]):
            skips.append(block(pool(skips[-1]), depth))
        return skips


class DistillDSMDecoder(nn.Module):
    """Bilinear upsampling, concatenation with the skip, DSM blocks, 1x1 heads.

    Args:
        features: widths ``f`` (length S).
        strides: in-plane strides per level (length S).
        num_classes: head outputs.
        alpha: DSM share of channels.
        deep_supervision: return every decoder level's logits; nnU-Net flips this attribute.
    """

    def __init__(self, features: Sequence[int], strides: Sequence[Sequence[int]], num_classes: int, alpha: float,
                 deep_supervision: bool = False):
        super().__init__()
        n = len(features)
        # blocks[k] and heads[k] work at level k (k = 0..S-2)
        blocks = []
        for k in range(n - 1):
            incoming = features[n - 1] if k == n - 2 else features[k]
            blocks.append(ConvBlock2d(features[k] + incoming, features[k], features[max(k - 1, 0)], alpha))
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(nn.Conv2d(block.out_channels, num_classes, 1) for block in blocks)
        self.scales = [tuple(float(v) for v in s) for s in strides]
        self.deep_supervision = deep_supervision
        self.num_classes = num_classes

    def forward(self, skips: Sequence[torch.Tensor], depth: int | torch.Tensor) -> list[torch.Tensor]:
        """Decode.

        Args:
            skips: the S encoder outputs, level 0 first, ``(B·D, f[l], H_l, W_l)``.
            depth: ``D``.

        Returns:
            Logits ``(B·D, num_classes, H_k, W_k)``: level 0 only, or with deep supervision
            levels ``0..S-2`` (full resolution first).
        """
        y = skips[-1]
        logits = []
        for k in range(len(skips) - 2, -1, -1):
            y = F.interpolate(y, scale_factor=self.scales[k + 1], mode="bilinear", align_corners=True)
            y = self.blocks[k](torch.cat((skips[k], y), dim=1), depth)
            if self.deep_supervision or k == 0:
                logits.append(self.heads[k](y))
        return logits[::-1]


def _check_strides(strides: Sequence[Sequence[int] | int], n_stages: int, depth_axis: int) -> list[tuple[int, ...]]:
    out = []
    for s in strides:
        s = (s,) * 3 if isinstance(s, (int, np.integer)) else tuple(s)
        if len(s) != 3 or any(int(v) < 1 for v in s):
            raise EfficientError(f"strides {[list(v) for v in strides]}: Distill-DSM takes 3D patches, give three "
                                 f"positive integers per stage")
        out.append(tuple(int(v) for v in s))
    if len(out) != n_stages:
        raise EfficientError(f"n_stages={n_stages} but {len(out)} strides; give one per stage")
    if any(v != 1 for v in out[0]):
        raise EfficientError(f"strides[0]={list(out[0])}: the first stride must be [1, 1, 1] (level 0 is the input "
                             f"resolution)")
    if any(s[depth_axis] != 1 for s in out):
        raise EfficientError(f"strides {[list(s) for s in out]} pool along the depth axis {depth_axis}: Distill-DSM "
                             f"never pools the depth (every slice is shifted at every level); plan with "
                             f"nnUNetPlannerDistillDSM(CPU)")
    return out


class DistillDSMUNet(nn.Module):
    """Distill-DSM's 2.5D U-Net with a plans-driven topology (see the module docstring).

    Args:
        input_channels: image channels.
        num_classes: output channels.
        n_stages: ``S`` >= 2 resolution levels.
        features_per_stage: ``S`` widths ``f``.
        strides: ``S`` strides (three ints per level, or one for all three), ``strides[0]`` all ones,
            1 on the depth axis everywhere.
        depth_axis: spatial axis (0, 1 or 2 of ``(X, Y, Z)``) along which slices are cut and shifted.
        alpha: share of channels in each depth shift module, ``(0, 1]`` (1/2 the paper's, 1 the
            released code's).
        deep_supervision: initial value of ``decoder.deep_supervision``.

    Attributes:
        encoder: :class:`DistillDSMEncoder`.
        decoder: :class:`DistillDSMDecoder`; ``decoder.deep_supervision`` is what nnU-Net toggles.
        strides: the 3D strides; ``in_plane_strides`` without the depth component.
        total_stride: product of the strides per axis (the depth entry is 1).
    """

    def __init__(self, input_channels: int, num_classes: int, n_stages: int, features_per_stage: Sequence[int],
                 strides: Sequence[Sequence[int] | int], depth_axis: int = 0, alpha: float = DEFAULT_ALPHA,
                 deep_supervision: bool = False):
        super().__init__()
        if depth_axis not in (0, 1, 2):
            raise EfficientError(f"depth_axis={depth_axis} must be 0, 1 or 2 (an axis of the 3D patch)")
        if n_stages < 2:
            raise EfficientError(f"n_stages={n_stages}: Distill-DSM needs at least 2 resolution levels")
        if len(features_per_stage) != n_stages or any(int(f) < 1 for f in features_per_stage):
            raise EfficientError(f"features_per_stage={list(features_per_stage)}: give {n_stages} widths >= 1, "
                                 f"one per stage")
        if not 0 < alpha <= 1:
            raise EfficientError(f"alpha={alpha} must be in (0, 1]: the share of channels the depth shift module "
                                 f"mixes (0.5 the paper's, 1 the released code's)")
        self.depth_axis = int(depth_axis)
        self.strides = _check_strides(strides, n_stages, self.depth_axis)
        self.in_plane_strides = [tuple(v for a, v in enumerate(s) if a != self.depth_axis) for s in self.strides]
        self.total_stride = tuple(math.prod(s[a] for s in self.strides) for a in range(3))
        self.alpha = float(alpha)
        self.input_channels = int(input_channels)
        self.num_classes = int(num_classes)
        features = [int(f) for f in features_per_stage]
        self.features = features
        self.encoder = DistillDSMEncoder(input_channels, features, self.in_plane_strides, self.alpha)
        self.decoder = DistillDSMDecoder(features, self.in_plane_strides, num_classes, self.alpha, deep_supervision)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment a batch of 3D patches slice by slice.

        Args:
            x: ``(B, input_channels, X, Y, Z)``; any size along the depth axis, the other two
                divisible by the total stride.

        Returns:
            Logits ``(B, num_classes, X, Y, Z)``; with ``decoder.deep_supervision`` a list of
            ``n_stages - 1`` logits, full resolution first, level ``l`` downsampled in-plane by
            ``prod(strides[0..l])`` (nnU-Net's convention; the depth keeps its size).
        """
        if not (torch.jit.is_tracing() or _is_exporting()):  # shapes are symbolic there
            if x.ndim != 5 or any(n % t for n, t in zip(x.shape[2:], self.total_stride)):
                raise EfficientError(f"{type(self).__name__}: input {tuple(x.shape)} must be (B, C, X, Y, Z) with "
                                     f"X, Y, Z divisible by {list(self.total_stride)}")
        axis = 2 + self.depth_axis
        depth = x.shape[axis]
        # (B, C, X, Y, Z) -> (B, D, C, H, W) -> (B·D, C, H, W): the slices of each volume stay
        # consecutive, which is what depth_shift relies on.
        slices = x.movedim(axis, 1)
        slices = slices.reshape(-1, *slices.shape[2:])
        logits = self.decoder(self.encoder(slices, depth), depth)
        outputs = [y.reshape(-1, depth, *y.shape[1:]).movedim(1, axis) for y in logits]
        return outputs if self.decoder.deep_supervision else outputs[0]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Feature-map elements the network stores for one sample, as nnU-Net's planners expect.

        Counted by the convention of dynamic_network_architectures' ``PlainConvUNet``, against which
        nnU-Net's memory reference was calibrated: every conv output once (conv -> BatchNorm -> ReLU
        counts once; the DSM's conv included), the upsampled tensor where the U-Net has its
        transposed conv, and the heads where they run; per slice, times the number of slices.
        Unlike a 3D U-Net's, the deeper levels keep every slice.

        Args:
            input_size: spatial size ``(X, Y, Z)`` (no batch or channel axis).

        Returns:
            The element count (linear in the number of voxels).
        """
        if len(input_size) != 3:
            raise EfficientError(f"input_size {list(input_size)}: give the spatial size (X, Y, Z) only")
        depth = int(input_size[self.depth_axis])
        plane = [int(v) for a, v in enumerate(input_size) if a != self.depth_axis]
        pixels = []
        for s in self.in_plane_strides:
            plane = [p // k for p, k in zip(plane, s)]
            pixels.append(math.prod(plane))
        total = sum(block.feature_map_size(p) for block, p in zip(self.encoder.blocks, pixels))
        for k, block in enumerate(self.decoder.blocks):
            incoming = block.conv1[0].in_channels - self.features[k]
            total += incoming * pixels[k] + block.feature_map_size(pixels[k])
            if self.decoder.deep_supervision or k == 0:
                total += self.num_classes * pixels[k]
        return int(total * depth)
