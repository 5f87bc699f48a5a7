"""NMSW trainers for nnU-Net's trainer lookup, made resilient under the same names.

The classes live in ``nnunet_efficient.training.nmsw`` and ``nnunet_efficient.training.nmsw_retrofit``;
:func:`~nnunet_efficient.training.resilience.resilient` puts the interruption, checkpoint and NaN
guards first in their bases.
"""

from nnunet_efficient.training import nmsw as _training
from nnunet_efficient.training import nmsw_retrofit as _retrofit
from nnunet_efficient.training.resilience import resilient

nnUNetTrainerNMSW = resilient(_training.nnUNetTrainerNMSW)
nnUNetTrainerNMSWGlobalOnly = resilient(_training.nnUNetTrainerNMSWGlobalOnly)
nnUNetTrainerNMSWLocalOnly = resilient(_training.nnUNetTrainerNMSWLocalOnly)
nnUNetTrainerNMSWAdamW = resilient(_retrofit.nnUNetTrainerNMSWAdamW)
nnUNetTrainerNMSWRetrofit = resilient(_retrofit.nnUNetTrainerNMSWRetrofit)
nnUNetTrainerNMSWRetrofitFinetune = resilient(_retrofit.nnUNetTrainerNMSWRetrofitFinetune)

__all__ = ["nnUNetTrainerNMSW", "nnUNetTrainerNMSWAdamW", "nnUNetTrainerNMSWGlobalOnly", "nnUNetTrainerNMSWLocalOnly",
           "nnUNetTrainerNMSWRetrofit", "nnUNetTrainerNMSWRetrofitFinetune"]
