"""NMSW with the reference's optimiser, and the retrofit of a trained 3d_fullres model into NMSW.

Retrofit: a trained nnU-Net 3d_fullres model (``nnUNetTrainer`` or any trainer whose network the
plans describe) becomes the local branch of an NMSW model; only the global branch, the scorer and
the learned merge are trained (the local branch too with ``...RetrofitFinetune``)::

    nnunet-efficient add_nmsw -d D -p PLANS [-tr SOURCE_TRAINER]    # 3d_nmsw + retrofit_from
    nnUNetv2_train D 3d_nmsw FOLD -p PLANS -tr nnUNetTrainerNMSWRetrofit

The source checkpoint is named in the plans (``3d_nmsw``'s ``nmsw.retrofit_from``, written by
``add_nmsw``): the model folder ``SOURCE_TRAINER__PLANS__3d_fullres`` under
``nnUNet_results/DATASET`` (or an absolute folder) and its ``fold_FOLD/checkpoint_final.pth``, the
same fold as the retrofit. nnU-Net's ``-pretrained_weights`` cannot do this: its loader requires
every key of the new network (``global_branch.*``, ``local_net.*``, ...) in the checkpoint and
never transfers the segmentation heads, which a frozen local branch needs.

The source is loaded in ``configure_optimizers``: nnU-Net calls it right after building the
network and before wrapping it for DistributedDataParallel, the one moment where weights can be
loaded and frozen before the optimiser and DDP collect the trainable parameters. ``--c`` then
restores the retrofit's own checkpoint over it. Keep the source model in place until the
retrofit finishes.
"""

from __future__ import annotations

import os
from typing import ClassVar

import torch
from torch import nn

from nnunet_efficient.errors import EfficientError, InputFileError
from nnunet_efficient.training.lr_schedules import WarmupCosineLRScheduler
from nnunet_efficient.training.nmsw import nnUNetTrainerNMSW


class NMSWReferenceOptimisation:
    """The reference's optimisation for an NMSW trainer: AdamW 3e-4 (weight decay 1e-5), 10% linear
    warm-up then cosine decay over the trainer's epochs, gradient norm clipped at 1. Only parameters
    that require a gradient are optimised."""

    reference_lr: ClassVar[float] = 3e-4
    reference_weight_decay: ClassVar[float] = 1e-5
    warmup_fraction: ClassVar[float] = 0.1
    grad_clip_norm: ClassVar[float] = 1.0

    def configure_optimizers(self):
        self.initial_lr, self.weight_decay = self.reference_lr, self.reference_weight_decay
        parameters = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=self.initial_lr, weight_decay=self.weight_decay)
        warmup_epochs = max(1, round(self.warmup_fraction * self.num_epochs))
        return optimizer, WarmupCosineLRScheduler(optimizer, self.initial_lr, warmup_epochs, self.num_epochs)


class nnUNetTrainerNMSWAdamW(NMSWReferenceOptimisation, nnUNetTrainerNMSW):
    """Joint NMSW training from scratch with the reference's AdamW 3e-4, cosine, clipping at 1."""


def retrofit_checkpoint(configuration: dict, dataset_name: str, fold: int | str, where: str) -> str:
    """The source checkpoint that ``3d_nmsw``'s ``nmsw.retrofit_from`` names for ``fold``.

    Raises:
        EfficientError: no ``retrofit_from`` entry, or ``nnUNet_results`` unset for a relative folder.
    """
    source = configuration.get("nmsw", {}).get("retrofit_from")
    if not isinstance(source, dict) or "model_folder" not in source:
        raise EfficientError(f"{where}: its nmsw entry names no model to retrofit (retrofit_from); add it with "
                             f"`nnunet-efficient add_nmsw -d DATASET -p PLANS -tr SOURCE_TRAINER`.")
    folder = source["model_folder"]
    if not os.path.isabs(folder):
        results = os.environ.get("nnUNet_results")
        if not results:
            raise EfficientError("nnUNet_results is not set; it locates the model to retrofit.")
        folder = os.path.join(results, dataset_name, folder)
    return os.path.join(folder, f"fold_{fold}", source.get("checkpoint", "checkpoint_final.pth"))


