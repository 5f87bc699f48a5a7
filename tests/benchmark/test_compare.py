"""``compare``'s pieces that need no training: entries, seeds, budgets, snapshots, the table and the curves."""

from __future__ import annotations

import csv

import pytest
import torch

from nnunet_efficient.benchmark.compare import (
    Budget,
    Entry,
    epoch_seconds,
    expand_seeds,
    markdown_table,
    schedule_trainer_name,
    write_compare_report,
)
from nnunet_efficient.benchmark.curves import (
    aggregate_runs,
    beyond_spread,
    check_snapshot_fractions,
    curve_markdown,
    curve_points,
    snapshot_epochs,
    spread,
)
from nnunet_efficient.errors import EfficientError


def test_entry_defaults_and_label():
    entry = Entry.parse("nnUNetTrainerUXNet:nnUNetPlansUXNetCPU")
    assert (entry.trainer, entry.plans, entry.configuration) == ("nnUNetTrainerUXNet", "nnUNetPlansUXNetCPU",
                                                                 "3d_fullres")
    assert Entry.parse("nnUNetTrainer").label == "nnUNetTrainer:nnUNetPlans:3d_fullres"


@pytest.mark.parametrize("spec", ["", "a::b", "a:b:c:d", "nnUNetTrainer_5epochs", "a@", "a@x", "a@-1", "a@1.5",
                                  "a:b@1:c"])
def test_bad_entries_are_refused(spec):
    with pytest.raises(EfficientError, match="entry"):
        Entry.parse(spec)


def test_entry_seed_is_part_of_the_run_not_of_the_entry():
    entry = Entry.parse("nnUNetTrainer:nnUNetPlansCPU@1")
    assert (entry.trainer, entry.plans, entry.seed) == ("nnUNetTrainer", "nnUNetPlansCPU", 1)
    assert entry.label == "nnUNetTrainer:nnUNetPlansCPU:3d_fullres@1"
    assert entry.base == Entry.parse("nnUNetTrainer:nnUNetPlansCPU") != entry
    assert Entry.parse("T:P:3d_lowres@0").configuration == "3d_lowres"


def test_seeds_expand_unseeded_entries_only():
    runs = expand_seeds([Entry("A"), Entry("B", seed=5)], 3)
    assert [(r.trainer, r.seed) for r in runs] == [("A", 0), ("A", 1), ("A", 2), ("B", 5)]
    assert expand_seeds([Entry("A")], None) == [Entry("A")]
    with pytest.raises(EfficientError, match="--seeds"):
        expand_seeds([Entry("A")], 0)


def test_schedule_names_carry_seed_and_kept_epochs():
    assert schedule_trainer_name(Entry("nnUNetTrainer", seed=2), 40, 50, (10, 20, 30)) == \
        "nnUNetTrainer_40epochs_50iters_seed2_keep10-20-30"


@pytest.mark.parametrize("fractions, epochs, expected", [
    ((0.25, 0.5, 0.75), 40, (10, 20, 30)),
    ((0.25, 0.5, 0.75), 10, (2, 5, 8)),     # rounded to whole epochs (2.5 -> 2, 7.5 -> 8: Python's rounding)
    ((0.25, 0.5, 0.75), 2, (1,)),           # all round onto the one epoch before the end
    ((0.1,), 4, (1,)),                      # never before the first epoch
    ((0.99,), 4, (3,)),                     # never the last: that is checkpoint_final.pth
    ((0.5,), 1, ()),                        # one epoch: only the end
    ((), 40, ()),
])
def test_snapshot_epochs_from_fractions_of_the_schedule(fractions, epochs, expected):
    assert snapshot_epochs(fractions, epochs) == expected


@pytest.mark.parametrize("fractions", [(0.0,), (1.0,), (0.5, 1.5), (-0.2,)])
def test_snapshot_fractions_outside_0_1_are_refused(fractions):
    with pytest.raises(EfficientError, match="--snapshots"):
        check_snapshot_fractions(fractions)


def test_snapshot_fractions_are_sorted_and_distinct():
    assert check_snapshot_fractions([0.75, 0.25, 0.25]) == (0.25, 0.75)


def test_spread_of_runs():
    s = spread([0.80, 0.86, 0.83])
    assert (s["n"], s["min"], s["max"]) == (3, 0.80, 0.86)
    assert s["mean"] == pytest.approx(0.83) and s["range"] == pytest.approx(0.06) and s["std"] == pytest.approx(0.03)
    assert spread([0.8])["range"] is None and spread([0.8])["std"] is None


