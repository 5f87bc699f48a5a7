"""Add NMSW's ``3d_nmsw`` configuration to plans that another planner wrote.

The way to turn a trained 3d_fullres model into an NMSW model (a "retrofit"): the plans the model
was trained with get the ``3d_nmsw`` configuration that the NMSW planner would have written next
to the same 3d_fullres (the NMSW variant of the planner named in ``experiment_planner_used``
computes it, from the dataset's fingerprint, the plans' 3d_fullres spacing and transposition),
plus a ``retrofit_from`` entry naming the trained model, which
:class:`~nnunet_efficient.training.nmsw_retrofit.nnUNetTrainerNMSWRetrofit` loads into the local
branch. Nothing else in the plans changes, so the 3d_fullres model keeps working, and 3d_nmsw
shares its preprocessed data.
"""

from __future__ import annotations

import json
import os

from nnunet_efficient.errors import EfficientError, InputFileError
from nnunet_efficient.networks.nmsw_plans import NMSW_CONFIGURATION
from nnunet_efficient.planners.nmsw_planner import NMSWPlanningMixin

#: The configuration whose network becomes the local branch.
SOURCE_CONFIGURATION = "3d_fullres"


def nmsw_planner_for(planner_name: str) -> type:
    """The NMSW planner matching the planner that wrote some plans (its widths and topology rules).

    An NMSW planner is returned as it is; any other planner (the plugin's or nnU-Net's) gets
    :class:`~nnunet_efficient.planners.nmsw_planner.NMSWPlanningMixin` mixed in, so
    ``nnUNetPlannerCPU`` behaves as ``nnUNetPlannerNMSWCPU`` and ``ExperimentPlanner`` as
    ``nnUNetPlannerNMSW``. A planner that cannot be found falls back to ``ExperimentPlanner``.
    """
    from nnunet_efficient.planners import resolve_planner

    try:
        base = resolve_planner(planner_name)
    except EfficientError:
        print(f"add_nmsw: planner '{planner_name}' not found; sizing the global U-Net as ExperimentPlanner does")
        base = resolve_planner("ExperimentPlanner")
    if issubclass(base, NMSWPlanningMixin):
        return base
    return type(f"{base.__name__}NMSW", (NMSWPlanningMixin, base), {"__module__": __name__})


def retrofit_source(trainer: str, plans_identifier: str, configuration: str = SOURCE_CONFIGURATION,
                    checkpoint: str = "checkpoint_final.pth", model_folder: str | None = None) -> dict:
    """The ``retrofit_from`` entry: which trained model becomes the local branch.

    Args:
        trainer: the trainer the source model was trained with (names its output folder).
        plans_identifier: the source model's plans.
        configuration: the source model's configuration (its network must be the 3d_fullres one).
        checkpoint: the checkpoint file in the source model's ``fold_X`` folder.
        model_folder: an explicit model folder (absolute path) instead of the one under
            ``nnUNet_results``.

    Returns:
        ``{"model_folder": <folder name under nnUNet_results/DATASET, or absolute>, "checkpoint": ...}``.
    """
    folder = os.path.abspath(model_folder) if model_folder else f"{trainer}__{plans_identifier}__{configuration}"
    return {"model_folder": folder, "checkpoint": checkpoint}


def add_nmsw(dataset: str | int, plans_identifier: str, source: dict | None = None) -> str:
    """Write ``3d_nmsw`` (and ``retrofit_from``) into ``nnUNet_preprocessed/DATASET/PLANS.json``.

    An existing ``3d_nmsw`` is replaced; the file is replaced atomically (never half written).

    Args:
        dataset: dataset ID or name.
        plans_identifier: the plans to extend (``-p``).
        source: the ``retrofit_from`` entry (:func:`retrofit_source`); None: none written.

    Returns:
        The plans file written.

    Raises:
        EfficientError / InputFileError: dataset not planned, plans without 3d_fullres, or no
            fingerprint / raw dataset for the planner to read.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_efficient.dataset_checks import dataset_name

    name = dataset_name(dataset)
    preprocessed = os.environ.get("nnUNet_preprocessed") or ""
    plans_file = os.path.join(preprocessed, name, f"{plans_identifier}.json")
    try:
        with open(plans_file) as f:
            plans = json.load(f)
    except FileNotFoundError:
        raise InputFileError(plans_file, f"missing: dataset {name} has no plans '{plans_identifier}' (plan it first, "
                                         f"or give the right -p)") from None
    except (OSError, ValueError) as error:
        raise InputFileError(plans_file, f"is not valid JSON ({error})") from None
    if SOURCE_CONFIGURATION not in plans.get("configurations", {}):
        raise InputFileError(plans_file, f"has no {SOURCE_CONFIGURATION} configuration; NMSW needs a 3D plan")
    fullres = PlansManager(plans).get_configuration(SOURCE_CONFIGURATION).configuration
    planner_name = plans.get("experiment_planner_used", "ExperimentPlanner")
    try:
        planner = nmsw_planner_for(planner_name)(name, plans_name=plans_identifier)
    except (RuntimeError, FileNotFoundError, AssertionError) as error:  # nnU-Net's planner reads raw + fingerprint
        raise EfficientError(f"{name}: the planner needs the raw dataset (nnUNet_raw) and the dataset fingerprint "
                             f"(nnUNet_preprocessed): {error}") from None
    configuration = planner.plan_nmsw(fullres, plans["transpose_forward"])
    if source is not None:
        configuration["nmsw"]["retrofit_from"] = dict(source)
    plans["configurations"][NMSW_CONFIGURATION] = configuration
    staged = f"{plans_file}.partial"
    with open(staged, "w") as f:
        json.dump(plans, f, indent=4, sort_keys=False)
    os.replace(staged, plans_file)
    return plans_file
