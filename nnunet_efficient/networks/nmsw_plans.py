"""The ``nmsw`` entry of an nnU-Net configuration, read and checked in one place.

``nnUNetPlannerNMSW`` (or ``nnunet-efficient add_nmsw`` on existing plans) writes it into the
plans: configuration ``3d_nmsw`` inherits from ``3d_fullres`` and sets ``patch_size`` to the
training canvas, and its ``nmsw`` entry holds the local ``window_size`` (the 3d_fullres patch)
and the rest of the method's numbers. So nnU-Net itself sees a "patch" the size of a whole
(padded) volume: its predictor pads each case to the canvas and calls the network once, and
:class:`~nnunet_efficient.networks.nmsw.NMSWNetwork`'s forward on a canvas is the whole NMSW
inference. Pure Python: the caller passes the configuration dict
(``ConfigurationManager.configuration``), so nnunetv2 is not imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nnunet_efficient.errors import EfficientError

#: Name of the configuration the NMSW planners add.
NMSW_CONFIGURATION = "3d_nmsw"


@dataclass(frozen=True)
class NMSWSettings:
    """What the plans say about NMSW for one configuration.

    Attributes:
        volume_shape: full-resolution canvas ``(X, Y, Z)``, the configuration's ``patch_size``:
            training samples are whole volumes padded (random offset) or cropped to it, inference
            pads smaller volumes to it, so the global branch sees the same scale in both.
        window_size: the local branch's window ``(x, y, z)`` (the 3d_fullres patch size).
        global_shape: input shape of the global branch (``volume_shape`` / downsampling factor,
            divisible by the global network's total stride).
        global_architecture: ``{"network_class_name", "arch_kwargs", "_kw_requires_import"}``
            of the global U-Net, in the format of a configuration's ``architecture``.
        step: candidate-grid step as a fraction of the local window.
        k_train: windows the differentiable top-k chooses per training sample.
        k_infer: default windows at inference.
        batch_size: whole volumes per training batch.
    """

    volume_shape: tuple[int, ...]
    window_size: tuple[int, ...]
    global_shape: tuple[int, ...]
    global_architecture: dict
    step: float = 0.5
    k_train: int = 4
    k_infer: int = 5
    batch_size: int = 1


def nmsw_settings(configuration: Mapping, where: str = "this configuration") -> NMSWSettings:
    """Parse the ``nmsw`` entry of a configuration dict.

    Args:
        configuration: a configuration of the plans (after ``inherits_from`` is resolved), e.g.
            ``ConfigurationManager.configuration``.
        where: how to name the configuration in error messages.

    Returns:
        The settings.

    Raises:
        EfficientError: no ``nmsw`` entry (plans not made by an NMSW planner, or another
            configuration than ``3d_nmsw``), an entry of the earlier layout (canvas in the entry,
            window as the patch size), or an entry with missing or invalid fields.
    """
    entry = configuration.get("nmsw")
    if entry is None:
        raise EfficientError(
            f"{where} has no 'nmsw' entry: plan with `nnunet-efficient plan_and_preprocess -pl "
            f"nnUNetPlannerNMSW` (or nnUNetPlannerNMSWCPU), or add one to existing plans with "
            f"`nnunet-efficient add_nmsw`, and use configuration '{NMSW_CONFIGURATION}'.")
    if "window_size" not in entry and "volume_shape" in entry:
        # the earlier layout's patch size was the window: stock nnU-Net prediction then ran the local
        # branch alone, so it is refused rather than read
        raise EfficientError(
            f"{where}: 'nmsw' entry of an earlier layout (volume_shape in the entry, the window as the patch "
            f"size); plan again, or rewrite it with `nnunet-efficient add_nmsw`.")
    try:
        settings = NMSWSettings(
            volume_shape=tuple(int(v) for v in configuration["patch_size"]),
            window_size=tuple(int(v) for v in entry["window_size"]),
            global_shape=tuple(int(v) for v in entry["global_shape"]),
            global_architecture=dict(entry["global_architecture"]),
            step=float(entry.get("step", 0.5)),
            k_train=int(entry.get("k_train", 4)),
            k_infer=int(entry.get("k_infer", 5)),
            batch_size=int(entry.get("batch_size", 1)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise EfficientError(f"{where}: invalid 'nmsw' entry ({type(error).__name__}: {error}).") from None
    if len(settings.window_size) != len(settings.volume_shape) \
            or any(v < w for v, w in zip(settings.volume_shape, settings.window_size)):
        raise EfficientError(f"{where}: the patch size (the NMSW canvas) {settings.volume_shape} must be at least "
                             f"nmsw window_size {settings.window_size} on every axis.")
    if not 0 < settings.step <= 1 or min(settings.k_train, settings.k_infer, settings.batch_size) < 1:
        raise EfficientError(f"{where}: nmsw step must be in (0, 1] and k_train, k_infer, batch_size >= 1.")
    return settings
