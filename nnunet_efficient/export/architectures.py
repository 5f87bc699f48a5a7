"""Which networks can be exported to ONNX, and as which parts: the registry of ``nnunet-efficient export``.

A network the plugin predicts with is exported as one or more *parts*, each an ``nn.Module`` with
tensor inputs and outputs that becomes one ONNX file:

- ``kind="network"`` (stock nnU-Net's U-Nets, UX-Net, RepUX-Net folded): one part, ``network``,
  ``(B, C_in, *window)`` → ``(B, classes, *window)`` logits; the onnxruntime backend calls it
  wherever the PyTorch backend calls the network, so every window-based strategy runs on it.
- ``kind="nmsw"``: NMSW's four parts with weights (``global``, ``scorer``, ``local``,
  ``aggregator``); the backend puts them back together behind NMSWNetwork's interface, and the
  weight-free glue (resizing, candidate grid, top-K, Gaussian merge) stays the plugin's code.

A new architecture is one call, next to the network's own module or below::

    register_architecture(MyNet, spatial="dynamic", spatial_note="any multiple of the total stride")

``spatial="static"`` (with the reason in ``spatial_note``) exports fixed spatial axes, for
networks whose forward depends on the input size fixed at construction (positional embeddings).
An architecture needs an ``export_parts`` function only when it is not one ``network`` part.
Pure PyTorch: nnunetv2 is not imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from nnunet_efficient.errors import EfficientError


@dataclass
class ExportPart:
    """One ONNX file of an export.

    Attributes:
        name: the part's name; the file is ``fold_X/<name>.onnx``.
        module: what is exported (evaluated with tensor inputs only).
        inputs: example inputs, one tensor per input name (the batch axis should be >= 2, so that
            the tracer cannot fold it into a constant).
        input_names, output_names: ONNX tensor names.
        dynamic_axes: per tensor name, the axes that stay free: ``{axis: symbolic name}``.
        description: one line for the summary and the metadata (what goes in, what comes out).
    """

    name: str
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    description: str = ""


@dataclass(frozen=True)
class ExportContext:
    """What the parts builder knows about the model besides its network.

    Attributes:
        num_input_channels: ``C_in`` (the cascade's one-hot channels included).
        patch_size: the configuration's patch (window) size.
        configuration: the configuration dict of the plans (``ConfigurationManager.configuration``).
    """

    num_input_channels: int
    patch_size: tuple[int, ...]
    configuration: dict


PartsBuilder = Callable[[nn.Module, ExportContext, bool], list[ExportPart]]


@dataclass(frozen=True)
class ArchitectureSpec:
    """How one family of networks is exported.

    Attributes:
        classes: the network classes (subclasses match too).
        spatial: ``"dynamic"`` (spatial axes free in the ONNX files) or ``"static"``.
        spatial_note: which sizes the graph accepts, or why the spatial axes are fixed.
        kind: how the onnxruntime backend reassembles the parts (``"network"`` or ``"nmsw"``).
        export_parts: builds the parts (default: the whole network as one ``network`` part).
    """

    classes: tuple[type[nn.Module], ...]
    spatial: Literal["dynamic", "static"]
    spatial_note: str
    kind: Literal["network", "nmsw"] = "network"
    export_parts: PartsBuilder | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return "/".join(c.__name__ for c in self.classes)

    def parts(self, network: nn.Module, context: ExportContext) -> list[ExportPart]:
        builder = self.export_parts or single_network_parts
        return builder(network, context, self.spatial == "dynamic")


ARCHITECTURES: list[ArchitectureSpec] = []


def register_architecture(classes: type[nn.Module] | Sequence[type[nn.Module]], spatial: Literal["dynamic", "static"],
                          spatial_note: str, kind: Literal["network", "nmsw"] = "network",
                          export_parts: PartsBuilder | None = None) -> ArchitectureSpec:
    """Make a network family exportable (see the module docstring).

    Returns:
        The registered spec. A later registration of the same class takes precedence.
    """
    if spatial not in ("dynamic", "static"):
        raise ValueError(f"spatial must be 'dynamic' or 'static', got {spatial!r}")
    classes = (classes,) if isinstance(classes, type) else tuple(classes)
    spec = ArchitectureSpec(classes, spatial, spatial_note, kind, export_parts)
    ARCHITECTURES.insert(0, spec)
    return spec


def architecture_of(network: nn.Module) -> ArchitectureSpec:
    """The registered spec of ``network`` (the most recent registration that matches).

    Raises:
        EfficientError: no registration matches.
    """
    for spec in ARCHITECTURES:
        if isinstance(network, spec.classes):
            return spec
    known = ", ".join(sorted({c.__name__ for spec in ARCHITECTURES for c in spec.classes}))
    name = f"{type(network).__module__}.{type(network).__qualname__}"
    raise EfficientError(f"cannot export {name}: no ONNX export is registered for this architecture (exportable: "
                         f"{known}); register it with nnunet_efficient.export.register_architecture")


class _FirstOutput(nn.Module):
    """The network with its full-resolution output only (a deep-supervision list → its first entry)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return out[0] if isinstance(out, (list, tuple)) else out


def _axes(ndim: int, spatial_dynamic: bool, prefix: str = "") -> dict[int, str]:
    names = "xyz"[-(ndim - 2):] if ndim - 2 <= 3 else [f"s{i}" for i in range(ndim - 2)]
    axes = {0: "batch"}
    if spatial_dynamic:
        axes.update({2 + i: f"{prefix}{n}" for i, n in enumerate(names)})
    return axes


def example_input(batch: int, channels: int, spatial: Sequence[int], seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal ``(batch, channels, *spatial)`` float32 tensor (z-scored images look like this)."""
    return torch.randn(batch, channels, *spatial, generator=torch.Generator().manual_seed(seed))


def single_network_parts(network: nn.Module, context: ExportContext, spatial_dynamic: bool) -> list[ExportPart]:
    """The whole network as one part ``network``: ``image (B, C_in, *patch)`` → ``logits (B, classes, *patch)``."""
    x = example_input(2, context.num_input_channels, context.patch_size)
    axes = _axes(x.ndim, spatial_dynamic)
    return [ExportPart("network", _FirstOutput(network), (x,), ("image",), ("logits",),
                       {"image": axes, "logits": axes},
                       "image (B, C_in, *window) -> logits (B, classes, *window)")]


# ---------------------------------------------------------------------------------------------- NMSW
class _GlobalPart(nn.Module):
    def __init__(self, branch: nn.Module):
        super().__init__()
        self.branch = branch

    def forward(self, image_lowres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.branch(image_lowres)


class _ScorerHead(nn.Module):
    """NMSW's scorer after its weight-free resize to the candidate grid (the clamp included)."""

    def __init__(self, scorer: nn.Module, max_score: float):
        super().__init__()
        self.head = scorer.head
        self.max_score = max_score

    def forward(self, features_on_grid: torch.Tensor) -> torch.Tensor:
        return self.head(features_on_grid).clamp(max=self.max_score)


class _AggregatorPart(nn.Module):
    def __init__(self, aggregator: nn.Module):
        super().__init__()
        self.aggregator = aggregator

    def forward(self, local_logits: torch.Tensor, global_logits: torch.Tensor) -> torch.Tensor:
        return self.aggregator(local_logits, global_logits)


def nmsw_parts(network: nn.Module, context: ExportContext, spatial_dynamic: bool) -> list[ExportPart]:
    """NMSW's parts with weights (the candidate grid, top-K and merge are weight-free and stay in Python).

    - ``global``: ``image_lowres (B, C_in, *global_shape)`` → ``global_logits (B, classes, *global_shape)``,
      ``features (B, C_f, *global_shape / stride_1)``.
    - ``scorer``: ``features_on_grid (B, C_f, *grid)`` (features resized linearly to the candidate
      grid) → ``scores (B, 1, *grid)``, clamped at MAX_SCORE.
    - ``local``: ``image (B, C_in, *window)`` → ``logits (B, classes, *window)``.
    - ``aggregator``: ``local_logits``, ``global_logits`` (both ``(B, classes, *window)``) → ``logits``.
    """
    from nnunet_efficient.networks.nmsw import MAX_SCORE, downsample_image
    from nnunet_efficient.networks.nmsw_plans import nmsw_settings

    settings = nmsw_settings(context.configuration, "the model's configuration")
    c_in, classes = context.num_input_channels, network.num_classes
    image_lowres = example_input(2, c_in, network.global_shape)
    with torch.no_grad():
        _, features = network.global_branch(image_lowres)
        grid = network.grid(settings.volume_shape)[1]
        features_on_grid = downsample_image(features, grid)
    window = example_input(2, c_in, network.window_size, seed=1)
    local_logits = example_input(2, classes, network.window_size, seed=2)
    global_crop = example_input(2, classes, network.window_size, seed=3)
    ndim = image_lowres.ndim
    return [
        ExportPart("global", _GlobalPart(network.global_branch), (image_lowres,), ("image_lowres",),
                   ("global_logits", "features"),
                   {"image_lowres": _axes(ndim, spatial_dynamic, "g"),
                    "global_logits": _axes(ndim, spatial_dynamic, "g"),
                    "features": _axes(ndim, spatial_dynamic, "f")},
                   "image_lowres (B, C_in, *global_shape) -> global_logits, features (decoder stage 1)"),
        ExportPart("scorer", _ScorerHead(network.scorer, MAX_SCORE), (features_on_grid,), ("features_on_grid",),
                   ("scores",), {"features_on_grid": _axes(ndim, True, "n"), "scores": _axes(ndim, True, "n")},
                   "features resized to the candidate grid (B, C_f, *grid) -> scores (B, 1, *grid), clamped"),
        ExportPart("local", _FirstOutput(network.local_net), (window,), ("image",), ("logits",),
                   {"image": _axes(ndim, spatial_dynamic), "logits": _axes(ndim, spatial_dynamic)},
                   "image (B, C_in, *window) -> logits (B, classes, *window)"),
        ExportPart("aggregator", _AggregatorPart(network.aggregator), (local_logits, global_crop),
                   ("local_logits", "global_logits"), ("logits",),
                   {n: _axes(ndim, spatial_dynamic) for n in ("local_logits", "global_logits", "logits")},
                   "local_logits, global_logits cropped to the window (B, classes, *window) -> logits"),
    ]


def _register_builtin() -> None:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet, ResidualUNet

    from nnunet_efficient.networks.distill_dsm import DistillDSMUNet
    from nnunet_efficient.networks.nmsw import NMSWNetwork
    from nnunet_efficient.networks.unetr import UNETR, TokenSparseUNETR
    from nnunet_efficient.networks.uxnet import UXNet

    multiple = "any size that is a multiple of the network's total stride on every axis"
    register_architecture((PlainConvUNet, ResidualEncoderUNet, ResidualUNet), "dynamic", multiple)
    register_architecture(UXNet, "dynamic", f"{multiple} (RepUX-Net exported with its kernels folded; kernels "
                                            f"stay clamped for the plan's patch, as in PyTorch)")
    register_architecture(DistillDSMUNet, "dynamic", f"any depth (slices along the plan's depth axis); in-plane "
                                                     f"{multiple[4:]}")
    register_architecture((UNETR, TokenSparseUNETR), "static",
                          "the token grid and its position embedding are built for the plan's patch size, and the "
                          "kept-token counts of the token-sparse variant follow from it")
    register_architecture(NMSWNetwork, "dynamic", f"{multiple} for each part; the global part always runs at the "
                                                  f"plans' global_shape", kind="nmsw", export_parts=nmsw_parts)


_register_builtin()
