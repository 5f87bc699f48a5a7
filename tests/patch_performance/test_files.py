"""The map's files in a fold folder, and how ``-step_size auto`` reads the folds' recommendations."""

import json

import numpy as np
import pytest
import torch
from nnunetv2.inference.sliding_window_prediction import compute_gaussian

from nnunet_efficient.errors import InputFileError
from nnunet_efficient.patch_performance.files import (
    load_patch_map,
    load_recommendation,
    resolve_auto_step,
    save_patch_performance,
)
from nnunet_efficient.patch_performance.recommendation import recommend_step
from nnunet_efficient.patch_performance.tracking import PatchPerformanceMap


def small_map(patch, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    error = torch.rand((classes, *patch), generator=generator, dtype=torch.float64) * 0.2
    return PatchPerformanceMap(error, 0.5 * torch.rand((classes, *patch), generator=generator, dtype=torch.float64),
                               torch.full(patch, 7.0, dtype=torch.float64))


@pytest.mark.parametrize("patch", [(8, 10, 6), (12, 10)])
def test_files_round_trip_and_the_plot_is_a_png(tmp_path, patch):
    patch_map = small_map(patch)
    rec = recommend_step(patch_map, compute_gaussian(patch, 1 / 8, 10, torch.float32, torch.device("cpu")),
                         [[2 * p for p in patch]])
    paths = save_patch_performance(str(tmp_path / "fold_0"), patch_map, rec, ["background", "a", "b"],
                                   {"tile_step": 0.5, "cases": 2})
    loaded = load_patch_map(paths["map"])
    assert torch.equal(loaded.error, patch_map.error) and torch.equal(loaded.count, patch_map.count)
    again = load_recommendation(paths["recommendation"])
    assert again.step == rec.step and again.border_band == rec.border_band
    assert [c.step for c in again.candidates] == [c.step for c in rec.candidates]
    assert json.loads((tmp_path / "fold_0" / "patch_performance.json").read_text())["class_names"][1] == "a"
    with open(paths["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "fold_0").iterdir()) == [
        "patch_performance.json", "patch_performance.npz", "patch_performance.png"]


def write_step(model, fold, step):
    (model / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    (model / f"fold_{fold}" / "patch_performance.json").write_text(json.dumps({"step": step}))


def test_auto_without_maps_falls_back_to_half(tmp_path):
    step, message = resolve_auto_step(str(tmp_path), [0, 1])
    assert step == 0.5
    assert "no patch_performance.json" in message and "0.5" in message and "\n" not in message


def test_auto_uses_the_folds_common_recommendation(tmp_path):
    write_step(tmp_path, 0, 0.75)
    write_step(tmp_path, 1, 0.75)
    step, message = resolve_auto_step(str(tmp_path), [0, 1])
    assert step == 0.75 and "using step 0.75" in message


def test_auto_takes_the_smallest_step_when_folds_disagree(tmp_path):
    write_step(tmp_path, 0, 1.0)
    write_step(tmp_path, 1, 0.625)
    assert resolve_auto_step(str(tmp_path), [0, 1])[0] == 0.625
    # a fold without a map asks for nnU-Net's 0.5
    step, message = resolve_auto_step(str(tmp_path), [0, 2])
    assert step == 0.5 and "fold 2: 0.5 (no map" in message


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    (json.dumps({"step": 1.5}), "'step' must be a number in (0, 1]"),
    (json.dumps([0.5]), "expected a JSON object"),
])
def test_corrupt_recommendation_names_the_file(tmp_path, content, problem):
    (tmp_path / "fold_0").mkdir()
    path = tmp_path / "fold_0" / "patch_performance.json"
    path.write_text(content)
    with pytest.raises(InputFileError) as error:
        resolve_auto_step(str(tmp_path), [0])
    assert str(path) in str(error.value) and problem in str(error.value)


def test_unreadable_map_names_the_file(tmp_path):
    path = tmp_path / "patch_performance.npz"
    np.savez(path, error=np.zeros((2, 3)))
    with pytest.raises(InputFileError, match="not a patch-performance map"):
        load_patch_map(str(path))
