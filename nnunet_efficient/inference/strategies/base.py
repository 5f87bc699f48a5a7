"""The contract every inference strategy fulfils, and the registry that names them.

A new strategy is one small class::

    @register_strategy
    class MyStrategy(InferenceStrategy):
        name = "mine"
        options = (StrategyOption("--k", int, 5, "windows to evaluate"),)

        def predict(self, context, data):
            slicers = context.slicers(data.shape[1:])
            ...
            return logits, WindowRun(...)

and is then available as ``nnunet-efficient predict --strategy mine --k 3`` and in the benchmark.

A strategy sees the predictor only through a :class:`StrategyContext`: the network, the
windows of nnU-Net's grid at any step, mirroring, batch size and nnU-Net's managers. It calls no
private method of nnU-Net or of a network and changes nothing of the predictor, so strategies
do not depend on the predictor module (which depends on them).
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from nnunet_efficient.errors import EfficientError
from nnunet_efficient.sampling.sliding_window import Slicer, WindowRun, sliding_window_slicers


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may use of the predictor (:meth:`EfficientPredictor.strategy_context`).

    Attributes:
        network: the model: ``(B, C_in, *patch)`` → ``(B, heads, *patch)`` logits; an NMSW model
            also offers its global pass, window choice and local pass (PyTorch or onnxruntime).
        device: where the network runs.
        step: sliding-window step as a fraction of the patch (``-step_size``).
        mirror_axes: spatial axes of mirroring TTA, or None when it is off.
        batch_size: windows per network call.
        accumulate_dtype: dtype of the full-volume aggregation buffers.
        use_gaussian: weight windows with nnU-Net's Gaussian (else a plain average).
        perform_everything_on_device: aggregation buffers on the device (when it is not the CPU).
        plans_manager, configuration_manager, label_manager: nnU-Net's managers of the model.
        trainer_name: the trainer the model was trained with (for messages).
        verbose: print more.
        progress: ``progress(total)`` opens a progress bar over ``total`` steps (``update(n)``).
    """

    network: nn.Module
    device: torch.device
    step: float
    mirror_axes: tuple[int, ...] | None
    batch_size: int
    accumulate_dtype: torch.dtype
    use_gaussian: bool
    perform_everything_on_device: bool
    plans_manager: Any
    configuration_manager: Any
    label_manager: Any
    trainer_name: str | None = None
    verbose: bool = False
    progress: Callable[[int], AbstractContextManager] | None = None

    @property
    def patch_size(self) -> tuple[int, ...]:
        """The configuration's patch (window) size."""
        return tuple(int(p) for p in self.configuration_manager.patch_size)

    def slicers(self, spatial_shape: Sequence[int], step: float | None = None) -> list[Slicer]:
        """nnU-Net's sliding-window windows of a padded volume, at :attr:`step` or another ``step``.

        The windows ``nnUNetPredictor`` evaluates, in its order (2D configurations slice by slice);
        see :func:`~nnunet_efficient.sampling.sliding_window.sliding_window_slicers`.
        """
        step = self.step if step is None else step
        slicers = sliding_window_slicers(spatial_shape, self.patch_size, step)
        if self.verbose:
            print(f"n_steps {len(slicers)}, image size is {tuple(spatial_shape)}, tile_size {list(self.patch_size)}, "
                  f"tile_step_size {step}")
        return slicers

    def window_progress(self, total: int) -> AbstractContextManager:
        """A progress bar over ``total`` windows (a silent one without :attr:`progress`)."""
        return self.progress(total) if self.progress is not None else _SilentProgress()


class _SilentProgress(AbstractContextManager):
    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        pass


@dataclass(frozen=True)
class StrategyOption:
    """A command-line option of a strategy; options with the same flag are shared between strategies."""

    flag: str
    type: type
    default: Any
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


class InferenceStrategy(ABC):
    """Turns a preprocessed, padded volume into logits for ``EfficientPredictor``."""

    name: ClassVar[str]
    options: ClassVar[tuple[StrategyOption, ...]] = ()
    #: backends the strategy runs on. ``onnxruntime`` gives the strategy an exported network: calls
    #: ``network(x)`` (and NMSWNetwork's methods on an NMSW export) work, PyTorch internals
    #: (modules, weights, hooks) do not; a strategy that needs them lists ``("pytorch",)`` only.
    backends: ClassVar[tuple[str, ...]] = ("pytorch", "onnxruntime")

    def __init__(self, **options: Any):
        known = {o.dest: o.default for o in self.options}
        unknown = set(options) - set(known)
        if unknown:
            raise EfficientError(f"strategy '{self.name}' has no option(s) {sorted(unknown)}; "
                                 f"it accepts {sorted(known) or 'none'}")
        known.update(options)
        self.settings = known
        self.validate()

    def validate(self) -> None:  # noqa: B027  (optional hook; most strategies accept any value)
        """Raise :class:`EfficientError` for option values the strategy cannot use."""

    def check(self, context: StrategyContext) -> None:  # noqa: B027  (optional hook)
        """Raise :class:`EfficientError` when the loaded model cannot run this strategy.

        Called once the model is loaded, so a wrong model fails before any case is read.
        """

    def step_used(self, context: StrategyContext) -> float | None:
        """The sliding-window step this strategy evaluates at: ``context.step`` unless it has its own grid.

        A strategy that ignores ``-step_size`` says so here (its own step, or None for no grid), so
        that a step it cannot honour is refused and the benchmark records the step actually used.
        """
        return context.step

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> InferenceStrategy:
        return cls(**{o.dest: getattr(args, o.dest) for o in cls.options})

    @abstractmethod
    def predict(self, context: StrategyContext, data: torch.Tensor) -> tuple[torch.Tensor, WindowRun]:
        """Predict one volume.

        Args:
            context: the loaded model and settings (network, grid, device, mirroring, batch size).
            data: ``(C, *spatial)`` preprocessed input, padded to at least one patch.

        Returns:
            ``(num_classes, *spatial)`` logits on any device, and what was evaluated.
        """

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"{self.name}({opts})" if opts else self.name


STRATEGIES: dict[str, type[InferenceStrategy]] = {}


def register_strategy(cls: type[InferenceStrategy]) -> type[InferenceStrategy]:
    """Class decorator that makes a strategy available by its ``name``."""
    if cls.name in STRATEGIES:
        raise ValueError(f"strategy name '{cls.name}' is registered twice")
    STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str, **options: Any) -> InferenceStrategy:
    """Instantiate a registered strategy by name.

    Raises:
        EfficientError: unknown name or option.
    """
    if name not in STRATEGIES:
        raise EfficientError(f"unknown strategy '{name}'; choose one of {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name](**options)


def add_strategy_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--strategy`` and every registered strategy's options (each flag once)."""
    group = parser.add_argument_group("inference strategy (nnunet-efficient)")
    group.add_argument("--strategy", default="sliding_window", choices=sorted(STRATEGIES),
                       help="How windows are chosen and merged. Default: sliding_window (nnU-Net's "
                            "Gaussian sliding window, identical logits).")
    seen: dict[str, StrategyOption] = {}
    for strategy in STRATEGIES.values():
        for option in strategy.options:
            if option.flag in seen:
                if seen[option.flag].type is not option.type:
                    raise ValueError(f"option {option.flag} is declared with two types")
                continue
            seen[option.flag] = option
            group.add_argument(option.flag, type=option.type, default=option.default,
                               help=f"[{strategy.name}] {option.help} Default: {option.default}")
