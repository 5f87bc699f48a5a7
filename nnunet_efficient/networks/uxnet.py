"""3D UX-Net (ICLR 2023) and RepUX-Net (MICCAI 2023) as plans-driven, pure-PyTorch networks.

Both share one topology: a ConvNeXt-like encoder of large-kernel depthwise blocks and a
UNETR-style decoder (a residual block on every skip, residual up blocks). They differ in the
encoder block only: UX-Net's block is depthwise conv (k=7) -> LayerNorm -> grouped pointwise
MLP -> layer scale -> residual; RepUX-Net's is a depthwise conv (k=21) with Bayesian frequency
re-parameterisation -> BatchNorm -> GELU, nothing else (SPEC section 5). Never imports nnunetv2:
nnU-Net builds these from the plans as
``cls(input_channels=..., num_classes=..., deep_supervision=..., **arch_kwargs)``.

Topology, from the plans. Levels ``l = 0..S-1`` (``S = n_stages``); the cumulative stride of
level ``l`` is ``prod(strides[0..l])`` per axis and ``strides[0]`` must be all ones (level 0 is
the input resolution); ``f = features_per_stage``.

* Encoder. Stem: conv ``input_channels -> f[0]`` with stride ``strides[1]`` (kernel 7 on axes
  with stride > 1, the reference's k7 s2 p3; kernel 3 on axes with stride 1; padding k//2),
  then a channels-first LayerNorm: this is level 1. Level ``l = 1..S-1`` holds an encoder stage
  of ``blocks_per_stage`` blocks of width ``f[l-1]``; between levels ``l`` and ``l+1`` a
  channels-first LayerNorm and a conv with kernel = stride = ``strides[l+1]``
  (``f[l-1] -> f[l]``); every stage output passes a channels-first LayerNorm before its skip.
* Decoder. A residual basic block (two 3x3x3 conv + InstanceNorm + LeakyReLU, 1x1x1 projection
  when the width changes) on every skip: level 0 on the raw input (``input_channels -> f[0]``),
  level ``l >= 1`` on the encoder output of level ``l`` (``f[l-1] -> f[l]``; level ``S-1`` is the
  bottleneck, ``f[S-1]`` wide). Then for ``l = S-1 .. 1``: transposed conv (kernel = stride =
  ``strides[l]``, ``f[l] -> f[l-1]``), concatenation with the level ``l-1`` skip, residual block
  ``2 f[l-1] -> f[l-1]``; at level 0 one more residual block ``f[0] -> f[0]`` (the reference's
  ``decoder1``). 1x1x1 segmentation heads at decoder levels ``0..S-2``.

With ``strides = [1, 2, 2, 2, 2]`` and ``f = [48, 96, 192, 384, 768]`` this is the reference
network (stem k7 s2 to 48 channels, stages 48/96/192/384, a 768-wide bottleneck at 1/16 scale):
14 classes give 53.0 M parameters for UX-Net and, with unclamped k=21 kernels, 65.9 M for
RepUX-Net (reported: 53.0 M and 65.8 M).
Differences, all deliberate: InstanceNorm is affine (nnU-Net's choice), the depthwise kernels
are clamped to the feature map (below), and the Bayesian prior is applied functionally.

Kernel clamping. A depthwise conv of size ``k`` with zero padding ``k//2`` on an axis of ``n``
voxels only ever reaches input offsets in ``[-(n-1), n-1]``: the taps beyond the central
``2n - 1`` multiply padding at every output position. Per axis and level the kernel is
therefore ``min(k, 2n - 1)`` with ``n`` = patch size / cumulative stride (see
:func:`clamp_kernel`); for an odd ``k`` it stays odd, and the output is the same as the
unclamped conv's for inputs of the patch size. On nnU-Net's small patches this removes most of
a k=21 kernel's taps at the deep levels.

Bayesian frequency re-parameterisation. RepUX-Net trains ``w * BFM``, with the fixed prior
``BFM[i, j, k] = alpha / (d + alpha)`` and ``d`` the Euclidean distance of the tap from the
kernel centre, and folds the product into a plain kernel for inference. The released code
instead reassigns ``weight = nn.Parameter(w * BFM)`` in every forward, so the optimiser's tensor
never changes and the kernel decays as ``w0 * BFM**n``; here the product is computed in the
forward (:class:`BFMDepthwiseConv3d`) and folding is explicit
(:meth:`RepUXNet.fold_reparameterisation`).

Cost on CPU. PyTorch 2.x has no fast CPU backward for depthwise 3D convs: for 16 channels on
2 x 20 x 28 x 20 voxels (one thread) a k=21 kernel takes 0.27 s forward but 28 s forward +
backward, k=7 13 ms and 0.57 s (measured). So when autograd records a depthwise conv on the CPU
it runs as a product of FFTs instead (:func:`depthwise_conv3d`; same result to ~1e-6 relative),
about 50x faster for k=21; without autograd (inference, export) and on GPUs it stays a plain
grouped ``conv3d``, which is then as fast or faster.

Example:
    >>> net = RepUXNet(input_channels=1, num_classes=3, n_stages=4, features_per_stage=[16, 32, 64, 128],
    ...                strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], patch_size=[40, 56, 40])
    >>> logits = net(torch.zeros(2, 1, 40, 56, 40))  # (2, 3, 40, 56, 40)
    >>> net.fold_reparameterisation()                # for export/inference; same outputs
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.regularization import DropPath
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from torch import nn

from nnunet_efficient.errors import EfficientError

__all__ = [
    "BFMDepthwiseConv3d",
    "DepthwiseConv3d",
    "LayerNorm3d",
    "RepUXBlock",
    "RepUXNet",
    "UXBlock",
    "UXNet",
    "bfm_prior",
    "clamp_kernel",
    "depthwise_conv3d",
]

#: LayerNorm epsilon of the reference (ConvNeXt's), in the encoder.
LAYER_NORM_EPS = 1e-6

#: Width factor of UX-Net's grouped pointwise MLP.
MLP_RATIO = 4


def clamp_kernel(kernel_size: int, feature_map_size: Sequence[int]) -> tuple[int, ...]:
    """Largest useful depthwise kernel per axis: ``min(k, 2 n - 1)``.

    With zero padding ``k // 2``, a tap further than ``n - 1`` voxels from the centre multiplies
    padding at every output position of an ``n``-voxel axis, so it can be dropped without
    changing the output.

    Args:
        kernel_size: requested (odd) kernel size ``k``.
        feature_map_size: spatial size ``(n_x, n_y, n_z)`` of the feature map the conv runs on.

    Returns:
        Kernel size per axis; odd when ``k`` is odd.

    Example:
        >>> clamp_kernel(21, (20, 7, 1))
        (21, 13, 1)
    """
    if kernel_size < 1 or any(n < 1 for n in feature_map_size):
        raise ValueError(f"kernel size {kernel_size} and feature map {tuple(feature_map_size)} must be positive")
    return tuple(min(int(kernel_size), 2 * int(n) - 1) for n in feature_map_size)


def bfm_prior(kernel_size: Sequence[int], alpha: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RepUX-Net's Bayesian frequency prior ``alpha / (d + alpha)``.

    Args:
        kernel_size: odd kernel size per axis ``(k_x, k_y, k_z)``.
        alpha: prior strength (> 0); larger flattens the prior towards 1.
        dtype: result dtype (computed in float64 first).

    Returns:
        ``(k_x, k_y, k_z)`` tensor, 1 at the centre, strictly positive, decreasing with the
        Euclidean distance ``d`` of the tap (integer offsets) from the centre.
    """
    offsets = [torch.arange(k, dtype=torch.float64) - k // 2 for k in kernel_size]
    grids = torch.meshgrid(*offsets, indexing="ij")
    distance = torch.sqrt(sum(g * g for g in grids))
    return (alpha / (distance + alpha)).to(dtype)


def _fft_depthwise_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    kernel, size = weight.shape[2:], x.shape[2:]
    full = [n + k - 1 for n, k in zip(size, kernel)]
    dims = (-3, -2, -1)
    # conv3d is a cross-correlation: the flipped kernel turns it into the convolution FFTs compute
    spectrum = torch.fft.rfftn(x.float(), s=full, dim=dims) * torch.fft.rfftn(
        weight[:, 0].float().flip(dims), s=full, dim=dims)
    y = torch.fft.irfftn(spectrum, s=full, dim=dims)
    y = y[(..., *(slice(k // 2, k // 2 + n) for k, n in zip(kernel, size)))].to(x.dtype)
    return y if bias is None else y + bias.view(1, -1, 1, 1, 1).to(y.dtype)


def depthwise_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise 3D conv with odd kernels and zero padding ``k // 2`` (output size = input size).

    Equals ``F.conv3d(x, weight, bias, padding=k // 2, groups=C)``. When autograd records it on the
    CPU and the kernel is larger than 3³, it is computed through FFTs, because PyTorch's CPU
    backward of depthwise 3D convs is pathologically slow (module docstring); the two agree to
    ~1e-6 relative in float32.

    Args:
        x: ``(B, C, X, Y, Z)``.
        weight: ``(C, 1, k_x, k_y, k_z)``, odd sizes.
        bias: ``(C,)`` or None.

    Returns:
        ``(B, C, X, Y, Z)``.
    """
    kernel = weight.shape[2:]
    records_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if x.device.type == "cpu" and records_grad and math.prod(kernel) > 27:
        return _fft_depthwise_conv3d(x, weight, bias)
    return F.conv3d(x, weight, bias, padding=tuple(k // 2 for k in kernel), groups=x.shape[1])


class DepthwiseConv3d(nn.Conv3d):
    """``nn.Conv3d(C, C, k, padding=k // 2, groups=C)`` that runs through :func:`depthwise_conv3d`."""

    def __init__(self, channels: int, kernel_size: Sequence[int]):
        kernel_size = tuple(int(k) for k in kernel_size)
        super().__init__(channels, channels, kernel_size, padding=tuple(k // 2 for k in kernel_size),
                         groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv3d(x, self.weight, self.bias)


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a channels-first ``(B, C, X, Y, Z)`` tensor.

    Args:
        channels: ``C``.
        eps: variance epsilon (the reference's 1e-6).
    """

    def __init__(self, channels: int, eps: float = LAYER_NORM_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps
        self.channels = int(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each voxel's channel vector.

        Args:
            x: ``(B, C, X, Y, Z)``.

        Returns:
            ``(B, C, X, Y, Z)``, contiguous.
        """
        # F.layer_norm normalises trailing axes: move C last and back. The copy back to
        # channels-first halved the time of the grouped pointwise conv that follows (CPU, measured).
        # For the ONNX export (nnunet-efficient export): (self.channels,), not (x.shape[1],), because the
        # tracer turns input shapes into graph values and normalized_shape must be a constant; permute,
        # not movedim(1, -1), because the exporter writes movedim's negative axis into an invalid Transpose.
        y = F.layer_norm(x.permute(0, 2, 3, 4, 1), (self.channels,), self.weight, self.bias, self.eps)
        return y.permute(0, 4, 1, 2, 3).contiguous()


class BFMDepthwiseConv3d(nn.Module):
    """Depthwise 3D conv whose effective kernel is ``weight * BFM`` until it is folded.

    ``BFM`` (:func:`bfm_prior`) is a non-persistent buffer, rebuilt from ``kernel_size`` and
    ``alpha``, so it follows ``.to(device)`` and never enters checkpoints. The persistent bool
    buffer ``folded`` does: a checkpoint records whether its ``weight`` is the raw ``w`` or the
    folded ``w * BFM``, and loading converts between the two (the prior is strictly positive).

    Args:
        channels: input = output channels ``C``.
        kernel_size: odd kernel size per axis ``(k_x, k_y, k_z)``; padding ``k // 2`` keeps the size.
        alpha: prior strength (> 0).

    Attributes:
        weight: ``(C, 1, k_x, k_y, k_z)``; raw ``w`` before :meth:`fold`, ``w * BFM`` after.
        bias: ``(C,)``.
        bfm: ``(1, 1, k_x, k_y, k_z)`` prior, non-persistent.
        folded: persistent ``torch.bool`` scalar.
    """

    def __init__(self, channels: int, kernel_size: Sequence[int], alpha: float = 1.0):
        super().__init__()
        kernel_size = tuple(int(k) for k in kernel_size)
        if len(kernel_size) != 3 or any(k < 1 or k % 2 == 0 for k in kernel_size):
            raise EfficientError(f"BFM depthwise kernel {kernel_size} must be three odd sizes")
        if not alpha > 0:
            raise EfficientError(f"bfm_alpha={alpha} must be > 0 (the prior alpha / (d + alpha) is divided by)")
        self.channels = int(channels)
        self.kernel_size = kernel_size
        self.alpha = float(alpha)
        self.padding = tuple(k // 2 for k in kernel_size)
        self.weight = nn.Parameter(torch.empty(self.channels, 1, *kernel_size))
        self.bias = nn.Parameter(torch.empty(self.channels))
        # nn.Conv3d's default initialisation, which the reference's conv had.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(math.prod(kernel_size))
        nn.init.uniform_(self.bias, -bound, bound)
        self.register_buffer("bfm", bfm_prior(kernel_size, self.alpha)[None, None], persistent=False)
        self.register_buffer("folded", torch.tensor(False))
        # Python mirror of the buffer: reading a CUDA bool in every forward would synchronise.
        self._folded = False

    @property
    def is_folded(self) -> bool:
        return self._folded

    def effective_weight(self) -> torch.Tensor:
        """The kernel the forward applies: ``weight * BFM``, or ``weight`` once folded.

        Returns:
            ``(C, 1, k_x, k_y, k_z)``, differentiable w.r.t. ``weight``.
        """
        return self.weight if self._folded else self.weight * self.bfm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise conv with the effective kernel.

        Args:
            x: ``(B, C, X, Y, Z)``.

        Returns:
            ``(B, C, X, Y, Z)``.
        """
        return depthwise_conv3d(x, self.effective_weight(), self.bias)

    @torch.no_grad()
    def fold(self) -> None:
        """Bake the prior into ``weight`` (once; later calls do nothing). The output is unchanged."""
        if self._folded:
            return
        self.weight.mul_(self.bfm)
        self.folded.fill_(True)
        self._folded = True

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        weight_key, folded_key = prefix + "weight", prefix + "folded"
        if weight_key in state_dict and folded_key not in state_dict:
            raise EfficientError(
                f"{folded_key}: no 'folded' entry next to {weight_key}, not a RepUX-Net checkpoint of this plugin "
                f"(the weight could be raw or folded with the prior)")
        if folded_key in state_dict:
            state_dict = dict(state_dict)  # never alter the caller's dict
            weight = state_dict.get(weight_key)
            other_state = bool(state_dict[folded_key]) != self._folded
            if other_state and weight is not None and weight.shape == self.weight.shape:
                bfm = self.bfm.to(device=weight.device, dtype=torch.float32)
                converted = weight.float() * bfm if self._folded else weight.float() / bfm
                state_dict[weight_key] = converted.to(weight.dtype)
            # The weight is now in this module's convention, so its state is kept.
            state_dict[folded_key] = self.folded.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, alpha={self.alpha}, folded={self._folded}"


class UXBlock(nn.Module):
    """3D UX-Net block: depthwise conv -> LN -> grouped pointwise x4 -> GELU -> grouped pointwise
    -> layer scale -> drop path -> residual.

    Args:
        dim: channels ``C``.
        kernel_size: odd depthwise kernel per axis.
        layer_scale_init: initial layer scale; <= 0 disables it (as the reference).
        drop_path: stochastic-depth probability.
    """

    def __init__(self, dim: int, kernel_size: Sequence[int], layer_scale_init: float = 1e-6, drop_path: float = 0.0):
        super().__init__()
        kernel_size = tuple(kernel_size)
        self.dwconv = DepthwiseConv3d(dim, kernel_size)
        self.norm = LayerNorm3d(dim)
        # Grouped (groups=dim), not full, pointwise convs: the paper's "depthwise" MLP.
        self.pwconv1 = nn.Conv3d(dim, MLP_RATIO * dim, 1, groups=dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Conv3d(MLP_RATIO * dim, dim, 1, groups=dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init))) if layer_scale_init > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: ``(B, C, X, Y, Z)``.

        Returns:
            ``(B, C, X, Y, Z)``.
        """
        y = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x)))))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1, 1)
        return x + self.drop_path(y)

    def compute_conv_feature_map_size(self, size: Sequence[int]) -> int:
        # Each conv output counts once, as in dynamic_network_architectures (the LN is grouped
        # with the dwconv and the GELU with pwconv1, like its conv -> norm -> nonlin).
        return (2 + MLP_RATIO) * self.dwconv.out_channels * math.prod(size)


class RepUXBlock(nn.Module):
    """RepUX-Net block: BFM depthwise conv -> BatchNorm -> GELU (no residual, MLP or layer scale).

    Args:
        dim: channels ``C``.
        kernel_size: odd depthwise kernel per axis.
        alpha: BFM prior strength.
    """

    def __init__(self, dim: int, kernel_size: Sequence[int], alpha: float = 1.0):
        super().__init__()
        self.dwconv = BFMDepthwiseConv3d(dim, kernel_size, alpha)
        self.norm = nn.BatchNorm3d(dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: ``(B, C, X, Y, Z)``.

        Returns:
            ``(B, C, X, Y, Z)``.
        """
        return self.act(self.norm(self.dwconv(x)))

    def compute_conv_feature_map_size(self, size: Sequence[int]) -> int:
        return self.dwconv.channels * math.prod(size)


def _residual_block(input_channels: int, output_channels: int) -> BasicBlockD:
    # The UNETR blocks (MONAI UnetResBlock): two bias-free 3x3x3 convs with norm + LeakyReLU, a
    # 1x1x1 conv + norm on the skip when the width changes. nnU-Net's affine InstanceNorm.
    return BasicBlockD(nn.Conv3d, input_channels, output_channels, 3, 1, conv_bias=False,
                       norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                       nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


class UXEncoder(nn.Module):
    """Stem, stages of large-kernel blocks and downsampling layers (levels 1..S-1).

    Args:
        input_channels: image channels.
        features: ``features_per_stage`` (length S).
        strides: per-level strides (length S, 3 per level).
        stage_blocks: one list of blocks per encoder stage (levels 1..S-1).

    Attributes:
        kernel_sizes: depthwise kernel per encoder stage (levels 1..S-1), as clamped.
    """

    def __init__(self, input_channels: int, features: Sequence[int], strides: Sequence[Sequence[int]],
                 stage_blocks: Sequence[Sequence[nn.Module]]):
        super().__init__()
        n = len(features)
        stem_kernel = tuple(7 if s > 1 else 3 for s in strides[1])
        self.stem = nn.Sequential(
            nn.Conv3d(input_channels, features[0], stem_kernel, stride=tuple(strides[1]),
                      padding=tuple(k // 2 for k in stem_kernel)),
            LayerNorm3d(features[0]),
        )
        # downsample[i] goes from level i+1 to level i+2.
        self.downsample = nn.ModuleList(
            nn.Sequential(LayerNorm3d(features[i]),
                          nn.Conv3d(features[i], features[i + 1], tuple(strides[i + 2]), stride=tuple(strides[i + 2])))
            for i in range(n - 2)
        )
        self.stages = nn.ModuleList(nn.Sequential(*blocks) for blocks in stage_blocks)
        self.norms = nn.ModuleList(LayerNorm3d(features[i]) for i in range(n - 1))
        self.strides = [tuple(s) for s in strides]
        self.features = list(features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode.

        Args:
            x: ``(B, C_in, X, Y, Z)``.

        Returns:
            S-1 normalised stage outputs, level 1 first: level ``l`` is ``(B, f[l-1], *size_l)``.
        """
        x = self.stem(x)
        outputs = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsample[i - 1](x)
            x = stage(x)
            outputs.append(self.norms[i](x))
        return outputs

    def compute_conv_feature_map_size(self, level_sizes: Sequence[Sequence[int]]) -> int:
        f = self.features
        total = f[0] * math.prod(level_sizes[1])  # stem conv (+ its LN)
        for i, stage in enumerate(self.stages):
            size = level_sizes[i + 1]
            if i > 0:  # standalone LN at the previous level, then the strided conv
                total += f[i - 1] * math.prod(level_sizes[i]) + f[i] * math.prod(size)
            total += sum(block.compute_conv_feature_map_size(size) for block in stage)
            total += f[i] * math.prod(size)  # stage-output LN
        return total


class UNETRDecoder(nn.Module):
    """UNETR-style decoder: residual blocks on the skips, residual up blocks, seg heads.

    Args:
        input_channels: image channels (the level-0 skip is the raw input).
        features: ``features_per_stage`` (length S).
        strides: per-level strides (length S).
        num_classes: output channels of the heads.
        deep_supervision: return the logits of every decoder level; nnU-Net flips this attribute.
    """

    def __init__(self, input_channels: int, features: Sequence[int], strides: Sequence[Sequence[int]],
                 num_classes: int, deep_supervision: bool = False):
        super().__init__()
        n = len(features)
        self.skip_blocks = nn.ModuleList(
            [_residual_block(input_channels, features[0])]
            + [_residual_block(features[l - 1], features[l]) for l in range(1, n)]
        )
        # transpconvs[l - 1] and up_blocks[l - 1] take level l to level l - 1.
        self.transpconvs = nn.ModuleList(
            nn.ConvTranspose3d(features[l], features[l - 1], tuple(strides[l]), stride=tuple(strides[l]), bias=False)
            for l in range(1, n)
        )
        self.up_blocks = nn.ModuleList(_residual_block(2 * features[l - 1], features[l - 1]) for l in range(1, n))
        self.final_block = _residual_block(features[0], features[0])  # the reference's decoder1
        self.seg_layers = nn.ModuleList(nn.Conv3d(features[l], num_classes, 1) for l in range(n - 1))
        self.deep_supervision = deep_supervision
        self.features = list(features)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, encoder_outputs: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Decode.

        Args:
            x: network input ``(B, C_in, X, Y, Z)``.
            encoder_outputs: the S-1 encoder outputs, level 1 first.

        Returns:
            ``(B, num_classes, X, Y, Z)``; with deep supervision a list of S-1 such tensors, full
            resolution first, then level ``l`` at size ``(X, Y, Z) / prod(strides[0..l])``.
        """
        skips = [self.skip_blocks[0](x)] + [blk(e) for blk, e in zip(self.skip_blocks[1:], encoder_outputs)]
        y = skips[-1]
        logits = []
        for level in range(len(skips) - 2, -1, -1):
            y = self.up_blocks[level](torch.cat((self.transpconvs[level](y), skips[level]), dim=1))
            if level == 0:
                y = self.final_block(y)
            if self.deep_supervision or level == 0:
                logits.append(self.seg_layers[level](y))
        if not self.deep_supervision:
            return logits[0]
        return logits[::-1]

    def compute_conv_feature_map_size(self, level_sizes: Sequence[Sequence[int]]) -> int:
        total = sum(int(blk.compute_conv_feature_map_size(s)) for blk, s in zip(self.skip_blocks, level_sizes))
        for level in range(len(self.features) - 1):
            size = level_sizes[level]
            total += self.features[level] * math.prod(size)  # transposed conv
            total += int(self.up_blocks[level].compute_conv_feature_map_size(size))
            if self.deep_supervision or level == 0:
                total += self.num_classes * math.prod(size)
        total += int(self.final_block.compute_conv_feature_map_size(level_sizes[0]))
        return total


def _as_strides(strides: Sequence[Sequence[int] | int]) -> list[tuple[int, ...]]:
    out = []
    for s in strides:
        s = (s,) * 3 if isinstance(s, (int, np.integer)) else tuple(s)
        if len(s) != 3:
            raise EfficientError(f"strides {list(strides)}: UX-Net/RepUX-Net are 3D only, every stride needs 3 values")
        if any(int(v) < 1 for v in s):
            raise EfficientError(f"strides {list(strides)}: every stride must be a positive integer")
        out.append(tuple(int(v) for v in s))
    return out


class UXNet(nn.Module):
    """3D UX-Net with a plans-driven topology (see the module docstring for the mapping).

    Args:
        input_channels: image channels.
        num_classes: output channels.
        n_stages: ``S`` >= 3 resolution levels (level 0 = input resolution).
        features_per_stage: ``S`` widths ``f``; the encoder stage at level ``l`` is ``f[l-1]`` wide,
            the bottleneck ``f[S-1]``.
        strides: ``S`` strides (one int or three per level), ``strides[0]`` all ones.
        patch_size: training patch ``(X, Y, Z)``, divisible by the total stride; sets the kernel clamping.
        kernel_size: odd depthwise kernel size before clamping.
        blocks_per_stage: blocks per encoder stage, one int or S-1 ints (levels 1..S-1).
        layer_scale_init: initial layer scale of the UX blocks (<= 0: none).
        drop_path_rate: stochastic depth, rising linearly from 0 over the encoder blocks.
        deep_supervision: initial value of ``decoder.deep_supervision``.

    Attributes:
        encoder: :class:`UXEncoder`.
        decoder: :class:`UNETRDecoder`; ``decoder.deep_supervision`` is what nnU-Net toggles.
        total_stride: product of the strides per axis.
        level_sizes: feature-map size per level for ``patch_size``.
        kernel_sizes: clamped depthwise kernel per encoder stage (levels 1..S-1).
    """

    def __init__(self, input_channels: int, num_classes: int, n_stages: int, features_per_stage: Sequence[int],
                 strides: Sequence[Sequence[int] | int], patch_size: Sequence[int], kernel_size: int = 7,
                 blocks_per_stage: int | Sequence[int] = 2, layer_scale_init: float = 1e-6,
                 drop_path_rate: float = 0.0, deep_supervision: bool = False):
        super().__init__()
        name = type(self).__name__
        if len(patch_size) != 3:
            raise EfficientError(f"patch_size {list(patch_size)}: UX-Net/RepUX-Net are 3D only, "
                                 f"the patch needs 3 sizes")
        strides = _as_strides(strides)
        if n_stages < 3:
            raise EfficientError(f"{name}: n_stages={n_stages}, at least 3 resolution levels are needed")
        if len(features_per_stage) != n_stages or len(strides) != n_stages:
            raise EfficientError(f"{name}: n_stages={n_stages} but {len(features_per_stage)} features_per_stage "
                                 f"and {len(strides)} strides; give one of each per stage")
        if any(int(f) < 1 for f in features_per_stage):
            raise EfficientError(f"features_per_stage={list(features_per_stage)}: every width must be >= 1")
        if any(s != 1 for s in strides[0]):
            raise EfficientError(f"strides[0]={list(strides[0])}: the first stride must be [1, 1, 1] "
                                 f"(level 0 is the input resolution)")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise EfficientError(f"kernel_size={kernel_size} must be a positive odd number")
        total = tuple(math.prod(s[a] for s in strides) for a in range(3))
        if any(p % t for p, t in zip(patch_size, total)):
            raise EfficientError(f"patch_size {list(patch_size)} is not divisible by the total downsampling "
                                 f"{list(total)} of strides {[list(s) for s in strides]}")
        blocks = [blocks_per_stage] * (n_stages - 1) if isinstance(blocks_per_stage, (int, np.integer)) \
            else list(blocks_per_stage)
        if len(blocks) != n_stages - 1 or any(b < 1 for b in blocks):
            raise EfficientError(f"blocks_per_stage={blocks_per_stage}: give one int >= 1 or {n_stages - 1} "
                                 f"(one per encoder stage, levels 1..{n_stages - 1})")

        features = [int(f) for f in features_per_stage]
        self.strides = strides
        self.total_stride = total
        self.patch_size = tuple(int(p) for p in patch_size)
        self.level_sizes = self._level_sizes(self.patch_size)
        self.kernel_sizes = [clamp_kernel(kernel_size, self.level_sizes[l]) for l in range(1, n_stages)]
        self.num_classes = num_classes
        self.layer_scale_init = float(layer_scale_init)
        rates = torch.linspace(0, float(drop_path_rate), sum(blocks)).tolist()
        stage_blocks = []
        for stage, n_blocks in enumerate(blocks):
            first = sum(blocks[:stage])
            stage_blocks.append([self._make_block(features[stage], self.kernel_sizes[stage], rates[first + b])
                                 for b in range(n_blocks)])
        self.encoder = UXEncoder(input_channels, features, strides, stage_blocks)
        self.decoder = UNETRDecoder(input_channels, features, strides, num_classes, deep_supervision)

    def _make_block(self, dim: int, kernel_size: tuple[int, ...], drop_path: float) -> nn.Module:
        return UXBlock(dim, kernel_size, self.layer_scale_init, drop_path)

    def _level_sizes(self, input_size: Sequence[int]) -> list[tuple[int, ...]]:
        sizes, size = [], tuple(input_size)
        for s in self.strides:
            size = tuple(n // k for n, k in zip(size, s))
            sizes.append(size)
        return sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment.

        Args:
            x: ``(B, input_channels, X, Y, Z)``, each axis divisible by the total stride.

        Returns:
            Logits ``(B, num_classes, X, Y, Z)``; with ``decoder.deep_supervision`` a list of
            ``n_stages - 1`` logits, full resolution first (nnU-Net's convention).
        """
        if any(n % t for n, t in zip(x.shape[2:], self.total_stride)):
            raise EfficientError(f"{type(self).__name__}: input of spatial size {tuple(x.shape[2:])} is not divisible "
                                 f"by the total downsampling {list(self.total_stride)}")
        return self.decoder(x, self.encoder(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Feature-map elements the network stores for one sample, as nnU-Net's planners expect.

        Counted like dynamic_network_architectures' ``PlainConvUNet``: every conv output once
        (a conv -> norm -> nonlinearity group counts once), plus the LayerNorms that stand on
        their own (stage outputs, before each downsampling); heads only where they run.

        Args:
            input_size: spatial size ``(X, Y, Z)`` (no batch or channel axis).

        Returns:
            The element count (grows linearly with the number of voxels).
        """
        if len(input_size) != 3:
            raise EfficientError(f"input_size {list(input_size)}: give the spatial size (X, Y, Z) only")
        sizes = self._level_sizes(input_size)
        return int(self.encoder.compute_conv_feature_map_size(sizes)
                   + self.decoder.compute_conv_feature_map_size(sizes))

    def fold_reparameterisation(self) -> None:
        """Nothing to fold in UX-Net (kept so that UX-Net and RepUX-Net are interchangeable)."""


class RepUXNet(UXNet):
    """RepUX-Net: :class:`UXNet`'s topology with RepUX blocks (BFM depthwise k=21, BN, GELU).

    Same arguments as :class:`UXNet` (``layer_scale_init`` and ``drop_path_rate`` are unused:
    the block has no residual), plus:

    Args:
        bfm_alpha: strength ``alpha`` of the Bayesian frequency prior ``alpha / (d + alpha)``.

    Train unfolded; call :meth:`fold_reparameterisation` before export or inference. Checkpoints
    of either state load into a network of either state (converted on load).
    """

    def __init__(self, input_channels: int, num_classes: int, n_stages: int, features_per_stage: Sequence[int],
                 strides: Sequence[Sequence[int] | int], patch_size: Sequence[int], kernel_size: int = 21,
                 blocks_per_stage: int | Sequence[int] = 2, layer_scale_init: float = 1e-6,
                 drop_path_rate: float = 0.0, bfm_alpha: float = 1.0, deep_supervision: bool = False):
        if not bfm_alpha > 0:
            raise EfficientError(f"bfm_alpha={bfm_alpha} must be > 0")
        # _make_block runs inside UXNet.__init__; a plain float may be set before Module.__init__.
        self.bfm_alpha = float(bfm_alpha)
        super().__init__(input_channels, num_classes, n_stages, features_per_stage, strides, patch_size,
                         kernel_size, blocks_per_stage, layer_scale_init, drop_path_rate, deep_supervision)

    def _make_block(self, dim: int, kernel_size: tuple[int, ...], drop_path: float) -> nn.Module:
        return RepUXBlock(dim, kernel_size, self.bfm_alpha)

    def _bfm_convs(self) -> list[BFMDepthwiseConv3d]:
        return [m for m in self.modules() if isinstance(m, BFMDepthwiseConv3d)]

    def fold_reparameterisation(self) -> None:
        """Bake ``w * BFM`` into plain kernels; outputs are unchanged, calling again does nothing."""
        for conv in self._bfm_convs():
            conv.fold()

    @property
    def is_folded(self) -> bool:
        """Whether every BFM conv holds its folded kernel."""
        return all(conv.is_folded for conv in self._bfm_convs())
