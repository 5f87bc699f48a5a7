"""Benchmark report: per-strategy means, ratios to nnU-Net's sliding window, CSV/JSON/Markdown/PNG.

A benchmark run produces one row (a dict) per case and strategy variant::

    {
        "case": "BraTS_001",
        "strategy": "nmsw",               # "sliding_window" is the baseline
        "options": {"k": 5},              # what distinguishes variants of one strategy; may be {}
        "dice": {1: 0.91, 2: 0.84},       # per label (or region tuple); NaN = absent in both
        "mean_dice": 0.875,               # optional: NaN-skipping mean of "dice" if missing
        "region_dice": {"WT": 0.9},       # optional: Dice of label unions (benchmark --regions)
        "mean_region_dice": 0.9,          # optional: NaN-skipping mean of "region_dice" if missing
        "windows": 5,                     # windows evaluated by the network
        "macs": 3.1e12,
        "seconds": {"preprocess": 2.0, "network": 9.5, "export": 1.5},
        "total_seconds": 13.0,            # optional: sum of "seconds" if missing
        "peak_host_mib": 2100.0,
        "peak_device_mib": None,          # None off cuda
    }

Only ``case`` and ``strategy`` are required; a missing number is NaN and skipped by the means.
Ratios are "baseline over variant", so bigger is better for time, MACs and memory (10 means 10×
faster/cheaper/smaller), and the Dice difference is variant minus baseline in points (×100). They
are taken over the cases both the variant and the baseline ran, so a variant run on a subset is
compared with the baseline on that subset. Repeated rows for one case and variant are averaged
first.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from nnunet_efficient.common.files import atomic_write_bytes

BASELINE = "sliding_window"
STAGE_ORDER = ("preprocess", "network", "export")
# Scalar fields averaged per variant; ratio fields map to the scalar they compare.
_SCALARS = ("mean_dice", "mean_region_dice", "windows", "macs", "total_seconds", "peak_host_mib", "peak_device_mib")
_DICTS = ("dice", "region_dice", "seconds")
_RATIOS = {
    "time_ratio": "total_seconds",
    "mac_ratio": "macs",
    "host_memory_ratio": "peak_host_mib",
    "device_memory_ratio": "peak_device_mib",
}


def variant_label(strategy: str, options: Mapping[str, Any] | None = None) -> str:
    """Human-readable name of a strategy variant, e.g. ``"nmsw k=5"``; options sorted by name."""
    if not options:
        return strategy
    return strategy + " " + " ".join(f"{k}={options[k]}" for k in sorted(options))


def _options_key(options: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(options or {}), sort_keys=True, default=str)


def _num(value: Any) -> float:
    """A row value as float; None, missing and non-numbers become NaN so the means skip them."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _nanmean(values: Iterable[float]) -> float:
    arr = np.array(list(values), dtype=float)
    if arr.size == 0 or np.all(np.isnan(arr)):
        return math.nan
    return float(np.nanmean(arr))


