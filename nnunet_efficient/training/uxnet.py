"""nnU-Net trainers for 3D UX-Net and RepUX-Net (SPEC 5).

The networks live in :mod:`nnunet_efficient.networks.uxnet` and are named in the plans by
``nnUNetPlannerUXNet(CPU)`` / ``nnUNetPlannerRepUXNet(CPU)``; these trainers change only what
the architectures need:

- ``build_network_architecture`` builds the plans' network as nnU-Net does, after checking that
  the plans name the trainer's architecture (a UX-Net trainer on PlainConvUNet plans would
  silently train a plain U-Net and report it as UX-Net);
- ``configure_optimizers``: AdamW at :attr:`learning_rate`, weight decay 1e-5, linear warm-up over
  the first 10 % of the epochs, then cosine decay to 0 (:class:`WarmupCosineLRScheduler`). nnU-Net's
  SGD+poly(0.01) is what the LayerNorm/large-kernel blocks were not designed for. RepUX-Net
  trains at its reference's 1e-4 (SPEC §5; no measurement here justified another value). 3D UX-Net
  keeps 1e-3, the usual AdamW rate for ConvNeXt-style blocks, chosen for short CPU schedules where
  its reference trains at 1e-4 for ~40k iterations of 96³ crops; that choice is not backed by a
  measurement either.

Everything else (loss with deep supervision, data augmentation, validation, checkpoints) is
nnU-Net's. Exported to nnU-Net's trainer lookup by ``nnunet_efficient/trainers/uxnet_trainers.py``.
"""

from __future__ import annotations

import pydoc

import numpy as np
import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import nn

from nnunet_efficient.errors import EfficientError
from nnunet_efficient.networks.uxnet import RepUXNet, UXNet
from nnunet_efficient.training.lr_schedules import WarmupCosineLRScheduler
from nnunet_efficient.training.plans_network import PlansNetworkTrainer


def check_plans_network(expected: type[nn.Module], planner_hint: str,
                        configuration_manager: ConfigurationManager, configuration_name: str = "") -> str:
    """The configuration's network class name, checked to be an ``expected`` for 3D patches.

    Raises:
        EfficientError: a 2D configuration, or plans that name another architecture (stock
            PlainConvUNet plans would silently train a plain U-Net under this trainer's name).
    """
    where = f"configuration '{configuration_name}'" if configuration_name else "the configuration"
    if len(configuration_manager.patch_size) != 3:
        raise EfficientError(f"{where} is {len(configuration_manager.patch_size)}D: {expected.__name__} is 3D only; "
                             f"train a 3d configuration (3d_fullres, 3d_lowres)")
    name = configuration_manager.network_arch_class_name
    found = pydoc.locate(name)
    if not (isinstance(found, type) and issubclass(found, expected)):
        raise EfficientError(f"{where} builds {name}, not {expected.__name__}: plan with "
                             f"`nnunet-efficient plan_and_preprocess -pl {planner_hint}` and train with its -p")
    patch = [int(p) for p in configuration_manager.patch_size]
    total = np.prod(np.asarray(configuration_manager.network_arch_init_kwargs["strides"], dtype=int), axis=0)
    if any(p < t or p % t for p, t in zip(patch, total)):
        raise EfficientError(f"{where}: patch size {patch} is not a multiple of the network's total downsampling "
                             f"{total.tolist()} (every axis must be at least that and divisible by it)")
    return name


class nnUNetTrainerUXNet(PlansNetworkTrainer):
    """3D UX-Net (depthwise 7³ blocks) from ``nnUNetPlansUXNet``/``nnUNetPlansUXNetCPU`` plans."""

    warmup_fraction: float = 0.1
    learning_rate: float = 1e-3
    architecture: type[nn.Module] = UXNet
    planner_hint: str = "nnUNetPlannerUXNetCPU"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.learning_rate
        self.weight_decay = 1e-5

    @classmethod
    def check_plans(cls, configuration_manager: ConfigurationManager, configuration_name: str = "") -> str:
        return check_plans_network(cls.architecture, cls.planner_hint, configuration_manager, configuration_name)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        warmup_epochs = max(1, round(self.warmup_fraction * self.num_epochs))
        return optimizer, WarmupCosineLRScheduler(optimizer, self.initial_lr, warmup_epochs, self.num_epochs)


class nnUNetTrainerRepUXNet(nnUNetTrainerUXNet):
    """RepUX-Net (depthwise 21³ blocks with Bayesian frequency re-parameterisation) from
    ``nnUNetPlansRepUXNet``/``nnUNetPlansRepUXNetCPU`` plans; UX-Net's optimiser at the RepUX-Net
    reference's learning rate."""

    learning_rate = 1e-4
    architecture = RepUXNet
    planner_hint = "nnUNetPlannerRepUXNetCPU"
