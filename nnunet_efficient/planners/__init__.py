"""Experiment planners for ``nnunet-efficient plan_and_preprocess -pl NAME``.

nnU-Net only looks ``-pl`` names up inside ``nnunetv2``; :func:`resolve_planner` looks in
:data:`PLANNERS` first and falls back to nnU-Net, and the class goes to nnU-Net's planning API.
"""

from nnunet_efficient.planners.cpu_planner import nnUNetPlannerCPU
from nnunet_efficient.planners.nmsw_planner import nnUNetPlannerNMSW, nnUNetPlannerNMSWCPU

PLANNERS = {cls.__name__: cls for cls in (nnUNetPlannerCPU, nnUNetPlannerNMSW, nnUNetPlannerNMSWCPU)}


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


__all__ = ["PLANNERS", "nnUNetPlannerCPU", "nnUNetPlannerNMSW", "nnUNetPlannerNMSWCPU", "resolve_planner"]
