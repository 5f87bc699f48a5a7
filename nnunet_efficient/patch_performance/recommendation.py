"""From a patch-performance map to a recommended sliding-window ``tile_step_size``.

The model. nnU-Net's sliding window predicts every voxel as the blend of the windows that hold
it, each weighted by the Gaussian importance map ``g`` at the voxel's position in that window and
divided by the summed ``g`` of those windows. So at step ``s`` on a case, a share ``w_s(x)`` of
all the case's prediction comes from patch position ``x``:

    ``w_s(x) = (1 / N) * sum over windows k of g(x) / W(start_k + x)``  (real voxels only),

with ``W`` the summed ``g`` at each voxel and ``N`` the number of voxels; ``w_s`` sums to 1.
Windows are nnU-Net's grid at ``s`` (the image padded to one patch as nnU-Net pads it), so the
image edges, where a voxel can only lie near a window's border, are accounted for at every step.
``g`` is separable (nnU-Net's Gaussian is), so ``w_s`` is a product of one profile per axis.
Over several cases, ``w_s`` is their voxel-weighted mean.

If a voxel errs at position ``x`` as the map says (``E|p_c - y_c| = error_c(x)``: content and
position independent), the blend's expected error is ``sum_x w_s(x) error_c(x)``, exactly, since
``|p_c - y_c|`` is linear in ``p_c`` for a one-hot ``y_c``. The same weights give the soft true
positives ``TP``; the expected Dice of class ``c`` is the soft Dice ``2 TP / (2 TP + error)``
(``|p - y|`` summed is the false positives plus false negatives). The cost of step ``s`` is the
number of windows of the grid (mean per case) relative to step 1.0: the network dominates
sliding-window time.

The rule. ``efficiency = expected Dice / relative time``. Dice ÷ time alone would always pick the
cheapest step (8× fewer windows outweighs any realistic Dice gain), so the recommendation is the
most efficient candidate among those whose expected mean foreground Dice is within
``dice_tolerance`` of the best candidate's (ties: the larger step). Candidates are 1.0, 0.75,
0.5, 0.25 and the step that just covers the border band (:func:`covering_step`).

The border band (:func:`border_band`), per axis: with ``e`` the map averaged over the foreground
classes and ``I`` its mean over the central half of the patch (``[P//4, P - P//4)`` on every
axis), the band is the number of consecutive depths ``k = 0, 1, ...`` from the two faces of that
axis whose mean error (the slices at ``k`` and ``P - 1 - k``, within the central half of the
other axes) exceeds ``I * (1 + rel_tol) + abs_tol``.

Pure NumPy/PyTorch (never imports nnunetv2).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from nnunet_efficient.patch_performance.tracking import PatchPerformanceMap
from nnunet_efficient.sampling.windows import grid_shape, window_grid_steps

#: nnU-Net's default step is 0.5; 0.25 is the densest step users run in practice.
DEFAULT_CANDIDATES = (1.0, 0.75, 0.5, 0.25)
#: Half a Dice point: well inside the spread of nnU-Net's own fold-to-fold Dice.
DEFAULT_DICE_TOLERANCE = 0.005
#: nnU-Net's default, used when a map cannot tell (no foreground seen).
NNUNET_DEFAULT_STEP = 0.5


def _axis_profiles(importance_map: torch.Tensor | np.ndarray) -> list[np.ndarray]:
    """The 1D profiles of a separable importance map: its lines through the maximum, one per axis."""
    g = np.asarray(importance_map.cpu() if isinstance(importance_map, torch.Tensor) else importance_map,
                   dtype=np.float64)
    if (g <= 0).any():
        raise ValueError("importance_map must be positive everywhere (nnU-Net replaces its zeros by the minimum)")
    centre = np.unravel_index(np.argmax(g), g.shape)
    profiles = [g[tuple(slice(None) if a == axis else c for a, c in enumerate(centre))]
                for axis in range(g.ndim)]
    outer = profiles[0]
    for profile in profiles[1:]:
        outer = np.multiply.outer(outer, profile)
    if not np.allclose(outer / outer.max(), g / g.max(), rtol=1e-3, atol=1e-6):
        raise ValueError("importance_map must be separable (a product of one profile per axis, as nnU-Net's "
                         "Gaussian is)")
    return profiles


def _axis_weights(profile: np.ndarray, length: int, step: float) -> np.ndarray:
    """Share of a ``length``-voxel axis' prediction that comes from each window position (sums to 1).

    The axis is padded to at least one window as nnU-Net pads it; padding voxels are not counted.
    """
    patch = len(profile)
    padded = max(length, patch)
    first_real = (padded - length) // 2
    starts = window_grid_steps([padded], [patch], step)[0]
    blend = np.zeros(padded)  # summed importance at each voxel: the normaliser of nnU-Net's blend
    for s in starts:
        blend[s:s + patch] += profile
    weights = np.zeros(patch)
    for s in starts:
        real = slice(max(first_real - s, 0), min(first_real + length - s, patch))
        weights[real] += profile[real] / blend[s + real.start:s + real.stop]
    return weights / length


def position_weights(importance_map: torch.Tensor | np.ndarray, step: float,
                     image_shapes: Sequence[Sequence[int]]) -> np.ndarray:
    """Share of all voxels' blended prediction that comes from each patch position, at ``step``.

    See the module docstring. Cases are weighted by their number of voxels.

    Args:
        importance_map: ``(*patch)`` separable, positive blending weights (nnU-Net's Gaussian), any scale.
        step: sliding-window step as a fraction of the patch, in (0, 1].
        image_shapes: spatial shapes of the cases (at least one).

    Returns:
        ``(*patch)`` float64 weights ``w_s`` summing to 1.
    """
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    if not image_shapes:
        raise ValueError("give at least one image shape")
    profiles = _axis_profiles(importance_map)
    total = np.zeros([len(p) for p in profiles])
    for shape in image_shapes:
        if len(shape) != len(profiles):
            raise ValueError(f"image shape {tuple(shape)} and importance map {tuple(total.shape)} differ in axes")
        case = np.ones(())
        for profile, length in zip(profiles, shape):
            case = np.multiply.outer(case, _axis_weights(profile, int(length), step))
        total += case * float(np.prod(shape, dtype=np.float64))
    return total / total.sum()


def border_band(error: torch.Tensor | np.ndarray, classes: Sequence[int] | None = None,
                rel_tol: float = 0.2, abs_tol: float = 1e-3) -> tuple[int, ...]:
    """Width in voxels of the band along each axis where the error rises above the interior's.

    Args:
        error: ``(C, *patch)`` error map (:attr:`PatchPerformanceMap.error`; NaN = not counted).
        classes: channels to average; default the foreground ``1 .. C-1``.
        rel_tol: relative rise over the interior mean that counts as worse.
        abs_tol: absolute rise that counts as worse (keeps noise around a near-zero interior out).

    Returns:
        One band width per spatial axis (0: no band; see the module docstring for the rule).
    """
    error = np.asarray(error, dtype=np.float64)
    classes = list(range(1, error.shape[0])) if classes is None else list(classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices (never counted) are NaN on purpose
        e = np.nanmean(error[classes], axis=0)
        core = tuple(slice(p // 4, p - p // 4) for p in e.shape)
        interior = np.nanmean(e[core])
        threshold = interior * (1 + rel_tol) + abs_tol
        bands = []
        for axis, size in enumerate(e.shape):
            band = 0
            for depth in range((size + 1) // 2):
                index = list(core)
                index[axis] = [depth, size - 1 - depth]
                if not np.nanmean(e[tuple(index)]) > threshold:  # NaN (never counted) ends the band too
                    break
                band = depth + 1
            bands.append(band)
    return tuple(bands)


def covering_step(band: Sequence[int], patch_size: Sequence[int]) -> float | None:
    """The largest step at which every voxel lies outside the border band of at least one window.

    nnU-Net's grid at step ``s`` places windows at most ``d = s * P`` voxels apart, and windows
    ``d`` apart leave each voxel in some window's good part (length ``P - 2b``) exactly when
    ``d <= P - 2b``. The step is the smallest such fraction over the axes, rounded down to 1/1000;
    None when the band covers the whole patch on some axis (no overlap helps); 1.0 without a band.
    """
    fractions = [(int(p) - 2 * int(b)) / int(p) for b, p in zip(band, patch_size)]
    if min(fractions) <= 0:
        return None
    return math.floor(min(fractions) * 1000 + 1e-9) / 1000


@dataclass
class StepCandidate:
    """One row of the recommendation table.

    Attributes:
        step: ``tile_step_size``.
        windows: windows per case (mean over the image shapes).
        relative_time: ``windows`` ÷ the windows of step 1.0.
        expected_dice: mean expected soft Dice over the foreground classes (NaN when none was seen).
        expected_dice_per_class: the same per foreground class (label value as a string → Dice).
        expected_error: mean expected ``|p_c - y_c|`` over the foreground classes.
        efficiency: ``expected_dice / relative_time``.
    """

    step: float
    windows: float
    relative_time: float
    expected_dice: float
    expected_dice_per_class: dict[str, float]
    expected_error: float
    efficiency: float


@dataclass
class StepRecommendation:
    """The recommended step, why, and the table it was chosen from (written as ``patch_performance.json``).

    Attributes:
        step: the recommended ``tile_step_size``.
        reason: one line saying why.
        candidates: the table, by decreasing step.
        border_band: band width per axis in voxels (:func:`border_band`).
        covering_step: :func:`covering_step` of the band, or None.
        patch_size: the map's patch size.
        dice_tolerance: Dice a cheaper step may lose against the best candidate.
        rule: how the step was chosen, in words.
    """

    step: float
    reason: str
    candidates: list[StepCandidate]
    border_band: tuple[int, ...]
    covering_step: float | None
    patch_size: tuple[int, ...]
    dice_tolerance: float
    rule: str = ("most efficient (expected Dice / relative time) candidate among those within dice_tolerance of "
                 "the best expected Dice; ties: the larger step")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["border_band"], out["patch_size"] = list(self.border_band), list(self.patch_size)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> StepRecommendation:
        data = dict(data)
        data["candidates"] = [StepCandidate(**c) for c in data.get("candidates", [])]
        data["border_band"] = tuple(data.get("border_band", ()))
        data["patch_size"] = tuple(data.get("patch_size", ()))
        return cls(**data)


def expected_scores(patch_map: PatchPerformanceMap, importance_map: torch.Tensor | np.ndarray, step: float,
                    image_shapes: Sequence[Sequence[int]], classes: Sequence[int] | None = None,
                    ) -> tuple[dict[int, float], dict[int, float]]:
    """Expected soft Dice and error per class at ``step`` on cases of ``image_shapes`` (module docstring).

    Positions that never saw a counted voxel are left out and the other weights renormalised.

    Returns:
        ``(dice, error)``, each class → value; Dice is NaN for a class neither present nor predicted.
    """
    classes = list(range(1, patch_map.num_classes)) if classes is None else list(classes)
    weights = position_weights(importance_map, step, image_shapes)
    counted = patch_map.count.numpy() > 0
    if not counted.any():
        raise ValueError("the map counted no voxel")
    weights = np.where(counted, weights, 0.0)
    weights /= weights.sum()
    error = np.nan_to_num(patch_map.error.numpy())
    true_positive = np.nan_to_num(patch_map.true_positive.numpy())
    dice, err = {}, {}
    for c in classes:
        e, tp = float((weights * error[c]).sum()), float((weights * true_positive[c]).sum())
        err[c] = e
        dice[c] = 2 * tp / (2 * tp + e) if 2 * tp + e > 0 else float("nan")
    return dice, err


def _windows(step: float, patch_size: Sequence[int], image_shapes: Sequence[Sequence[int]]) -> float:
    counts = [np.prod(grid_shape([max(int(i), int(p)) for i, p in zip(shape, patch_size)], patch_size, step))
              for shape in image_shapes]
    return float(np.mean(counts))


def recommend_step(patch_map: PatchPerformanceMap, importance_map: torch.Tensor | np.ndarray,
                   image_shapes: Sequence[Sequence[int]] | None = None,
                   candidates: Sequence[float] = DEFAULT_CANDIDATES,
                   dice_tolerance: float = DEFAULT_DICE_TOLERANCE,
                   classes: Sequence[int] | None = None) -> StepRecommendation:
    """Recommend a sliding-window step from a map (the rule is in the module docstring).

    Args:
        patch_map: the map (:meth:`PatchErrorTracker.compute`).
        importance_map: ``(*patch)`` blending weights of the predictor (nnU-Net's Gaussian).
        image_shapes: spatial shapes of typical cases (the validation cases, preprocessed); None:
            one case of four patches per axis.
        candidates: steps to compare, each in (0, 1]; the band's covering step is added.
        dice_tolerance: expected Dice a cheaper step may lose against the best candidate.
        classes: foreground channels that count; default ``1 .. C-1``.

    Returns:
        The recommendation with its table (by decreasing step).

    Example:
        >>> rec = recommend_step(tracker.compute(), gaussian, image_shapes=[(138, 169, 138)])
        >>> rec.step, rec.reason
    """
    patch_size = patch_map.patch_size
    if tuple(np.shape(importance_map)) != patch_size:
        raise ValueError(f"importance_map {tuple(np.shape(importance_map))} must have the map's patch size "
                         f"{patch_size}")
    if not image_shapes:
        image_shapes = [[4 * p for p in patch_size]]
    band = border_band(patch_map.error.numpy(), classes)
    cover = covering_step(band, patch_size)
    steps = {round(float(s), 6) for s in candidates}
    if cover is not None:
        steps.add(cover)
    base_windows = _windows(1.0, patch_size, image_shapes)
    table = []
    for step in sorted(steps, reverse=True):
        dice, error = expected_scores(patch_map, importance_map, step, image_shapes, classes)
        windows = _windows(step, patch_size, image_shapes)
        finite = [d for d in dice.values() if not math.isnan(d)]
        mean_dice = float(np.mean(finite)) if finite else float("nan")
        relative = windows / base_windows
        table.append(StepCandidate(step, windows, relative, mean_dice, {str(c): d for c, d in dice.items()},
                                   float(np.mean(list(error.values()))), mean_dice / relative))
    band_text = "×".join(map(str, band))
    scored = [c for c in table if not math.isnan(c.expected_dice)]
    if not scored:
        return StepRecommendation(NNUNET_DEFAULT_STEP, f"no foreground class was present or predicted in the map's "
                                  f"tiles, so overlap cannot be judged: nnU-Net's {NNUNET_DEFAULT_STEP} is kept",
                                  table, band, cover, patch_size, dice_tolerance)
    best = max(scored, key=lambda c: (c.expected_dice, c.step))
    eligible = [c for c in scored if c.expected_dice >= best.expected_dice - dice_tolerance]
    chosen = max(eligible, key=lambda c: (c.efficiency, c.step))
    reason = (f"border band {band_text} voxels of patch {'×'.join(map(str, patch_size))}; expected Dice "
              f"{chosen.expected_dice:.4f} (best {best.expected_dice:.4f} at step {best.step:g}, tolerance "
              f"{dice_tolerance:g}) with {chosen.relative_time:.2f}× the windows of step 1")
    return StepRecommendation(chosen.step, reason, table, band, cover, patch_size, dice_tolerance)

