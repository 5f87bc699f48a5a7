"""The NMSW planners' ``nmsw`` entry, from hand-made fingerprints (no files, no preprocessing).

The end-to-end run on the shipped Hippocampus sample (plans file, preprocessing, training on it)
is in tests/training/test_nmsw_training.py.
"""

import numpy as np
import pytest
import torch
from conftest import tiny_plans
from nnunetv2.configuration import ANISO_THRESHOLD
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_efficient.errors import EfficientError
from nnunet_efficient.planners import PLANNERS, resolve_planner
from nnunet_efficient.planners.nmsw_planner import nnUNetPlannerNMSW, nnUNetPlannerNMSWCPU
from nnunet_efficient.training.nmsw import build_nmsw_network


def planner_with(shapes, spacing=(1.0, 1.0, 1.0), cls=nnUNetPlannerNMSWCPU):
    """A planner object whose fingerprint holds ``shapes`` (no dataset on disk needed)."""
    planner = object.__new__(cls)
    planner.dataset_name = "Dataset999_Test"
    planner.suppress_transpose = False
    planner.overwrite_target_spacing = None
    planner.anisotropy_threshold = ANISO_THRESHOLD
    planner.dataset_fingerprint = {"spacings": [list(spacing)] * len(shapes), "shapes_after_crop": shapes}
    planner.UNet_featuremap_min_edge_length = 4
    planner.UNet_base_num_features, planner.UNet_max_features_3d = 16, 128
    planner.UNet_blocks_per_stage_encoder = (2,) * 10
    planner.UNet_blocks_per_stage_decoder = (2,) * 9
    return planner


def fullres(patch):
    return tiny_plans(patch, 1, features=(16, 32, 64))["configurations"]["3d_fullres"]


def test_planners_are_registered():
    assert resolve_planner("nnUNetPlannerNMSW") is nnUNetPlannerNMSW
    assert {"nnUNetPlannerNMSW", "nnUNetPlannerNMSWCPU"} <= set(PLANNERS)


def test_brats_sized_volume_gets_a_global_input_of_about_one_window():
    planner = planner_with([[155, 240, 240]] * 3 + [[150, 230, 235]])
    configuration = planner.plan_nmsw(fullres((48, 80, 80)))
    entry = configuration["nmsw"]
    # the canvas is nnU-Net's patch size: the 90th percentile of the shapes, at least the 3d_fullres patch;
    # the 3d_fullres patch is the local window
    assert configuration["inherits_from"] == "3d_fullres"
    assert configuration["patch_size"] == [155, 240, 240] and entry["window_size"] == [48, 80, 80]
    # factor cbrt(155*240*240 / (48*80*80)) = 3.07 > 2: ~ (50, 78, 78), rounded up to the pooling
    assert np.prod(entry["global_shape"]) <= 1.2 * 48 * 80 * 80
    assert all(2.5 < f < 3.5 for f in entry["downsampling_factors"])
    strides = np.prod(entry["global_architecture"]["arch_kwargs"]["strides"], axis=0)
    assert all(g % s == 0 for g, s in zip(entry["global_shape"], strides))
    assert (entry["step"], entry["k_train"], entry["k_infer"], entry["batch_size"]) == (0.5, 4, 5, 1)
    assert entry["global_architecture"]["arch_kwargs"]["features_per_stage"][0] == 16


def test_volume_smaller_than_the_patch_is_raised_to_the_patch_and_halved():
    configuration = planner_with([[30, 40, 30], [36, 50, 36]]).plan_nmsw(fullres((40, 56, 40)))
    assert configuration["patch_size"] == configuration["nmsw"]["window_size"] == [40, 56, 40]
    assert configuration["nmsw"]["global_shape"] == [20, 28, 20]  # the minimum downsampling, 2


def test_plans_entry_builds_a_working_nmsw_network():
    plans = tiny_plans((16, 16, 16), 1, features=(4, 8))
    planner = planner_with([[40, 36, 32]])
    planner.UNet_base_num_features, planner.UNet_max_features_3d = 4, 8
    plans["configurations"]["3d_nmsw"] = planner.plan_nmsw(plans["configurations"]["3d_fullres"])
    net = build_nmsw_network(PlansManager(plans).get_configuration("3d_nmsw"), 1, 2).eval()
    volume = plans["configurations"]["3d_nmsw"]["patch_size"]
    assert net.window_size == (16, 16, 16) and volume == [40, 36, 32]
    assert net.forward_infer(torch.randn(1, 1, *volume), k=2)["logits"].shape == (1, 2, *volume)


def test_global_unet_of_a_residual_encoder_plan_is_a_plain_unet_with_its_operations():
    plans = tiny_plans((16, 16, 16), 1, features=(4, 8))
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    kwargs = arch["arch_kwargs"]
    kwargs["n_blocks_per_stage"] = kwargs.pop("n_conv_per_stage")
    planner = planner_with([[40, 36, 32]])
    planner.UNet_base_num_features, planner.UNet_max_features_3d = 4, 8
    plans["configurations"]["3d_nmsw"] = planner.plan_nmsw(plans["configurations"]["3d_fullres"])
    global_arch = plans["configurations"]["3d_nmsw"]["nmsw"]["global_architecture"]
    assert global_arch["network_class_name"].endswith("unet.PlainConvUNet")
    assert "n_blocks_per_stage" not in global_arch["arch_kwargs"]
    assert global_arch["arch_kwargs"]["norm_op"] == kwargs["norm_op"]
    net = build_nmsw_network(PlansManager(plans).get_configuration("3d_nmsw"), 1, 2).eval()
    assert type(net.local_net).__name__ == "ResidualEncoderUNet"
    assert type(net.global_branch.unet).__name__ == "PlainConvUNet"
    assert net(torch.randn(1, 1, 40, 36, 32)).shape == (1, 2, 40, 36, 32)


def test_volume_too_small_for_a_global_unet_is_one_clear_error():
    with pytest.raises(EfficientError, match="too small for a global U-Net"):
        planner_with([[6, 6, 6]]).plan_nmsw(fullres((6, 6, 6)))


def test_plans_of_the_earlier_layout_are_refused_with_one_line():
    from nnunet_efficient.networks.nmsw_plans import nmsw_settings

    configuration = {**fullres((16, 16, 16)), "nmsw": {"volume_shape": [24, 24, 24], "global_shape": [12, 12, 12],
                                                       "global_architecture": {}}}
    with pytest.raises(EfficientError, match="earlier layout.*add_nmsw"):
        nmsw_settings(configuration)


def test_canvas_smaller_than_the_window_is_refused():
    from nnunet_efficient.networks.nmsw_plans import nmsw_settings

    configuration = {**fullres((16, 16, 16)), "nmsw": {"window_size": [20, 16, 16], "global_shape": [8, 8, 8],
                                                       "global_architecture": {}}}
    with pytest.raises(EfficientError, match=r"canvas\) \(16, 16, 16\) must be at least nmsw window_size"):
        nmsw_settings(configuration)
