"""NMSW ("No More Sliding Window", MICCAI 2025) as a pure-PyTorch module.

One cheap global U-Net pass over a downsampled volume, a learned choice of K full-resolution
windows among nnU-Net's sliding-window grid, a local U-Net on those windows and a learned
merge (SPEC section 3). Never imports nnunetv2: the trainer and predictor adapters translate
between nnU-Net's objects and this module.

Example:
    >>> net = NMSWNetwork(global_unet, local_unet, num_classes=3, window_size=(64, 64, 64),
    ...                   global_shape=(48, 48, 48))
    >>> n = net.num_candidates(image.shape[2:])
    >>> out = net.forward_train(image, noise=sample_gumbel((1, n), gen),
    ...                         random_window_start=[draw_random_window_start(label[0], (64,) * 3, gen)])
    >>> loss = dice_ce(out["logits"], label) + ... + ENTROPY_WEIGHT * score_entropy(out["masked_scores"])
    >>> pred = net.forward_infer(image, k=5)["logits"]
    >>> pred = net(image)  # the same with the default k_infer: what nnU-Net's predictor calls

The three stages are public, so an inference strategy composes them itself (and an exported
network runs them on ONNX parts): :meth:`NMSWNetwork.global_pass` (global branch, scores,
foreground, candidate grid), :meth:`NMSWNetwork.choose_windows` (the one implementation of the
top-k, random-foreground, all-candidates and global-only choices) and
:meth:`NMSWNetwork.local_pass` (the local U-Net on a batch of windows).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_efficient.networks.aggregation import (
    AggregationNet,
    blend_windows,
    blend_windows_into,
    gaussian_importance_map,
)
from nnunet_efficient.sampling.topk import (
    DEFAULT_TAU,
    background_log_mask,
    gumbel_topk,
    random_foreground_indices,
    score_entropy,
    topk_indices,
)
from nnunet_efficient.sampling.windows import (
    ZoomBox,
    crop_window,
    grid_shape,
    window_grid,
    zoom_boxes,
)

__all__ = [
    "ENTROPY_WEIGHT",
    "MAX_SCORE",
    "WINDOW_CHOICES",
    "GlobalBranch",
    "GlobalPass",
    "NMSWNetwork",
    "NMSWPipeline",
    "Scorer",
    "downsample_image",
    "downsample_label",
    "foreground_on_grid",
    "resize_linear_window",
    "score_entropy",
]

#: Weight of :func:`score_entropy` in NMSW's total loss: negative, the entropy is maximised.
ENTROPY_WEIGHT = -1e-5

#: Scores are clamped from above (reference): keeps ``exp(score / tau)`` finite in float32.
MAX_SCORE = 70.0

#: The window choices of :meth:`NMSWNetwork.choose_windows`: the scorer's top-k, k random
#: foreground candidates, every candidate, none (the global branch alone).
WINDOW_CHOICES = ("nmsw", "random_fg", "all", "global")

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_LINEAR_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _resize_linear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    # align_corners=False and no anti-aliasing, as the reference's MONAI Resize.
    return F.interpolate(x, size=tuple(size), mode=_LINEAR_MODE[len(size)], align_corners=False)


def resize_linear_window(
    x: torch.Tensor, size: Sequence[int], start: Sequence[int], window_size: Sequence[int]
) -> torch.Tensor:
    """One window of ``_resize_linear(x, size)``, computed without the full-size result.

    Linear interpolation with ``align_corners=False`` is separable, so each axis is resized on
    its own, only at the window's output positions (PyTorch's source-index rule: ``(i + 0.5) *
    in / out - 0.5``, clamped at 0). Equals cropping the full resize up to float rounding; the
    cost is that of the window, which is what lets inference keep a single full-size buffer.

    Args:
        x: ``(B, C, *spatial)``.
        size: the full output shape.
        start: window start per axis, in the output.
        window_size: window shape.

    Returns:
        ``(B, C, *window_size)``.
    """
    for axis, (n_in, n_out, first, n) in enumerate(zip(x.shape[2:], size, start, window_size)):
        dim = axis + 2
        if n_in == n_out:
            x = x.narrow(dim, first, n)
            continue
        positions = torch.arange(first, first + n, device=x.device, dtype=torch.float32)
        source = ((positions + 0.5) * (n_in / n_out) - 0.5).clamp_(min=0)
        lower = source.floor().long().clamp_(max=n_in - 1)
        upper = (lower + 1).clamp_(max=n_in - 1)
        shape = [1] * x.ndim
        shape[dim] = n
        weight = (source - lower).to(x.dtype).view(shape)
        x = torch.lerp(x.index_select(dim, lower), x.index_select(dim, upper), weight)
    return x


def downsample_image(image: torch.Tensor, global_shape: Sequence[int]) -> torch.Tensor:
    """Full-resolution image to the global branch's input: (bi/tri)linear, no anti-aliasing.

    Args:
        image: ``(B, C, X, Y, Z)``.
        global_shape: target spatial shape ``(x, y, z)``.

    Returns:
        ``(B, C, *global_shape)``.
    """
    return _resize_linear(image, global_shape)


def downsample_label(label: torch.Tensor, global_shape: Sequence[int]) -> torch.Tensor:
    """Full-resolution label map to the global shape (nearest), for the global branch's loss.

    Args:
        label: integer or float ``(B, 1, X, Y, Z)``.
        global_shape: target spatial shape ``(x, y, z)``.

    Returns:
        ``(B, 1, *global_shape)``, same dtype as ``label``.
    """
    # F.interpolate has no integer kernels; class ids are exact in float32.
    return F.interpolate(label.float(), size=tuple(global_shape), mode="nearest").to(label.dtype)


def foreground_on_grid(global_logits: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Which candidates lie on foreground: ``argmax(global logits) != 0``, nearest-resized to the grid.

    Args:
        global_logits: ``(B, C, x, y, z)`` low-resolution logits.
        grid: candidate-grid shape ``(n_x, n_y, n_z)``.

    Returns:
        Boolean ``(B, N)``, ``N = prod(grid)``, flattened in C order like the window grid.
    """
    labels = global_logits.detach().argmax(1, keepdim=True).float()
    # mode="nearest" (PyTorch's floor rule) as the reference's get_background_mask.
    return (F.interpolate(labels, size=tuple(grid), mode="nearest") > 0).flatten(1)


