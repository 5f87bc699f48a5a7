import csv
import json
import math
import os

import pytest

from nnunet_efficient.benchmark.report import (
    markdown_table,
    pareto_front,
    plot_pareto,
    summarize,
    variant_label,
    write_csv,
    write_report,
)

NAN = float("nan")


def row(case, strategy, options, dice, seconds, macs, host, windows=1, device=None):
    return {"case": case, "strategy": strategy, "options": options, "dice": dice, "windows": windows,
            "macs": macs, "seconds": seconds, "peak_host_mib": host, "peak_device_mib": device}


def hand_rows():
    # Baseline means over cases a, b: 80 s, 800 MACs, 300 MiB, Dice (0.85 + 0.7) / 2 = 0.775.
    # nmsw k=5 means: 8 s, 40 MACs, 75 MiB, Dice 0.765 -> 10×, 20×, 4×, −1 point.
    # nmsw k=10 ran case a only, so it is compared with the baseline on a: 100/20, 1000/100, 400/160.
    return [
        row("a", "sliding_window", {}, {1: 0.9, 2: 0.8}, {"preprocess": 10, "network": 80, "export": 10}, 1000, 400,
            windows=12),
        row("b", "sliding_window", {}, {1: 0.7, 2: NAN}, {"preprocess": 5, "network": 50, "export": 5}, 600, 200,
            windows=8),
        row("a", "nmsw", {"k": 5}, {1: 0.88, 2: 0.8}, {"preprocess": 2, "network": 6, "export": 2}, 50, 100, windows=5),
        row("b", "nmsw", {"k": 5}, {1: 0.69, 2: NAN}, {"preprocess": 1, "network": 4, "export": 1}, 30, 50, windows=5),
        row("a", "nmsw", {"k": 10}, {1: 0.9, 2: 0.8}, {"preprocess": 2, "network": 16, "export": 2}, 100, 160,
            windows=10),
    ]


def by_label(summary):
    return {s["label"]: s for s in summary}


def test_variant_label_sorts_options():
    assert variant_label("nmsw", {"tta": False, "k": 5}) == "nmsw k=5 tta=False"
    assert variant_label("sliding_window", {}) == "sliding_window"


def test_summary_ratios_on_hand_made_rows():
    s = by_label(summarize(hand_rows()))
    assert list(s) == ["sliding_window", "nmsw k=5", "nmsw k=10"]

    sw = s["sliding_window"]
    assert sw["is_baseline"] and sw["n_cases"] == 2
    assert sw["total_seconds"] == 80 and sw["macs"] == 800 and sw["peak_host_mib"] == 300
    assert sw["mean_dice"] == pytest.approx(0.775)
    assert sw["dice"] == {1: pytest.approx(0.8), 2: pytest.approx(0.8)}  # NaN skipped for label 2
    assert sw["seconds"] == {"preprocess": 7.5, "network": 65, "export": 7.5}
    assert sw["time_ratio"] == 1 and sw["dice_diff_points"] == 0

    k5 = s["nmsw k=5"]
    assert not k5["is_baseline"]
    assert k5["time_ratio"] == pytest.approx(10)
    assert k5["mac_ratio"] == pytest.approx(20)
    assert k5["host_memory_ratio"] == pytest.approx(4)
    assert k5["dice_diff_points"] == pytest.approx(-1.0)
    assert k5["windows"] == 5
    assert math.isnan(k5["device_memory_ratio"])

    k10 = s["nmsw k=10"]
    assert k10["n_cases"] == 1 and k10["n_cases_compared"] == 1
    assert k10["time_ratio"] == pytest.approx(5)
    assert k10["mac_ratio"] == pytest.approx(10)
    assert k10["host_memory_ratio"] == pytest.approx(2.5)
    assert k10["dice_diff_points"] == pytest.approx(0.0)


def test_repeated_rows_are_averaged_per_case():
    rows = hand_rows() + [row("a", "nmsw", {"k": 10}, {1: 0.9, 2: 0.8}, {"network": 30}, 100, 160)]
    k10 = by_label(summarize(rows))["nmsw k=10"]
    assert k10["total_seconds"] == 25
    assert k10["time_ratio"] == pytest.approx(4)


def test_explicit_mean_dice_and_total_seconds_win_over_derived_ones():
    rows = [dict(hand_rows()[0], mean_dice=0.5, total_seconds=1.0)]
    s = summarize(rows)[0]
    assert s["mean_dice"] == 0.5 and s["total_seconds"] == 1.0


def test_no_baseline_gives_nan_ratios():
    s = summarize([r for r in hand_rows() if r["strategy"] != "sliding_window"])
    assert all(math.isnan(x["time_ratio"]) and not x["is_baseline"] for x in s)


def test_ambiguous_baseline_must_be_chosen():
    rows = hand_rows() + [row("a", "sliding_window", {"tta": True}, {1: 0.9}, {"network": 800}, 8000, 400)]
    with pytest.raises(ValueError, match="baseline_options"):
        summarize(rows)
    k5 = by_label(summarize(rows, baseline_options={"tta": True}))["nmsw k=5"]
    assert k5["n_cases_compared"] == 1 and k5["time_ratio"] == pytest.approx(80)
    with pytest.raises(ValueError, match="baseline"):
        summarize(rows, baseline_options={"tta": "maybe"})


def test_row_without_strategy_is_rejected():
    with pytest.raises(ValueError, match="row 1 .*'strategy'"):
        summarize([hand_rows()[0], {"case": "a"}])


def test_pareto_front_on_hand_made_points():
    seconds = [100, 10, 20, 5, 50, NAN]
    dice = [0.80, 0.78, 0.77, 0.70, 0.80, 0.99]
    # 20 s is beaten by 10 s (faster and better); 100 s ties 50 s on Dice but is slower.
    assert pareto_front(seconds, dice) == [3, 1, 4]


def test_markdown_table_has_one_row_per_variant():
    table = markdown_table(summarize(hand_rows()))
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 3
    assert "sliding_window (baseline)" in lines[2]
    assert "10.00×" in lines[3] and "20.00×" in lines[3] and "-1.00" in lines[3]
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_pareto_png_is_a_valid_png(tmp_path):
    path = tmp_path / "pareto.png"
    plot_pareto(summarize(hand_rows()), path)
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pareto.png"]  # no temporary left behind


def test_write_report_files(tmp_path):
    rows = hand_rows()
    paths = write_report(rows, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(p) for p in paths.values())

    with open(paths["cases_csv"]) as f:
        cases = list(csv.DictReader(f))
    assert len(cases) == len(rows)
    assert cases[1]["dice_2"] == "" and cases[0]["dice_1"] == "0.9" and cases[2]["options"] == '{"k": 5}'

    with open(paths["summary_csv"]) as f:
        summary = list(csv.DictReader(f))
    assert [float(r["time_ratio"]) for r in summary] == pytest.approx([1, 10, 5])

    with open(paths["json"]) as f:
        data = json.load(f)  # strict: the NaN Dice must have become null
    assert data["rows"][1]["dice"] == {"1": 0.7, "2": None}
    assert data["summary"][1]["mac_ratio"] == pytest.approx(20)

    assert open(paths["markdown"]).read() == markdown_table(summarize(rows))


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "rows.csv"
    write_csv(hand_rows(), path)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_csv(hand_rows()[:1], path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["rows.csv"]
