"""Distill-DSM through the real commands on real Hippocampus cases (../shared/data).

Five training cases (fold 0 validates on one) and two held-out ones are linked into a temporary
dataset: the plugin's planner, stock ``nnUNetv2_train`` for two iterations, stock
``nnUNetv2_predict`` and the plugin's ``predict``. (``compare`` is generic over trainers;
tests/integration/test_uxnet_end_to_end.py runs it.) The network is barely trained: these tests
check wiring (plans, checkpoints, geometry), not quality; ``scripts/distill_dsm_evidence.sh``
measures quality.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import hippocampus_workspace, predict_held_out
from conftest import run_command as run

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
DATASET = "Dataset992_HippocampusDSM"
PLANS = "nnUNetPlansDistillDSMCPU"
TRAINER = "nnUNetTrainerDistillDSM_1epochs_2iters"



@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    work = tmp_path_factory.mktemp("distill_dsm")
    # nnU-Net's end-of-training validation otherwise starts 8 export workers (torch imports)
    raw, env = hippocampus_workspace(work, DATASET, 5, 2, nnUNet_def_n_proc="1")
    return work, raw, env


@pytest.fixture(scope="module")
def model(workspace):
    work, _, env = workspace
    run([BIN / "nnunet-efficient", "plan_and_preprocess", "-d", "992", "-pl", "nnUNetPlannerDistillDSMCPU", "-c",
         "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar"], env, work / "plan.log")
    run([BIN / "nnUNetv2_train", "992", "3d_fullres", "0", "-p", PLANS, "-tr", TRAINER, "-device", "cpu"],
        env, work / "train.log")
    return work / "res" / DATASET / f"{TRAINER}__{PLANS}__3d_fullres"


def test_planner_writes_distill_dsm_into_the_plans(workspace, model):
    work, _, _ = workspace
    configuration = json.loads((work / "pre" / DATASET / f"{PLANS}.json").read_text())["configurations"]["3d_fullres"]
    architecture = configuration["architecture"]
    assert architecture["network_class_name"] == "nnunet_efficient.networks.distill_dsm.DistillDSMUNet"
    kwargs = architecture["arch_kwargs"]
    # Hippocampus is isotropic: slices along the first axis, which is never pooled
    assert kwargs["depth_axis"] == 0 and kwargs["alpha"] == 0.5 and kwargs["features_per_stage"][0] == 16
    assert all(stride[0] == 1 for stride in kwargs["strides"]) and kwargs["strides"][1][1:] == [2, 2]


def test_stock_training_writes_a_checkpoint_and_validates(model):
    checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER
    assert any(k.endswith("shift.conv.weight") for k in checkpoint["network_weights"])
    assert (model / "fold_0" / "validation" / "summary.json").is_file()


@pytest.mark.parametrize("command", ["stock", "plugin"])
def test_prediction_with_stock_and_plugin_commands(workspace, model, command):
    work, raw, env = workspace
    if command == "stock":
        predict_held_out(work, raw, env, command, stock=["-d", "992", "-p", PLANS, "-tr", TRAINER, "-c", "3d_fullres"])
    else:
        predict_held_out(work, raw, env, command, plugin=["-m", model])
