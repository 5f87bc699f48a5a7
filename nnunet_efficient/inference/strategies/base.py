"""The contract every inference strategy fulfils, and the registry that names them.

A new strategy is one small class::

    @register_strategy
    class MyStrategy(InferenceStrategy):
        name = "mine"
        options = (StrategyOption("--k", int, 5, "windows to evaluate"),)

        def predict(self, predictor, data):
            ...
            return logits, WindowRun(...)

and is then available as ``nnunet-efficient predict --strategy mine --k 3`` and in the benchmark.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from nnunet_efficient.errors import EfficientError
from nnunet_efficient.sampling.sliding_window import WindowRun

if TYPE_CHECKING:
    from nnunet_efficient.inference.predictor import EfficientPredictor


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
    """Turns a preprocessed, padded volume into logits for :class:`EfficientPredictor`."""

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

    def check_predictor(self, predictor: EfficientPredictor) -> None:  # noqa: B027  (optional hook)
        """Raise :class:`EfficientError` when the initialised predictor's model cannot run this strategy.

        Called once the model is loaded, so a wrong model fails before any case is read.
        """

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> InferenceStrategy:
        return cls(**{o.dest: getattr(args, o.dest) for o in cls.options})

    @abstractmethod
    def predict(self, predictor: EfficientPredictor, data: torch.Tensor) -> tuple[torch.Tensor, WindowRun]:
        """Predict one volume.

        Args:
            predictor: the initialised predictor (network, plans, device, mirroring, batch size).
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
