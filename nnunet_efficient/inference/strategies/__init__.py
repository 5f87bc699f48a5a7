"""Inference strategies: each turns a preprocessed volume into logits.

Importing this package registers the built-in strategies.
"""

from nnunet_efficient.inference.strategies import (
    nmsw,  # noqa: F401  (registers)
    sliding_window,  # noqa: F401  (registers)
    sparse,  # noqa: F401  (registers)
)
from nnunet_efficient.inference.strategies.base import (
    STRATEGIES,
    InferenceStrategy,
    StrategyContext,
    StrategyOption,
    add_strategy_arguments,
    get_strategy,
    register_strategy,
)

__all__ = ["STRATEGIES", "InferenceStrategy", "StrategyContext", "StrategyOption", "add_strategy_arguments",
           "get_strategy", "register_strategy"]
