"""Tiny random-weight model folders of every exportable architecture, built from tiny plans."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from conftest import build_network, dataset_json, tiny_plans
from inference.test_nmsw_strategies import nmsw_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from training.test_distill_dsm_trainer import dsm_plans
from training.test_unetr_trainers import unetr_plans
from training.test_uxnet_trainers import uxnet_plans

from nnunet_efficient.networks.unetr import UNETR, TokenSparseUNETR
from nnunet_efficient.networks.uxnet import RepUXNet, UXNet

LABELS = {"background": 0, "a": 1, "b": 2}
PATCH = (16, 32, 32)


def residual_encoder_plans() -> dict:
    """tiny_plans with nnU-Net's ResidualEncoderUNet (the ResEnc presets' network)."""
    plans = tiny_plans(PATCH, 1)
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    architecture["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    kwargs = architecture["arch_kwargs"]
    kwargs["n_blocks_per_stage"] = [1, 2, 2]
    del kwargs["n_conv_per_stage"]
    kwargs["n_conv_per_stage_decoder"] = [1, 1]
    return plans


def architecture_case(name: str) -> tuple[dict, str, str]:
    """``(plans, trainer name, configuration)`` of a tiny model of architecture ``name``."""
    if name == "PlainConvUNet":
        return tiny_plans(PATCH, 1), "nnUNetTrainer", "3d_fullres"
    if name == "ResidualEncoderUNet":
        return residual_encoder_plans(), "nnUNetTrainer", "3d_fullres"
    if name in ("UXNet", "RepUXNet"):
        plans = uxnet_plans(UXNet if name == "UXNet" else RepUXNet, patch=PATCH, kernel=21)
        plans.pop("continue_training")
        return plans, f"nnUNetTrainer{name}", "3d_fullres"
    if name == "NMSW":
        return nmsw_plans(), "nnUNetTrainerNMSW", "3d_nmsw"
    if name == "DistillDSM":
        plans = dsm_plans(patch=PATCH)
        plans.pop("continue_training")
        return plans, "nnUNetTrainerDistillDSM", "3d_fullres"
    if name in ("UNETR", "TokenSparseUNETR"):
        plans = unetr_plans(UNETR if name == "UNETR" else TokenSparseUNETR, patch=[16, 32, 32],
                            strides=[[1, 1, 1]] + [[2, 2, 2]] * 4)
        plans.pop("continue_training")
        return plans, f"nnUNetTrainer{name}", "3d_fullres"
    raise ValueError(name)


ARCHITECTURES = ("PlainConvUNet", "ResidualEncoderUNet", "UXNet", "RepUXNet", "NMSW", "DistillDSM", "UNETR",
                 "TokenSparseUNETR")
#: fixed spatial axes: the token grid is built for the patch
STATIC = ("UNETR", "TokenSparseUNETR")


def build(plans: dict, configuration: str, seed: int = 0) -> torch.nn.Module:
    dataset = dataset_json(1, LABELS)
    if configuration == "3d_fullres":
        return build_network(plans, dataset, seed)
    from nnunet_efficient.training.nmsw import nnUNetTrainerNMSW

    manager = PlansManager(plans)
    torch.manual_seed(seed)
    return nnUNetTrainerNMSW.build_network_architecture(manager, manager.get_configuration(configuration), 1, 3)


def write_architecture_model(root: Path, name: str, folds=(0,)) -> tuple[Path, dict[str, torch.nn.Module]]:
    """A model folder of architecture ``name`` (one seed per fold) and its PyTorch networks per fold.

    The networks are as trained (RepUX-Net unfolded); the checkpoints hold their weights.
    """
    plans, trainer, configuration = architecture_case(name)
    plans_name = plans["plans_name"]
    folder = root / f"{trainer}__{plans_name}__{configuration}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json(1, LABELS)))
    networks = {}
    for seed, fold in enumerate(folds):
        network = build(copy.deepcopy(plans), configuration, seed).eval()
        if name == "TokenSparseUNETR":
            spread_token_scores(network, seed)
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save({"network_weights": network.state_dict(), "trainer_name": trainer,
                    "init_args": {"configuration": configuration}, "inference_allowed_mirroring_axes": (0, 1, 2)},
                   folder / f"fold_{fold}" / "checkpoint_final.pth")
        networks[str(fold)] = network
    return folder, networks


def spread_token_scores(network: torch.nn.Module, seed: int) -> None:
    """Give the score predictors' last layers trained-like spread.

    Freshly initialised, they score every token within about 1e-6 of log(1/2), so which tokens are
    kept hangs on rounding, and onnxruntime and PyTorch round differently. A trained predictor's
    scores lie far apart; this puts a random weight of scale 1 in each predictor's output layer.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if type(module).__name__ == "ScorePredictor":
                head = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
                head.weight.copy_(torch.randn(head.weight.shape, generator=generator))


class FixedSizeNet(torch.nn.Module):
    """A tiny network whose forward only works at its construction size (a learned position map, as a
    transformer's positional embedding): the kind an export must keep at fixed spatial axes."""

    def __init__(self, input_channels: int, num_classes: int, patch_size, deep_supervision: bool = False):
        super().__init__()
        self.position = torch.nn.Parameter(torch.randn(1, 4, *patch_size) * 0.1)
        self.stem = torch.nn.Conv3d(input_channels, 4, 3, padding=1)
        self.head = torch.nn.Conv3d(4, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.stem(x) + self.position))


def fixed_size_plans() -> dict:
    plans = tiny_plans(PATCH, 1)
    plans["configurations"]["3d_fullres"]["architecture"] = {
        "network_class_name": "export.models.FixedSizeNet", "arch_kwargs": {"patch_size": list(PATCH)},
        "_kw_requires_import": []}
    return plans
