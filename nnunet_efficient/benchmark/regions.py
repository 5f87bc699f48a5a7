"""Dice of label unions ("regions") for a label-based model, e.g. BraTS's whole tumour, core, enhancing.

A label-based model predicts one label per voxel; BraTS is scored on nested unions of labels
(``WT=1,2,3,4 TC=1,3,4 ET=4``). ``benchmark --regions`` scores each union of the prediction against
the same union of the reference, next to the per-label Dice, with nnU-Net's Dice conventions
(:func:`~nnunet_efficient.benchmark.measure.dice_per_class`: NaN where the union is absent from
both, ignore-label voxels left out).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from nnunet_efficient.benchmark.measure import dice_per_class, mean_dice
from nnunet_efficient.errors import EfficientError

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def parse_regions(specs: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``["WT=1,2,3,4", "ET=4"]`` → ``{"WT": (1, 2, 3, 4), "ET": (4,)}`` (order kept).

    Raises:
        EfficientError: a spec that is not ``NAME=LABEL[,LABEL...]`` (name: a letter then letters,
            digits or ``_``; labels: whole numbers >= 1), or a name given twice.
    """
    regions: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, eq, labels = spec.partition("=")
        parts = labels.split(",")
        if not eq or not _NAME.fullmatch(name) or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
            raise EfficientError(f"--regions: '{spec}' is not NAME=LABEL[,LABEL...] with labels >= 1 "
                                 f"(e.g. WT=1,2,3,4)")
        if name in regions:
            raise EfficientError(f"--regions: region '{name}' is given twice")
        regions[name] = tuple(dict.fromkeys(int(p) for p in parts))
    return regions


def check_regions(regions: Mapping[str, Iterable[int]], foreground_labels: Iterable[int], model: str,
                  region_based: bool = False) -> None:
    """Every label of every region must be one the model predicts.

    Raises:
        EfficientError: a region-based model (its outputs are regions already), or a label the
            model does not have.
    """
    if region_based and regions:
        raise EfficientError(f"--regions: {model} is region-based; its Dice is reported per region already")
    known = {int(v) for v in foreground_labels}
    for name, labels in regions.items():
        unknown = sorted(set(labels) - known)
        if unknown:
            raise EfficientError(f"--regions: {name} names label(s) {unknown} that {model} does not predict "
                                 f"(its foreground labels: {sorted(known)})")


def region_dice(prediction: np.ndarray, reference: np.ndarray, regions: Mapping[str, Sequence[int]],
                ignore_label: int | None = None) -> dict[str, float]:
    """Dice of each region (union of labels) of ``prediction`` against the same union of ``reference``.

    Args:
        prediction: label map, any shape.
        reference: label map, same shape.
        regions: region name → its labels.
        ignore_label: reference label whose voxels are not scored, or None.

    Returns:
        ``{name: dice}`` in the order of ``regions`` (NaN where the union is absent from both).

    Example:
        >>> region_dice(np.array([0, 1, 2, 4]), np.array([0, 2, 2, 4]), {"WT": (1, 2, 4), "ET": (4,)})
        {'WT': 1.0, 'ET': 1.0}
    """
    scores = dice_per_class(prediction, reference, [tuple(labels) for labels in regions.values()], ignore_label)
    return {name: scores[tuple(labels)] for name, labels in regions.items()}


def mean_region_dice(scores: Mapping[str, float]) -> float:
    """Mean over regions, skipping NaN; NaN when there is none."""
    return mean_dice(dict(scores))
