"""Retrofit a trained stock 3d_fullres model into NMSW with nnU-Net's own commands (shipped Hippocampus sample).

plan_and_preprocess with nnUNetPlannerCPU -> stock ``nnUNetv2_train 990 3d_fullres 0 -tr
nnUNetTrainer_1epochs_2iters`` -> ``nnunet-efficient add_nmsw`` -> stock ``nnUNetv2_train 990 3d_nmsw 0
-tr nnUNetTrainerNMSWRetrofit_1epochs_2iters`` -> stock ``nnUNetv2_predict -c 3d_nmsw``. Two iterations
learn nothing measurable: the tests check what was loaded, frozen and trained, not Dice.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import SAMPLE, sample_workspace
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

PLANS = "nnUNetPlansCPU"
DATASET = "Dataset990_HippocampusSample"
SOURCE = "nnUNetTrainer_1epochs_2iters"
RETROFIT = "nnUNetTrainerNMSWRetrofit_1epochs_2iters"
FINETUNE = "nnUNetTrainerNMSWRetrofitFinetune_1epochs_1iters"
CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_007", "hippocampus_008",
         "hippocampus_011"]
CLI = [sys.executable, "-m", "nnunet_efficient.cli.main"]


def run(command, env, timeout=600):
    result = subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def small_features(architecture: dict) -> None:
    kwargs = architecture["arch_kwargs"]
    kwargs["features_per_stage"] = [4 * 2 ** i for i in range(kwargs["n_stages"])]


def weights(folder, checkpoint="checkpoint_final.pth"):
    return torch.load(folder / "fold_0" / checkpoint, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("nmsw_retrofit")
    env = sample_workspace(root, CASES, 5)
    run([*CLI, "plan_and_preprocess", "-d", "990", "-pl", "nnUNetPlannerCPU", "-c", "3d_fullres", "-np", "1",
         "-npfp", "1", "--no_pbar"], env)
    plans_file = root / "pre" / DATASET / f"{PLANS}.json"
    plans = json.loads(plans_file.read_text())
    small_features(plans["configurations"]["3d_fullres"]["architecture"])  # a CPU test: 4 base features
    plans_file.write_text(json.dumps(plans))
    env["nnUNet_n_proc_DA"] = "0"  # training: data augmentation in the main process (planning needs >= 1)
    # the stock model to retrofit, trained with nnU-Net's own command
    run(["nnUNetv2_train", "990", "3d_fullres", "0", "-tr", SOURCE, "-p", PLANS, "-device", "cpu"], env)
    # the conventional path: 3d_nmsw added to the model's own plans
    added = run([*CLI, "add_nmsw", "-d", "990", "-p", PLANS, "-tr", SOURCE], env)
    plans = json.loads(plans_file.read_text())
    small_features(plans["configurations"]["3d_nmsw"]["nmsw"]["global_architecture"])
    plans_file.write_text(json.dumps(plans))
    run(["nnUNetv2_train", "990", "3d_nmsw", "0", "-tr", RETROFIT, "-p", PLANS, "-device", "cpu"], env)
    return root, env, plans, added.stdout


def test_add_nmsw_writes_the_nmsw_planners_configuration_and_the_source(workspace):
    root, env, plans, stdout = workspace
    configuration = plans["configurations"]["3d_nmsw"]
    assert configuration["nmsw"]["retrofit_from"] == {"model_folder": f"{SOURCE}__{PLANS}__3d_fullres",
                                                      "checkpoint": "checkpoint_final.pth"}
    assert "nnUNetTrainerNMSWRetrofit" in stdout
    # the entry nnUNetPlannerNMSWCPU would plan next to the same 3d_fullres (nnU-Net reads its folders at import)
    fullres = plans["configurations"]["3d_fullres"]
    script = ("import json, sys; from nnunet_efficient.planners.nmsw_planner import nnUNetPlannerNMSWCPU; "
              "plans = json.loads(sys.argv[1]); print(json.dumps(nnUNetPlannerNMSWCPU(990).plan_nmsw("
              "plans['configurations']['3d_fullres'], plans['transpose_forward'])))")
    expected = json.loads(run([sys.executable, "-c", script, json.dumps(plans)], env).stdout.strip().splitlines()[-1])
    expected["nmsw"]["global_architecture"]["arch_kwargs"]["features_per_stage"] = \
        configuration["nmsw"]["global_architecture"]["arch_kwargs"]["features_per_stage"]
    assert {k: v for k, v in configuration["nmsw"].items() if k != "retrofit_from"} == expected["nmsw"]
    assert configuration["patch_size"] == expected["patch_size"]
    assert configuration["nmsw"]["window_size"] == fullres["patch_size"]


def test_retrofit_keeps_the_source_model_as_its_frozen_local_branch(workspace):
    from nnunet_efficient.training.nmsw import nnUNetTrainerNMSW

    root, _, plans, _ = workspace
    results = root / "results" / DATASET
    source = weights(results / f"{SOURCE}__{PLANS}__3d_fullres")["network_weights"]
    retrofit = weights(results / f"{RETROFIT}__{PLANS}__3d_nmsw")
    local = {k[len("local_net."):]: v for k, v in retrofit["network_weights"].items() if k.startswith("local_net.")}
    assert local.keys() == source.keys()
    assert all(torch.equal(local[k], source[k]) for k in source)
    # AdamW over the global branch, scorer and merge only
    manager = PlansManager(plans)
    network = nnUNetTrainerNMSW.build_network_architecture(manager, manager.get_configuration("3d_nmsw"), 1, 3)
    trainable = [n for n, p in network.named_parameters() if p.requires_grad and not n.startswith("local_net.")]
    assert trainable and len(trainable) < len([p for p in network.parameters() if p.requires_grad])
    group = retrofit["optimizer_state"]["param_groups"][0]
    assert len(group["params"]) == len(trainable) and group["weight_decay"] == 1e-5
    log = "".join(p.read_text() for p in (results / f"{RETROFIT}__{PLANS}__3d_nmsw" / "fold_0").glob("training_log*"))
    assert "Local branch loaded from" in log and "frozen" in log


def test_stock_predict_on_the_retrofit_model_runs_nmsw(workspace, tmp_path):
    """Stock nnUNetv2_predict equals ``predict --strategy nmsw`` up to float16 rounding: nnU-Net weighs its one
    canvas-sized window with its float16 Gaussian, which underflows towards the canvas's corners, where this
    untrained model's near-tied logits then round to a tie (background); tests/inference covers the exact
    characterisation. Changing only the global branch's weights changes stock prediction: it runs NMSW, not
    the local branch's sliding window."""
    root, env, _, _ = workspace
    images = tmp_path / "images"
    images.mkdir()
    for case in sorted(os.listdir(SAMPLE / "imagesTs"))[:2]:
        shutil.copy(SAMPLE / "imagesTs" / case, images / case)
    common = ["-i", images, "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1"]
    model = ["-d", "990", "-p", PLANS, "-c", "3d_nmsw", "-tr", RETROFIT, "-f", "0"]
    run(["nnUNetv2_predict", *common, *model, "-o", tmp_path / "stock"], env)
    run([*CLI, "predict", *common, *model, "-o", tmp_path / "plugin", "--strategy", "nmsw", "--disable_progress_bar"],
        env)
    folder = tmp_path / f"{RETROFIT}__{PLANS}__3d_nmsw"
    shutil.copytree(root / "results" / DATASET / folder.name, folder)
    checkpoint = weights(folder)
    heads = "global_branch.unet.decoder.seg_layers."
    last = max(int(k[len(heads):].split(".")[0]) for k in checkpoint["network_weights"] if k.startswith(heads))
    bias = f"{heads}{last}.bias"
    checkpoint["network_weights"][bias] += torch.tensor([0.0, 30.0, 0.0])
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    run(["nnUNetv2_predict_from_modelfolder", *common, "-m", folder, "-f", "0", "-o", tmp_path / "global_changed"], env)
    for case in sorted(os.listdir(images)):
        name = case.replace("_0000", "")
        stock, plugin, changed = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / out / name)))
                                  for out in ("stock", "plugin", "global_changed"))
        assert stock.shape == plugin.shape and set(np.unique(stock).tolist()) <= {0, 1, 2}
        assert (stock == plugin).mean() >= 0.995
        assert (stock != changed).mean() > 0.01


