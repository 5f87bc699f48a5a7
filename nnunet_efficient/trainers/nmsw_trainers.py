"""NMSW trainers for nnU-Net's trainer lookup (the classes live in ``nnunet_efficient.training.nmsw``
and ``nnunet_efficient.training.nmsw_retrofit``)."""

from nnunet_efficient.training.nmsw import (
    nnUNetTrainerNMSW,
    nnUNetTrainerNMSWGlobalOnly,
    nnUNetTrainerNMSWLocalOnly,
)
from nnunet_efficient.training.nmsw_retrofit import (
    nnUNetTrainerNMSWAdamW,
    nnUNetTrainerNMSWRetrofit,
    nnUNetTrainerNMSWRetrofitFinetune,
)

__all__ = ["nnUNetTrainerNMSW", "nnUNetTrainerNMSWAdamW", "nnUNetTrainerNMSWGlobalOnly", "nnUNetTrainerNMSWLocalOnly",
           "nnUNetTrainerNMSWRetrofit", "nnUNetTrainerNMSWRetrofitFinetune"]
