"""Learning curves and seed spread for ``nnunet-efficient compare``.

A run's learning curve is the held-out Dice of the checkpoints its schedule kept (at fractions of
the budget, :func:`snapshot_epochs`) plus its final checkpoint, against the training minutes
those iterations cost by the entry's timed step. The points lie inside one schedule: at ¼ of the
budget the learning rate has not been annealed as a schedule of that length would anneal it, so a
point is a lower estimate of what that budget would give when trained on its own. The picture and
the table say so.

Runs of one entry with different seeds are summarised by their mean, min–max and standard
deviation; two entries "differ beyond run-to-run spread" when their means are further apart than
the larger min–max range of either (only entries with at least two runs have a range).
"""

from __future__ import annotations

import io
import math
import statistics
import textwrap
from collections.abc import Sequence
from typing import Any

from nnunet_efficient.errors import EfficientError

#: Shown on the picture and under the table: what the curve points are and are not.
CURVE_NOTE = ("Points are checkpoints kept inside one training schedule per run (the learning rate is "
              "annealed only towards the end), not separately trained budgets.")


def check_snapshot_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """Sorted, distinct fractions of the budget, each strictly between 0 and 1 (the end is always a point).

    Raises:
        EfficientError: a fraction outside (0, 1).
    """
    for fraction in fractions:
        if not 0 < fraction < 1:
            raise EfficientError(f"--snapshots: fractions of the budget must lie strictly between 0 and 1 (the end is "
                                 f"always scored), got {fraction:g}")
    return tuple(sorted(set(float(f) for f in fractions)))


def snapshot_epochs(fractions: Sequence[float], epochs: int) -> tuple[int, ...]:
    """The epochs (counted from 1) after which to keep a checkpoint: each fraction of ``epochs``, rounded.

    Epochs before the first or at the last (that is ``checkpoint_final.pth``) are dropped, duplicates merged.

    Example:
        >>> snapshot_epochs((0.25, 0.5, 0.75), 40)
        (10, 20, 30)
        >>> snapshot_epochs((0.25, 0.5, 0.75), 3)
        (1, 2)
    """
    if epochs < 2:
        return ()
    return tuple(sorted({min(epochs - 1, max(1, round(f * epochs))) for f in fractions}))


def entry_key(row: dict[str, Any]) -> str:
    """The entry of a run without its seed: runs with the same key are seeds of one entry."""
    return f"{row['trainer']}:{row['plans']}:{row['configuration']}"


