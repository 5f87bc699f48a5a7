"""Distill-DSM trainer for nnU-Net's trainer lookup, made resilient under the same names.

The classes live in ``nnunet_efficient.training.distill_dsm``; :func:`~nnunet_efficient.training.resilience.resilient`
puts the interruption, checkpoint and NaN guards first in their bases.
"""

from nnunet_efficient.training import distill_dsm as _training
from nnunet_efficient.training.resilience import resilient

nnUNetTrainerDistillDSM = resilient(_training.nnUNetTrainerDistillDSM)

__all__ = ["nnUNetTrainerDistillDSM"]