class GlobalBranch(nn.Module):
    """Runs a dynamic_network_architectures U-Net and also returns a decoder feature map.

    Works with anything that has ``.encoder`` (returning its skips) and a ``UNetDecoder``-like
    ``.decoder`` (``transpconvs``, ``stages``, ``seg_layers``), e.g. ``PlainConvUNet`` and
    ``ResidualEncoderUNet``. The decoder is iterated here, exactly as ``UNetDecoder.forward``
    does, so no hooks are needed. Only the full-resolution logits are produced (no deep
    supervision), whatever ``decoder.deep_supervision`` says.

    The feature map is the output of decoder stage ``len(stages) - 2``: the resolution of
    encoder stage 1, i.e. half the input for nnU-Net's usual first stride of 1 and second of 2
    (the reference's "second-last" feature). With a single decoder stage there is no such
    stage and the last decoder stage (input resolution) is used instead.

    Args:
        unet: the global network.

    Attributes:
        feature_channels: channel count of the returned feature map.
        feature_stage: index of the decoder stage whose output is returned.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        decoder = getattr(unet, "decoder", None)
        if not hasattr(unet, "encoder") or not all(
            hasattr(decoder, a) for a in ("transpconvs", "stages", "seg_layers")
        ):
            raise TypeError(
                f"global_net {type(unet).__name__} must have .encoder and a UNetDecoder-like .decoder "
                f"(PlainConvUNet or ResidualEncoderUNet from dynamic_network_architectures)."
            )
        n = len(decoder.stages)
        if n < 1:
            raise ValueError("global_net needs at least one decoder stage (an encoder of >= 2 stages).")
        self.unet = unet
        self.feature_stage = n - 2 if n >= 2 else n - 1
        self.feature_channels = int(decoder.seg_layers[self.feature_stage].in_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global pass.

        Args:
            x: ``(B, C_in, x, y, z)`` downsampled image.

        Returns:
            ``(logits, features)``: logits ``(B, classes, x, y, z)`` and the feature map
            ``(B, feature_channels, ...)`` (half resolution, see the class docstring).
        """
        decoder = self.unet.decoder
        skips = self.unet.encoder(x)
        lres = skips[-1]
        features = None
        for s in range(len(decoder.stages)):
            h = decoder.transpconvs[s](lres)
            h = torch.cat((h, skips[-(s + 2)]), 1)
            h = decoder.stages[s](h)
            if s == self.feature_stage:
                features = h
            lres = h
        return decoder.seg_layers[-1](lres), features


