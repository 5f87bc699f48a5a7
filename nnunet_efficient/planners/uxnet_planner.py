"""Planners that write 3D UX-Net / RepUX-Net into nnU-Net's plans (``network_class_name`` + kwargs).

Topology comes from nnU-Net's own rules, unchanged: spacing, patch size, number of stages and
(anisotropic) strides are what ``ExperimentPlanner`` (or ``nnUNetPlannerCPU``) derives for the
dataset; the network follows them (see :mod:`nnunet_efficient.networks.uxnet` for how plan
stages map to UX-Net levels and how large kernels are clamped to the patch). Two things change:

- memory: nnU-Net shrinks the patch until the network's ``compute_conv_feature_map_size`` fits
  its memory target; here that estimate is the UX-Net's own, so a wider or deeper UX-Net gets a
  smaller patch or batch instead of running out of memory;
- widths: the reference's 48 base features doubling to a 768-channel bottleneck on a GPU; the
  CPU variants keep ``nnUNetPlannerCPU``'s 16 doubling to 128, its 0.5 GB target and batch ≤ 2.

2D configurations stay nnU-Net's PlainConvUNet (the architectures are 3D only; their trainers
refuse a 2D configuration with one line).
"""

from __future__ import annotations

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from nnunet_efficient.networks.uxnet import RepUXNet, UXNet
from nnunet_efficient.planners.cpu_planner import nnUNetPlannerCPU


class UXNetPlanningMixin:
    """Swaps the 3D configurations' PlainConvUNet for :attr:`uxnet_class` (see the module docstring)."""

    uxnet_class: type = UXNet
    uxnet_kernel_size: int = 7
    uxnet_blocks_per_stage: int = 2

    def uxnet_architecture_kwargs(self, plain_kwargs: dict, patch_size) -> dict:
        """UX-Net constructor kwargs from the stages/strides/widths nnU-Net planned for a PlainConvUNet."""
        return {
            "n_stages": int(plain_kwargs["n_stages"]),
            "features_per_stage": [int(f) for f in plain_kwargs["features_per_stage"]],
            "strides": [[int(s) for s in stride] for stride in plain_kwargs["strides"]],
            "patch_size": [int(p) for p in patch_size],
            "kernel_size": self.uxnet_kernel_size,
            "blocks_per_stage": self.uxnet_blocks_per_stage,
        }

    def static_estimate_VRAM_usage(self, patch_size, input_channels, output_channels, arch_class_name,
                                   arch_kwargs, arch_kwargs_req_import):
        # nnU-Net calls this through the instance, so an instance method may stand in for its staticmethod
        if len(patch_size) != 3:
            return ExperimentPlanner.static_estimate_VRAM_usage(patch_size, input_channels, output_channels,
                                                                arch_class_name, arch_kwargs, arch_kwargs_req_import)
        network = self.uxnet_class(input_channels=input_channels, num_classes=output_channels,
                                   **self.uxnet_architecture_kwargs(arch_kwargs, patch_size))
        return network.compute_conv_feature_map_size(patch_size)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset,
                                    _cache):
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        if len(plan["patch_size"]) == 3:
            cls = self.uxnet_class
            plan["architecture"] = {
                "network_class_name": f"{cls.__module__}.{cls.__qualname__}",
                "arch_kwargs": self.uxnet_architecture_kwargs(plan["architecture"]["arch_kwargs"], plan["patch_size"]),
                "_kw_requires_import": [],
            }
        return plan


class RepUXNetPlanningMixin(UXNetPlanningMixin):
    uxnet_class = RepUXNet
    uxnet_kernel_size = 21


class _ReferenceWidths:
    """The reference's widths: 48 base features doubling per stage up to a 768-channel bottleneck."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.UNet_base_num_features = 48
        self.UNet_max_features_3d = 768


class nnUNetPlannerUXNet(UXNetPlanningMixin, _ReferenceWidths, ExperimentPlanner):
    """nnU-Net's default topology with 3D UX-Net (48-768 features, 8 GB target); plans ``nnUNetPlansUXNet``."""

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlansUXNet",
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)


class nnUNetPlannerRepUXNet(RepUXNetPlanningMixin, _ReferenceWidths, ExperimentPlanner):
    """nnU-Net's default topology with RepUX-Net (48-768 features, 8 GB target); plans ``nnUNetPlansRepUXNet``."""

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlansRepUXNet",
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)


class nnUNetPlannerUXNetCPU(UXNetPlanningMixin, nnUNetPlannerCPU):
    """:class:`nnUNetPlannerCPU` (16-128 features, 0.5 GB, batch ≤ 2) with 3D UX-Net; plans ``nnUNetPlansUXNetCPU``."""

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 0.5,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlansUXNetCPU",
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)


class nnUNetPlannerRepUXNetCPU(RepUXNetPlanningMixin, nnUNetPlannerCPU):
    """:class:`nnUNetPlannerCPU` (16-128 features, 0.5 GB, batch ≤ 2) with RepUX-Net; plans
    ``nnUNetPlansRepUXNetCPU``."""

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 0.5,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlansRepUXNetCPU",
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