def test_finetune_variant_trains_the_local_branch_too(workspace):
    root, env, _, _ = workspace
    run(["nnUNetv2_train", "990", "3d_nmsw", "0", "-tr", FINETUNE, "-p", PLANS, "-device", "cpu"], env)
    results = root / "results" / DATASET
    source = weights(results / f"{SOURCE}__{PLANS}__3d_fullres")["network_weights"]
    tuned = weights(results / f"{FINETUNE}__{PLANS}__3d_nmsw")["network_weights"]
    conv = next(k for k in source if k.endswith("conv.weight"))
    assert not torch.equal(tuned[f"local_net.{conv}"], source[conv])


def test_source_checkpoint_that_does_not_match_the_plans_is_one_line(workspace, tmp_path):
    root, env, _, _ = workspace
    source = root / "results" / DATASET / f"{SOURCE}__{PLANS}__3d_fullres"
    wrong = tmp_path / "OtherTrainer__nnUNetPlans__3d_fullres"
    (wrong / "fold_0").mkdir(parents=True)
    checkpoint = weights(source)
    key = next(k for k in checkpoint["network_weights"] if k.endswith("conv.weight"))
    checkpoint["network_weights"][key] = torch.zeros(3, 3, 3, 3, 3)
    torch.save(checkpoint, wrong / "fold_0" / "checkpoint_final.pth")
    # another plans file sharing the preprocessed data, so the module's plans stay as they are
    pre = root / "pre" / DATASET
    plans = json.loads((pre / f"{PLANS}.json").read_text())
    (pre / "nnUNetPlansWrong.json").write_text(json.dumps({**plans, "plans_name": "nnUNetPlansWrong"}))
    run([*CLI, "add_nmsw", "-d", "990", "-p", "nnUNetPlansWrong", "-m", wrong], env)

    result = subprocess.run([*CLI, "train", "990", "3d_nmsw", "0", "-tr", RETROFIT, "-p", "nnUNetPlansWrong",
                             "-device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(wrong / "fold_0" / "checkpoint_final.pth") in lines[0]
    assert "does not match the 3d_fullres network" in lines[0] and key in lines[0]
    assert not (root / "results" / DATASET / f"{RETROFIT}__nnUNetPlansWrong__3d_nmsw").exists()
    # nnU-Net's own command stops at the same check (nnU-Net prints its traceback, the message last)
    result = subprocess.run(["nnUNetv2_train", "990", "3d_nmsw", "0", "-tr", RETROFIT, "-p", "nnUNetPlansWrong",
                             "-device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "does not match the 3d_fullres network" in result.stderr
