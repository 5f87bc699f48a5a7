"""The three files of a patch-performance map in a fold folder, and ``-step_size auto``.

- ``patch_performance.npz``: ``error`` and ``true_positive`` ``(C, *patch)``, ``count`` ``(*patch)``,
  ``class_names`` ``(C,)``, ``tile_step`` and ``windows`` (how the map was tiled);
- ``patch_performance.json``: the :class:`StepRecommendation` (recommended step, reason, table of
  candidates, border band) plus what the map was computed from;
- ``patch_performance.png``: the error map of each foreground class, orthogonal central slices.

Pure NumPy/PyTorch/matplotlib (never imports nnunetv2).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np

from nnunet_efficient.common.files import atomic_write, atomic_write_json
from nnunet_efficient.errors import InputFileError
from nnunet_efficient.patch_performance.recommendation import NNUNET_DEFAULT_STEP, StepRecommendation
from nnunet_efficient.patch_performance.tracking import PatchPerformanceMap

MAP_FILE = "patch_performance.npz"
RECOMMENDATION_FILE = "patch_performance.json"
PLOT_FILE = "patch_performance.png"


def save_patch_performance(folder: str, patch_map: PatchPerformanceMap, recommendation: StepRecommendation,
                           class_names: Sequence[str], source: dict | None = None) -> dict[str, str]:
    """Write the map, its recommendation and its plot into ``folder`` (a ``fold_X`` folder).

    Args:
        folder: output folder (created if missing).
        patch_map: the map.
        recommendation: :func:`~nnunet_efficient.patch_performance.recommendation.recommend_step` of it.
        class_names: one name per channel, background first.
        source: what the map was computed from (cases, tile step, checkpoint, ...), kept in the JSON.

    Returns:
        The written paths by kind (``map``, ``recommendation``, ``plot``).
    """
    os.makedirs(folder, exist_ok=True)
    paths = {"map": os.path.join(folder, MAP_FILE), "recommendation": os.path.join(folder, RECOMMENDATION_FILE),
             "plot": os.path.join(folder, PLOT_FILE)}
    source = dict(source or {})
    np.savez_compressed(paths["map"], error=patch_map.error.numpy(), true_positive=patch_map.true_positive.numpy(),
                        count=patch_map.count.numpy(), class_names=np.asarray(list(class_names)),
                        **{k: np.asarray(v) for k, v in source.items() if isinstance(v, (int, float))})
    payload = {**recommendation.to_dict(), "class_names": list(class_names), "source": source}
    atomic_write_json(paths["recommendation"], payload, allow_nan=True)
    plot_patch_performance(patch_map, class_names, paths["plot"], recommendation)
    return paths


def load_patch_map(path: str) -> PatchPerformanceMap:
    """Read ``patch_performance.npz`` back.

    Raises:
        InputFileError: missing or unreadable file, or arrays of inconsistent shapes.
    """
    import torch

    try:
        with np.load(path) as data:
            error, true_positive, count = data["error"], data["true_positive"], data["count"]
    except (OSError, KeyError, ValueError) as problem:
        raise InputFileError(path, f"not a patch-performance map ({type(problem).__name__}: {problem})") from None
    if error.shape != true_positive.shape or error.shape[1:] != count.shape:
        raise InputFileError(path, f"inconsistent shapes error {error.shape}, true_positive {true_positive.shape}, "
                                   f"count {count.shape}")
    return PatchPerformanceMap(torch.from_numpy(error), torch.from_numpy(true_positive), torch.from_numpy(count))


def read_recommended_step(path: str) -> tuple[float, dict]:
    """The ``step`` of a ``patch_performance.json`` (all ``-step_size auto`` needs), and the whole object.

    Raises:
        InputFileError: unreadable, not JSON, or without a step in (0, 1].
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as problem:
        raise InputFileError(path, f"cannot be read ({problem.strerror or problem})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise InputFileError(path, f"is not valid JSON ({problem}); recompute it with "
                                   "`nnunet-efficient patch_performance`") from None
    if not isinstance(data, dict):
        raise InputFileError(path, "expected a JSON object with a 'step'")
    step = data.get("step")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 1:
        raise InputFileError(path, f"'step' must be a number in (0, 1], got {step!r}")
    return float(step), data


