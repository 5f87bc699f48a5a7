"""Shared fixtures: real data locations, tiny plans and untrained-but-valid model folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NNUNET_EFFICIENT_SHARED_DATA", REPO.parent / "shared" / "data"))
SAMPLE = REPO / "examples" / "Dataset990_HippocampusSample"


def shared_dataset(name: str) -> Path:
    """A dataset of ../shared/data, or skip: it is absent outside this project's machines and CI."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name} not found at {path} (set NNUNET_EFFICIENT_SHARED_DATA)")
    return path


def run_command(command, env, log, expect_ok: bool = True) -> subprocess.CompletedProcess:
    """Run a real command with its output in ``log``; unless told otherwise, require success (log tail on failure)."""
    with open(log, "w") as handle:
        result = subprocess.run([str(c) for c in command], env=env, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    if expect_ok:
        assert result.returncode == 0, f"{command[0]} failed, see {log}:\n" + Path(log).read_text()[-3000:]
    return result


def hippocampus_workspace(work: Path, dataset: str, n_train: int, n_test: int,
                          **extra_env: str) -> tuple[Path, dict[str, str]]:
    """The first ``n_train + n_test`` shared Hippocampus cases linked as nnU-Net raw dataset ``dataset``.

    The first ``n_train`` are imagesTr/labelsTr, the rest imagesTs/labelsTs. Returns the raw dataset
    folder and an environment with nnU-Net's folders under ``work`` and the plugin on ``nnUNet_extTrainer``.
    """
    source = shared_dataset("Dataset004_Hippocampus")
    raw = work / "raw" / dataset
    cases = sorted(f[:-len(".nii.gz")] for f in os.listdir(source / "labelsTr"))[:n_train + n_test]
    for kind in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (raw / kind).mkdir(parents=True)
    for split, names in (("Tr", cases[:n_train]), ("Ts", cases[n_train:])):
        for case in names:
            (raw / f"images{split}" / f"{case}_0000.nii.gz").symlink_to(source / "imagesTr" / f"{case}_0000.nii.gz")
            (raw / f"labels{split}" / f"{case}.nii.gz").symlink_to(source / "labelsTr" / f"{case}.nii.gz")
    spec = json.loads((source / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({**spec, "numTraining": n_train}))
    export = subprocess.run([Path(sys.executable).parent / "nnunet-efficient", "env"], capture_output=True,
                            text=True, check=True).stdout
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "pre"),
               nnUNet_results=str(work / "res"), nnUNet_n_proc_DA="1",
               nnUNet_extTrainer=export.strip().split("=", 1)[1].strip("'"), **extra_env)
    return raw, env


