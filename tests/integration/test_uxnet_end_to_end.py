"""RepUX-Net and UX-Net through the real commands on real Hippocampus cases (../shared/data).

Eight training cases and two held-out ones are linked into a temporary dataset: plugin planner,
stock ``nnUNetv2_train`` for a few iterations, stock ``nnUNetv2_predict`` and the plugin's
``predict``; then ``compare`` on a tiny budget that keeps one checkpoint half way (a two-point learning
curve), rerun to see it resume without retraining, and continued after a simulated stop mid-training. The
networks are barely trained: these tests check wiring (plans, checkpoints, geometry, resumption),
not quality; ``scripts/compare_evidence.sh`` measures quality.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import hippocampus_workspace, label_agreement, predict_held_out
from conftest import run_command as run

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
DATASET = "Dataset991_HippocampusTiny"
REPUX_TRAINER = "nnUNetTrainerRepUXNet_1epochs_2iters"



@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    work = tmp_path_factory.mktemp("uxnet")
    raw, env = hippocampus_workspace(work, DATASET, 8, 2)
    return work, raw, env


@pytest.fixture(scope="module")
def repux_model(workspace):
    work, _, env = workspace
    run([BIN / "nnunet-efficient", "plan_and_preprocess", "-d", "991", "-pl", "nnUNetPlannerRepUXNetCPU", "-c",
         "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar"], env, work / "plan.log")
    run([BIN / "nnUNetv2_train", "991", "3d_fullres", "0", "-p", "nnUNetPlansRepUXNetCPU", "-tr", REPUX_TRAINER,
         "-device", "cpu"], env, work / "train.log")
    return work / "res" / DATASET / f"{REPUX_TRAINER}__nnUNetPlansRepUXNetCPU__3d_fullres"


def test_planner_writes_repuxnet_into_the_plans(workspace, repux_model):
    work, _, _ = workspace
    plans = json.loads((work / "pre" / DATASET / "nnUNetPlansRepUXNetCPU.json").read_text())
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    assert architecture["network_class_name"] == "nnunet_efficient.networks.uxnet.RepUXNet"
    kwargs = architecture["arch_kwargs"]
    assert kwargs["kernel_size"] == 21 and kwargs["patch_size"] == plans["configurations"]["3d_fullres"]["patch_size"]
    assert kwargs["features_per_stage"][0] == 16


def test_stock_training_writes_an_unfolded_checkpoint(repux_model):
    checkpoint = torch.load(repux_model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == REPUX_TRAINER
    folded = [k for k in checkpoint["network_weights"] if k.endswith("dwconv.folded")]
    assert folded and not any(bool(checkpoint["network_weights"][k]) for k in folded)
    assert (repux_model / "fold_0" / "validation" / "summary.json").is_file()


@pytest.mark.parametrize("command", ["stock", "sliding_window", "sparse"])
def test_prediction_with_stock_and_plugin_commands(workspace, repux_model, command):
    work, raw, env = workspace
    if command == "stock":
        predict_held_out(work, raw, env, command, stock=["-d", "991", "-p", "nnUNetPlansRepUXNetCPU", "-tr",
                                                         REPUX_TRAINER, "-c", "3d_fullres"])
    else:
        predict_held_out(work, raw, env, command, plugin=["-m", repux_model, "--strategy", command])


def test_plugin_prediction_with_folded_kernels_equals_stock_unfolded(workspace, repux_model):
    work, _, _ = workspace
    assert label_agreement(work / "pred_stock", work / "pred_sliding_window") >= 0.9999


def test_compare_writes_its_table_and_curve_and_resumes_without_retraining(workspace):
    work, raw, env = workspace
    # one seeded run of 2 epochs of 1 iteration, a checkpoint kept half way: the curve has two points
    command = [BIN / "nnunet-efficient", "compare", "-d", "991", "-e", "nnUNetTrainerUXNet:nnUNetPlansUXNetCPU@0",
               "--iterations", "2", "--iterations_per_epoch", "1", "--snapshots", "0.5", "--timing_iterations", "1",
               "-f", "0", "-i", raw / "imagesTs", "-ref", raw / "labelsTs", "-o", work / "compare", "--disable_tta"]
    schedule = "nnUNetTrainerUXNet_2epochs_1iters_seed0_keep1"
    first = run(command, env, work / "compare1.log")
    assert first.returncode == 0
    with open(work / "compare" / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["trainer"] for r in rows] == ["nnUNetTrainerUXNet"]
    row = rows[0]
    assert row["schedule"] == schedule and row["seed"] == "0" and int(row["n_cases"]) == 2
    assert float(row["gmacs_per_window"]) > 0 and float(row["train_seconds_per_iteration"]) > 0
    assert 0 <= float(row["mean_dice"]) <= 1 and int(row["parameters"]) > 0
    assert float(row["training_minutes"]) > 0  # nnU-Net's epoch times, read back from the checkpoint
    assert (work / "compare" / "compare.png").stat().st_size > 0
    fold = work / "res" / DATASET / f"{schedule}__nnUNetPlansUXNetCPU__3d_fullres" / "fold_0"
    checkpoint, kept = fold / "checkpoint_final.pth", fold / "checkpoint_at_1iters.pth"
    assert torch.load(kept, map_location="cpu", weights_only=False)["current_epoch"] == 1
    with open(work / "compare" / "compare_curve.csv") as f:
        curve = list(csv.DictReader(f))
    assert [(p["iterations"], float(p["fraction"])) for p in curve] == [("1", 0.5), ("2", 1.0)]
    assert curve[1]["mean_dice"] == row["mean_dice"] and 0 <= float(curve[0]["mean_dice"]) <= 1
    assert float(curve[1]["training_minutes"]) == pytest.approx(2 * float(curve[0]["training_minutes"]))
    assert (work / "compare" / "compare_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Learning curves" in (work / "compare" / "compare.md").read_text()
    stamp, kept_stamp = checkpoint.stat().st_mtime_ns, kept.stat().st_mtime_ns

    run(command, env, work / "compare2.log")
    log = (work / "compare2.log").read_text()
    assert "trained already" in log and "timing" not in log.replace("timing.log", "") and "predicting" not in log
    assert checkpoint.stat().st_mtime_ns == stamp
    with open(work / "compare" / "compare.csv") as f:
        assert list(csv.DictReader(f)) == rows

    # --repredict measures the end point again (same weights, so same Dice), trains and rescores nothing else
    summary = work / "compare" / "predictions" / f"{schedule}__nnUNetPlansUXNetCPU__3d_fullres" / "benchmark.json"
    summary_stamp = summary.stat().st_mtime_ns
    run(command + ["--repredict"], env, work / "compare3.log")
    log = (work / "compare3.log").read_text()
    assert "trained already" in log and log.count("predicting") == 1 and "checkpoint_at" not in log
    assert checkpoint.stat().st_mtime_ns == stamp and summary.stat().st_mtime_ns > summary_stamp
    with open(work / "compare" / "compare.csv") as f:
        again = list(csv.DictReader(f))[0]
    assert again["mean_dice"] == row["mean_dice"] and again["schedule"] == row["schedule"]

    # stopped in epoch 2 after the kept checkpoint was scored, as nnU-Net leaves it (checkpoint_latest of epoch 1,
    # no final): the rerun continues that training with --c, keeps and reuses the point it scored before
    checkpoint.unlink()
    (fold / "checkpoint_latest.pth").write_bytes(kept.read_bytes())
    state = json.loads((work / "compare" / "compare_state.json").read_text())
    record = state[DATASET]["fold_0"]["2iters_1per_epoch"]["nnUNetTrainerUXNet:nnUNetPlansUXNetCPU:3d_fullres@0"]
    del record["training"], record["prediction"]
    (work / "compare" / "compare_state.json").write_text(json.dumps(state))
    run(command, env, work / "compare4.log")
    log = (work / "compare4.log").read_text()
    assert "resuming" in log and "timing" not in log.replace("timing.log", "") and "checkpoint_at" not in log
    assert kept.stat().st_mtime_ns == kept_stamp and checkpoint.is_file()
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["current_epoch"] == 2
    with open(work / "compare" / "compare_curve.csv") as f:
        assert [(p["iterations"], p["mean_dice"]) for p in csv.DictReader(f)][0] == ("1", curve[0]["mean_dice"])


def test_unknown_planner_is_one_line(workspace):
    work, _, env = workspace
    result = run([BIN / "nnunet-efficient", "plan_and_preprocess", "-d", "991", "-pl", "nnUNetPlannerBogus",
                  "--no_pp"], env, work / "bogus.log", expect_ok=False)
    lines = (work / "bogus.log").read_text().strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "nnUNetPlannerBogus" in lines[0]
