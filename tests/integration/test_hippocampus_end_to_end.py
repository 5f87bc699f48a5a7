"""Plan, train and predict with the real commands as subprocesses, on the shipped Hippocampus sample.

Training budget: 15 epochs × 40 iterations with the CPU plan (about 7 minutes on 2 cores). The
sample's 4 held-out cases must then reach a mean foreground Dice of at least 0.3. An
all-background prediction scores 0 and a random one below 0.1, so a broken pipeline (labels
shifted, axes transposed, wrong checkpoint, geometry lost) fails. Short trainings leave the
all-background start at very different times: measured held-out means were 0.25 after 320
iterations, and 0.54 and 0.82 after 600 and 480 in two other runs, so the floor stays well below
what a working run reaches.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE

from nnunet_efficient.benchmark.measure import dice_per_class

BIN = Path(sys.executable).parent
TRAINER = "nnUNetTrainer_15epochs_40iters"
DICE_FLOOR = 0.3

pytestmark = pytest.mark.integration


def run(command, env, log):
    with open(log, "w") as handle:
        result = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    assert result.returncode == 0, f"{command[0]} failed, see {log}:\n" + Path(log).read_text()[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "pre"),
               nnUNet_results=str(work / "res"), nnUNet_n_proc_DA="2")
    (work / "raw").mkdir()
    (work / "raw" / SAMPLE.name).symlink_to(SAMPLE)
    export = subprocess.run([BIN / "nnunet-efficient", "env"], capture_output=True, text=True, check=True).stdout
    env["nnUNet_extTrainer"] = export.strip().split("=", 1)[1].strip("'")
    run([BIN / "nnunet-efficient", "plan_and_preprocess", "-d", "990", "-pl", "nnUNetPlannerCPU", "-c",
         "3d_fullres", "-np", "2", "-npfp", "2", "--no_pbar"], env, work / "plan.log")
    run([BIN / "nnUNetv2_train", "990", "3d_fullres", "0", "-p", "nnUNetPlansCPU", "-tr", TRAINER, "-device", "cpu"],
        env, work / "train.log")
    return work, env


def test_plans_come_from_the_plugin_planner(trained):
    import json

    work, _ = trained
    plans = json.loads((work / "pre" / SAMPLE.name / "nnUNetPlansCPU.json").read_text())
    assert plans["experiment_planner_used"] == "nnUNetPlannerCPU"
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"][0] == 16


def test_checkpoint_and_validation_written_by_stock_nnunet(trained):
    work, _ = trained
    fold = work / "res" / SAMPLE.name / f"{TRAINER}__nnUNetPlansCPU__3d_fullres" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    assert (fold / "validation" / "summary.json").is_file()


def test_predict_held_out_cases(trained):
    work, env = trained
    out = work / "predictions"
    run([BIN / "nnunet-efficient", "predict", "-i", SAMPLE / "imagesTs", "-o", out, "-d", "990", "-p",
         "nnUNetPlansCPU", "-tr", TRAINER, "-c", "3d_fullres", "-f", "0", "-device", "cpu", "--batch_size", "2",
         "--disable_progress_bar"], env, work / "predict.log")
    names = sorted(os.listdir(SAMPLE / "labelsTs"))
    assert sorted(n for n in os.listdir(out) if n.endswith(".nii.gz")) == names
    scores = []
    for name in names:
        image = sitk.ReadImage(str(SAMPLE / "imagesTs" / name.replace(".nii.gz", "_0000.nii.gz")))
        seg = sitk.ReadImage(str(out / name))
        assert seg.GetSize() == image.GetSize()
        np.testing.assert_allclose(seg.GetSpacing(), image.GetSpacing())
        np.testing.assert_allclose(seg.GetOrigin(), image.GetOrigin())
        dice = dice_per_class(sitk.GetArrayFromImage(seg),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "labelsTs" / name))), [1, 2])
        scores.append([dice[1], dice[2]])
    mean = float(np.nanmean(scores))
    print(f"held-out mean foreground Dice after {TRAINER}: {mean:.3f} (per case {np.round(scores, 3).tolist()})")
    assert mean >= DICE_FLOOR
    assert "windows" in (work / "predict.log").read_text()
