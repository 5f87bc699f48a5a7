"""NMSW trainers for nnU-Net's trainer lookup (the classes live in ``nnunet_efficient.training.nmsw``)."""

from nnunet_efficient.training.nmsw import (
    nnUNetTrainerNMSW,
    nnUNetTrainerNMSWGlobalOnly,
    nnUNetTrainerNMSWLocalOnly,
)

__all__ = ["nnUNetTrainerNMSW", "nnUNetTrainerNMSWGlobalOnly", "nnUNetTrainerNMSWLocalOnly"]
