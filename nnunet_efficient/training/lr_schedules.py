"""Learning-rate schedules stepped once per epoch, as nnU-Net steps its ``PolyLRScheduler``."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import _LRScheduler


def warmup_cosine_lr(epoch: int, initial_lr: float, warmup_epochs: int, total_epochs: int) -> float:
    """Linear warm-up to ``initial_lr`` over ``warmup_epochs``, then cosine decay to 0 at ``total_epochs``.

    Epoch ``e < warmup_epochs`` trains at ``initial_lr · (e + 1) / warmup_epochs`` (never 0, so
    the first epoch is not wasted); afterwards ``initial_lr · ½ (1 + cos(π · t))`` with ``t`` the
    fraction of the post-warm-up epochs already done.

    Example:
        >>> [round(warmup_cosine_lr(e, 1.0, 2, 6), 3) for e in range(6)]
        [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """
    if epoch < warmup_epochs:
        return initial_lr * (epoch + 1) / warmup_epochs
    decay_epochs = max(1, total_epochs - warmup_epochs)
    progress = min(1.0, (epoch - warmup_epochs) / decay_epochs)
    return initial_lr * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosineLRScheduler(_LRScheduler):
    """:func:`warmup_cosine_lr` for an optimiser; ``step(epoch)`` as nnU-Net's trainer calls it.

    A parameter group with an ``lr_scale`` entry (layer-wise decay) trains at that multiple of the rate.
    """

    def __init__(self, optimizer: Optimizer, initial_lr: float, warmup_epochs: int, total_epochs: int,
                 current_step: int | None = None):
        self.initial_lr, self.warmup_epochs, self.total_epochs = initial_lr, warmup_epochs, total_epochs
        self.ctr = 0
        super().__init__(optimizer, current_step if current_step is not None else -1)

    def step(self, current_step: int | None = None) -> None:
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = warmup_cosine_lr(current_step, self.initial_lr, self.warmup_epochs, self.total_epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