@pytest.mark.parametrize("reference, other, expected", [
    ([0.80, 0.82], [0.86, 0.87], True),    # means 5.5 points apart, ranges 2 and 1 points
    ([0.80, 0.84], [0.83, 0.84], False),   # 1.5 points apart, a 4-point range
    ([0.80, 0.86], [0.84, 0.85], False),   # 1.5 points apart, a 6-point range
    ([0.80, 0.82], [0.85], True),          # one run on one side: the other's range decides (4 > 2)
    ([0.80, 0.84], [0.85], False),         # 3 < 4
    ([0.80], [0.90], None),                # no run-to-run spread known
])
def test_difference_beyond_run_to_run_spread(reference, other, expected):
    assert beyond_spread(reference, other) is expected


def test_iteration_budget_rounds_up_to_whole_epochs():
    budget = Budget(iterations=120, iterations_per_epoch=50)
    assert budget.epochs() == 3
    assert schedule_trainer_name(Entry("nnUNetTrainerUXNet"), budget.epochs(), 50) == \
        "nnUNetTrainerUXNet_3epochs_50iters"


def test_minutes_budget_gives_cheaper_networks_more_epochs():
    budget = Budget(minutes=30, iterations_per_epoch=50)
    assert budget.epochs(2.0) == 18  # 1800 s / 2 s = 900 iterations = 18 epochs
    assert budget.epochs(6.0) == 6
    assert budget.epochs(1e6) == 1  # never zero epochs
    assert budget.key != Budget(minutes=20).key


@pytest.mark.parametrize("kwargs", [{}, {"iterations": 5, "minutes": 1}, {"iterations": 0}, {"minutes": -1},
                                    {"iterations": 5, "iterations_per_epoch": 0}])
def test_bad_budgets_are_refused(kwargs):
    with pytest.raises(EfficientError):
        Budget(**kwargs)


def _row(trainer: str, mean: float, seed: int | None = None) -> dict:
    return {"entry": f"{trainer}:P:3d_fullres" + ("" if seed is None else f"@{seed}"), "trainer": trainer,
            "seed": seed, "plans": "P", "configuration": "3d_fullres",
            "budget": "b", "schedule": f"{trainer}_2epochs_5iters", "iterations": 10, "parameters": 1_500_000,
            "gmacs_per_window": 4.8, "patch_size": "40x56x40", "batch_size": 2,
            "train_seconds_per_iteration": 2.5, "train_clock": "cpu", "train_wall_seconds_per_iteration": 2.6,
            "training_minutes": 31.0, "training_peak_host_mib": 1500.0, "predict_seconds_per_case": 1.2,
            "network_passes_per_case": 1.0, "predict_gmacs_per_case": 4.8, "predict_peak_host_mib": 900.0,
            "predict_peak_device_mib": None, "n_cases": 4, "mean_dice": mean, "dice_1": mean, "dice_2": mean}


def test_markdown_table_has_one_line_per_entry_and_the_dice_difference():
    table = markdown_table([_row("nnUNetTrainer", 0.85), _row("nnUNetTrainerUXNet", 0.8412)])
    lines = table.strip().splitlines()
    assert len(lines) == 4
    assert "Dice 1" in lines[0] and "Dice 2" in lines[0]
    assert "| +0.00 |" in lines[2] and "| -0.88 |" in lines[3]
    assert "1.50" in lines[3] and "2.500 (CPU)" in lines[3]


def test_report_files(tmp_path):
    rows = [_row("nnUNetTrainer", 0.85), _row("nnUNetTrainerUXNet", 0.84)]
    paths = write_compare_report(rows, str(tmp_path), "# test")
    with open(paths["csv"]) as f:
        assert [r["trainer"] for r in csv.DictReader(f)] == ["nnUNetTrainer", "nnUNetTrainerUXNet"]
    assert open(paths["markdown"]).read().startswith("# test\n")
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_epoch_seconds_add_up_nnunet_epoch_times_over_resumed_runs(tmp_path):
    # nnU-Net's checkpoint logging as a run resumed with --c leaves it: one start and end per epoch
    logging = {"epoch_start_timestamps": [100.0, 160.0, 5000.0], "epoch_end_timestamps": [150.0, 230.0, 5030.0]}
    torch.save({"network_weights": {}, "logging": logging}, tmp_path / "checkpoint_final.pth")
    assert epoch_seconds(str(tmp_path)) == pytest.approx(150.0)
    torch.save({"network_weights": {}}, tmp_path / "checkpoint_final.pth")
    assert epoch_seconds(str(tmp_path)) is None


