"""Token-sparse UNETR through the real commands on real Hippocampus cases (../shared/data).

Eight training cases and two held-out ones are linked into a temporary dataset: the plugin's
``nnUNetPlannerUNETRCPU``, stock ``nnUNetv2_train`` of ``3d_tokensparse_p90`` for two iterations
(fold 0 validates on one case, to keep nnU-Net's final validation short), stock
``nnUNetv2_predict`` and the plugin's ``predict``. The network is barely trained: this checks the
wiring (plans, inherited configuration, checkpoints, inference in evaluation mode), not quality;
``scripts/unetr_evidence.sh`` measures quality.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import hippocampus_workspace, label_agreement, predict_held_out
from conftest import run_command as run

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
DATASET = "Dataset993_HippocampusUNETR"
TRAINER = "nnUNetTrainerTokenSparseUNETR_1epochs_2iters"
PLANS = "nnUNetPlansUNETRCPU"
CONFIGURATION = "3d_tokensparse_p90"



@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    work = tmp_path_factory.mktemp("unetr")
    raw, env = hippocampus_workspace(work, DATASET, 8, 2)
    return work, raw, env


@pytest.fixture(scope="module")
def model(workspace):
    work, _, env = workspace
    run([BIN / "nnunet-efficient", "plan_and_preprocess", "-d", "993", "-pl", "nnUNetPlannerUNETRCPU", "-c",
         "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar"], env, work / "plan.log")
    cases = sorted(f[:-len(".nii.gz")] for f in os.listdir(work / "raw" / DATASET / "labelsTr"))
    (work / "pre" / DATASET / "splits_final.json").write_text(json.dumps([{"train": cases[:7], "val": cases[7:]}]))
    run([BIN / "nnUNetv2_train", "993", CONFIGURATION, "0", "-p", PLANS, "-tr", TRAINER, "-device", "cpu"],
        env, work / "train.log")
    return work / "res" / DATASET / f"{TRAINER}__{PLANS}__{CONFIGURATION}"


def test_planner_writes_dense_and_token_sparse_configurations(workspace, model):
    work, _, _ = workspace
    configurations = json.loads((work / "pre" / DATASET / f"{PLANS}.json").read_text())["configurations"]
    fullres = configurations["3d_fullres"]
    assert fullres["patch_size"] == [48, 64, 48]  # nnU-Net's 40x56x40 rounded up to multiples of 16
    assert fullres["architecture"]["network_class_name"] == "nnunet_efficient.networks.unetr.UNETR"
    assert fullres["architecture"]["arch_kwargs"]["embed_dim"] == 192
    p90, p75 = configurations["3d_tokensparse_p90"], configurations["3d_tokensparse_p75"]
    assert p90["inherits_from"] == p75["inherits_from"] == "3d_fullres"
    assert p90["architecture"]["arch_kwargs"]["keep_ratios"] == [0.1, 0.1]  # 288 -> 28 -> 2
    assert p75["architecture"]["arch_kwargs"]["prune_after_blocks"] == [2, 5, 8]


def test_stock_training_writes_a_token_sparse_checkpoint(model):
    checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER
    weights = checkpoint["network_weights"]
    assert any(k.startswith("score_predictors.1.") for k in weights)
    assert not any(k.startswith("score_predictors.2.") for k in weights)
    assert (model / "fold_0" / "validation" / "summary.json").is_file()


@pytest.mark.parametrize("command", ["stock", "plugin"])
def test_prediction_with_stock_and_plugin_commands(workspace, model, command):
    work, raw, env = workspace
    if command == "stock":
        predict_held_out(work, raw, env, command, stock=["-d", "993", "-p", PLANS, "-tr", TRAINER, "-c", CONFIGURATION])
    else:
        predict_held_out(work, raw, env, command, plugin=["-m", model])


def test_stock_and_plugin_predictions_agree(workspace, model):
    work, _, _ = workspace
    assert label_agreement(work / "pred_stock", work / "pred_plugin") >= 0.9999

