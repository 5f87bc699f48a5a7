"""UNETR trainers for nnU-Net's trainer lookup (the classes live in ``nnunet_efficient.training.unetr``)."""

from nnunet_efficient.training.unetr import nnUNetTrainerTokenSparseUNETR, nnUNetTrainerUNETR

__all__ = ["nnUNetTrainerTokenSparseUNETR", "nnUNetTrainerUNETR"]
