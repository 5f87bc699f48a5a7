"""UX-Net trainers for nnU-Net's trainer lookup, made resilient under the same names.

The classes live in ``nnunet_efficient.training.uxnet``; :func:`~nnunet_efficient.training.resilience.resilient`
puts the interruption, checkpoint and NaN guards first in their bases.
"""

from nnunet_efficient.training import uxnet as _training
from nnunet_efficient.training.resilience import resilient

nnUNetTrainerRepUXNet = resilient(_training.nnUNetTrainerRepUXNet)
nnUNetTrainerUXNet = resilient(_training.nnUNetTrainerUXNet)

__all__ = ["nnUNetTrainerRepUXNet", "nnUNetTrainerUXNet"]
