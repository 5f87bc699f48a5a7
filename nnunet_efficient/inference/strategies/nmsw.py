"""Strategies for NMSW models (``nnUNetTrainerNMSW`` and its baselines, configuration ``3d_nmsw``).

All four run on the same weights, the model's global and local branches, so a comparison
measures the choice of windows only (SPEC 3.7):

- ``nmsw``: the learned scorer's top-K windows (no noise: deterministic) and the learned merge.
- ``random_fg``: K windows drawn uniformly among the candidates that the global prediction calls
  foreground (``--seed`` makes it reproducible), learned merge.
- ``zoom``: one local pass per foreground class's bounding box, resized to the window (merge
  documented in :func:`~nnunet_efficient.networks.nmsw_baselines.zoom_infer`).
- ``global``: the global branch alone, upsampled (no window; the floor of every other strategy).

``sliding_window`` on an NMSW model is nnU-Net's own predictor on it: one NMSW inference per
canvas-sized window (the model's ``forward`` is the whole NMSW inference, with ``k_infer`` windows).

Each volume is first zero-padded to the plans' canvas (``3d_nmsw``'s ``patch_size``; training pads
the same way, so the global branch sees the training scale) and cropped back afterwards. A volume
larger than the canvas is not padded and runs as one NMSW inference (stock ``nnUNetv2_predict``
slides canvas-sized NMSW inferences over it instead; within the canvas both agree).
With ``perform_everything_on_device=False`` (``--not_on_device``) the network runs on the device
and the merged logits are kept on the host. Mirroring TTA
flips the whole volume and runs the whole strategy per flip (the global pass included), then
averages the logits, as nnU-Net averages mirrored windows.

Steps: ``nmsw`` and ``random_fg`` choose among the model's candidate grid, nnU-Net's grid at the
step of the plans' ``nmsw`` entry (the scorer was trained on it); ``zoom`` and ``global`` use no
grid. None of them reads ``-step_size``; :meth:`InferenceStrategy.step_used` says which step each
uses, so ``predict`` refuses a ``-step_size`` it would ignore and ``benchmark`` records the step used.

Window choices are :meth:`NMSWNetwork.choose_windows`'s, the global and local passes
:meth:`NMSWNetwork.global_pass` and :meth:`NMSWNetwork.local_pass`: the same code as the
network's own ``forward_infer``.

Memory: with the predictor's default ``accumulate_dtype`` (float16, as nnU-Net's sliding window)
``nmsw``, ``random_fg`` and ``global`` merge every window and every mirrored pass straight into
one float16 ``(C, *canvas)`` buffer (:mod:`nnunet_efficient.sampling.compact`): the upsampled
global logits are computed a slab at a time and no float32 volume of logits is ever held.
``accumulate_dtype=torch.float32`` runs the network's own float32 merge (``forward_infer``)
instead, whose logits equal the float16 ones up to float16 rounding. ``zoom`` always merges in
float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image

from nnunet_efficient.common.modules import unwrap_network
from nnunet_efficient.errors import EfficientError
from nnunet_efficient.inference.strategies.base import (
    InferenceStrategy,
    StrategyContext,
    StrategyOption,
    register_strategy,
)
from nnunet_efficient.networks.aggregation import gaussian_importance_map
from nnunet_efficient.networks.nmsw import GlobalPass, NMSWPipeline, resize_linear_window
from nnunet_efficient.networks.nmsw_baselines import global_only_infer, zoom_infer
from nnunet_efficient.networks.nmsw_plans import NMSWSettings, nmsw_settings
from nnunet_efficient.sampling.compact import merge_pass_into, window_weights
from nnunet_efficient.sampling.sliding_window import WindowRun, mirror_axes_combinations
from nnunet_efficient.sampling.windows import crop_window


@dataclass
class NMSWRun(WindowRun):
    """:class:`WindowRun` of an NMSW strategy.

    ``windows`` counts the local windows of one (unmirrored) pass, ``network_inputs`` the local
    windows of all mirrored passes, ``network_passes`` every network call (local windows and
    global passes); ``global_passes`` the global-branch passes (one per mirrored pass).
    """

    global_passes: int = 0


def nmsw_network(context: StrategyContext, strategy: str) -> NMSWPipeline:
    """The context's NMSW network, PyTorch or onnxruntime (behind any DDP / torch.compile wrapper).

    Raises:
        EfficientError: the model is not an NMSW model.
    """
    network = unwrap_network(context.network)
    if not isinstance(network, NMSWPipeline):
        raise EfficientError(
            f"strategy '{strategy}' needs an NMSW model (trainer nnUNetTrainerNMSW, configuration 3d_nmsw); "
            f"this model (trainer {context.trainer_name or '?'}) is a {type(network).__name__}: "
            f"use --strategy sliding_window.")
    return network


def nmsw_context_settings(context: StrategyContext) -> NMSWSettings:
    """The ``nmsw`` entry of the model's configuration (raises EfficientError without one)."""
    return nmsw_settings(context.configuration_manager.configuration,
                         f"the model's configuration (plans '{context.plans_manager.plans_name}')")


