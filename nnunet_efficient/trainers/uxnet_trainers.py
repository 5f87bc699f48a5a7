"""UX-Net trainers for nnU-Net's trainer lookup (the classes live in ``nnunet_efficient.training.uxnet``)."""

from nnunet_efficient.training.uxnet import nnUNetTrainerRepUXNet, nnUNetTrainerUXNet

__all__ = ["nnUNetTrainerRepUXNet", "nnUNetTrainerUXNet"]
