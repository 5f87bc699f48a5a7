"""UNETR trainers and planner rules: checks before nnU-Net writes anything, the network, the optimiser."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import dataset_json, tiny_plans

from nnunet_efficient.benchmark.compare import Comparison, Entry
from nnunet_efficient.common.plugin_env import register_plugin_trainers
from nnunet_efficient.errors import EfficientError
from nnunet_efficient.networks.unetr import UNETR, TokenSparseUNETR
from nnunet_efficient.planners import planner_for_plans, resolve_planner
from nnunet_efficient.planners.unetr_planner import nnUNetPlannerUNETR, nnUNetPlannerUNETRCPU
from nnunet_efficient.training.unetr import (
    nnUNetTrainerTokenSparseUNETR,
    nnUNetTrainerUNETR,
    vit_parameter_groups,
)

DATASET = dataset_json(1, {"background": 0, "a": 1, "b": 2})
PATCH = [32, 32, 48]
SMALL = {"embed_dim": 24, "depth": 4, "num_heads": 2, "feature_size": 4}


def unetr_plans(cls=UNETR, patch=PATCH, **kwargs) -> dict:
    plans = tiny_plans(patch, 1)
    arch_kwargs = {"patch_size": list(patch), "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4, "token_size": 8,
                   **SMALL, "drop_path_rate": 0.1}
    if cls is TokenSparseUNETR:
        arch_kwargs.update(prune_after_blocks=[0, 2], keep_ratios=[0.25, 0.25])
    arch_kwargs.update(kwargs)
    plans["configurations"]["3d_fullres"]["architecture"] = {
        "network_class_name": f"{cls.__module__}.{cls.__qualname__}", "arch_kwargs": arch_kwargs,
        "_kw_requires_import": []}
    plans["continue_training"] = False  # nnUNetv2_train adds it before building the trainer
    return plans


@pytest.mark.parametrize("trainer, plans, message", [
    (nnUNetTrainerUNETR, {**tiny_plans(PATCH, 1), "continue_training": False}, "builds dynamic_network_architectures"),
    (nnUNetTrainerUNETR, unetr_plans(TokenSparseUNETR), "not UNETR: .* train its configuration 3d_fullres"),
    (nnUNetTrainerTokenSparseUNETR, unetr_plans(UNETR), "not TokenSparseUNETR: .*3d_tokensparse_p90 or"),
    (nnUNetTrainerUNETR, unetr_plans(patch=[36, 32, 48]), r"patch_size \[36, 32, 48\] is not divisible by token_size"),
    (nnUNetTrainerUNETR, unetr_plans(patch=[40, 32, 48]), r"is not a multiple of \[16, 16, 16\]"),
    (nnUNetTrainerTokenSparseUNETR, unetr_plans(TokenSparseUNETR, keep_ratios=[0.1, 0.1]), "prune every token"),
    (nnUNetTrainerTokenSparseUNETR, unetr_plans(TokenSparseUNETR, keep_ratios=[1.2, 0.5]), r"must lie in \(0, 1\]"),
    (nnUNetTrainerTokenSparseUNETR, unetr_plans(TokenSparseUNETR, keep_ratios=[0, 0.5]), r"must lie in \(0, 1\]"),
    (nnUNetTrainerUNETR, unetr_plans(keep_ratio=0.5), "do not fit UNETR"),
], ids=["plain-plans", "sparse-plans-for-dense", "dense-plans-for-sparse", "patch-vs-token", "patch-vs-decoder",
        "prunes-everything", "ratio-above-1", "ratio-0", "unknown-kwarg"])
def test_bad_plans_fail_in_one_line_before_anything_is_written(empty_results, trainer, plans, message):
    with pytest.raises(EfficientError, match=message) as error:
        trainer(plans, "3d_fullres", 0, DATASET, device=torch.device("cpu"))
    assert "\n" not in str(error.value)
    assert list(empty_results.iterdir()) == []


def test_2d_configuration_is_refused_in_one_line(empty_results):
    plans = unetr_plans()
    two_d = copy.deepcopy(plans["configurations"]["3d_fullres"])
    two_d["patch_size"] = [32, 32]
    plans["configurations"]["2d"] = two_d
    with pytest.raises(EfficientError, match="3D only"):
        nnUNetTrainerUNETR(plans, "2d", 0, DATASET, device=torch.device("cpu"))
    assert list(empty_results.iterdir()) == []


@pytest.mark.parametrize("trainer, cls", [(nnUNetTrainerUNETR, UNETR),
                                          (nnUNetTrainerTokenSparseUNETR, TokenSparseUNETR)])
def test_trainer_builds_the_plans_network_and_scaled_adamw(empty_results, trainer, cls):
    t = trainer(unetr_plans(cls), "3d_fullres", 0, DATASET, device=torch.device("cpu"))
    assert t.initial_lr == pytest.approx(1.72e-2 * 2 / 256)  # the reference's rate per 256, batch 2
    t.num_epochs = 200
    network = trainer.build_network_architecture(t.plans_manager, t.configuration_manager, 1, 3, True)
    assert type(network) is cls
    assert network.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    # nnU-Net's deep supervision: one output per level of the plans' strides but the bottleneck
    outputs = network(torch.zeros(1, 1, *PATCH))
    assert [tuple(o.shape[2:]) for o in outputs] == [(32, 32, 48), (16, 16, 24), (8, 8, 12), (4, 4, 6)]
    t.network = network
    t.set_deep_supervision_enabled(False)
    assert network(torch.zeros(1, 1, *PATCH)).shape == (1, 3, *PATCH)
    optimizer, scheduler = t.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.95)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(network.blocks[0].attn.qkv.weight) in decayed
    assert not {id(network.blocks[0].attn.qkv.bias), id(network.pos_embed), id(network.cls_token),
                id(network.norm.weight)} & decayed
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(network.parameters()))
    # SPEC section 4's layer decay 0.75 from the top, for dense and token-sparse alike
    scale = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    depth = len(network.blocks)
    assert scale[id(network.blocks[-1].mlp[0].weight)] == pytest.approx(0.75)
    assert scale[id(network.patch_embed.weight)] == pytest.approx(0.75 ** (depth + 1))
    assert scale[id(network.decoder.seg_layers[0].weight)] == 1.0
    scheduler.step(0)  # 1 % of 200 epochs: 2 warm-up epochs
    assert optimizer.param_groups[0]["lr"] == pytest.approx(t.initial_lr / 2)
    scheduler.step(199)
    assert optimizer.param_groups[0]["lr"] < 0.01 * t.initial_lr


def test_layer_decay_scales_the_rate_from_the_top():
    torch.manual_seed(0)
    network = UNETR(1, 3, PATCH, [[1, 1, 1]] + [[2, 2, 2]] * 4, **SMALL)
    groups = vit_parameter_groups(network, 0.05, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale[id(network.patch_embed.weight)] == pytest.approx(0.5 ** 5)  # depth 4: embedding is layer 0
    assert scale[id(network.blocks[0].mlp[0].weight)] == pytest.approx(0.5 ** 4)
    assert scale[id(network.blocks[3].mlp[0].weight)] == pytest.approx(0.5)
    assert scale[id(network.decoder.seg_layers[0].weight)] == 1.0


@pytest.mark.parametrize("planner, patch, expected", [
    (nnUNetPlannerUNETRCPU, [40, 56, 40], [48, 64, 48]),       # Hippocampus: rounded up to multiples of 16
    (nnUNetPlannerUNETR, [128, 128, 128], [128, 128, 128]),     # 4096 tokens: the GPU cap
    (nnUNetPlannerUNETRCPU, [128, 128, 128], [64, 64, 64]),     # 512 tokens at most on a CPU
    (nnUNetPlannerUNETRCPU, [8, 200, 7], [16, 208, 16]),      # 2 x 26 x 2 tokens: under the cap
])
def test_planner_patch_rule(planner, patch, expected):
    # the rules only read class attributes: no dataset needed
    assert planner.unetr_patch_size(planner, patch) == expected


@pytest.mark.parametrize("patch, pruned, expected", [
    ([96, 96, 96], 0.9, [0.1, 0.1, 0.1]),     # 1728 -> 172 -> 17 -> 1
    ([48, 64, 48], 0.9, [0.1, 0.1]),          # 288 -> 28 -> 2 (a third stage would leave 0)
    ([48, 64, 48], 0.75, [0.25, 0.25, 0.25]),  # 288 -> 72 -> 18 -> 4
    ([16, 16, 16], 0.9, []),                  # 8 tokens: not even one stage
])
def test_planner_keeps_the_reference_stages_that_leave_a_token(patch, pruned, expected):
    assert nnUNetPlannerUNETRCPU.reference_keep_ratios(nnUNetPlannerUNETRCPU, patch, pruned) == expected


def test_planner_architecture_entries_build():
    planner = nnUNetPlannerUNETRCPU
    dense = planner.unetr_architecture(planner, [48, 64, 48])
    sparse = planner.unetr_architecture(planner, [48, 64, 48], [0.1, 0.1])
    assert dense["network_class_name"] == "nnunet_efficient.networks.unetr.UNETR"
    assert sparse["arch_kwargs"]["prune_after_blocks"] == [2, 5] and sparse["arch_kwargs"]["embed_dim"] == 192
    assert TokenSparseUNETR(1, 3, **sparse["arch_kwargs"]).schedule == [288, 28, 2]


@pytest.mark.parametrize("spec", ["nnUNetTrainerUNETR:nnUNetPlansUNETRCPU",
                                  "nnUNetTrainerTokenSparseUNETR:nnUNetPlansUNETRCPU:3d_tokensparse_p90",
                                  "nnUNetTrainerTokenSparseUNETR:nnUNetPlansUNETR:3d_tokensparse_p75"])
def test_compare_and_plan_commands_find_the_trainers_and_planners(monkeypatch, spec):
    monkeypatch.setenv("nnUNet_extTrainer", "")  # restored after the test
    register_plugin_trainers()  # as compare does, for nnU-Net's trainer lookup
    entry = Entry.parse(spec)
    Comparison._check_trainer(entry)  # raises for a trainer nnU-Net cannot find
    assert planner_for_plans(entry.plans) is resolve_planner(entry.plans.replace("Plans", "Planner"))
