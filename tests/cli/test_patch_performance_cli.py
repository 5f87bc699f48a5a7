"""``nnunet-efficient patch_performance`` and ``predict -step_size auto`` on a tiny untrained model.

The weights are random, so the recommended step itself is arbitrary here; what is checked is that the
command writes the fold's files, that ``auto`` reads them (the windows the predictor evaluates are
those of the recommended step), the fallback without a map, and the one-line errors.
"""

import json
import math

import nibabel
import numpy as np
import pytest
from conftest import dataset_json, tiny_plans, write_model_folder

from nnunet_efficient.cli.main import main
from nnunet_efficient.sampling.windows import grid_shape

# windows differ along the last axis only (step 1: 3, step 0.5: 4): the machine's CPU time is spent elsewhere
PATCH, SHAPE = (16, 16, 16), (16, 16, 40)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("ppmodel") / "nnUNetTrainer__nnUNetPlansTiny__3d_fullres",
                              tiny_plans(PATCH, 1, features=(2, 4)), dataset_json(1, {"background": 0, "a": 1}))


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppcases")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for case in ("c1",):
        # SimpleITK reads these arrays with their axes reversed; only window counts (products) are compared
        nibabel.save(nibabel.Nifti1Image(rng.normal(size=SHAPE).astype(np.float32), np.eye(4)),
                     str(root / "images" / f"{case}_0000.nii.gz"))
        nibabel.save(nibabel.Nifti1Image((rng.random(SHAPE) < 0.3).astype(np.uint8), np.eye(4)),
                     str(root / "labels" / f"{case}.nii.gz"))
    return root


@pytest.fixture
def fresh_model(model):
    for fold in model.glob("fold_*"):
        for name in fold.glob("patch_performance.*"):
            name.unlink()
    return model


def predict_auto(model, images, out, capsys):
    capsys.readouterr()
    code = main(["predict", "-i", str(images), "-o", str(out), "-m", str(model), "-f", "0", "-device", "cpu",
                 "--disable_progress_bar", "--disable_tta", "-npp", "0", "-nps", "0", "-step_size", "auto"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def windows_at(step):
    return math.prod(grid_shape(SHAPE, PATCH, step))


def test_auto_without_a_map_falls_back_to_nnunet_default(fresh_model, cases, tmp_path, capsys):
    code, out, _ = predict_auto(fresh_model, cases / "images", tmp_path / "out", capsys)
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("-step_size auto")]
    assert len(lines) == 1 and "no patch_performance.json" in lines[0] and "default 0.5" in lines[0]
    assert f"{windows_at(0.5)} windows" in out


def test_auto_uses_the_recommended_step(fresh_model, cases, tmp_path, capsys):
    (fresh_model / "fold_0" / "patch_performance.json").write_text(json.dumps({"step": 1.0}))
    code, out, _ = predict_auto(fresh_model, cases / "images", tmp_path / "out", capsys)
    assert code == 0
    assert "-step_size auto: using step 1, recommended by the patch-performance map" in out
    assert f"{windows_at(1.0)} windows" in out and windows_at(1.0) != windows_at(0.5)


def test_corrupt_recommendation_is_one_error_line(fresh_model, cases, tmp_path, capsys):
    path = fresh_model / "fold_0" / "patch_performance.json"
    path.write_text('{"step": ')
    code, _, err = predict_auto(fresh_model, cases / "images", tmp_path / "out", capsys)
    assert code == 1
    err = err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "not valid JSON" in err[0]


def test_command_writes_the_fold_files_and_auto_follows_them(fresh_model, cases, tmp_path, capsys):
    assert main(["patch_performance", "-m", str(fresh_model), "-f", "0", "-i", str(cases / "images"),
                 "-ref", str(cases / "labels"), "--tile_step", "1.0", "--batch_size", "4"]) == 0
    out = capsys.readouterr().out
    fold = fresh_model / "fold_0"
    assert {"patch_performance.npz", "patch_performance.json", "patch_performance.png"} <= {
        p.name for p in fold.iterdir()}
    recommendation = json.loads((fold / "patch_performance.json").read_text())
    assert f"recommended -step_size {recommendation['step']:g}" in out
    assert recommendation["source"]["cases"] == 1 and recommendation["source"]["windows"] == windows_at(1.0)
    with np.load(fold / "patch_performance.npz") as saved:
        assert saved["error"].shape == (2, *PATCH)
        assert saved["count"].min() > 0 and saved["count"].sum() == windows_at(1.0) * math.prod(PATCH)

    code, out, _ = predict_auto(fresh_model, cases / "images", tmp_path / "out", capsys)
    assert code == 0 and f"{windows_at(recommendation['step'])} windows" in out


def test_command_without_validation_cases_is_one_error_line(fresh_model, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    assert main(["patch_performance", "-m", str(fresh_model), "-f", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nnUNet_preprocessed is not set" in err[0]

    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    assert main(["patch_performance", "-m", str(fresh_model), "-f", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "splits_final.json" in err[0] and "-i IMAGES -ref LABELS" in err[0]


def test_benchmark_variants_accept_step_auto():
    from nnunet_efficient.benchmark.runner import Variant, variant_folder

    variant = Variant.parse("sliding_window:step=auto,tta=0")
    assert variant.step == "auto"
    assert variant_folder(variant.strategy, variant.report_options()) == "sliding_window__step=auto__tta=0"
