"""Experiment planners for ``nnunet-efficient plan_and_preprocess -pl NAME``.

nnU-Net only looks ``-pl`` names up inside ``nnunetv2``; :func:`resolve_planner` looks in
:data:`PLANNERS` first and falls back to nnU-Net, and the class goes to nnU-Net's planning API.
"""

from nnunet_efficient.planners.cpu_planner import nnUNetPlannerCPU
from nnunet_efficient.planners.distill_dsm_planner import nnUNetPlannerDistillDSM, nnUNetPlannerDistillDSMCPU
from nnunet_efficient.planners.nmsw_planner import nnUNetPlannerNMSW, nnUNetPlannerNMSWCPU
from nnunet_efficient.planners.unetr_planner import nnUNetPlannerUNETR, nnUNetPlannerUNETRCPU
from nnunet_efficient.planners.uxnet_planner import (
    nnUNetPlannerRepUXNet,
    nnUNetPlannerRepUXNetCPU,
    nnUNetPlannerUXNet,
    nnUNetPlannerUXNetCPU,
)

PLANNERS = {cls.__name__: cls for cls in (nnUNetPlannerCPU, nnUNetPlannerNMSW, nnUNetPlannerNMSWCPU,
                                          nnUNetPlannerUXNet, nnUNetPlannerUXNetCPU,
                                          nnUNetPlannerRepUXNet, nnUNetPlannerRepUXNetCPU,
                                          nnUNetPlannerDistillDSM, nnUNetPlannerDistillDSMCPU,
                                          nnUNetPlannerUNETR, nnUNetPlannerUNETRCPU)}


def resolve_planner(name: str) -> type:
    """The planner class called ``name``: the plugin's first, then nnU-Net's.

    Raises:
        EfficientError: no planner of that name exists.
    """
    if name in PLANNERS:
        return PLANNERS[name]
    from os.path import join

    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from nnunet_efficient.errors import EfficientError

    found = recursive_find_python_class(join(nnunetv2.__path__[0], "experiment_planning"), name,
                                        current_module="nnunetv2.experiment_planning")
    if found is None:
        raise EfficientError(f"unknown planner '{name}'; plugin planners: {', '.join(sorted(PLANNERS))}, "
                             f"or any planner class of nnunetv2.experiment_planning")
    return found


def default_plans_name(planner: type) -> str:
    """The plans identifier a planner class writes by default (its ``plans_name`` argument)."""
    import inspect

    return inspect.signature(planner.__init__).parameters["plans_name"].default


def planner_for_plans(plans_name: str) -> type | None:
    """The plugin planner (or nnU-Net's ``ExperimentPlanner`` for ``nnUNetPlans``) that writes ``plans_name``."""
    for planner in PLANNERS.values():
        if default_plans_name(planner) == plans_name:
            return planner
    if plans_name == "nnUNetPlans":
        from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

        return ExperimentPlanner
    return None


__all__ = ["PLANNERS", "default_plans_name", "nnUNetPlannerCPU", "nnUNetPlannerDistillDSM",
           "nnUNetPlannerDistillDSMCPU", "nnUNetPlannerNMSW", "nnUNetPlannerNMSWCPU",
           "nnUNetPlannerRepUXNet", "nnUNetPlannerRepUXNetCPU", "nnUNetPlannerUNETR", "nnUNetPlannerUNETRCPU",
           "nnUNetPlannerUXNet", "nnUNetPlannerUXNetCPU",
           "planner_for_plans", "resolve_planner"]
