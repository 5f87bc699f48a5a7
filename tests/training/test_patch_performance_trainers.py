"""Patch-performance trainers: found by nnU-Net's lookup for any base trainer, and mapping validation tiles."""

import json
import pickle

import numpy as np
import pytest
import torch
from conftest import dataset_json, tiny_plans

from nnunet_efficient.common.plugin_env import ext_trainer_folder
from nnunet_efficient.errors import EfficientError
from nnunet_efficient.patch_performance.tracking import PatchErrorTracker, PatchPerformanceLoss, accumulate_tiles
from nnunet_efficient.training.patch_performance import PatchPerformanceMixin, with_patch_performance


@pytest.mark.parametrize("name, base", [
    ("nnUNetTrainerPatchPerformance", "nnUNetTrainer"),
    ("nnUNetTrainerNoMirroring_PatchPerformance", "nnUNetTrainerNoMirroring"),
    ("nnUNetTrainerUXNet_PatchPerformance", "nnUNetTrainerUXNet"),
    ("nnUNetTrainerUXNet_PatchPerformance_3epochs_7iters", "nnUNetTrainerUXNet"),
])
def test_nnunet_finds_patch_performance_variants(monkeypatch, name, base):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_folder())
    trainer = recursive_find_trainer_class_by_name(name)
    assert trainer.__name__ == name
    assert issubclass(trainer, PatchPerformanceMixin)
    assert base in [c.__name__ for c in trainer.__mro__]
    assert recursive_find_trainer_class_by_name(name) is trainer


def test_unknown_base_and_double_suffix_are_not_found(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_folder())
    for name in ("nnUNetTrainerMissing_PatchPerformance", "nnUNetTrainerPatchPerformance_PatchPerformance"):
        with pytest.raises(RuntimeError):
            recursive_find_trainer_class_by_name(name)


def test_nmsw_trainers_are_refused():
    from nnunet_efficient.training.nmsw import nnUNetTrainerNMSW

    with pytest.raises(EfficientError, match="NMSW"):
        with_patch_performance(nnUNetTrainerNMSW)


PATCH, CASE_SHAPES = (16, 16, 16), {"v1": (20, 16, 30), "v2": (12, 18, 16)}


@pytest.fixture
def trainer(tmp_path, monkeypatch):
    """An initialised nnUNetTrainerPatchPerformance on a tiny preprocessed dataset with two validation cases."""
    from nnunet_efficient.training.patch_performance import nnUNetTrainerPatchPerformance

    plans = tiny_plans(PATCH, 1, features=(2, 4, 8))
    plans["continue_training"] = False
    dataset = dataset_json(1, {"background": 0, "a": 1, "b": 2})
    folder = tmp_path / "preprocessed" / plans["dataset_name"]
    data_folder = folder / plans["configurations"]["3d_fullres"]["data_identifier"]
    data_folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for key, shape in {"t1": (16, 16, 16), **CASE_SHAPES}.items():
        seg = rng.integers(-1, 3, size=(1, *shape)).astype(np.int8)  # -1: nnU-Net's "outside the mask"
        np.savez_compressed(data_folder / f"{key}.npz", data=rng.normal(size=(1, *shape)).astype(np.float32), seg=seg)
        (data_folder / f"{key}.pkl").write_bytes(pickle.dumps({}))
    (folder / "splits_final.json").write_text(json.dumps([{"train": ["t1"], "val": sorted(CASE_SHAPES)}]))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    trainer = nnUNetTrainerPatchPerformance(plans, "3d_fullres", 0, dataset, torch.device("cpu"))
    trainer.initialize()
    return trainer


def test_training_loss_is_wrapped_and_not_tracking(trainer):
    assert isinstance(trainer.loss, PatchPerformanceLoss) and not trainer.loss.enabled


def test_validation_writes_the_map_of_the_validation_tiles(trainer, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    calls = []
    monkeypatch.setattr(nnUNetTrainer, "perform_actual_validation", lambda self, npz=False: calls.append(npz))
    trainer.perform_actual_validation(False)
    assert calls == [False], "nnU-Net's own validation must run first"
    fold = trainer.output_folder
    with np.load(f"{fold}/patch_performance.npz") as saved:
        assert saved["error"].shape == (3, *PATCH)
        # every window of both validation cases at step 0.5, padding excluded, -1 counted as background
        expected = PatchErrorTracker(3, PATCH)
        for key in CASE_SHAPES:
            with np.load(f"{trainer.preprocessed_dataset_folder}/{key}.npz") as case:
                seg = torch.from_numpy(case["seg"].astype(np.int64))
                accumulate_tiles(expected, lambda x: torch.zeros(x.shape[0], 3, *PATCH),
                                 torch.from_numpy(case["data"]), torch.where(seg < 0, 0, seg), step=0.5)
        np.testing.assert_array_equal(saved["count"], expected.compute().count.numpy())
        assert list(saved["class_names"]) == ["background", "a", "b"]
    recommendation = json.loads(open(f"{fold}/patch_performance.json").read())
    assert 0 < recommendation["step"] <= 1 and recommendation["source"]["cases"] == 2
    assert open(f"{fold}/patch_performance.png", "rb").read(4) == b"\x89PNG"
