"""Planners that add NMSW's configuration ``3d_nmsw`` to nnU-Net's plans.

``3d_nmsw`` inherits everything from ``3d_fullres`` (spacing, normalisation, preprocessed data and
network: the local branch *is* the 3d_fullres network) except ``patch_size``, which is NMSW's
training canvas, and adds one ``nmsw`` entry with the dataset-dependent numbers of the method
(read back by :func:`nnunet_efficient.networks.nmsw_plans.nmsw_settings`):

- ``patch_size`` (of ``3d_nmsw``): the full-resolution canvas of one training sample, the per-axis
  ``volume_percentile`` (90th) of the cases' shapes after resampling to the 3d_fullres spacing,
  at least the 3d_fullres patch. Larger cases are cropped in training; smaller ones are padded,
  so most cases see the global branch at the training scale. Because nnU-Net's predictor pads
  each case to the patch size and the NMSW network's forward on a canvas is the whole NMSW
  inference, stock ``nnUNetv2_predict -c 3d_nmsw`` runs NMSW. For a case larger than the canvas
  nnU-Net slides canvas-sized windows (step ``-step_size``), each a whole NMSW inference, and
  blends them; ``nnunet-efficient predict --strategy nmsw`` instead runs one NMSW inference on
  the whole case (its global branch seeing it at a coarser scale). Within the canvas both give the
  same labels.
- ``window_size``: the local branch's window, the 3d_fullres patch size.
- ``global_shape``: the canvas divided by one isotropic (in voxels) factor, at least
  ``min_downsampling`` (2; the reference uses 3) and large enough that the global input has no
  more voxels than one local window (so the global pass costs about one window, as in the
  reference: 160x160x96 vs 128^3), then rounded up to what the global U-Net's pooling needs.
- ``global_architecture``: a PlainConvUNet for ``global_shape``, its topology from nnU-Net's own
  ``get_pool_and_conv_props`` at the downsampled spacing, widths from the planner, convolution,
  normalisation and non-linearity from the 3d_fullres network.
- ``step`` 0.5 (the candidate grid is nnU-Net's sliding-window grid at that step), ``k_train`` 4
  (+1 random window), ``k_infer`` 5, ``batch_size`` 1 (whole volumes).

:func:`nnunet_efficient.planners.add_nmsw.add_nmsw` adds the same configuration to plans that
another planner wrote (to retrofit a trained 3d_fullres model).
"""

from __future__ import annotations

from copy import deepcopy

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

from nnunet_efficient.errors import EfficientError
from nnunet_efficient.networks.nmsw_plans import NMSW_CONFIGURATION, nmsw_settings
from nnunet_efficient.planners.cpu_planner import nnUNetPlannerCPU

PLAIN_CONV_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
# PlainConvUNet arguments that the global U-Net takes over from the 3d_fullres network (any U-Net
# of dynamic_network_architectures has them, a ResidualEncoderUNet too)
_PLAIN_UNET_OPERATIONS = ("conv_op", "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op", "dropout_op_kwargs",
                          "nonlin", "nonlin_kwargs")


