"""Fingerprint, plan and preprocess with a planner class (the plugin's or nnU-Net's)."""

from __future__ import annotations

from collections.abc import Sequence

from nnunet_efficient.planners import resolve_planner


def plan_and_preprocess(dataset_ids: Sequence[int], planner: str | type = "ExperimentPlanner", *,
                        fingerprint_extractor: str = "DatasetFingerprintExtractor",
                        num_processes_fingerprint: int = 8, verify_dataset_integrity: bool = False,
                        clean: bool = False, gpu_memory_target: float | None = None,
                        preprocessor_name: str = "DefaultPreprocessor",
                        overwrite_target_spacing: Sequence[float] | None = None,
                        overwrite_plans_name: str | None = None,
                        configurations: Sequence[str] = ("2d", "3d_fullres", "3d_lowres"),
                        num_processes: Sequence[int] | None = None, preprocess: bool = True,
                        verbose: bool = False, progress_bar: bool = True) -> str:
    """What ``nnUNetv2_plan_and_preprocess`` does, with ``planner`` given as a class or any name.

    Returns:
        The plans identifier written (``-p`` for training and prediction).
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiment_dataset,
    )
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess as nnunet_preprocess

    planner_class = resolve_planner(planner) if isinstance(planner, str) else planner
    extract_fingerprints(list(dataset_ids), fingerprint_extractor, num_processes_fingerprint,
                         verify_dataset_integrity, clean, verbose, show_progress_bar=progress_bar)
    plans_identifier = None
    for dataset_id in dataset_ids:
        _, plans_identifier = plan_experiment_dataset(dataset_id, planner_class, gpu_memory_target,
                                                      preprocessor_name, overwrite_target_spacing,
                                                      overwrite_plans_name)
    if preprocess:
        if num_processes is None:
            # nnU-Net's defaults: resampling 3d_fullres data is the memory-hungry step
            defaults = {"2d": 8, "3d_fullres": 4, "3d_lowres": 8}
            num_processes = [defaults.get(c, 4) for c in configurations]
        nnunet_preprocess(list(dataset_ids), plans_identifier, list(configurations), list(num_processes),
                          verbose, show_progress_bar=progress_bar)
    return plans_identifier
