"""Planners that write Distill-DSM's 2.5D U-Net into nnU-Net's 3D plans.

nnU-Net's 3D plans cannot be used as they are: they name a PlainConvUNet, and their strides pool
along every axis, while Distill-DSM keeps every slice at every level. The topology otherwise
comes from nnU-Net's own rules (spacing, patch size, stages, in-plane strides, widths), turned
into Distill-DSM's constructor arguments (:mod:`nnunet_efficient.networks.distill_dsm`):

- ``depth_axis``: the configuration's lowest-resolution axis (largest target spacing; on ties
  the first, which is the out-of-plane axis nnU-Net's transposition puts first);
- ``strides``: nnU-Net's strides with the depth component set to 1; a stage that pooled only
  along the depth is dropped (it would repeat the previous level's resolution);
- ``features_per_stage`` of the stages kept; ``alpha`` the paper's 1/2;
- memory: nnU-Net shrinks the patch until the network's ``compute_conv_feature_map_size`` fits
  its target; here that is the 2.5D network's own estimate (no pooling along the depth, 2D convs).

Widths: the paper's 16 base features doubling to 128 (its 16/32/64/128/128 when nnU-Net plans 5
stages). ``nnUNetPlannerDistillDSM`` keeps nnU-Net's 8 GB target; the CPU variant is
``nnUNetPlannerCPU`` (0.5 GB, batch ≤ 2). 2D configurations stay nnU-Net's PlainConvUNet (the
method needs 3D patches; its trainer refuses a 2D configuration in one line).
"""

from __future__ import annotations

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from nnunet_efficient.networks.distill_dsm import DEFAULT_ALPHA, DistillDSMUNet
from nnunet_efficient.planners.cpu_planner import nnUNetPlannerCPU


def distill_dsm_architecture_kwargs(plain_kwargs: dict, spacing, alpha: float = DEFAULT_ALPHA) -> dict:
    """Distill-DSM constructor kwargs from what nnU-Net planned for a 3D PlainConvUNet.

    Args:
        plain_kwargs: the PlainConvUNet ``arch_kwargs`` (``n_stages``, ``features_per_stage``, ``strides``).
        spacing: the configuration's target spacing ``(X, Y, Z)``.
        alpha: the depth shift modules' share of channels.

    Returns:
        ``n_stages``, ``features_per_stage``, ``strides`` (depth component 1), ``depth_axis``, ``alpha``.

    Example:
        >>> distill_dsm_architecture_kwargs({"n_stages": 3, "features_per_stage": [16, 32, 64],
        ...     "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]]}, (3.0, 0.8, 0.8))["strides"]
        [[1, 1, 1], [1, 2, 2], [1, 2, 2]]
    """
    depth_axis = int(np.argmax(np.asarray(spacing, dtype=float)))  # argmax takes the first of equal maxima
    features, strides = [], []
    for stage, (width, stride) in enumerate(zip(plain_kwargs["features_per_stage"], plain_kwargs["strides"])):
        stride = [1 if axis == depth_axis else int(s) for axis, s in enumerate(stride)]
        if stage > 0 and all(s == 1 for s in stride):
            continue
        features.append(int(width))
        strides.append(stride)
    return {"n_stages": len(strides), "features_per_stage": features, "strides": strides,
            "depth_axis": depth_axis, "alpha": float(alpha)}


class DistillDSMPlanningMixin:
    """Swaps the 3D configurations' PlainConvUNet for :class:`DistillDSMUNet` (see the module docstring)."""

    distill_dsm_alpha: float = DEFAULT_ALPHA

    def static_estimate_VRAM_usage(self, patch_size, input_channels, output_channels, arch_class_name,
                                   arch_kwargs, arch_kwargs_req_import):
        # nnU-Net calls this through the instance (an instance method may stand in for its
        # staticmethod) from inside get_plans_for_configuration, which recorded the spacing
        if len(patch_size) != 3:
            return ExperimentPlanner.static_estimate_VRAM_usage(patch_size, input_channels, output_channels,
                                                                arch_class_name, arch_kwargs, arch_kwargs_req_import)
        kwargs = distill_dsm_architecture_kwargs(arch_kwargs, self._distill_dsm_spacing, self.distill_dsm_alpha)
        network = DistillDSMUNet(input_channels=input_channels, num_classes=output_channels, **kwargs)
        return network.compute_conv_feature_map_size(patch_size)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset,
                                    _cache):
        self._distill_dsm_spacing = [float(s) for s in spacing]
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        if len(plan["patch_size"]) == 3:
            plan["architecture"] = {
                "network_class_name": f"{DistillDSMUNet.__module__}.{DistillDSMUNet.__qualname__}",
                "arch_kwargs": distill_dsm_architecture_kwargs(plan["architecture"]["arch_kwargs"], spacing,
                                                               self.distill_dsm_alpha),
                "_kw_requires_import": [],
            }
        return plan


class nnUNetPlannerDistillDSM(DistillDSMPlanningMixin, ExperimentPlanner):
    """nnU-Net's default topology and 8 GB target with Distill-DSM (16-128 features); plans
    ``nnUNetPlansDistillDSM``."""

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlansDistillDSM",
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        # the paper's widths 16/32/64/128/128
        self.UNet_base_num_features = 16
        self.UNet_max_features_3d = 128


class nnUNetPlannerDistillDSMCPU(DistillDSMPlanningMixin, nnUNetPlannerCPU):
    """:class:`nnUNetPlannerCPU` (16-128 features, 0.5 GB, batch ≤ 2) with Distill-DSM; plans
    ``nnUNetPlansDistillDSMCPU``."""

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 0.5,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlansDistillDSMCPU",
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