class NMSWPlanningMixin:
    """Adds ``3d_nmsw`` after the base planner has planned ``3d_fullres`` (see the module docstring)."""

    nmsw_volume_percentile: float = 90.0
    nmsw_min_downsampling: float = 2.0
    nmsw_step: float = 0.5
    nmsw_k_train: int = 4
    nmsw_k_infer: int = 5
    nmsw_batch_size: int = 1

    def plan_experiment(self):
        plans = super().plan_experiment()
        fullres = plans["configurations"].get("3d_fullres")
        if fullres is None:
            raise EfficientError(f"{self.dataset_name}: no 3d_fullres configuration was planned (2D data?); "
                                 f"NMSW needs a 3D dataset.")
        plans["configurations"][NMSW_CONFIGURATION] = self.plan_nmsw(fullres, plans["transpose_forward"])
        self.plans = plans
        self.save_plans(plans)
        return plans

    def resampled_case_shapes(self, spacing=None, transpose_forward=None) -> np.ndarray:
        """``(cases, 3)`` shapes after cropping and resampling to the 3d_fullres spacing, transposed.

        Args:
            spacing: the 3d_fullres spacing as the plans hold it (transposed); None: the spacing
                this planner determines.
            transpose_forward: the plans' ``transpose_forward``; None: this planner's.
        """
        if transpose_forward is None:
            transpose_forward, _ = self.determine_transpose()
        if spacing is None:
            target = np.asarray(self.determine_fullres_target_spacing(), dtype=float)
        else:  # back to the cases' own axis order
            target = np.empty(len(spacing))
            target[list(transpose_forward)] = spacing
        shapes = [compute_new_shape(shape, case_spacing, target) for case_spacing, shape in
                  zip(self.dataset_fingerprint["spacings"], self.dataset_fingerprint["shapes_after_crop"])]
        return np.asarray(shapes, dtype=float)[:, list(transpose_forward)]

    def plan_nmsw(self, fullres: dict, transpose_forward=None) -> dict:
        """The ``3d_nmsw`` configuration (canvas as ``patch_size``, ``nmsw`` entry) for a planned 3d_fullres.

        Args:
            fullres: the plans' 3d_fullres configuration.
            transpose_forward: the plans' ``transpose_forward`` (None: this planner's).
        """
        patch = np.asarray(fullres["patch_size"], dtype=int)
        spacing = np.asarray(fullres["spacing"], dtype=float)
        shapes = self.resampled_case_shapes(spacing, transpose_forward)
        volume = np.maximum(np.ceil(np.percentile(shapes, self.nmsw_volume_percentile, 0)), patch).astype(int)
        factor = max(self.nmsw_min_downsampling, float(np.prod(volume / patch)) ** (1 / 3))
        # at least two feature-map minima per axis so that the global U-Net can pool once
        smallest = np.minimum(volume, 2 * self.UNet_featuremap_min_edge_length)
        target = np.maximum(np.round(volume / factor), smallest).astype(int)
        _, strides, kernels, global_shape, _ = get_pool_and_conv_props(
            spacing * volume / target, target, self.UNet_featuremap_min_edge_length, 999999)
        if len(strides) < 2:
            raise EfficientError(f"{self.dataset_name}: volumes of {tuple(volume)} voxels are too small for a "
                                 f"global U-Net (NMSW needs at least {2 * self.UNet_featuremap_min_edge_length} "
                                 f"voxels per axis).")
        entry = {
            "window_size": [int(p) for p in patch],
            "global_shape": [int(g) for g in global_shape],
            "downsampling_factors": [round(float(v) / float(g), 4) for v, g in zip(volume, global_shape)],
            "global_architecture": self.global_architecture(fullres["architecture"], strides, kernels),
            "step": self.nmsw_step,
            "k_train": self.nmsw_k_train,
            "k_infer": self.nmsw_k_infer,
            "batch_size": self.nmsw_batch_size,
        }
        configuration = {"inherits_from": "3d_fullres", "patch_size": [int(v) for v in volume], "nmsw": entry}
        nmsw_settings({**fullres, **configuration}, f"{self.dataset_name} {NMSW_CONFIGURATION}")  # self-check
        return configuration

    def global_architecture(self, fullres_architecture: dict, strides, kernels) -> dict:
        """A PlainConvUNet with the given topology; operations (conv, norm, non-linearity) as 3d_fullres's."""
        n = len(strides)
        fullres_kwargs = fullres_architecture["arch_kwargs"]
        kwargs = {k: deepcopy(fullres_kwargs[k]) for k in _PLAIN_UNET_OPERATIONS if k in fullres_kwargs}
        kwargs.update({
            "n_stages": n,
            "features_per_stage": [min(self.UNet_max_features_3d, self.UNet_base_num_features * 2 ** i)
                                   for i in range(n)],
            "kernel_sizes": [list(k) for k in kernels],
            "strides": [list(s) for s in strides],
            "n_conv_per_stage": [int(b) for b in self.UNet_blocks_per_stage_encoder[:n]],
            "n_conv_per_stage_decoder": [int(b) for b in self.UNet_blocks_per_stage_decoder[:n - 1]],
        })
        return {"network_class_name": PLAIN_CONV_UNET, "arch_kwargs": kwargs,
                "_kw_requires_import": [k for k in fullres_architecture["_kw_requires_import"] if k in kwargs]}


class nnUNetPlannerNMSW(NMSWPlanningMixin, ExperimentPlanner):
    """nnU-Net's default planner plus ``3d_nmsw``; plans ``nnUNetPlansNMSW``."""

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlansNMSW",
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)


class nnUNetPlannerNMSWCPU(NMSWPlanningMixin, nnUNetPlannerCPU):
    """:class:`~nnunet_efficient.planners.cpu_planner.nnUNetPlannerCPU` (16-128 features, 0.5 GB,
    batch 2) plus ``3d_nmsw``; plans ``nnUNetPlansNMSWCPU``."""

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 0.5,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlansNMSWCPU",
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