def _row_scalars(row: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Validates one row and returns its numbers with the optional fields filled in."""
    for key in ("case", "strategy"):
        if key not in row:
            raise ValueError(f"Benchmark row {index} has no {key!r}; every row needs 'case' and 'strategy'.")
    dicts = {field: {k: _num(v) for k, v in dict(row.get(field) or {}).items()} for field in _DICTS}
    out: dict[str, Any] = {k: _num(row.get(k)) for k in _SCALARS}
    for mean, field in (("mean_dice", "dice"), ("mean_region_dice", "region_dice")):
        if math.isnan(out[mean]) and dicts[field]:
            out[mean] = _nanmean(dicts[field].values())
    if math.isnan(out["total_seconds"]) and dicts["seconds"]:
        out["total_seconds"] = float(sum(v for v in dicts["seconds"].values() if not math.isnan(v)))
    out.update(dicts)
    return out


def _mean_records(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """NaN-skipping mean of scalar fields and of the per-label/per-stage dicts."""
    out: dict[str, Any] = {k: _nanmean(r[k] for r in records) for k in _SCALARS}
    for field in _DICTS:
        keys: list[Any] = []
        for r in records:
            keys += [k for k in r[field] if k not in keys]
        out[field] = {k: _nanmean(r[field].get(k, math.nan) for r in records) for k in keys}
    return out


def _ratio(base: float, value: float) -> float:
    if math.isnan(base) or math.isnan(value) or value <= 0:
        return math.nan
    return base / value


def summarize(rows: Sequence[Mapping[str, Any]], baseline: str = BASELINE,
              baseline_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per-variant means and ratios to the baseline variant.

    Args:
        rows: One dict per case and variant (see the module docstring).
        baseline: Strategy name of the baseline.
        baseline_options: Options of the baseline variant; needed only when the baseline strategy
            was run with several option sets (e.g. with and without mirroring).

    Returns:
        One dict per variant, in order of first appearance: ``strategy``, ``options``, ``label``,
        ``is_baseline``, ``n_cases``, means (``mean_dice``, ``dice`` per label, ``windows``,
        ``macs``, ``seconds`` per stage, ``total_seconds``, ``peak_host_mib``,
        ``peak_device_mib``), and over the ``n_cases_compared`` cases shared with the baseline:
        ``time_ratio``, ``mac_ratio``, ``host_memory_ratio``, ``device_memory_ratio`` (baseline /
        variant) and ``dice_diff_points`` (100 × (variant − baseline) mean Dice). Ratios are NaN
        without a baseline or shared cases.

    Raises:
        ValueError: A row lacks ``case``/``strategy``, or the baseline variant is ambiguous or
            not among the rows while ``baseline_options`` was given.
    """
    # variant key -> case -> list of per-row records; dicts keep first-appearance order.
    variants: dict[tuple[str, str], dict[str, Any]] = {}
    for i, row in enumerate(rows):
        record = _row_scalars(row, i)
        key = (str(row["strategy"]), _options_key(row.get("options")))
        entry = variants.setdefault(key, {"strategy": row["strategy"], "options": dict(row.get("options") or {}),
                                          "cases": {}})
        entry["cases"].setdefault(str(row["case"]), []).append(record)
    for entry in variants.values():
        entry["per_case"] = {case: _mean_records(recs) for case, recs in entry["cases"].items()}

    base_keys = [k for k in variants if k[0] == baseline]
    if baseline_options is not None:
        base_keys = [k for k in base_keys if k[1] == _options_key(baseline_options)]
        if not base_keys:
            raise ValueError(f"No {baseline!r} rows with options {dict(baseline_options)}; the baseline must be "
                             "among the benchmark rows.")
    if len(base_keys) > 1:
        choices = "; ".join(k[1] for k in base_keys)
        raise ValueError(f"Several {baseline!r} variants ({choices}); pass baseline_options to choose one.")
    base = variants[base_keys[0]]["per_case"] if base_keys else {}

    summary = []
    for key, entry in variants.items():
        per_case = entry["per_case"]
        out: dict[str, Any] = {
            "strategy": entry["strategy"],
            "options": entry["options"],
            "label": variant_label(entry["strategy"], entry["options"]),
            "is_baseline": bool(base_keys) and key == base_keys[0],
            "n_cases": len(per_case),
        }
        out.update(_mean_records(list(per_case.values())))
        shared = [c for c in per_case if c in base]
        mine = _mean_records([per_case[c] for c in shared]) if shared else None
        theirs = _mean_records([base[c] for c in shared]) if shared else None
        out["n_cases_compared"] = len(shared)
        for name, field in _RATIOS.items():
            out[name] = _ratio(theirs[field], mine[field]) if shared else math.nan
        out["dice_diff_points"] = 100.0 * (mine["mean_dice"] - theirs["mean_dice"]) if shared else math.nan
        out["region_dice_diff_points"] = (100.0 * (mine["mean_region_dice"] - theirs["mean_region_dice"])
                                          if shared else math.nan)
        summary.append(out)
    return summary


def pareto_front(seconds: Sequence[float], dice: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats in both time and Dice, fastest first.

    A point is on the front when every faster-or-equal point has lower Dice. NaN points are never
    on it.

    Args:
        seconds: Mean wall time per point, seconds.
        dice: Mean Dice per point, same length.

    Returns:
        Indices into the inputs, sorted by increasing seconds.
    """
    order = sorted((i for i in range(len(seconds)) if not (math.isnan(seconds[i]) or math.isnan(dice[i]))),
                   key=lambda i: (seconds[i], -dice[i]))
    front, best = [], -math.inf
    for i in order:
        if dice[i] > best:
            front.append(i)
            best = dice[i]
    return front


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    v = _num(value)
    return "–" if math.isnan(v) else format(v, spec) + suffix


def markdown_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """GitHub Markdown table, one row per variant of ``summarize``'s output.

    Returns:
        The table as a string ending in a newline; "–" marks a value that is missing or has no
        baseline to compare with.
    """
    # region columns (benchmark --regions) only when some variant has region Dice
    regions: list[Any] = []
    for s in summary:
        regions += [k for k in s.get("region_dice") or {} if k not in regions]
    header = ["Strategy", "Options", "Cases", "Mean Dice", "ΔDice (pts)"]
    if regions:
        header += [f"{r} Dice" for r in regions] + ["Mean region Dice", "ΔRegion (pts)"]
    header += ["Time (s)", "Speed-up", "GMACs", "MAC ratio", "Host MiB", "Host mem ratio", "Device MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for s in summary:
        options = " ".join(f"{k}={v}" for k, v in sorted(s["options"].items())) or "–"
        name = s["strategy"] + (" (baseline)" if s.get("is_baseline") else "")
        cells = [name, options, str(s["n_cases"]), _fmt(s["mean_dice"], ".4f"), _fmt(s["dice_diff_points"], "+.2f")]
        if regions:
            cells += [_fmt((s.get("region_dice") or {}).get(r), ".4f") for r in regions]
            cells += [_fmt(s.get("mean_region_dice"), ".4f"), _fmt(s.get("region_dice_diff_points"), "+.2f")]
        cells += [
            _fmt(s["total_seconds"], ".2f"), _fmt(s["time_ratio"], ".2f", "×"), _fmt(_num(s["macs"]) / 1e9, ".1f"),
            _fmt(s["mac_ratio"], ".2f", "×"), _fmt(s["peak_host_mib"], ".0f"),
            _fmt(s["host_memory_ratio"], ".2f", "×"), _fmt(s["peak_device_mib"], ".0f"),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _jsonable(obj: Any) -> Any:
    """Plain-JSON copy: NaN/inf -> null (JSON has no NaN), tuple keys -> "(1, 2)" as nnU-Net writes them."""
    if isinstance(obj, Mapping):
        return {k if isinstance(k, str) else str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _flatten(record: Mapping[str, Any]) -> dict[str, Any]:
    """One CSV row: nested dice/seconds become ``dice_<label>``/``seconds_<stage>``, options JSON."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if key == "options":
            flat[key] = _options_key(value)
        elif isinstance(value, Mapping):
            for sub, v in value.items():
                flat[f"{key}_{sub}"] = v
        else:
            flat[key] = value
    return flat


def _csv_cell(value: Any) -> Any:
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return ""
    return value


def write_csv(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Writes rows or ``summarize`` output as CSV, atomically; NaN/None are empty cells.

    Columns are the union of the records' (flattened) keys in first-appearance order, so rows with
    different labels or stages share one header.
    """
    flat = [_flatten(r) for r in records]
    columns: list[str] = []
    for r in flat:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in flat:
        writer.writerow({k: _csv_cell(r.get(k)) for k in columns})
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def write_json(rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]],
               path: str | os.PathLike) -> None:
    """Writes ``{"summary": [...], "rows": [...]}`` as strict JSON (NaN as null), atomically."""
    text = json.dumps(_jsonable({"summary": list(summary), "rows": list(rows)}), indent=2, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def write_markdown(summary: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Writes ``markdown_table(summary)`` atomically."""
    atomic_write_bytes(path, markdown_table(summary).encode("utf-8"))


def plot_pareto(summary: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                title: str = "Dice vs wall time") -> None:
    """Writes a PNG: mean Dice against mean seconds (log x), one labelled point per variant, Pareto front.

    Variants without a positive time or a Dice are left out of the plot (log axis, nothing to place).
    """
    # The object API with the Agg canvas needs no pyplot state and never switches the global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = [s for s in summary if _num(s["total_seconds"]) > 0 and not math.isnan(_num(s["mean_dice"]))]
    fig = Figure(figsize=(7, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    secs = [_num(s["total_seconds"]) for s in points]
    dice = [_num(s["mean_dice"]) for s in points]
    front = pareto_front(secs, dice)
    if len(front) > 1:
        # A staircase: each front point is attainable up to the next faster-and-better one.
        ax.plot([secs[i] for i in front], [dice[i] for i in front], drawstyle="steps-post", color="0.6",
                linestyle="--", zorder=1, label="Pareto front")
    for s, x, y in zip(points, secs, dice, strict=True):
        ax.scatter([x], [y], marker="s" if s.get("is_baseline") else "o", s=40, zorder=2)
        ax.annotate(s["label"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if points:
        ax.set_xscale("log")
    ax.set_xlabel("mean wall time per case (s, log)")
    ax.set_ylabel("mean Dice")
    # long titles (dataset, budget, images) wrap instead of running off the figure
    ax.set_title(textwrap.fill(title, 80), **({"fontsize": 9} if len(title) > 80 else {}))
    ax.grid(True, which="both", alpha=0.3)
    if len(front) > 1:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def write_report(rows: Sequence[Mapping[str, Any]], folder: str | os.PathLike, stem: str = "benchmark",
                 baseline: str = BASELINE, baseline_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Summarises ``rows`` and writes every report file into ``folder``.

    Args:
        rows: One dict per case and variant (see the module docstring).
        folder: Output folder, created if missing.
        stem: File name prefix.
        baseline: Strategy name of the baseline.
        baseline_options: Options of the baseline variant, if the baseline has several.

    Returns:
        Paths by kind: ``cases_csv`` (one line per row), ``summary_csv``, ``json``, ``markdown``,
        ``pareto_png``.
    """
    summary = summarize(rows, baseline=baseline, baseline_options=baseline_options)
    folder = os.fspath(folder)
    paths = {
        "cases_csv": os.path.join(folder, f"{stem}_cases.csv"),
        "summary_csv": os.path.join(folder, f"{stem}_summary.csv"),
        "json": os.path.join(folder, f"{stem}.json"),
        "markdown": os.path.join(folder, f"{stem}.md"),
        "pareto_png": os.path.join(folder, f"{stem}_pareto.png"),
    }
    write_csv(rows, paths["cases_csv"])
    write_csv(summary, paths["summary_csv"])
    write_json(rows, summary, paths["json"])
    write_markdown(summary, paths["markdown"])
    plot_pareto(summary, paths["pareto_png"])
    return paths
