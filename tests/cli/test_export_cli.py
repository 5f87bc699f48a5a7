"""``nnunet-efficient export`` and ``predict --backend onnxruntime`` as commands: bad inputs end in one line,
and the exported demo model segments like the PyTorch one."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, dataset_json, tiny_plans, write_model_folder

from nnunet_efficient.cli.main import main

# the one model folder shipped for the demo, whatever schedule trained it
(DEMO,) = (REPO / "examples" / "models" / "Dataset990_HippocampusSample").glob("*__nnUNetPlansCPU__3d_fullres")


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_missing_checkpoint_is_one_line(hippocampus_model, tmp_path, capsys):
    code = main(["export", "-m", str(hippocampus_model), "-f", "0", "-chk", "checkpoint_best.pth",
                 "-o", str(tmp_path / "out")])
    assert code == 1
    assert "fold_0/checkpoint_best.pth: checkpoint missing" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_is_one_line(hippocampus_model, tmp_path, capsys):
    (tmp_path / "out").write_text("")
    assert main(["export", "-m", str(hippocampus_model), "-o", str(tmp_path / "out")]) == 1
    assert "out: is a file; the export is written into a folder (-o)" in one_error_line(capsys)


def test_unsupported_architecture_is_one_line_and_writes_nothing(tmp_path, capsys):
    plans = tiny_plans((16, 32, 32), 1)
    # nnU-Net builds any class the plans name; torch.nn.Identity takes (and ignores) its arguments
    plans["configurations"]["3d_fullres"]["architecture"] = {
        "network_class_name": "torch.nn.Identity", "arch_kwargs": {}, "_kw_requires_import": []}
    folder = write_model_folder(tmp_path / "nnUNetTrainer__nnUNetPlansTiny__3d_fullres", plans,
                                dataset_json(1, {"background": 0, "a": 1}))
    assert main(["export", "-m", str(folder), "-o", str(tmp_path / "out")]) == 1
    line = one_error_line(capsys)
    assert "cannot export torch.nn.modules.linear.Identity: no ONNX export is registered" in line
    assert "PlainConvUNet" in line and "register_architecture" in line
    assert not (tmp_path / "out").exists()


def test_difference_above_the_tolerance_fails_the_export(hippocampus_model, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert main(["export", "-m", str(hippocampus_model), "-o", str(tmp_path / "out"), "--tolerance", "1e-15"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and out.strip().splitlines()[-1].endswith("FAILED")
    checks = json.loads((tmp_path / "out" / "onnx_export.json").read_text())["checks"]
    assert not all(c["passed"] for c in checks)


@pytest.mark.parametrize("arguments, message", [
    (["-d", "990", "-c", "3d_fullres"], "--backend onnxruntime reads a folder written by `nnunet-efficient export`"),
    (["-m", "{model}"], "onnx_export.json: missing; --backend onnxruntime needs a folder"),
    (["-m", "{model}", "-device", "cuda"], "the onnxruntime backend runs on the CPU"),
    (["-m", "{model}", "-chk", "checkpoint_best.pth"], "-chk does not apply to --backend onnxruntime"),
])
def test_onnxruntime_backend_refusals_are_one_line(hippocampus_model, sample_images, tmp_path, capsys, arguments,
                                                   message):
    arguments = [a.replace("{model}", str(hippocampus_model)) for a in arguments]
    code = main(["predict", "--backend", "onnxruntime", "-i", str(sample_images), "-o", str(tmp_path / "out"),
                 *arguments])
    assert code == 1
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_exported_demo_model_segments_like_pytorch(tmp_path, capsys):
    """The shipped trained model: export with its real-input check, then both backends on one held-out case."""
    images = tmp_path / "images"
    images.mkdir()
    case = REPO / "examples" / "Dataset990_HippocampusSample" / "imagesTs" / "hippocampus_038_0000.nii.gz"
    shutil.copy(case, images)
    assert main(["export", "-m", str(DEMO), "-f", "all", "-o", str(tmp_path / "onnx"), "-i", str(case)]) == 0
    summary = capsys.readouterr().out
    assert "real (hippocampus_038)" in summary and "passed" in summary.splitlines()[-1]
    common = ["-i", str(images), "-npp", "0", "-nps", "0", "--disable_tta", "--disable_progress_bar"]
    assert main(["predict", "--backend", "onnxruntime", "-m", str(tmp_path / "onnx"), "-o", str(tmp_path / "ort"),
                 *common]) == 0
    assert main(["predict", "-m", str(DEMO), "-f", "all", "-device", "cpu", "-o", str(tmp_path / "torch"),
                 *common]) == 0
    ort = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ort" / "hippocampus_038.nii.gz")))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "torch" / "hippocampus_038.nii.gz")))
    assert set(np.unique(reference)) == {0, 1, 2}  # a trained model: both hippocampus parts are found
    assert np.array_equal(ort, reference)
