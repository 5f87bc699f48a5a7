"""nnU-Net trainers for the dense and the token-sparse UNETR (SPEC section 4).

The networks live in :mod:`nnunet_efficient.networks.unetr` and are named in the plans by
``nnUNetPlannerUNETR(CPU)`` (``3d_fullres``: dense; ``3d_tokensparse_p90`` / ``_p75``: token-sparse).
The trainers change only what a ViT needs:

- before nnU-Net's constructor writes anything, the plans are checked to name the trainer's
  architecture and its settings are validated (:func:`check_unetr_settings`, the network's own
  checks without building it), so a bad setting in the plans (patch not divisible by the token
  size, keep ratios that prune every token, a ratio outside (0, 1]) is one line naming it, not a
  failure after the log file and data loaders exist;
- ``configure_optimizers``: AdamW with betas (0.9, 0.95) and weight decay 0.05 (none on biases,
  norms, the [CLS] token and embeddings), the reference's learning rate of 1.72e-2 per batch of
  256 scaled linearly to nnU-Net's batch (1.34e-4 at batch 2), a linear warm-up over the first
  1 % of the epochs (the reference's 50 of 5000; at least one epoch) and cosine decay to 0.
  The rate also decays by 0.75 per layer from the top (:attr:`layer_decay`, SPEC §4: the
  reference's recipe, for its dense and token-sparse models alike, so the two differ only in the
  pruning). The decay was made to protect MAE-pretrained lower layers when fine-tuning, and these
  networks train from scratch; no measurement here says another value trains them better, so the
  reference's value stands (an earlier 1.0 had no measured reason);
- drop-path comes from the plans (``drop_path_rate``, 0.1 as the reference).

Loss (Dice + CE with deep supervision; the reference adds no sparsity term), augmentation,
validation, checkpoints and inference are nnU-Net's; in training mode the token-sparse network
draws its own Gumbel noise, in evaluation mode (validation, prediction) it takes a plain top-k.
Exported to nnU-Net's trainer lookup by ``nnunet_efficient/trainers/unetr_trainers.py``.
"""

from __future__ import annotations

import inspect
import pydoc

import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import nn

from nnunet_efficient.common.modules import unwrap_network
from nnunet_efficient.errors import EfficientError
from nnunet_efficient.networks.unetr import UNETR, TokenSparseUNETR, check_unetr_settings
from nnunet_efficient.planners.unetr_planner import TOKEN_SPARSE_CONFIGURATIONS
from nnunet_efficient.training.lr_schedules import WarmupCosineLRScheduler
from nnunet_efficient.training.plans_network import PlansNetworkTrainer

#: The reference's learning rate per 256 samples of batch (scaled linearly).
REFERENCE_LR_PER_256 = 1.72e-2

_NO_WEIGHT_DECAY = ("cls_token", "pos_embed", "final_token", "pruned_tokens")


def check_unetr_plans(expected: type[nn.Module], configuration_manager: ConfigurationManager,
                      configuration_name: str = "") -> str:
    """The configuration's network class name, checked to be ``expected`` with valid settings.

    Raises:
        EfficientError: a 2D configuration, plans that name another architecture (a dense trainer on
            token-sparse plans would report pruned results as dense, and the reverse), unknown
            architecture kwargs, or a bad setting (:func:`check_unetr_settings`'s one line).
    """
    where = f"configuration '{configuration_name}'" if configuration_name else "the configuration"
    if len(configuration_manager.patch_size) != 3:
        raise EfficientError(f"{where} is {len(configuration_manager.patch_size)}D: {expected.__name__} is 3D only; "
                             f"train a 3d configuration")
    name = configuration_manager.network_arch_class_name
    if pydoc.locate(name) is not expected:
        which = "3d_fullres" if expected is UNETR else " or ".join(TOKEN_SPARSE_CONFIGURATIONS)
        raise EfficientError(f"{where} builds {name}, not {expected.__name__}: plan with `nnunet-efficient "
                             f"plan_and_preprocess -pl nnUNetPlannerUNETRCPU` (or nnUNetPlannerUNETR) and train "
                             f"its configuration {which}")
    kwargs = dict(configuration_manager.network_arch_init_kwargs)
    try:
        bound = inspect.signature(expected).bind(input_channels=1, num_classes=2, **kwargs)
    except TypeError as error:
        raise EfficientError(f"{where}: architecture kwargs {sorted(kwargs)} do not fit {expected.__name__} "
                             f"({error})") from None
    settings = {k: v for k, v in bound.arguments.items()
                if k in inspect.signature(check_unetr_settings).parameters}
    check_unetr_settings(expected.__name__, **settings, requires_pruning=expected.requires_pruning)
    return name


def vit_parameter_groups(network: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW parameter groups of a UNETR: no decay on 1-D parameters and tokens, optional layer-wise rate decay.

    With ``layer_decay < 1`` the encoder block ``i`` (of ``depth``) trains at ``layer_decay^(depth - i)`` of
    the rate, the patch embedding, [CLS] token and position embedding at ``layer_decay^(depth + 1)``,
    everything after the encoder (score predictors, completion, decoder) at the full rate.

    Returns:
        Groups with ``params``, ``weight_decay`` and ``lr_scale`` (read by :class:`WarmupCosineLRScheduler`).
    """
    depth = len(network.blocks)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, parameter in network.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = parameter.ndim <= 1 or any(part in _NO_WEIGHT_DECAY for part in name.split("."))
        decay = 0.0 if no_decay else weight_decay
        if name.startswith(("patch_embed.", "cls_token", "pos_embed")):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = depth + 1
        scale = layer_decay ** (depth + 1 - layer)
        groups.setdefault((decay, scale), []).append(parameter)
    return [{"params": params, "weight_decay": decay, "lr_scale": scale}
            for (decay, scale), params in sorted(groups.items(), key=lambda item: (-item[0][1], item[0][0]))]


class nnUNetTrainerUNETR(PlansNetworkTrainer):
    """Dense UNETR (ViT, token assembly, token-map decoder) from ``nnUNetPlansUNETR(CPU)`` ``3d_fullres``."""

    architecture: type[nn.Module] = UNETR
    warmup_fraction: float = 0.01
    layer_decay: float = 0.75
    betas: tuple[float, float] = (0.9, 0.95)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = REFERENCE_LR_PER_256 * self.configuration_manager.batch_size / 256
        self.weight_decay = 0.05

    @classmethod
    def check_plans(cls, configuration_manager: ConfigurationManager, configuration_name: str = "") -> str:
        return check_unetr_plans(cls.architecture, configuration_manager, configuration_name)

    def configure_optimizers(self):
        groups = vit_parameter_groups(unwrap_network(self.network), self.weight_decay, self.layer_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.initial_lr, betas=self.betas)
        warmup_epochs = max(1, round(self.warmup_fraction * self.num_epochs))
        return optimizer, WarmupCosineLRScheduler(optimizer, self.initial_lr, warmup_epochs, self.num_epochs)


class nnUNetTrainerTokenSparseUNETR(nnUNetTrainerUNETR):
    """Token-sparse UNETR from ``nnUNetPlansUNETR(CPU)`` ``3d_tokensparse_p90`` / ``3d_tokensparse_p75``;
    same optimiser as the dense one."""

    architecture = TokenSparseUNETR
