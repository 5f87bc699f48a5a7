"""Plan, train and predict with the real commands as subprocesses, on the shipped Hippocampus sample.

The pipeline's mechanics, at a budget CI can afford (2 epochs of 5 iterations, a few minutes on 2
cores): the plugin's CPU planner writes the plans, stock ``nnUNetv2_train`` finds the plugin's
schedule and writes its checkpoint and validation, ``nnunet-efficient predict`` writes every held-out
case in its original geometry with valid labels. The plans must be the ones the model shipped in
``examples/models`` was trained with, so that model's held-out Dice (``test_demo_weights.py``, 1,500
iterations of this same pipeline) stands for what the pipeline learns. A floor on what a short
training learns would not do: a few hundred iterations from scratch leave nnU-Net's all-background
start at very different times (held-out means of 0.25 to 0.82 after 300 to 600 iterations were
measured on this sample), too noisy and, at 26 minutes on a 2-core CI machine, too slow. Parity of
the predicted labels with nnU-Net's own predictor is tested in ``tests/inference``.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, SAMPLE

BIN = Path(sys.executable).parent
TRAINER = "nnUNetTrainer_2epochs_5iters"
SHIPPED = REPO / "examples" / "models" / SAMPLE.name

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


def test_plans_are_those_the_shipped_model_was_trained_with(trained):
    import json

    work, _ = trained
    plans = json.loads((work / "pre" / SAMPLE.name / "nnUNetPlansCPU.json").read_text())
    assert plans["experiment_planner_used"] == "nnUNetPlannerCPU"
    configuration = plans["configurations"]["3d_fullres"]
    assert configuration["architecture"]["arch_kwargs"]["features_per_stage"][0] == 16
    assert configuration["batch_size"] <= 2
    (shipped_folder,) = SHIPPED.glob("*__nnUNetPlansCPU__3d_fullres")
    shipped = json.loads((shipped_folder / "plans.json").read_text())
    # every setting that decides what the network sees and is: preprocessing, patch, architecture
    assert configuration == shipped["configurations"]["3d_fullres"]
    for key in ("transpose_forward", "original_median_spacing_after_transp", "image_reader_writer"):
        assert plans[key] == shipped[key], key


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
    for name in names:
        image = sitk.ReadImage(str(SAMPLE / "imagesTs" / name.replace(".nii.gz", "_0000.nii.gz")))
        seg = sitk.ReadImage(str(out / name))
        assert seg.GetSize() == image.GetSize()
        np.testing.assert_allclose(seg.GetSpacing(), image.GetSpacing())
        np.testing.assert_allclose(seg.GetOrigin(), image.GetOrigin())
        np.testing.assert_allclose(seg.GetDirection(), image.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2}
    assert "windows" in (work / "predict.log").read_text()
