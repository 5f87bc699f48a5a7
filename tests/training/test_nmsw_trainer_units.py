"""NMSW trainer pieces without a training run: the local-only baseline's patch, the retrofit source."""

import pytest
import torch
from conftest import build_network, dataset_json, tiny_plans
from inference.test_nmsw_strategies import LABELS, VOLUME, WINDOW, nmsw_plans

from nnunet_efficient.errors import EfficientError, InputFileError
from nnunet_efficient.training.nmsw import nnUNetTrainerNMSWLocalOnly
from nnunet_efficient.training.nmsw_retrofit import load_source_weights, retrofit_checkpoint


def test_local_only_baseline_trains_and_keeps_plans_with_the_window_as_patch(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))  # nnU-Net reads its folders lazily
    plans = {**nmsw_plans(), "continue_training": False}
    trainer = nnUNetTrainerNMSWLocalOnly(plans, "3d_nmsw", 0, dataset_json(1, LABELS), torch.device("cpu"))
    assert tuple(trainer.configuration_manager.patch_size) == WINDOW
    # what nnU-Net saves with the model (checkpoint init_args, plans.json): the window as the patch
    assert trainer.my_init_kwargs["plans"]["configurations"]["3d_nmsw"]["patch_size"] == list(WINDOW)
    assert plans["configurations"]["3d_nmsw"]["patch_size"] == list(VOLUME)  # the caller's plans untouched


def test_retrofit_source_is_the_same_fold_of_the_named_model(monkeypatch, tmp_path):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    configuration = {"nmsw": {"retrofit_from": {"model_folder": "A__P__3d_fullres", "checkpoint": "c.pth"}}}
    assert retrofit_checkpoint(configuration, "Dataset1_X", 3, "here") == \
        str(tmp_path / "Dataset1_X" / "A__P__3d_fullres" / "fold_3" / "c.pth")
    configuration["nmsw"]["retrofit_from"]["model_folder"] = "/abs/model"
    assert retrofit_checkpoint(configuration, "Dataset1_X", "all", "here") == "/abs/model/fold_all/c.pth"
    with pytest.raises(EfficientError, match="names no model to retrofit.*add_nmsw"):
        retrofit_checkpoint({"nmsw": {}}, "Dataset1_X", 0, "here")


def test_source_weights_load_whole_or_fail_with_the_first_mismatch(tmp_path):
    plans, dataset = tiny_plans(WINDOW, 1, features=(4, 8)), dataset_json(1, LABELS)
    source, local = build_network(plans, dataset, seed=1), build_network(plans, dataset, seed=2)
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": source.state_dict()}, path)
    load_source_weights(local, str(path), "P")
    assert all(torch.equal(a, b) for a, b in zip(local.state_dict().values(), source.state_dict().values()))

    weights = dict(source.state_dict())
    weights["decoder.seg_layers.0.bias"] = torch.zeros(7)  # 7 classes instead of 3
    del weights["encoder.stages.0.0.convs.0.conv.weight"]
    weights["extra.weight"] = torch.zeros(1)
    torch.save({"network_weights": weights}, path)
    with pytest.raises(InputFileError) as error:
        load_source_weights(local, str(path), "P")
    message = str(error.value)
    assert message.startswith(f"{path}: does not match the 3d_fullres network of plans 'P': ")
    assert "weight(s) missing, e.g. 'encoder.stages.0.0.convs.0.conv.weight'" in message
    assert "1 unexpected, e.g. 'extra.weight'" in message
    assert "1 of another shape, e.g. 'decoder.seg_layers.0.bias' (7,) instead of (3,)" in message
    with pytest.raises(InputFileError, match="missing: train the 3d_fullres model first"):
        load_source_weights(local, str(tmp_path / "nope.pth"), "P")
    path.write_text("not a checkpoint")
    with pytest.raises(InputFileError, match="not a readable nnU-Net checkpoint"):
        load_source_weights(local, str(path), "P")
