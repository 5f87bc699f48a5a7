"""``<AnyTrainer>_<E>epochs[_<I>iters]``: short schedules for every trainer.

See :mod:`nnunet_efficient.training.schedules`. Module-level ``__getattr__`` (PEP 562) answers
the ``hasattr(module, name)`` probe of nnU-Net's trainer lookup.
"""

from nnunet_efficient.training.schedules import schedule_variant


def __getattr__(name: str) -> type:
    return schedule_variant(name)