class NMSWStrategy(InferenceStrategy):
    """Shared frame: checks, padding to the canvas, mirroring, counting. Subclasses implement
    :meth:`infer`."""

    def validate(self) -> None:
        k = self.settings.get("k")
        if k is not None and k < 1:
            raise EfficientError(f"--k must be at least 1 for strategy '{self.name}', got {k}.")

    def check(self, context):
        nmsw_network(context, self.name)
        nmsw_context_settings(context)

    def step_used(self, context):  # the model's candidate grid (nmsw, random_fg) or no grid (zoom, global)
        return nmsw_network(context, self.name).step if self.chooses_windows else None

    #: whether the strategy chooses windows among the candidate grid (its step is the plans')
    chooses_windows: bool = True

    def infer(self, net: NMSWPipeline, image: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(1, C_in, *canvas)`` image → ``((1, classes, *canvas)`` float32 logits, local windows evaluated)."""
        raise NotImplementedError

    #: whether :meth:`window_starts` describes this strategy, so that :meth:`infer_into` can run it
    compact: bool = True

    def window_starts(self, net: NMSWPipeline, glob: GlobalPass) -> list[tuple[int, ...]]:
        """The windows :meth:`infer` evaluates, chosen from the global pass (:meth:`NMSWNetwork.choose_windows`)."""
        raise NotImplementedError

    def infer_into(self, net: NMSWPipeline, image: torch.Tensor, total: torch.Tensor,
                   flip_axes: tuple[int, ...]) -> int | None:
        """Add :meth:`infer`'s logits of ``image`` (flipped along ``flip_axes``) to ``total`` (float16
        ``(classes, *canvas)``) without a float32 volume; returns the local windows evaluated, or None
        (nothing added) when this strategy has no compact merge."""
        if not self.compact:
            return None
        spatial = tuple(image.shape[2:])
        glob = net.global_pass(image)
        starts = self.window_starts(net, glob)
        global_logits = glob.global_logits.float()
        importance = gaussian_importance_map(net.window_size, device=image.device)

        def fallback(a: int, b: int) -> torch.Tensor:  # the upsampled global logits, one slab
            return resize_linear_window(global_logits, spatial, (a, *[0] * (len(spatial) - 1)),
                                        (b - a, *spatial[1:]))[0]

        def windows():  # as forward_infer: local pass, global crop, learned merge, one window at a time
            for start in starts:
                local = net.local_pass(crop_window(image, start, net.window_size))
                global_crop = resize_linear_window(global_logits, spatial, start, net.window_size)
                yield start, net.aggregator(local, global_crop)[0]

        merge_pass_into(total, window_weights(spatial, starts, importance), fallback, windows(), importance,
                        flip_axes)
        return len(starts)

    @torch.no_grad()
    def predict(self, context, data):
        net = nmsw_network(context, self.name)
        settings = nmsw_context_settings(context)
        padded, revert = pad_nd_image(data, settings.volume_shape, "constant", {"value": 0}, True, None)
        image = padded[None].to(context.device)
        # the merged logits stay on the host with --not_on_device, as nnU-Net's aggregation buffers do
        results_device = context.device if context.perform_everything_on_device else torch.device("cpu")
        variants = [(), *mirror_axes_combinations(context.mirror_axes)]
        run, total = NMSWRun(), None
        if self.compact and context.accumulate_dtype != torch.float32:
            total = torch.zeros((net.num_classes, *image.shape[2:]), dtype=context.accumulate_dtype,
                                device=results_device)
        with context.window_progress(len(variants)) as progress:
            for axes in variants:
                flipped = torch.flip(image, axes) if axes else image
                windows = None if total is None or total.dtype == torch.float32 \
                    else self.infer_into(net, flipped, total, tuple(a - 2 for a in axes))
                if windows is None:  # the network's float32 merge
                    logits, windows = self.infer(net, flipped)
                    logits = (torch.flip(logits, axes)[0] if axes else logits[0]).to(results_device)
                    total = logits.float() if total is None else total.add_(logits)
                run.windows = run.windows or windows
                run.network_inputs += windows
                run.network_passes += windows + 1
                run.global_passes += 1
                progress.update()
        logits = total.div_(len(variants)) if len(variants) > 1 else total
        return logits[(slice(None), *revert[1:])], run


K_OPTION = StrategyOption("--k", int, None, "windows to evaluate (None: the plans' k_infer; at least the "
                                            "number of candidates: all of them).")


@register_strategy
class NMSWTopK(NMSWStrategy):
    """NMSW: the scorer's top-K candidate windows, learned merge (deterministic)."""

    name = "nmsw"
    options = (K_OPTION,)

    def infer(self, net, image):
        out = net.forward_infer(image, k=self.settings["k"], strategy="nmsw")
        return out["logits"], len(out["window_starts"][0])

    def window_starts(self, net, glob):  # forward_infer's choice for strategy="nmsw"
        return glob.window_starts(net.choose_windows(glob, self.settings["k"], "nmsw"))[0]


