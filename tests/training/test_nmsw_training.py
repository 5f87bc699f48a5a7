"""NMSW end to end with nnU-Net's own commands on the shipped Hippocampus sample.

plan_and_preprocess with nnUNetPlannerNMSWCPU -> stock ``nnUNetv2_train DATASET 3d_nmsw 0 -tr
nnUNetTrainerNMSW_1epochs_2iters`` (nnUNet_extTrainer set as ``nnunet-efficient env`` does) ->
``nnunet-efficient predict --strategy nmsw`` on a held-out case. Two iterations of a 4-feature
network learn nothing measurable, so the prediction is checked for being a valid segmentation
with the input's geometry, not for its Dice (the Dice evidence is scripts/nmsw_evidence.sh).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import SAMPLE, sample_workspace
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_efficient.networks.nmsw_plans import nmsw_settings

TRAINER = "nnUNetTrainerNMSW_1epochs_2iters"
PLANS = "nnUNetPlansNMSWCPU"
DATASET = "Dataset990_HippocampusSample"
CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_007", "hippocampus_008",
         "hippocampus_011"]


def run(command, env, timeout=600):
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("nmsw_e2e")
    env = sample_workspace(root, CASES, 5)
    cli = [sys.executable, "-m", "nnunet_efficient.cli.main"]
    run([*cli, "plan_and_preprocess", "-d", "990", "-pl", "nnUNetPlannerNMSWCPU", "-c", "3d_fullres",
         "-np", "1", "-npfp", "1", "--no_pbar"], env)
    plans_file = root / "pre" / DATASET / f"{PLANS}.json"
    planned = json.loads(plans_file.read_text())
    # a tiny plan for a CPU test: 4 base features for both branches, everything else as planned
    tiny = json.loads(plans_file.read_text())
    for arch in (tiny["configurations"]["3d_fullres"]["architecture"],
                 tiny["configurations"]["3d_nmsw"]["nmsw"]["global_architecture"]):
        arch["arch_kwargs"]["features_per_stage"] = [4 * 2 ** i for i in range(arch["arch_kwargs"]["n_stages"])]
    plans_file.write_text(json.dumps(tiny))
    run(["nnUNetv2_train", "990", "3d_nmsw", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu"],
        {**env, "nnUNet_n_proc_DA": "0"})
    return root, env, planned


def test_planner_writes_a_3d_nmsw_configuration(trained):
    _, _, plans = trained
    configuration = plans["configurations"]["3d_nmsw"]
    assert configuration["inherits_from"] == "3d_fullres" and plans["experiment_planner_used"] == "nnUNetPlannerNMSWCPU"
    manager = PlansManager(plans).get_configuration("3d_nmsw")
    settings = nmsw_settings(manager.configuration)
    # nnU-Net's patch size is NMSW's canvas, the local window the 3d_fullres patch
    assert settings.window_size == tuple(plans["configurations"]["3d_fullres"]["patch_size"])
    assert settings.volume_shape == tuple(manager.patch_size)
    assert all(v >= w for v, w in zip(settings.volume_shape, settings.window_size))
    assert all(g <= v for g, v in zip(settings.global_shape, settings.volume_shape))


def test_stock_nnunet_train_writes_a_standard_checkpoint_and_validation(trained):
    root, _, _ = trained
    fold = root / "results" / DATASET / f"{TRAINER}__{PLANS}__3d_nmsw" / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER
    assert checkpoint["init_args"]["configuration"] == "3d_nmsw"
    assert any(k.startswith("global_branch.") for k in checkpoint["network_weights"])
    assert any(k.startswith("local_net.") for k in checkpoint["network_weights"])
    assert (fold / "validation" / f"{CASES[5]}.nii.gz").is_file()
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert "foreground_mean" in summary


def test_predict_nmsw_on_a_held_out_case(trained, tmp_path):
    root, env, _ = trained
    images = tmp_path / "images"
    images.mkdir()
    case = sorted(os.listdir(SAMPLE / "imagesTs"))[0]
    shutil.copy(SAMPLE / "imagesTs" / case, images / case)
    run([sys.executable, "-m", "nnunet_efficient.cli.main", "predict", "-i", str(images), "-o", str(tmp_path / "out"),
         "-d", "990", "-p", PLANS, "-c", "3d_nmsw", "-tr", TRAINER, "-f", "0", "--strategy", "nmsw", "--k", "2",
         "-device", "cpu", "--disable_tta", "-npp", "0", "-nps", "0", "--disable_progress_bar"], env)
    image = sitk.ReadImage(str(images / case))
    seg = sitk.ReadImage(str(tmp_path / "out" / case.replace("_0000", "")))
    assert seg.GetSize() == image.GetSize()
    assert np.allclose(seg.GetSpacing(), image.GetSpacing()) and np.allclose(seg.GetOrigin(), image.GetOrigin())
    assert set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) <= {0, 1, 2}


def test_nmsw_trainer_on_a_configuration_without_nmsw_fails_clearly(trained):
    root, env, _ = trained
    result = subprocess.run(["nnUNetv2_train", "990", "3d_fullres", "0", "-tr", TRAINER, "-p", PLANS,
                             "-device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "has no 'nmsw' entry" in result.stderr and "3d_nmsw" in result.stderr


def test_continue_training_with_c_resumes_from_the_checkpoint(trained):
    """``--c`` goes through nnU-Net's own checkpoint loading: a 2-epoch run handed the 1-epoch
    run's checkpoint as ``checkpoint_latest.pth`` trains only epoch 1, from those weights."""
    root, env, _ = trained
    resumed_trainer = "nnUNetTrainerNMSW_2epochs_2iters"
    results = root / "results" / DATASET
    started = torch.load(results / f"{TRAINER}__{PLANS}__3d_nmsw" / "fold_0" / "checkpoint_final.pth",
                         map_location="cpu", weights_only=False)
    fold = results / f"{resumed_trainer}__{PLANS}__3d_nmsw" / "fold_0"
    fold.mkdir(parents=True)
    torch.save(started, fold / "checkpoint_latest.pth")
    run(["nnUNetv2_train", "990", "3d_nmsw", "0", "-tr", resumed_trainer, "-p", PLANS, "-device", "cpu", "--c"],
        {**env, "nnUNet_n_proc_DA": "0"})

    log = "".join(path.read_text() for path in fold.glob("training_log_*.txt"))
    assert "Epoch 1" in log and "Epoch 0" not in log
    finished = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert finished["current_epoch"] == 2
    assert len(finished["logging"]["train_losses"]) == 2  # epoch 0's history came with the checkpoint
    scorer = [k for k in started["network_weights"] if k.startswith("scorer.")]
    assert scorer and any(not torch.equal(started["network_weights"][k], finished["network_weights"][k])
                          for k in scorer)
    assert (fold / "validation" / "summary.json").is_file()
