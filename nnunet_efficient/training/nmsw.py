"""nnU-Net trainers for NMSW (SPEC 3): joint training, and the global-only / local-only baselines.

Thin adapters: the method lives in :mod:`nnunet_efficient.networks.nmsw` (network),
:mod:`nnunet_efficient.networks.nmsw_training` (loss, random draws) and the ``nmsw`` entry of the
plans (:mod:`nnunet_efficient.networks.nmsw_plans`, written by ``nnUNetPlannerNMSW``). The
trainers override only nnU-Net's hooks: ``build_network_architecture``, ``get_dataloaders``,
``train_step``, ``validation_step``, ``perform_actual_validation`` (and the small ones around
deep supervision, batch size and compilation). They are exported to nnU-Net's trainer lookup by
``nnunet_efficient/trainers/nmsw_trainers.py``.

Whole volumes: a training sample is the whole preprocessed volume on the plans' canvas
(``3d_nmsw``'s ``patch_size``): nnU-Net's own ``nnUNetDataLoader`` is asked for a patch of that
shape, so smaller volumes are zero-padded at a random offset (label padding becomes
background) and larger ones are cropped (foreground-biased as nnU-Net's oversampling) — a
random translation, the reference's only spatial augmentation. Augmentation is otherwise
cheap, point-wise and on the CPU workers: nnU-Net's Gaussian noise, brightness, contrast and
gamma transforms with nnU-Net's probabilities, and mirroring. Skipped on purpose: rotation /
scaling (a full-volume resampling per sample), blur and low-resolution simulation.
"""

from __future__ import annotations

from copy import deepcopy
from typing import ClassVar

import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import autocast, nn

from nnunet_efficient.common.modules import unwrap_network
from nnunet_efficient.errors import EfficientError
from nnunet_efficient.networks.nmsw import NMSWNetwork, downsample_image, downsample_label
from nnunet_efficient.networks.nmsw_baselines import global_only_infer
from nnunet_efficient.networks.nmsw_plans import nmsw_settings
from nnunet_efficient.networks.nmsw_training import draw_training_randomness, nmsw_loss
from nnunet_efficient.training.validation import validate_with_predictor


def build_nmsw_network(configuration_manager: ConfigurationManager, num_input_channels: int,
                       num_output_channels: int) -> NMSWNetwork:
    """NMSWNetwork from a configuration with an ``nmsw`` entry: local = the configuration's network.

    Raises:
        EfficientError: the configuration has no (valid) ``nmsw`` entry.
    """
    settings = nmsw_settings(configuration_manager.configuration)
    local = get_network_from_plans(configuration_manager.network_arch_class_name,
                                   configuration_manager.network_arch_init_kwargs,
                                   configuration_manager.network_arch_init_kwargs_req_import,
                                   num_input_channels, num_output_channels, allow_init=True, deep_supervision=False)
    arch = settings.global_architecture
    global_net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                        num_input_channels, num_output_channels, allow_init=True,
                                        deep_supervision=False)
    return NMSWNetwork(global_net, local, num_output_channels, settings.window_size, settings.global_shape,
                       step=settings.step, k_train=settings.k_train, k_infer=settings.k_infer)


def whole_volume_training_transforms(mirror_axes, use_mask_for_norm=None) -> ComposeTransforms:
    """Cheap augmentation for whole volumes (see the module docstring for what is skipped)."""
    transforms = [
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True),
                        apply_probability=0.1),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.75, 1.25)),
                                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=0.15),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.75, 1.25)), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1), apply_probability=0.15),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=1, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=0.1),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=0.3),
    ]
    if mirror_axes:
        transforms.append(MirrorTransform(allowed_axes=mirror_axes))
    if use_mask_for_norm is not None and any(use_mask_for_norm):
        transforms.append(MaskImageTransform(apply_to_channels=[i for i, m in enumerate(use_mask_for_norm) if m],
                                             channel_idx_in_seg=0, set_outside_to=0))
    transforms.append(RemoveLabelTansform(-1, 0))
    return ComposeTransforms(transforms)


