"""The network behind the wrappers training and compilation put around it."""

from __future__ import annotations

from torch import nn


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module behind a DistributedDataParallel and/or ``torch.compile`` wrapper.

    Args:
        network: a module, possibly ``DDP(module)``, ``torch.compile(module)`` or both.

    Returns:
        The innermost module (``network`` itself when it is not wrapped).
    """
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)