def group_runs(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs by entry, in the order entries first appear."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(entry_key(row), []).append(row)
    return groups


def _mean(values: Sequence[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(numbers) if numbers else None


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """``n``, ``mean``, ``min``, ``max``, ``range`` (max − min) and sample ``std`` (None below two values).

    Example:
        >>> round(spread([0.80, 0.84])["range"], 6)
        0.04
    """
    values = [float(v) for v in values]
    return {"n": len(values), "mean": statistics.fmean(values) if values else None,
            "min": min(values, default=None), "max": max(values, default=None),
            "range": max(values) - min(values) if len(values) > 1 else None,
            "std": statistics.stdev(values) if len(values) > 1 else None}


def beyond_spread(reference: Sequence[float], other: Sequence[float]) -> bool | None:
    """Whether the means of two entries' runs differ by more than the larger min–max range of the two.

    None when neither entry has two runs (no run-to-run spread to compare with).

    Example:
        >>> beyond_spread([0.80, 0.82], [0.86, 0.87]), beyond_spread([0.80, 0.84], [0.83]), beyond_spread([0.8], [0.9])
        (True, False, None)
    """
    ranges = [r for r in (spread(reference)["range"], spread(other)["range"]) if r is not None]
    if not ranges:
        return None
    return abs(statistics.fmean(other) - statistics.fmean(reference)) > max(ranges)


def aggregate_runs(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per entry: numbers averaged over its runs (peak memory: the largest), plus the spread of mean Dice.

    Added keys: ``runs``, ``seeds`` (a list, None for an unseeded run), ``mean_dice_min``, ``mean_dice_max``,
    ``mean_dice_std``, ``mean_dice_runs`` (the runs' values) and, from the second entry on,
    ``beyond_spread`` against the first (see :func:`beyond_spread`).
    """
    aggregated = []
    for key, runs in group_runs(rows).items():
        row = dict(runs[0])
        row["entry"] = key
        for name, value in runs[0].items():
            values = [r.get(name) for r in runs]
            if isinstance(value, int | float) and not isinstance(value, bool) and name != "seed" and \
                    any(v != value for v in values):  # equal values (iterations, parameters) stay as they are
                row[name] = max(v for v in values if v is not None) if "peak" in name and any(
                    v is not None for v in values) else _mean(values)
        dice = [r["mean_dice"] for r in runs]
        summary = spread(dice)
        row.update(runs=len(runs), seeds=[r.get("seed") for r in runs], mean_dice_runs=dice,
                   mean_dice_min=summary["min"], mean_dice_max=summary["max"], mean_dice_std=summary["std"])
        aggregated.append(row)
    for row in aggregated[1:]:
        row["beyond_spread"] = beyond_spread(aggregated[0]["mean_dice_runs"], row["mean_dice_runs"])
    return aggregated


def curve_points(row: dict[str, Any], snapshots: dict[str, dict]) -> list[dict[str, Any]]:
    """A run's learning curve: its kept checkpoints' scores (``{"<iterations>": {mean_dice, dice}}``) and its end.

    ``training_minutes`` is iterations × the entry's timed seconds per step (CPU seconds on the CPU);
    ``fraction`` is the share of the run's iterations.
    """
    points = [(int(iterations), score) for iterations, score in snapshots.items()]
    points.append((int(row["iterations"]), {"mean_dice": row["mean_dice"],
                                            "dice": {k[5:]: v for k, v in row.items() if k.startswith("dice_")}}))
    curve = []
    for iterations, score in sorted(points, key=lambda p: p[0]):
        point = {"entry": entry_key(row), "run": row["entry"], "seed": row.get("seed"), "iterations": iterations,
                 "fraction": iterations / row["iterations"],
                 "training_minutes": iterations * row["train_seconds_per_iteration"] / 60,
                 "train_clock": row["train_clock"], "mean_dice": score["mean_dice"]}
        point.update({f"dice_{label}": value for label, value in score["dice"].items()})
        curve.append(point)
    return curve


def _curve_by_entry(points: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per entry, one point per number of iterations: mean, min and max over the runs that have it."""
    by_entry: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for point in points:
        by_entry.setdefault(point["entry"], {}).setdefault(point["iterations"], []).append(point)
    curves = {}
    for entry, by_iterations in by_entry.items():
        curves[entry] = []
        for iterations, runs in sorted(by_iterations.items()):
            dice = spread([p["mean_dice"] for p in runs])
            curves[entry].append({"iterations": iterations, "fraction": runs[0]["fraction"],
                                  "training_minutes": _mean([p["training_minutes"] for p in runs]),
                                  "train_clock": runs[0]["train_clock"], "runs": dice["n"], "mean_dice": dice["mean"],
                                  "min": dice["min"], "max": dice["max"]})
    return curves


def curve_markdown(points: Sequence[dict[str, Any]]) -> str:
    """The learning curves as a Markdown table: a row per entry, a column per point of its schedule.

    A cell is the mean held-out Dice over the entry's runs, its min–max when there are several,
    and where on the schedule it lies (iterations, training minutes).
    """
    curves = _curve_by_entry(points)
    width = max((len(c) for c in curves.values()), default=0)
    header = ["entry"] + [f"point {i + 1}" for i in range(width - 1)] + ["end"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * width]
    for entry, curve in curves.items():
        cells = []
        for point in curve:
            cell = f"{point['mean_dice']:.4f}"
            if point["runs"] > 1:
                cell += f" ({point['min']:.4f}–{point['max']:.4f})"
            clock = " CPU" if point["train_clock"] == "cpu" else ""
            cell += f" at {point['iterations']} it, {point['training_minutes']:.1f}{clock} min"
            cells.append(cell)
        cells = cells[:-1] + ["–"] * (width - len(cells)) + cells[-1:]
        trainer, plans, configuration = entry.split(":")
        lines.append(f"| `{trainer}` ({plans}, {configuration}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_learning_curves(points: Sequence[dict[str, Any]], path: str, title: str) -> None:
    """PNG: held-out mean Dice against training minutes, one line per entry (mean over its runs, min–max band)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from nnunet_efficient.common.files import atomic_write_bytes

    curves = _curve_by_entry(points)
    fig = Figure(figsize=(8, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for entry, curve in curves.items():
        trainer, _, configuration = entry.split(":")
        runs = max(p["runs"] for p in curve)
        label = f"{trainer} ({configuration})" + (f", {runs} seeds" if runs > 1 else "")
        x = [p["training_minutes"] for p in curve]
        (line,) = ax.plot(x, [p["mean_dice"] for p in curve], marker="o", label=label)
        if runs > 1:
            ax.fill_between(x, [p["min"] for p in curve], [p["max"] for p in curve], color=line.get_color(),
                            alpha=0.2, linewidth=0)
    clocks = {p["train_clock"] for p in points}
    ax.set_xlabel("training minutes (" + ("CPU time of the timed training step" if clocks == {"cpu"}
                                          else "timed training step") + " × iterations)")
    ax.set_ylabel("held-out mean Dice")
    ax.set_title(textwrap.fill(title, 90), fontsize=9)
    fig.text(0.5, 0.01, textwrap.fill(CURVE_NOTE + " Band: min–max over seeds.", 110), ha="center", va="bottom",
             fontsize=8, style="italic")
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