class nnUNetTrainerNMSW(nnUNetTrainer):
    """Joint NMSW training on whole volumes (global + scorer + local + merge, SPEC 3.6).

    Loss (all weights 1): nnU-Net's Dice+CE on the merged full-resolution logits, on the global
    logits (label nearest-downsampled) and on the local windows (the ``k_train`` top-k windows
    plus one random, foreground-biased window), minus 1e-5 x the score entropy. Optimiser,
    schedule, epochs and gradient clipping are nnU-Net's (``nnUNetTrainerNMSWAdamW`` trains with
    the reference's AdamW 3e-4, cosine decay and clipping at 1); deep supervision is off (the
    merge uses full-resolution logits only).
    Validation during training and the final validation use the ``nmsw`` strategy (plans'
    ``k_infer``, no noise); the final one mirrors like nnU-Net's.

    Use with configuration ``3d_nmsw`` of plans made by ``nnUNetPlannerNMSW`` /
    ``nnUNetPlannerNMSWCPU`` or extended by ``nnunet-efficient add_nmsw``. The training pass goes
    through the (possibly DDP-wrapped) network's ``forward``, so ``-num_gpus`` > 1 synchronises
    gradients like any nnU-Net model.
    """

    #: strategy of the end-of-training validation (an ``EfficientPredictor`` strategy name).
    inference_strategy: ClassVar[str] = "nmsw"
    #: mirroring TTA in the end-of-training validation (nnU-Net: on).
    validation_mirroring: ClassVar[bool] = True
    #: gradient-norm clipping of a training step (nnU-Net's 12; the reference's 1).
    grad_clip_norm: ClassVar[float] = 12.0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.nmsw = nmsw_settings(self.configuration_manager.configuration,
                                  f"configuration '{configuration}' of plans '{self.plans_manager.plans_name}'")
        if self.label_manager.has_regions:
            raise EfficientError(f"{type(self).__name__} needs softmax labels; region-based training "
                                 f"(dataset.json regions) is not supported by NMSW.")
        self.enable_deep_supervision = False

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_nmsw_network(configuration_manager, num_input_channels, num_output_channels)

    # ------------------------------------------------------------------ small hooks
    @property
    def nmsw_network(self) -> NMSWNetwork:
        """The NMSWNetwork behind any DDP / torch.compile wrapper."""
        return unwrap_network(self.network)

    def _do_i_compile(self) -> bool:
        # data-dependent window choice and Python loops: torch.compile would only break graphs
        return False

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        if not self.is_ddp:
            self.batch_size = self.nmsw.batch_size

    def set_deep_supervision_enabled(self, enabled: bool):
        # always off: the merge and the losses use the local branch's full-resolution logits
        decoder = getattr(self.nmsw_network.local_net, "decoder", None)
        if decoder is not None:
            decoder.deep_supervision = False

    # ------------------------------------------------------------------ data
    def get_dataloaders(self):
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        *_, mirror_axes = self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        volume = self.nmsw.volume_shape
        labels = self.label_manager
        tr_transforms = whole_volume_training_transforms(mirror_axes, self.configuration_manager.use_mask_for_norm)
        val_transforms = self.get_validation_transforms(None, foreground_labels=labels.foreground_labels,
                                                        ignore_label=labels.ignore_label)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        # a "patch" the size of the canvas: the whole volume, padded or cropped (module docstring)
        dl_tr, dl_val = (nnUNetDataLoader(dataset, self.batch_size, volume, volume, labels,
                                          oversample_foreground_percent=self.oversample_foreground_percent,
                                          transforms=transforms,
                                          probabilistic_oversampling=self.probabilistic_oversampling)
                         for dataset, transforms in ((dataset_tr, tr_transforms), (dataset_val, val_transforms)))
        processes = get_allowed_n_proc_DA()
        if processes == 0:
            mt_train, mt_val = SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
        else:
            pin = self.device.type == "cuda"
            mt_train = NonDetMultiThreadedAugmenter(data_loader=dl_tr, transform=None, num_processes=processes,
                                                    num_cached=max(2, processes // 2), seeds=None, pin_memory=pin,
                                                    wait_time=0.002)
            mt_val = NonDetMultiThreadedAugmenter(data_loader=dl_val, transform=None,
                                                  num_processes=max(1, processes // 2),
                                                  num_cached=max(1, processes // 4), seeds=None, pin_memory=pin,
                                                  wait_time=0.002)
        _ = next(mt_train), next(mt_val)
        return mt_train, mt_val

    # ------------------------------------------------------------------ steps
    def compute_loss(self, data: torch.Tensor, target: torch.Tensor, noise: torch.Tensor,
                     random_starts: list) -> tuple[torch.Tensor, dict]:
        """Training loss of one batch (NMSW's; the baselines override this)."""
        # through self.network (not nmsw_network) so that DDP sees the training pass
        out = self.network(data, train={"noise": noise, "random_window_start": random_starts})
        return nmsw_loss(out, target, self.loss)

    def infer_logits(self, data: torch.Tensor) -> torch.Tensor:
        """Full-resolution logits of a batch of whole volumes for the per-epoch validation."""
        return self.nmsw_network.forward_infer(data)["logits"]

    def train_step(self, batch: dict) -> dict:
        data, target = batch["data"], batch["target"]
        noise, random_starts = draw_training_randomness(self.nmsw_network, target)
        data = data.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            loss, _ = self.compute_loss(data, target, noise.to(self.device), random_starts)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip_norm)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip_norm)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}

    def validation_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            logits = self.infer_logits(data)
            loss = self.loss(logits, target)
        # nnU-Net's online ("pseudo") Dice: hard tp/fp/fn per foreground class
        onehot = torch.zeros(logits.shape, device=logits.device, dtype=torch.float16)
        onehot.scatter_(1, logits.argmax(1, keepdim=True), 1)
        mask = None
        if self.label_manager.has_ignore_label:
            mask = (target != self.label_manager.ignore_label).float()
            target = torch.where(target == self.label_manager.ignore_label, torch.zeros_like(target), target)
        tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=[0, *range(2, logits.ndim)], mask=mask)
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp.detach().cpu().numpy()[1:],
                "fp_hard": fp.detach().cpu().numpy()[1:], "fn_hard": fn.detach().cpu().numpy()[1:]}

    def perform_actual_validation(self, save_probabilities: bool = False):
        from nnunet_efficient.inference.predictor import EfficientPredictor

        self.set_deep_supervision_enabled(False)
        predictor = EfficientPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=self.validation_mirroring,
                                       perform_everything_on_device=True, device=self.device, allow_tqdm=False,
                                       strategy=self.inference_strategy)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, type(self).__name__, self.inference_allowed_mirroring_axes)
        validate_with_predictor(self, predictor, save_probabilities)


