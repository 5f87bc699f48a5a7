"""nnU-Net trainer for Distill-DSM's 2.5D U-Net (SPEC 6).

The network lives in :mod:`nnunet_efficient.networks.distill_dsm` and is named in the plans by
``nnUNetPlannerDistillDSM(CPU)``. The trainer changes only ``build_network_architecture``: it
builds the plans' network as nnU-Net does, after checking (before nnU-Net creates the output
folder) that the plans name Distill-DSM with valid arguments for a 3D configuration; stock
PlainConvUNet plans would silently train a 3D U-Net under this trainer's name.

Everything else is nnU-Net's, on purpose: SGD with Nesterov momentum and the poly schedule from
1e-2 (what nnU-Net trains its 2D and 3D U-Nets with; the released code used Adam at 1e-4 with
plateau decay over far longer runs), Dice + CE with deep supervision at the plans'
scales (in-plane only, the depth keeps its size), nnU-Net's augmentation, validation and
checkpoints. That keeps a comparison with ``nnUNetTrainer`` at one budget about the architecture.
Exported to nnU-Net's trainer lookup by ``nnunet_efficient/trainers/distill_dsm_trainers.py``.
"""

from __future__ import annotations

import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import nn

from nnunet_efficient.networks.distill_dsm import DistillDSMUNet
from nnunet_efficient.training.plans_network import PlansNetworkTrainer
from nnunet_efficient.training.uxnet import check_plans_network


class nnUNetTrainerDistillDSM(PlansNetworkTrainer):
    """Distill-DSM (2D U-Net per slice + depth shift modules) from ``nnUNetPlansDistillDSM(CPU)`` plans."""

    architecture: type[nn.Module] = DistillDSMUNet
    planner_hint: str = "nnUNetPlannerDistillDSMCPU"

    @classmethod
    def check_plans(cls, configuration_manager: ConfigurationManager, configuration_name: str = "") -> str:
        name = check_plans_network(cls.architecture, cls.planner_hint, configuration_manager, configuration_name)
        # the constructor validates the plans' kwargs (depth stride, alpha, widths); on the meta
        # device that costs no memory and no initialisation
        with torch.device("meta"):
            cls.architecture(input_channels=1, num_classes=2, **configuration_manager.network_arch_init_kwargs)
        return name