def load_recommendation(path: str) -> StepRecommendation:
    """Read ``patch_performance.json`` as written by :func:`save_patch_performance`.

    Raises:
        InputFileError: unreadable, not JSON, without a step in (0, 1], or missing the table.
    """
    _, data = read_recommended_step(path)
    known = set(StepRecommendation.__dataclass_fields__)
    try:
        return StepRecommendation.from_dict({k: v for k, v in data.items() if k in known})
    except TypeError as problem:
        raise InputFileError(path, f"is not a complete patch-performance recommendation ({problem})") from None


def resolve_auto_step(model_folder: str, folds: Sequence[int | str]) -> tuple[float, str]:
    """The step for ``-step_size auto``: the smallest step any used fold asks for.

    Each ``fold_X/patch_performance.json`` asks for its recommended step; a fold without one asks
    for nnU-Net's 0.5. Ensembling folds that disagree takes the most conservative (smallest) step.

    Args:
        model_folder: trained model folder (``TRAINER__PLANS__CONFIG``).
        folds: the folds that will be used.

    Returns:
        ``(step, message)``: the step and one line saying which step is used and why.

    Raises:
        InputFileError: a fold's ``patch_performance.json`` exists but is corrupt.
    """
    found, missing = {}, []
    for fold in folds:
        path = os.path.join(model_folder, f"fold_{fold}", RECOMMENDATION_FILE)
        if os.path.isfile(path):
            found[fold] = read_recommended_step(path)[0]
        else:
            missing.append(fold)
    if not found:
        return NNUNET_DEFAULT_STEP, (f"-step_size auto: no {RECOMMENDATION_FILE} in fold(s) "
                                     f"{', '.join(map(str, folds))} of {model_folder}: using nnU-Net's default "
                                     f"{NNUNET_DEFAULT_STEP} (compute one with `nnunet-efficient patch_performance`)")
    asked = {fold: found.get(fold, NNUNET_DEFAULT_STEP) for fold in folds}
    step = min(asked.values())
    per_fold = ", ".join(f"fold {f}: {s:g}" + (" (no map, nnU-Net's default)" if f in missing else "")
                         for f, s in asked.items())
    if len(set(asked.values())) == 1:
        why = f"recommended by the patch-performance map ({per_fold})"
    else:
        why = f"the smallest step the folds ask for ({per_fold})"
    return step, f"-step_size auto: using step {step:g}, {why}"


def plot_patch_performance(patch_map: PatchPerformanceMap, class_names: Sequence[str], path: str,
                           recommendation: StepRecommendation | None = None) -> None:
    """Write a PNG: per foreground class, the error map's central slices (3D: three orthogonal planes).

    One row per foreground class, one colour scale per row (0 to the class's largest mean error),
    axes in voxels labelled by patch axis.
    """
    # The object API with the Agg canvas needs no pyplot state and never switches the global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    error = patch_map.error.numpy()
    spatial = error.ndim - 1
    classes = list(range(1, error.shape[0])) or [0]
    planes = [(1, 2), (0, 2), (0, 1)] if spatial == 3 else [(0, 1)]
    fig = Figure(figsize=(4.2 * len(planes) + 0.8, 3.6 * len(classes) + 0.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(classes), len(planes), squeeze=False)
    centre = [s // 2 for s in error.shape[1:]]
    for row, c in zip(axes, classes):
        values = error[c]
        top = np.nanmax(values) if np.isfinite(values).any() else 1.0
        top = top if top > 0 else 1.0
        image = None
        for ax, (vertical, horizontal) in zip(row, planes):
            index = [slice(None) if a in (vertical, horizontal) else centre[a] for a in range(spatial)]
            plane = values[tuple(index)]
            image = ax.imshow(plane, origin="lower", cmap="viridis", vmin=0.0, vmax=top, aspect="equal",
                              interpolation="nearest")
            fixed = [a for a in range(spatial) if a not in (vertical, horizontal)]
            where = f", axis {fixed[0]} = {centre[fixed[0]]}" if fixed else ""
            ax.set_title(f"{class_names[c] if c < len(class_names) else c}{where}", fontsize=9)
            ax.set_ylabel(f"patch axis {vertical} (voxel)")
            ax.set_xlabel(f"patch axis {horizontal} (voxel)")
        bar = fig.colorbar(image, ax=list(row), shrink=0.9)
        bar.set_label("mean |p − y| (softmax vs one-hot)")
    title = "Patch-performance map: error by position inside the patch"
    if recommendation is not None and not math.isnan(recommendation.step):
        title += (f"\nborder band {'×'.join(map(str, recommendation.border_band))} voxels; "
                  f"recommended step {recommendation.step:g}")
    fig.suptitle(title, fontsize=10)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))

