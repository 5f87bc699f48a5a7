"""The frame of a trainer whose architecture the plans name (UX-Net, Distill-DSM, UNETR).

Such a trainer checks, before nnU-Net's constructor creates the output folder and its log
file, that the configuration names its architecture with settings it can build (stock
PlainConvUNet plans would otherwise silently train a plain U-Net under the trainer's name), and
builds the plans' network as nnU-Net does. Each architecture only says what "fits" means
(:meth:`PlansNetworkTrainer.check_plans`).
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn


class PlansNetworkTrainer(nnUNetTrainer):
    """``nnUNetTrainer`` that refuses plans naming another network than :attr:`architecture`."""

    architecture: type[nn.Module]

    @classmethod
    def check_plans(cls, configuration_manager: ConfigurationManager, configuration_name: str = "") -> str:
        """The configuration's network class name, checked to fit this trainer.

        Raises:
            EfficientError: plans this trainer cannot train, in one line naming the problem.
        """
        raise NotImplementedError

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # before nnU-Net's constructor creates the output folder and its log file
        self.check_plans(PlansManager(plans).get_configuration(configuration), configuration)
        super().__init__(plans, configuration, fold, dataset_json, device)

    # a classmethod where nnU-Net has a staticmethod: called the same way (also by the predictor), and
    # a subclass only changes class attributes
    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        name = cls.check_plans(configuration_manager)
        return get_network_from_plans(name, configuration_manager.network_arch_init_kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import,
                                      num_input_channels, num_output_channels, allow_init=True,
                                      deep_supervision=enable_deep_supervision)