@register_strategy
class RandomForeground(NMSWStrategy):
    """K windows drawn uniformly among the global prediction's foreground candidates, learned merge."""

    name = "random_fg"
    options = (K_OPTION, StrategyOption("--seed", int, 0, "seed of the random window draw."))

    def predict(self, context, data):
        # one generator per volume: a case's windows do not depend on the cases before it
        self._generator = torch.Generator().manual_seed(self.settings["seed"])
        return super().predict(context, data)

    def infer(self, net, image):
        out = net.forward_infer(image, k=self.settings["k"], strategy="random_fg", generator=self._generator)
        return out["logits"], len(out["window_starts"][0])

    def window_starts(self, net, glob):  # forward_infer's choice for strategy="random_fg"
        return glob.window_starts(net.choose_windows(glob, self.settings["k"], "random_fg", self._generator))[0]


@register_strategy
class Zoom(NMSWStrategy):
    """One window-sized local pass per foreground class's bounding box of the global prediction."""

    name = "zoom"
    compact = False  # boxes of any size, resized back: merged in float32
    chooses_windows = False  # boxes of the global prediction, not candidates of the grid

    def infer(self, net, image):
        out = zoom_infer(net, image)
        return out["logits"], len(out["boxes"][0])


@register_strategy
class GlobalOnly(NMSWStrategy):
    """The global branch alone, resized to full resolution (no local window)."""

    name = "global"
    chooses_windows = False

    def infer(self, net, image):
        return global_only_infer(net, image)["logits"], 0

    def window_starts(self, net, glob):  # no window: the upsampled global logits everywhere
        return glob.window_starts(net.choose_windows(glob, strategy="global"))[0]
