"""``nnUNetTrainerPatchPerformance`` and ``<AnyTrainer>_PatchPerformance`` for nnU-Net's trainer lookup.

See :mod:`nnunet_efficient.training.patch_performance`. Module-level ``__getattr__`` (PEP 562)
answers the ``hasattr(module, name)`` probe of nnU-Net's trainer lookup for the suffixed names.
"""

from nnunet_efficient.training.patch_performance import nnUNetTrainerPatchPerformance, patch_performance_variant

__all__ = ["nnUNetTrainerPatchPerformance"]


def __getattr__(name: str) -> type:
    return patch_performance_variant(name)
