"""Distill-DSM trainer for nnU-Net's trainer lookup (the class lives in ``nnunet_efficient.training.distill_dsm``)."""

from nnunet_efficient.training.distill_dsm import nnUNetTrainerDistillDSM

__all__ = ["nnUNetTrainerDistillDSM"]