class Scorer(nn.Module):
    """One score per candidate window from the global branch's feature map.

    The features are resized (bi/trilinear) to the candidate-grid shape, then a 1x1x1 head
    C -> C/2 -> C/2 (LeakyReLU 0.1 after each) -> 1 -> 1 (two linear convs), clamped at
    :data:`MAX_SCORE` from above.

    Args:
        in_channels: C, the feature map's channels.
        conv_op: ``nn.Conv3d`` (or ``nn.Conv2d`` in 2D).
    """

    def __init__(self, in_channels: int, conv_op: type[nn.Module] = nn.Conv3d):
        super().__init__()
        h = max(int(in_channels) // 2, 1)
        self.head = nn.Sequential(
            conv_op(in_channels, h, 1),
            nn.LeakyReLU(0.1, inplace=True),
            conv_op(h, h, 1),
            nn.LeakyReLU(0.1, inplace=True),
            conv_op(h, 1, 1),
            conv_op(1, 1, 1),
        )

    def forward(self, features: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """Score the candidates.

        Args:
            features: ``(B, C, x', y', z')`` feature map.
            grid: candidate-grid shape ``(n_x, n_y, n_z)``.

        Returns:
            ``(B, N)`` scores, ``N = prod(grid)``, C order like the window grid, at most 70.
        """
        s = self.head(_resize_linear(features, grid))
        return s.clamp(max=MAX_SCORE).flatten(1)


@dataclass
class GlobalPass:
    """What the global pass says about a batch of full-resolution volumes (:meth:`NMSWNetwork.global_pass`).

    Attributes:
        global_logits: ``(B, classes, *global_shape)`` logits of the global branch.
        scores: ``(B, N)`` candidate scores (clamped at :data:`MAX_SCORE`), ``N = prod(grid_shape)``.
        masked_scores: ``(B, N)`` ``scores`` plus the background log-mask (what the top-k ranks).
        foreground: ``(B, N)`` bool, candidates on the global prediction's foreground.
        grid_shape: candidate-grid shape ``(n_x, n_y, n_z)``.
        starts: the ``N`` candidate window starts (full resolution, C order like the scores).
        spatial: the full-resolution spatial shape ``(X, Y, Z)``.
    """

    global_logits: torch.Tensor
    scores: torch.Tensor
    masked_scores: torch.Tensor
    foreground: torch.Tensor
    grid_shape: tuple[int, ...]
    starts: list[tuple[int, ...]]
    spatial: tuple[int, ...]

    def outputs(self) -> dict:
        """The entries ``forward_train`` and ``forward_infer`` return: ``global_logits``, ``scores``,
        ``masked_scores``, ``foreground`` and ``grid_shape``."""
        return {"global_logits": self.global_logits, "scores": self.scores, "masked_scores": self.masked_scores,
                "foreground": self.foreground, "grid_shape": self.grid_shape}

    def window_starts(self, indices: torch.Tensor) -> list[list[tuple[int, ...]]]:
        """Per sample, the starts of candidate ``indices`` ``(B, K)``."""
        return [[self.starts[n] for n in row] for row in indices.tolist()]


def _conv_op(window_size: Sequence[int], global_shape: Sequence[int]) -> type[nn.Module]:
    if len(global_shape) != len(window_size) or len(window_size) not in _CONV:
        raise ValueError(
            f"window_size {tuple(window_size)} and global_shape {tuple(global_shape)} must both be "
            f"1D, 2D or 3D shapes of the same length."
        )
    return _CONV[len(window_size)]


def _freeze_deep_supervision_heads(unet: nn.Module) -> None:
    # NMSW uses full-resolution logits only, so the lower-resolution segmentation heads of a
    # dynamic_network_architectures decoder never get a gradient. Frozen, they keep their
    # state_dict keys (stock checkpoints still load) and DistributedDataParallel does not wait
    # for their gradients.
    seg_layers = getattr(getattr(unet, "decoder", None), "seg_layers", None)
    if seg_layers is not None:
        for head in list(seg_layers)[:-1]:
            head.requires_grad_(False)


class NMSWPipeline(nn.Module):
    """NMSW's computation over four parts: global branch, scorer, local network, aggregator.

    Everything NMSW does at training and inference time (candidate grid, global pass, window
    choice, local pass, learned merge) lives here and reads only the parts and the settings, so
    the same code runs on PyTorch modules (:class:`NMSWNetwork`, built from two U-Nets) and on
    any other implementation of the parts (the onnxruntime backend's ONNX sessions).

    ``forward(x)`` on a whole volume (the canvas) is the whole NMSW inference
    (:meth:`forward_infer` with ``k_infer`` windows, its logits). Configuration ``3d_nmsw`` sets
    nnU-Net's ``patch_size`` to that canvas, so nnU-Net's stock predictor (``nnUNetv2_predict``,
    the end-of-training validation) pads each case to the canvas and calls ``forward`` once per
    mirrored copy: the global pass, the top-k and the learned merge run. A case larger than the
    canvas is covered by nnU-Net with several canvas-sized windows (each a whole NMSW inference,
    Gaussian-blended), whereas ``nnunet-efficient predict --strategy nmsw`` runs one NMSW
    inference on the whole case (the global branch then sees it at a coarser scale); within the
    canvas both give the same labels.
    ``local_net`` is a plain attribute: its ``state_dict`` keys are ``local_net.*``, so a stock
    nnU-Net model's weights load into it.

    Args:
        global_branch: ``(B, C_in, *global_shape)`` → ``(logits, features)`` (see :class:`GlobalBranch`).
        scorer: ``(features, grid_shape)`` → ``(B, N)`` scores (see :class:`Scorer`).
        local_net: ``(W, C_in, *window)`` → ``(W, classes, *window)`` logits (or a deep-supervision
            list whose first entry is that).
        aggregator: ``(local_logits, global_crop)`` → refined logits (see :class:`AggregationNet`).
        num_classes: number of output classes (background included).
        window_size: local window shape ``(x, y, z)`` (the plan's patch size).
        global_shape: spatial shape the full-resolution input is resized to for the global branch.
        step: candidate-grid step as a fraction of the window (nnU-Net's ``tile_step_size``).
        k_train: windows chosen by the top-k in training (reference: 4, plus 1 random).
        k_infer: default windows chosen at inference (reference: 5).
        tau: Gumbel-softmax temperature.
    """

    def __init__(
        self,
        global_branch: nn.Module,
        scorer: nn.Module,
        local_net: nn.Module,
        aggregator: nn.Module,
        num_classes: int,
        window_size: Sequence[int],
        global_shape: Sequence[int],
        step: float = 0.5,
        k_train: int = 4,
        k_infer: int = 5,
        tau: float = DEFAULT_TAU,
    ):
        super().__init__()
        _conv_op(window_size, global_shape)
        self.global_branch = global_branch
        self.local_net = local_net
        self.scorer = scorer
        self.aggregator = aggregator
        self.num_classes = int(num_classes)
        self.window_size = tuple(int(w) for w in window_size)
        self.global_shape = tuple(int(g) for g in global_shape)
        self.step = float(step)
        self.k_train = int(k_train)
        self.k_infer = int(k_infer)
        self.tau = float(tau)

    def forward(self, x: torch.Tensor, train: dict | None = None) -> torch.Tensor | dict:
        """NMSW inference on whole volumes ``(B, C_in, X, Y, Z)``: logits ``(B, classes, X, Y, Z)``.

        Every axis must be at least the window (nnU-Net pads to the canvas first). With ``train``
        (the keyword arguments of :meth:`forward_train`) it runs the joint training pass instead
        and returns its dict: training must go through ``forward`` so that a
        ``DistributedDataParallel`` wrapper synchronises its gradients.
        """
        if train is not None:
            return self.forward_train(x, **train)
        return self.forward_infer(x)["logits"]

    # ------------------------------------------------------------------ geometry helpers
    def grid(self, image_shape: Sequence[int]) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
        """Candidate window starts (C order) and grid shape for a full-resolution spatial shape."""
        return (
            window_grid(image_shape, self.window_size, self.step),
            grid_shape(image_shape, self.window_size, self.step),
        )

    def num_candidates(self, image_shape: Sequence[int]) -> int:
        """N, the number of candidate windows (the length of the Gumbel noise vector)."""
        return len(window_grid(image_shape, self.window_size, self.step))

    # ------------------------------------------------------------------ training
    def forward_train(
        self,
        image_fullres: torch.Tensor,
        image_lowres: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        random_window_start: Sequence[Sequence[int]] | Sequence[int] | None = None,
    ) -> dict:
        """Training pass with the differentiable top-k (``k_train`` windows).

        Window ``k`` is gathered by index and multiplied by ``z_k[n*] * y_k[n*]`` (value
        ``y_k[n*]``): the reference's ``sum_n z_k[n] y_k[n] window_n`` restricted to the chosen
        candidate, without cutting all N windows. That factor is the only path from the scores
        to the aggregated logits; it is training-only (inference feeds the raw window, a
        train/test mismatch the reference accepts).

        Args:
            image_fullres: ``(B, C_in, X, Y, Z)``; every axis at least the window.
            image_lowres: ``(B, C_in, *global_shape)``; computed by :func:`downsample_image`
                when ``None``.
            noise: Gumbel noise ``(B, N)`` from ``sample_gumbel``; ``None`` for no noise.
            random_window_start: start of the extra random window per sample (``B`` tuples, or
                one tuple used for every sample), e.g. from ``draw_random_window_start``;
                ``None`` for no extra window.

        Returns:
            dict with
            ``logits`` ``(B, classes, X, Y, Z)`` aggregated full-resolution logits;
            ``global_logits`` ``(B, classes, *global_shape)``;
            ``scores``, ``masked_scores`` ``(B, N)`` (clamped; masked = + background mask);
            ``foreground`` ``(B, N)`` bool; ``grid_shape``;
            ``z``, ``y`` ``(B, K, N)`` straight-through and soft selections; ``indices`` ``(B, K)``;
            ``window_starts``: per sample the K chosen starts;
            ``local_logits`` ``(B, K [+ 1], classes, *window)``, the random window last;
            ``local_starts``: per sample the starts of ``local_logits`` (to crop the labels).
        """
        b = image_fullres.shape[0]
        spatial = tuple(image_fullres.shape[2:])
        glob = self.global_pass(image_fullres, image_lowres)
        sel = gumbel_topk(glob.masked_scores, self.k_train, noise, self.tau)
        starts = glob.starts
        indices = sel.indices.tolist()
        window_starts = glob.window_starts(sel.indices)
        random_starts = _per_sample_starts(random_window_start, b)

        crops, local_starts = [], []
        for i in range(b):
            for k, n in enumerate(indices[i]):
                weight = sel.z[i, k, n] * sel.y[i, k, n]
                crops.append(crop_window(image_fullres[i], starts[n], self.window_size) * weight)
            local_starts.append(list(window_starts[i]))
            if random_starts is not None:
                crops.append(crop_window(image_fullres[i], random_starts[i], self.window_size))
                local_starts[-1].append(tuple(int(s) for s in random_starts[i]))
        local_logits = self.local_pass(torch.stack(crops)).unflatten(0, (b, -1))

        k = sel.indices.shape[1]
        logits = self._aggregate(glob.global_logits, local_logits[:, :k], window_starts, spatial)
        return {
            **glob.outputs(),
            "logits": logits,
            "z": sel.z,
            "y": sel.y,
            "indices": sel.indices,
            "window_starts": window_starts,
            "local_logits": local_logits,
            "local_starts": local_starts,
        }

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def forward_infer(
        self,
        image_fullres: torch.Tensor,
        k: int | None = None,
        strategy: str = "nmsw",
        generator: torch.Generator | None = None,
    ) -> dict:
        """Inference: choose windows, run the local net one window at a time, merge.

        :meth:`global_pass`, then :meth:`choose_windows` (``strategy``, all on the same weights, so
        a comparison measures sampling only), then :meth:`local_pass` and the learned merge of
        each window into the upsampled global logits.

        Args:
            image_fullres: ``(B, C_in, X, Y, Z)``; every axis at least the window.
            k: number of windows (default ``k_infer``); ``k >= N`` takes all. Ignored by ``"all"``
                and ``"global"``.
            strategy: one of :data:`WINDOW_CHOICES` (see :meth:`choose_windows`).
            generator: generator for ``"random_fg"`` (any device).

        Returns:
            dict with ``logits`` ``(B, classes, X, Y, Z)``, ``global_logits``, ``scores``,
            ``masked_scores``, ``foreground`` ``(B, N)``, ``grid_shape``, ``indices`` ``(B, K)``
            and ``window_starts`` (per sample the K starts).
        """
        spatial = tuple(image_fullres.shape[2:])
        glob = self.global_pass(image_fullres)
        indices = self.choose_windows(glob, k, strategy, generator)
        window_starts = glob.window_starts(indices)

        global_logits = glob.global_logits.float()
        global_up = _resize_linear(global_logits, spatial)
        importance = gaussian_importance_map(self.window_size, device=image_fullres.device)
        in_place = not torch.is_grad_enabled()

        def refined(i: int) -> Iterator[tuple[tuple[int, ...], torch.Tensor]]:
            # One window at a time: memory stays that of one window, like nnU-Net's predictor.
            for start in window_starts[i]:
                local = self.local_pass(crop_window(image_fullres[i : i + 1], start, self.window_size))
                if in_place:  # global_up is being overwritten: resize this window from the source
                    global_crop = resize_linear_window(global_logits[i : i + 1], spatial, start, self.window_size)
                else:
                    global_crop = crop_window(global_up[i : i + 1], start, self.window_size)
                yield start, self.aggregator(local, global_crop)[0]

        if in_place:  # prediction: merge into the upsampled global logits (one full-size buffer)
            logits = global_up
            for i in range(len(global_up)):
                blend_windows_into(global_up[i], refined(i), importance)
        else:
            logits = torch.stack([blend_windows(global_up[i], refined(i), importance) for i in range(len(global_up))])
        return {**glob.outputs(), "logits": logits, "indices": indices, "window_starts": window_starts}

    def forward_all_windows(self, image_fullres: torch.Tensor) -> dict:
        """Every candidate window with the learned merge: ``forward_infer(strategy="all")``."""
        return self.forward_infer(image_fullres, strategy="all")

    # ------------------------------------------------------------------ the three stages
    def global_pass(self, image_fullres: torch.Tensor, image_lowres: torch.Tensor | None = None) -> GlobalPass:
        """The global branch on the downsampled volume, the candidate scores and the foreground mask.

        Args:
            image_fullres: ``(B, C_in, X, Y, Z)`` full-resolution volume (its shape sets the grid).
            image_lowres: ``(B, C_in, *global_shape)``; computed by :func:`downsample_image` when ``None``.

        Returns:
            The :class:`GlobalPass` (global logits, scores, masked scores, foreground, candidate grid).
        """
        spatial = tuple(image_fullres.shape[2:])
        if image_lowres is None:
            image_lowres = downsample_image(image_fullres, self.global_shape)
        global_logits, features = self.global_branch(image_lowres)
        starts, grid = self.grid(spatial)
        scores = self.scorer(features, grid)
        foreground = foreground_on_grid(global_logits, grid)
        masked = scores + background_log_mask(foreground).to(scores.dtype)
        return GlobalPass(global_logits, scores, masked, foreground, grid, starts, spatial)

    def choose_windows(
        self,
        glob: GlobalPass,
        k: int | None = None,
        strategy: str = "nmsw",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Which candidate windows inference evaluates: the one place each choice is made.

        ``"nmsw"``: plain top-k of the masked scores (no noise, deterministic); ``"random_fg"``:
        k windows uniformly among foreground candidates (background fills up when foreground
        runs out); ``"all"``: every candidate (a sliding window with the learned merge);
        ``"global"``: none (the global branch alone). Training's differentiable choice is
        :func:`~nnunet_efficient.sampling.topk.gumbel_topk` in :meth:`forward_train`.

        Args:
            glob: the :meth:`global_pass` of the volumes.
            k: number of windows (default ``k_infer``); ``k >= N`` takes all.
            strategy: one of :data:`WINDOW_CHOICES`.
            generator: generator for ``"random_fg"`` (any device), for reproducible draws.

        Returns:
            Long ``(B, K)`` candidate indices (``K = 0`` for ``"global"``); starts via
            :meth:`GlobalPass.window_starts`.

        Raises:
            ValueError: an unknown ``strategy``.
        """
        k = self.k_infer if k is None else int(k)
        batch, device = glob.scores.shape[0], glob.scores.device
        if strategy == "nmsw":
            return topk_indices(glob.masked_scores, k)
        if strategy == "random_fg":
            return random_foreground_indices(glob.foreground, k, generator)
        if strategy == "all":
            n = len(glob.starts)
            return torch.arange(n, device=device).expand(batch, n)
        if strategy == "global":
            return torch.zeros((batch, 0), dtype=torch.long, device=device)
        raise ValueError(f"strategy must be one of {', '.join(map(repr, WINDOW_CHOICES))}, got {strategy!r}.")

    def local_pass(self, windows: torch.Tensor) -> torch.Tensor:
        """The local U-Net on a batch of windows.

        Args:
            windows: ``(W, C_in, *window_size)``.

        Returns:
            ``(W, classes, *window_size)`` logits (the full-resolution output of a deep-supervision list).
        """
        out = self.local_net(windows)
        return out[0] if isinstance(out, (list, tuple)) else out

    # ------------------------------------------------------------------ baselines' helpers
    def zoom_boxes(self, global_logits: torch.Tensor, image_shape: Sequence[int]) -> list[list[ZoomBox]]:
        """Per-class boxes of the global prediction for the ``zoom`` baseline.

        Args:
            global_logits: ``(B, classes, x, y, z)``.
            image_shape: full-resolution spatial shape ``(X, Y, Z)``.

        Returns:
            Per sample, one :class:`ZoomBox` per foreground class present (full-resolution
            coordinates, at least one window large where the image allows).
        """
        seg = global_logits.detach().argmax(1)
        return [zoom_boxes(s, image_shape, self.window_size) for s in seg]

    # ------------------------------------------------------------------ internals
    def _aggregate(
        self,
        global_logits: torch.Tensor,
        local_logits: torch.Tensor,
        window_starts: list[list[tuple[int, ...]]],
        spatial: tuple[int, ...],
    ) -> torch.Tensor:
        # The merge must not train the global branch (reference: global logits detached).
        global_up = _resize_linear(global_logits.detach().float(), spatial)
        b, k = local_logits.shape[:2]
        global_crops = torch.stack(
            [crop_window(global_up[i], s, self.window_size) for i in range(b) for s in window_starts[i]]
        )
        refined = self.aggregator(local_logits.flatten(0, 1), global_crops).unflatten(0, (b, k))
        importance = gaussian_importance_map(self.window_size, device=global_up.device)
        return torch.stack(
            [blend_windows(global_up[i], zip(window_starts[i], refined[i], strict=True), importance) for i in range(b)]
        )


class NMSWNetwork(NMSWPipeline):
    """Global branch + scorer + differentiable top-k + local branch + learned merge, in PyTorch.

    Builds :class:`NMSWPipeline`'s parts from two U-Nets: the global one wrapped by
    :class:`GlobalBranch`, a :class:`Scorer` on its features and an :class:`AggregationNet`.
    ``local_net`` is a plain attribute: its ``state_dict`` keys are ``local_net.*``, so a stock
    nnU-Net model's weights load into it.

    Args:
        global_net: U-Net for the downsampled volume (wrapped by :class:`GlobalBranch`).
        local_net: any module mapping ``(W, C_in, *window)`` to ``(W, classes, *window)``
            logits, e.g. the plan's ``PlainConvUNet``; a deep-supervision list is accepted and
            its first (full-resolution) entry used.
        num_classes, window_size, global_shape, step, k_train, k_infer, tau: the settings, as
            :class:`NMSWPipeline` documents them.
    """

    def __init__(
        self,
        global_net: nn.Module,
        local_net: nn.Module,
        num_classes: int,
        window_size: Sequence[int],
        global_shape: Sequence[int],
        step: float = 0.5,
        k_train: int = 4,
        k_infer: int = 5,
        tau: float = DEFAULT_TAU,
    ):
        conv_op = _conv_op(window_size, global_shape)
        global_branch = GlobalBranch(global_net)
        divisor = _total_stride(global_net.encoder, len(global_shape))
        if divisor is not None and any(g % d for g, d in zip(global_shape, divisor, strict=True)):
            # Otherwise the decoder's skip concatenation fails deep inside the forward pass.
            raise ValueError(
                f"global_shape {tuple(global_shape)} must be divisible by the global network's total "
                f"stride {divisor} on every axis."
            )
        for unet in (global_net, local_net):
            _freeze_deep_supervision_heads(unet)
        super().__init__(global_branch, Scorer(global_branch.feature_channels, conv_op), local_net,
                         AggregationNet(num_classes, conv_op), num_classes, window_size, global_shape, step,
                         k_train, k_infer, tau)


def _per_sample_starts(
    starts: Sequence[Sequence[int]] | Sequence[int] | None, batch: int
) -> list[tuple[int, ...]] | None:
    if starts is None:
        return None
    if len(starts) > 0 and isinstance(starts[0], numbers.Integral):
        return [tuple(starts)] * batch
    if len(starts) != batch:
        raise ValueError(f"random_window_start needs one start per sample ({batch}), got {len(starts)}.")
    return [tuple(int(v) for v in s) for s in starts]


def _total_stride(encoder: nn.Module, ndim: int) -> tuple[int, ...] | None:
    strides = getattr(encoder, "strides", None)
    if strides is None:
        return None
    total = [1] * ndim
    for st in strides:
        st = [int(st)] * ndim if isinstance(st, numbers.Integral) else [int(v) for v in st]
        total = [t * v for t, v in zip(total, st, strict=True)]
    return tuple(total)
