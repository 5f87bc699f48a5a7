"""UNETR trainers for nnU-Net's trainer lookup, made resilient under the same names.

The classes live in ``nnunet_efficient.training.unetr``; :func:`~nnunet_efficient.training.resilience.resilient`
puts the interruption, checkpoint and NaN guards first in their bases.
"""

from nnunet_efficient.training import unetr as _training
from nnunet_efficient.training.resilience import resilient

nnUNetTrainerTokenSparseUNETR = resilient(_training.nnUNetTrainerTokenSparseUNETR)
nnUNetTrainerUNETR = resilient(_training.nnUNetTrainerUNETR)

__all__ = ["nnUNetTrainerTokenSparseUNETR", "nnUNetTrainerUNETR"]
