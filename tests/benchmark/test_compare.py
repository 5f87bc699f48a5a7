"""``compare``'s pieces that need no training: entries, budgets, the table."""

from __future__ import annotations

import csv

import pytest
import torch

from nnunet_efficient.benchmark.compare import (
    Budget,
    Entry,
    epoch_seconds,
    markdown_table,
    schedule_trainer_name,
    write_compare_report,
)
from nnunet_efficient.errors import EfficientError


def test_entry_defaults_and_label():
    entry = Entry.parse("nnUNetTrainerUXNet:nnUNetPlansUXNetCPU")
    assert (entry.trainer, entry.plans, entry.configuration) == ("nnUNetTrainerUXNet", "nnUNetPlansUXNetCPU",
                                                                 "3d_fullres")
    assert Entry.parse("nnUNetTrainer").label == "nnUNetTrainer:nnUNetPlans:3d_fullres"


@pytest.mark.parametrize("spec", ["", "a::b", "a:b:c:d", "nnUNetTrainer_5epochs"])
def test_bad_entries_are_refused(spec):
    with pytest.raises(EfficientError, match="entry"):
        Entry.parse(spec)


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


def _row(trainer: str, mean: float) -> dict:
    return {"entry": f"{trainer}:P:3d_fullres", "trainer": trainer, "plans": "P", "configuration": "3d_fullres",
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