def test_markdown_table_gives_mean_and_spread_of_seeds():
    rows = [_row("nnUNetTrainer", 0.80, 0), _row("nnUNetTrainer", 0.84, 1), _row("nnUNetTrainerUXNet", 0.90, 0),
            _row("nnUNetTrainerUXNet", 0.91, 1), _row("nnUNetTrainerRepUXNet", 0.83)]
    rows[1]["training_peak_host_mib"] = 1700.0
    lines = markdown_table(rows).strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:5]]
    assert [t["runs"] for t in table] == ["2 (seeds 0, 1)", "2 (seeds 0, 1)", "1"]
    assert [t["mean Dice"] for t in table] == ["0.8200", "0.9050", "0.8300"]
    assert [t["min–max"] for t in table] == ["0.8000–0.8400", "0.9000–0.9100", "–"]
    assert [t["Δ pts"] for t in table] == ["+0.00", "+8.50", "+1.00"]
    assert [t["Δ beyond spread"] for t in table] == ["–", "yes", "no"]  # 8.5 > 4 points; 1 < 4
    assert table[0]["peak train MiB"] == "1700"  # the larger of the two runs
    assert lines[-1].startswith("Runs of one entry differ only in their seed")


def test_single_runs_keep_the_table_without_spread_columns():
    header = markdown_table([_row("A", 0.8), _row("B", 0.7)]).splitlines()[0]
    assert "runs" not in header and "min–max" not in header and "spread" not in header


def test_curve_points_put_snapshots_before_the_end_in_training_minutes():
    row = _row("nnUNetTrainer", 0.85, seed=1)  # 10 iterations at 2.5 CPU s each
    points = curve_points(row, {"5": {"n_cases": 4, "mean_dice": 0.4, "dice": {"1": 0.3, "2": 0.5}}})
    assert [(p["iterations"], p["fraction"], p["mean_dice"]) for p in points] == [(5, 0.5, 0.4), (10, 1.0, 0.85)]
    assert [p["training_minutes"] for p in points] == pytest.approx([5 * 2.5 / 60, 10 * 2.5 / 60])
    assert points[0]["dice_2"] == 0.5 and points[1]["dice_1"] == 0.85
    assert {p["entry"] for p in points} == {"nnUNetTrainer:P:3d_fullres"} and points[0]["seed"] == 1


def test_curve_table_and_picture(tmp_path):
    runs = [_row("nnUNetTrainer", 0.85, 0), _row("nnUNetTrainer", 0.75, 1), _row("nnUNetTrainerUXNet", 0.80)]
    curve = []
    for row, early in zip(runs, (0.30, 0.50, 0.60)):
        curve += curve_points(row, {"5": {"n_cases": 4, "mean_dice": early, "dice": {"1": early, "2": early}}})
    table = curve_markdown(curve).strip().splitlines()
    assert table[0] == "| entry | point 1 | end |"
    assert "0.4000 (0.3000–0.5000) at 5 it, 0.2 CPU min" in table[2] and "0.8000 (0.7500–0.8500)" in table[2]
    assert "| 0.6000 at 5 it" in table[3]
    paths = write_compare_report(runs, str(tmp_path), "# test", curve)
    with open(paths["curve_csv"]) as f:
        assert [(r["run"], r["iterations"]) for r in csv.DictReader(f)] == [
            ("nnUNetTrainer:P:3d_fullres@0", "5"), ("nnUNetTrainer:P:3d_fullres@0", "10"),
            ("nnUNetTrainer:P:3d_fullres@1", "5"), ("nnUNetTrainer:P:3d_fullres@1", "10"),
            ("nnUNetTrainerUXNet:P:3d_fullres", "5"), ("nnUNetTrainerUXNet:P:3d_fullres", "10")]
    assert open(paths["curve_png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    markdown = open(paths["markdown"]).read()
    assert "## Learning curves" in markdown and "not separately trained budgets" in markdown
    assert [r["entry"] for r in aggregate_runs(runs)] == ["nnUNetTrainer:P:3d_fullres",
                                                           "nnUNetTrainerUXNet:P:3d_fullres"]