def sample_workspace(root: Path, cases: list[str], n_train: int) -> dict[str, str]:
    """The shipped sample's ``cases`` as raw dataset 990 under ``root/raw`` (one fold: the first ``n_train``
    train, the rest validate); returns the environment for nnU-Net's commands with the plugin's trainers."""
    from nnunet_efficient.common.plugin_env import ext_trainer_folder

    raw = root / "raw" / SAMPLE.name
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    for case in cases:
        shutil.copy(SAMPLE / "imagesTr" / f"{case}_0000.nii.gz", raw / "imagesTr")
        shutil.copy(SAMPLE / "labelsTr" / f"{case}.nii.gz", raw / "labelsTr")
    dataset = json.loads((SAMPLE / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({**dataset, "numTraining": len(cases)}))
    # copied to nnUNet_preprocessed by the planner
    (raw / "splits_final.json").write_text(json.dumps([{"train": cases[:n_train], "val": cases[n_train:]}]))
    return {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"),
            "nnUNet_results": str(root / "results"), "nnUNet_extTrainer": ext_trainer_folder(),
            "nnUNet_compile": "0", "nnUNet_def_n_proc": "1"}


def predict_held_out(work: Path, raw: Path, env: dict[str, str], name: str, stock: list | None = None,
                     plugin: list | None = None) -> Path:
    """Predict ``raw/imagesTs`` into ``work/pred_<name>`` without mirroring, with stock ``nnUNetv2_predict``
    (``stock``: its model arguments, e.g. ``["-d", "991", "-p", PLANS, "-tr", TRAINER, "-c", "3d_fullres"]``) or
    the plugin's ``predict`` (``plugin``: e.g. ``["-m", MODEL, "--strategy", "sliding_window"]``); checks that
    every held-out case got a label map of its image's size with the Hippocampus labels only."""
    import numpy as np
    import SimpleITK as sitk

    bin_folder = Path(sys.executable).parent
    out = work / f"pred_{name}"
    if stock is not None:
        command = [bin_folder / "nnUNetv2_predict", *stock, "-npp", "1", "-nps", "1"]
    else:
        command = [bin_folder / "nnunet-efficient", "predict", *plugin, "--disable_progress_bar", "-npp", "0",
                   "-nps", "0"]
    run_command([*command, "-i", raw / "imagesTs", "-o", out, "-f", "0", "-device", "cpu", "--disable_tta"], env,
                work / f"{name}.log")
    for label_file in sorted(os.listdir(raw / "labelsTs")):
        image = sitk.ReadImage(str(raw / "imagesTs" / label_file.replace(".nii.gz", "_0000.nii.gz")))
        segmentation = sitk.ReadImage(str(out / label_file))
        assert segmentation.GetSize() == image.GetSize()
        assert set(np.unique(sitk.GetArrayFromImage(segmentation))) <= {0, 1, 2}
    return out


def label_agreement(first: Path, second: Path) -> float:
    """The smallest fraction of equal voxels over the label maps the two folders share (all of ``first``)."""
    import numpy as np
    import SimpleITK as sitk

    return min(float(np.mean(sitk.GetArrayFromImage(sitk.ReadImage(str(first / name)))
                             == sitk.GetArrayFromImage(sitk.ReadImage(str(second / name)))))
               for name in sorted(os.listdir(first)) if name.endswith(".nii.gz"))


def tiny_plans(patch_size, num_input_channels: int, features=(4, 8, 16), spacing=(1.0, 1.0, 1.0),
               plans_name: str = "nnUNetPlansTiny") -> dict:
    """A complete nnU-Net plans dict with a small PlainConvUNet, as a planner would write it."""
    n_stages = len(features)
    configuration = {
        "data_identifier": f"{plans_name}_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch_size),
        "median_image_size_in_voxels": list(patch_size),
        "spacing": list(spacing),
        "normalization_schemes": ["ZScoreNormalization"] * num_input_channels,
        "use_mask_for_norm": [False] * num_input_channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": list(features),
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * n_stages,
                "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1),
                "n_conv_per_stage": [2] * n_stages,
                "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset999_Test",
        "plans_name": plans_name,
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": list(patch_size),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(c): {"max": 5.0, "mean": 0.0, "median": 0.0, "min": -5.0, "percentile_00_5": -3.0,
                     "percentile_99_5": 3.0, "std": 1.0} for c in range(num_input_channels)},
    }


def dataset_json(num_input_channels: int, labels: dict[str, int]) -> dict:
    return {"channel_names": {str(c): f"ch{c}" for c in range(num_input_channels)}, "labels": labels,
            "numTraining": 0, "file_ending": ".nii.gz"}


def build_network(plans: dict, dataset: dict, seed: int = 0, configuration: str = "3d_fullres",
                  trainer_class=None) -> torch.nn.Module:
    """The seeded, untrained network ``trainer_class`` (default nnU-Net's) builds for ``configuration``."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    torch.manual_seed(seed)
    return (trainer_class or nnUNetTrainer).build_network_architecture(
        manager, manager.get_configuration(configuration), len(dataset["channel_names"]), len(dataset["labels"]),
        enable_deep_supervision=False)


def write_model_folder(folder: Path, plans: dict, dataset: dict, trainer_name: str = "nnUNetTrainer",
                       folds=(0,), seed: int = 0, configuration: str = "3d_fullres", trainer_class=None) -> Path:
    """An nnU-Net model folder (plans, dataset.json, checkpoints) holding a seeded, untrained network."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    network = build_network(plans, dataset, seed, configuration, trainer_class)
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dimensions = len(PlansManager(plans).get_configuration(configuration).patch_size)  # resolves inherits_from
    for fold in folds:
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save({"network_weights": network.state_dict(), "trainer_name": trainer_name,
                    "init_args": {"configuration": configuration},
                    "inference_allowed_mirroring_axes": tuple(range(dimensions))},
                   folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


@pytest.fixture(scope="session")
def hippocampus_model(tmp_path_factory) -> Path:
    """Untrained 1-channel, 3-class model with a Hippocampus-sized patch."""
    plans = tiny_plans((40, 56, 40), 1)
    return write_model_folder(tmp_path_factory.mktemp("model") / "nnUNetTrainer__nnUNetPlansTiny__3d_fullres",
                              plans, dataset_json(1, {"background": 0, "Anterior": 1, "Posterior": 2}))


@pytest.fixture
def sample_images(tmp_path) -> Path:
    """A writable copy of two held-out images of the shipped Hippocampus sample."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in sorted(os.listdir(SAMPLE / "imagesTs"))[:2]:
        shutil.copy(SAMPLE / "imagesTs" / name, folder / name)
    return folder


@pytest.fixture
def empty_results(tmp_path, monkeypatch) -> Path:
    """nnU-Net's results (and preprocessed) folders, empty: a trainer's plan checks must fail before it creates
    anything there. nnU-Net 2.8 reads these variables when it uses them, so setting them here is enough."""
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    return tmp_path