class nnUNetTrainerNMSWGlobalOnly(nnUNetTrainerNMSW):
    """Baseline: only the global branch is trained (Dice+CE against the downsampled label).

    The network is a full NMSWNetwork (so checkpoints and strategies are interchangeable); the
    scorer, local branch and merge keep their initial weights and are not optimised. Predict
    with ``--strategy global`` (the global logits resized to full resolution).
    """

    inference_strategy: ClassVar[str] = "global"

    def on_train_start(self):
        # the global branch is trained outside the network's forward and the other branches get
        # no gradient, which DistributedDataParallel (without find_unused_parameters) rejects
        if self.is_ddp:
            raise EfficientError(f"{type(self).__name__} trains on one device only (no -num_gpus > 1).")
        super().on_train_start()

    def configure_optimizers(self):
        # nnU-Net's optimiser and schedule, over the global branch only
        optimizer = torch.optim.SGD(self.nmsw_network.global_branch.parameters(), self.initial_lr,
                                    weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def compute_loss(self, data, target, noise, random_starts):
        net = self.nmsw_network
        logits, _ = net.global_branch(downsample_image(data, net.global_shape))
        loss = self.loss(logits, downsample_label(target, net.global_shape))
        return loss, {"global": loss.detach()}

    def infer_logits(self, data):
        return global_only_infer(self.nmsw_network, data)["logits"]


class nnUNetTrainerNMSWLocalOnly(nnUNetTrainer):
    """Baseline: the local branch alone, i.e. the plan's 3d_fullres network trained on patches.

    This is nnU-Net's own trainer; on configuration ``3d_nmsw`` it trains exactly what
    ``nnUNetTrainer`` trains on ``3d_fullres`` (same data, network, patch and batch size), under
    its own output folder: the configuration's patch size (NMSW's canvas) is set back to the
    window, in the plans this trainer keeps with its model, so stock prediction (and the
    ``sliding_window`` strategy) slide windows of the local branch.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        window = nmsw_settings(PlansManager(plans).get_configuration(configuration).configuration,
                               f"configuration '{configuration}'").window_size
        plans = deepcopy(plans)
        plans["configurations"][configuration]["patch_size"] = list(window)
        super().__init__(plans, configuration, fold, dataset_json, device)


__all__ = ["build_nmsw_network", "nnUNetTrainerNMSW", "nnUNetTrainerNMSWGlobalOnly", "nnUNetTrainerNMSWLocalOnly",
           "whole_volume_training_transforms"]
