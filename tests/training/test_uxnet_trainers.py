"""UX-Net trainers: the checks that run before nnU-Net writes anything, the network they build, the optimiser."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import dataset_json, tiny_plans

from nnunet_efficient.errors import EfficientError
from nnunet_efficient.networks.uxnet import RepUXNet, UXNet
from nnunet_efficient.training.lr_schedules import WarmupCosineLRScheduler, warmup_cosine_lr
from nnunet_efficient.training.uxnet import nnUNetTrainerRepUXNet, nnUNetTrainerUXNet

DATASET = dataset_json(1, {"background": 0, "a": 1, "b": 2})


def uxnet_plans(cls=UXNet, patch=(16, 32, 32), strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), kernel=7) -> dict:
    plans = tiny_plans(patch, 1, features=(4, 8, 16))
    plans["configurations"]["3d_fullres"]["architecture"] = {
        "network_class_name": f"{cls.__module__}.{cls.__qualname__}",
        "arch_kwargs": {"n_stages": len(strides), "features_per_stage": [4, 8, 16],
                        "strides": [list(s) for s in strides], "patch_size": list(patch), "kernel_size": kernel,
                        "blocks_per_stage": 1},
        "_kw_requires_import": [],
    }
    plans["continue_training"] = False  # nnUNetv2_train adds it before building the trainer
    return plans


def test_warmup_cosine_by_hand():
    assert [round(warmup_cosine_lr(e, 1e-3, 2, 6), 6) for e in range(6)] == \
        [5e-4, 1e-3, 1e-3, 0.000854, 5e-4, 0.000146]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupCosineLRScheduler(optimizer, 1.0, 2, 6)
    scheduler.step(4)  # nnU-Net passes the epoch
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


@pytest.mark.parametrize("trainer, plans, message", [
    (nnUNetTrainerUXNet, {**tiny_plans((16, 32, 32), 1), "continue_training": False},
     "builds dynamic_network_architectures"),
    (nnUNetTrainerRepUXNet, uxnet_plans(UXNet), "not RepUXNet"),
    (nnUNetTrainerUXNet, uxnet_plans(patch=(18, 32, 32)), "not a multiple of the network's total downsampling"),
], ids=["plain-plans", "uxnet-plans-for-repux", "patch-not-divisible"])
def test_wrong_plans_fail_in_one_line_before_anything_is_written(empty_results, trainer, plans, message):
    with pytest.raises(EfficientError, match=message) as error:
        trainer(plans, "3d_fullres", 0, DATASET, device=torch.device("cpu"))
    assert "\n" not in str(error.value)
    assert list(empty_results.iterdir()) == []


def test_2d_configuration_is_refused_in_one_line(empty_results):
    plans = uxnet_plans()
    two_d = copy.deepcopy(plans["configurations"]["3d_fullres"])
    two_d["patch_size"] = [32, 32]
    plans["configurations"]["2d"] = two_d
    with pytest.raises(EfficientError, match="3D only"):
        nnUNetTrainerUXNet(plans, "2d", 0, DATASET, device=torch.device("cpu"))
    assert list(empty_results.iterdir()) == []


@pytest.mark.parametrize("trainer, cls, lr", [(nnUNetTrainerUXNet, UXNet, 1e-3),
                                              (nnUNetTrainerRepUXNet, RepUXNet, 1e-4)])  # RepUX-Net: its reference's
def test_trainer_builds_the_plans_network_and_adamw_with_warmup(empty_results, trainer, cls, lr):
    plans = uxnet_plans(cls, kernel=7 if cls is UXNet else 21)
    t = trainer(plans, "3d_fullres", 0, DATASET, device=torch.device("cpu"))
    assert t.initial_lr == lr
    t.num_epochs = 10
    network = trainer.build_network_architecture(t.plans_manager, t.configuration_manager, 1, 3, True)
    assert type(network) is cls
    outputs = network(torch.zeros(1, 1, 16, 32, 32))
    assert [tuple(o.shape[2:]) for o in outputs] == [(16, 32, 32), (8, 16, 16)]
    t.network = network
    optimizer, scheduler = t.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == lr
    scheduler.step(0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(t.initial_lr / 1)  # 10 % of 10 epochs = 1 warm-up
    scheduler.step(9)
    assert optimizer.param_groups[0]["lr"] < 0.05 * t.initial_lr
