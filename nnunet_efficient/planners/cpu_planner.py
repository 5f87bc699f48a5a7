"""A planner whose networks train and predict in minutes on a laptop CPU."""

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner


class nnUNetPlannerCPU(ExperimentPlanner):
    """nnU-Net's default planner with a network sized for a few CPU cores.

    Same topology rules, spacing, normalisation and preprocessing as ``ExperimentPlanner``; only
    the width and the memory budget change: 16 base features (max 128) instead of 32 (max 320),
    a 0.5 GB "VRAM" target so patches shrink to roughly 64³ on brain MRI, and batch size 2.
    The plans are written as ``nnUNetPlansCPU`` so they never overwrite the default plans.
    """

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 0.5,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlansCPU",
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        self.UNet_base_num_features = 16
        self.UNet_max_features_3d = 128
        self.UNet_max_features_2d = 256
        self.max_batch_size = 2

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier,
                                    approximate_n_voxels_dataset, _cache):
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        # On a CPU a larger batch costs time linearly without the parallelism that makes it
        # free on a GPU.
        plan["batch_size"] = min(plan["batch_size"], self.max_batch_size)
        return plan
