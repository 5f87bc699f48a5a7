"""``nnUNetTrainerPatchPerformance`` and ``<AnyTrainer>_PatchPerformance`` for nnU-Net's trainer lookup.

See :mod:`nnunet_efficient.training.patch_performance`. Module-level ``__getattr__`` (PEP 562)
answers the ``hasattr(module, name)`` probe of nnU-Net's trainer lookup for the suffixed names;
every class is made resilient (:mod:`nnunet_efficient.training.resilience`) under its own name.
"""

from nnunet_efficient.training import patch_performance as _training
from nnunet_efficient.training.resilience import resilient

nnUNetTrainerPatchPerformance = resilient(_training.nnUNetTrainerPatchPerformance)

__all__ = ["nnUNetTrainerPatchPerformance"]


def __getattr__(name: str) -> type:
    return resilient(_training.patch_performance_variant(name))