def load_source_weights(local_net: nn.Module, checkpoint: str, plans_name: str) -> None:
    """Load a trained 3d_fullres model's weights into ``local_net``, all of them (segmentation heads too).

    Raises:
        InputFileError: the checkpoint is missing, unreadable, or does not match the plans'
            3d_fullres network (the first missing, unexpected or differently shaped weight named).
    """
    if not os.path.isfile(checkpoint):
        raise InputFileError(checkpoint, "missing: train the 3d_fullres model first (or correct retrofit_from in "
                                         "the plans with `nnunet-efficient add_nmsw`)")
    try:
        weights = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    except Exception as error:  # noqa: BLE001  (any unreadable file is one user-facing line)
        raise InputFileError(checkpoint, f"not a readable nnU-Net checkpoint ({type(error).__name__}: "
                                         f"{error})") from None
    expected = local_net.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    reshaped = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} weight(s) missing, e.g. '{missing[0]}'")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected, e.g. '{unexpected[0]}'")
    if reshaped:
        k = reshaped[0]
        problems.append(f"{len(reshaped)} of another shape, e.g. '{k}' {tuple(weights[k].shape)} instead of "
                        f"{tuple(expected[k].shape)}")
    if problems:
        raise InputFileError(checkpoint, f"does not match the 3d_fullres network of plans '{plans_name}': "
                                         f"{'; '.join(problems)}")
    local_net.load_state_dict({k: weights[k] for k in expected})


class nnUNetTrainerNMSWRetrofit(NMSWReferenceOptimisation, nnUNetTrainerNMSW):
    """NMSW from a trained 3d_fullres model: its weights are the local branch, kept frozen; the global
    branch, scorer and learned merge train with the reference's optimisation and NMSW's loss.

    The local branch stays in eval mode (batch-norm statistics, dropout of a source network stay as
    trained); the gradient still flows through it to the scores. See the module docstring for how
    the source is named.
    """

    #: train the local branch too (``nnUNetTrainerNMSWRetrofitFinetune``).
    finetune_local: ClassVar[bool] = False

    def configure_optimizers(self):
        network = self.nmsw_network
        checkpoint = retrofit_checkpoint(self.configuration_manager.configuration, self.plans_manager.dataset_name,
                                         self.fold, f"configuration '{self.configuration_name}' of plans "
                                                    f"'{self.plans_manager.plans_name}'")
        load_source_weights(network.local_net, checkpoint, self.plans_manager.plans_name)
        self.print_to_log_file(f"Local branch loaded from {checkpoint} "
                               f"({'fine-tuned' if self.finetune_local else 'frozen'})")
        if not self.finetune_local:
            network.local_net.requires_grad_(False)
        return super().configure_optimizers()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # nnU-Net puts the whole network in train mode
        if not self.finetune_local:
            self.nmsw_network.local_net.eval()


class nnUNetTrainerNMSWRetrofitFinetune(nnUNetTrainerNMSWRetrofit):
    """:class:`nnUNetTrainerNMSWRetrofit` whose local branch (the source model) is fine-tuned too, at the
    same learning rate."""

    finetune_local: ClassVar[bool] = True


def check_retrofit_source(dataset: str | int, configuration: str, fold: str, plans_identifier: str) -> None:
    """What a retrofit training loads, checked before it starts (``nnunet-efficient train``).

    Raises:
        EfficientError / InputFileError: as :func:`retrofit_checkpoint` and :func:`load_source_weights`.
    """
    import json

    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_efficient.dataset_checks import dataset_name

    name = dataset_name(dataset)
    folder = os.path.join(os.environ.get("nnUNet_preprocessed", ""), name)
    with open(os.path.join(folder, f"{plans_identifier}.json")) as f:
        manager = PlansManager(json.load(f))
    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    config = manager.get_configuration(configuration)
    checkpoint = retrofit_checkpoint(config.configuration, name, fold,
                                     f"configuration '{configuration}' of plans '{plans_identifier}'")
    local = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                   config.network_arch_init_kwargs_req_import,
                                   determine_num_input_channels(manager, config, dataset_json),
                                   manager.get_label_manager(dataset_json).num_segmentation_heads,
                                   allow_init=False, deep_supervision=False)
    load_source_weights(local, checkpoint, plans_identifier)


__all__ = ["NMSWReferenceOptimisation", "check_retrofit_source", "load_source_weights", "nnUNetTrainerNMSWAdamW",
           "nnUNetTrainerNMSWRetrofit", "nnUNetTrainerNMSWRetrofitFinetune", "retrofit_checkpoint"]
