"""Distill-DSM trainer and planner: plans translation, checks before anything is written, the network built."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import dataset_json, tiny_plans

from nnunet_efficient.benchmark.compare import Entry
from nnunet_efficient.errors import EfficientError
from nnunet_efficient.networks.distill_dsm import DistillDSMUNet
from nnunet_efficient.planners import PLANNERS, planner_for_plans, resolve_planner
from nnunet_efficient.planners.distill_dsm_planner import (
    distill_dsm_architecture_kwargs,
    nnUNetPlannerDistillDSM,
    nnUNetPlannerDistillDSMCPU,
)
from nnunet_efficient.training.distill_dsm import nnUNetTrainerDistillDSM

DATASET = dataset_json(1, {"background": 0, "a": 1, "b": 2})


def dsm_plans(patch=(6, 32, 32), strides=((1, 1, 1), (1, 2, 2), (1, 2, 2)), depth_axis=0, alpha=0.5) -> dict:
    plans = tiny_plans(patch, 1, features=(8, 16, 32))
    plans["configurations"]["3d_fullres"]["architecture"] = {
        "network_class_name": "nnunet_efficient.networks.distill_dsm.DistillDSMUNet",
        "arch_kwargs": {"n_stages": len(strides), "features_per_stage": [8, 16, 32][:len(strides)],
                        "strides": [list(s) for s in strides], "depth_axis": depth_axis, "alpha": alpha},
        "_kw_requires_import": [],
    }
    plans["continue_training"] = False  # nnUNetv2_train adds it before building the trainer
    return plans


# ---------------------------------------------------------------- planner


def test_planners_are_registered_with_their_plans_names_for_compare():
    # `nnunet-efficient compare -e nnUNetTrainerDistillDSM:nnUNetPlansDistillDSMCPU` plans with the planner found here
    entry = Entry.parse("nnUNetTrainerDistillDSM:nnUNetPlansDistillDSMCPU")
    assert planner_for_plans(entry.plans) is nnUNetPlannerDistillDSMCPU
    assert resolve_planner("nnUNetPlannerDistillDSMCPU") is nnUNetPlannerDistillDSMCPU
    assert PLANNERS["nnUNetPlannerDistillDSM"] is nnUNetPlannerDistillDSM
    assert planner_for_plans("nnUNetPlansDistillDSMCPU") is nnUNetPlannerDistillDSMCPU
    assert planner_for_plans("nnUNetPlansDistillDSM") is nnUNetPlannerDistillDSM


def test_isotropic_plan_cuts_slices_along_the_first_axis_and_never_pools_it():
    plain = {"n_stages": 4, "features_per_stage": [16, 32, 64, 128],
             "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]}
    kwargs = distill_dsm_architecture_kwargs(plain, (1.0, 1.0, 1.0))
    assert kwargs == {"n_stages": 4, "features_per_stage": [16, 32, 64, 128],
                      "strides": [[1, 1, 1], [1, 2, 2], [1, 2, 2], [1, 2, 2]], "depth_axis": 0, "alpha": 0.5}


def test_thick_slices_along_z_set_the_depth_axis_and_drop_depth_only_stages():
    # lowest resolution along Z (5 mm); the last nnU-Net stage pooled only along Z
    plain = {"n_stages": 4, "features_per_stage": [16, 32, 64, 128],
             "strides": [[1, 1, 1], [2, 2, 1], [2, 2, 2], [1, 1, 2]]}
    kwargs = distill_dsm_architecture_kwargs(plain, (0.8, 0.8, 5.0), alpha=1.0)
    assert kwargs["depth_axis"] == 2 and kwargs["alpha"] == 1.0
    assert kwargs["strides"] == [[1, 1, 1], [2, 2, 1], [2, 2, 1]] and kwargs["features_per_stage"] == [16, 32, 64]
    assert kwargs["n_stages"] == 3
    net = DistillDSMUNet(input_channels=1, num_classes=2, **kwargs)
    assert net(torch.zeros(1, 1, 8, 8, 3)).shape == (1, 2, 8, 8, 3)


def test_memory_estimate_is_the_networks():
    planner = object.__new__(nnUNetPlannerDistillDSMCPU)
    planner._distill_dsm_spacing = [1.0, 1.0, 1.0]
    plain = tiny_plans((40, 56, 40), 1, features=(16, 32, 64, 128))["configurations"]["3d_fullres"]
    arch = plain["architecture"]
    estimate = planner.static_estimate_VRAM_usage((40, 56, 40), 1, 3, arch["network_class_name"],
                                                  arch["arch_kwargs"], arch["_kw_requires_import"])
    network = DistillDSMUNet(input_channels=1, num_classes=3,
                             **distill_dsm_architecture_kwargs(arch["arch_kwargs"], (1.0, 1.0, 1.0)))
    assert estimate == network.compute_conv_feature_map_size((40, 56, 40)) > 0


# ---------------------------------------------------------------- trainer


@pytest.mark.parametrize("plans, message", [
    ({**tiny_plans((16, 32, 32), 1), "continue_training": False}, "builds dynamic_network_architectures"),
    (dsm_plans(patch=(6, 30, 32)), "not a multiple of the network's total downsampling"),
    (dsm_plans(strides=((1, 1, 1), (2, 2, 2), (1, 2, 2))), "pool along the depth axis 0"),
    (dsm_plans(alpha=0.25), "alpha=0.25 of 8 channels leaves 2"),
], ids=["plain-plans", "patch-not-divisible", "depth-pooled", "alpha-too-small"])
def test_wrong_plans_fail_in_one_line_before_anything_is_written(empty_results, plans, message):
    with pytest.raises(EfficientError, match=message) as error:
        nnUNetTrainerDistillDSM(plans, "3d_fullres", 0, DATASET, device=torch.device("cpu"))
    assert "\n" not in str(error.value)
    assert list(empty_results.iterdir()) == []


def test_2d_configuration_is_refused_in_one_line(empty_results):
    plans = dsm_plans()
    two_d = copy.deepcopy(plans["configurations"]["3d_fullres"])
    two_d["patch_size"] = [32, 32]
    plans["configurations"]["2d"] = two_d
    with pytest.raises(EfficientError, match="3D only"):
        nnUNetTrainerDistillDSM(plans, "2d", 0, DATASET, device=torch.device("cpu"))
    assert list(empty_results.iterdir()) == []


def test_trainer_builds_the_plans_network_with_deep_supervision_at_nnunets_scales(empty_results):
    trainer = nnUNetTrainerDistillDSM(dsm_plans(), "3d_fullres", 0, DATASET, device=torch.device("cpu"))
    network = nnUNetTrainerDistillDSM.build_network_architecture(trainer.plans_manager, trainer.configuration_manager,
                                                                 1, 3, True)
    assert type(network) is DistillDSMUNet and network.alpha == 0.5
    outputs = network(torch.zeros(2, 1, 6, 32, 32))
    scales = trainer._get_deep_supervision_scales()  # what nnU-Net downsamples the targets with
    assert [tuple(o.shape[2:]) for o in outputs] == [tuple(int(n * s) for n, s in zip((6, 32, 32), scale))
                                                     for scale in scales]
    assert np.allclose([s[0] for s in scales], 1.0)  # the depth is never downsampled
    trainer.network = network
    trainer.set_deep_supervision_enabled(False)
    assert network(torch.zeros(1, 1, 6, 32, 32)).shape == (1, 3, 6, 32, 32)
