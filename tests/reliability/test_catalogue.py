"""The reliability catalogue: bad inputs and faults through the real commands, one clear line each.

Each case runs one ``nnunet-efficient`` command in its own process and checks what a user sees:
exactly one line on stderr naming the file or argument and the problem, exit status 1, and no
output left behind. The cases that should work (an image smaller than one window, a resumed
interrupted run, repeated predictions) check their outputs instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch
from conftest import SAMPLE, build_network, dataset_json, tiny_plans
from reliability.harness import LABELS, left_behind, run_console_script, write_image, write_preprocessed_dataset

PREDICT_FLAGS = ("-device", "cpu", "--disable_progress_bar", "--disable_tta", "-npp", "0", "-nps", "0")
WITH_TTA = ("-device", "cpu", "--disable_progress_bar", "-npp", "0", "-nps", "0")


def predict(model, images, out, *extra, flags=PREDICT_FLAGS):
    fold = () if "-f" in extra else ("-f", "0")
    return ["predict", "-i", images, "-o", out, "-m", model, *fold, *flags, *extra]


def expect_one_line(result, *fragments, out: Path | None = None) -> str:
    """Exit 1, one stderr line holding every fragment, nothing left in ``out``."""
    lines = result.error_lines
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]
    if out is not None:
        assert left_behind(out) == [], left_behind(out)
    return lines[0]


def labels_of(path: Path) -> np.ndarray:
    return np.asanyarray(nibabel.load(str(path)).dataobj)


def first_image(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]


# ---------------------------------------------------------------- image files (1-channel model)


def corrupt(folder):
    path = first_image(folder)
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    return path, "cannot be read as an image"


def truncated(folder):
    path = first_image(folder)
    path.write_bytes(path.read_bytes()[:3000])  # SimpleITK alone would read this, zero-filled
    return path, "truncated or corrupt"


def empty(folder):
    path = first_image(folder)
    path.write_bytes(b"")
    return path, "file is empty"


def wrong_ending(folder):
    path = first_image(folder)
    renamed = path.with_name(path.name.replace(".nii.gz", ".nrrd"))
    path.rename(renamed)
    return renamed, "wrong file ending"


def extra_channel(folder):
    path = first_image(folder)
    extra = path.with_name(path.name.replace("_0000", "_0001"))
    shutil.copy(path, extra)
    return extra, "unexpected channel 1"


def nan_voxels(folder):
    path = first_image(folder)
    image = nibabel.load(str(path))
    array = np.asanyarray(image.dataobj).astype(np.float32)
    array[3, 4, 5] = np.nan
    nibabel.save(nibabel.Nifti1Image(array, image.affine), str(path))
    return path, "1 voxel(s) are NaN or infinite"


def inf_voxels(folder):
    path = first_image(folder)
    image = nibabel.load(str(path))
    array = np.asanyarray(image.dataobj).astype(np.float32)
    array[:2] = np.inf
    nibabel.save(nibabel.Nifti1Image(array, image.affine), str(path))
    return path, "NaN or infinite"


def four_d(folder):
    path = first_image(folder)
    array = np.asanyarray(nibabel.load(str(path)).dataobj).astype(np.float32)
    write_image(path, np.stack([array, array], axis=-1))
    return path, "holds 2 volumes (a 4D image)"


def two_d(folder):
    path = first_image(folder)
    write_image(path, np.random.default_rng(0).normal(size=(48, 40)))
    return path, "is a 2D image (40×48); this model segments 3D volumes"


def no_images(folder):
    for path in folder.iterdir():
        path.unlink()
    return folder, "no '*_XXXX.nii.gz' images found"


IMAGE_CASES = {
    "corrupt image": (corrupt, "random bytes named CASE_0000.nii.gz"),
    "truncated image": (truncated, "a .nii.gz cut after 3000 bytes"),
    "empty image": (empty, "a 0-byte image file"),
    "wrong file ending": (wrong_ending, "a .nrrd image for a .nii.gz model"),
    "extra channel": (extra_channel, "CASE_0001 for a 1-channel model"),
    "NaN voxels": (nan_voxels, "one NaN voxel (SimpleITK would read it as 0)"),
    "Inf voxels": (inf_voxels, "+Inf voxels"),
    "4D image": (four_d, "one file holding two volumes"),
    "2D image into 3D model": (two_d, "a 2D NIfTI for a 3d_fullres model"),
    "empty input folder": (no_images, "-i folder without images"),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_bad_image_file_is_one_line(case, server, models, images, tmp_path, catalogue):
    setup, situation = IMAGE_CASES[case]
    folder = images()
    path, problem = setup(folder)
    out = tmp_path / "out"
    result = server.run(predict(models["one"], folder, out))
    expect_one_line(result, path.name if path != folder else str(folder), problem, out=out)
    catalogue.record(case, situation, result)


# ---------------------------------------------------------------- channels (2-channel model)


@pytest.fixture
def two_channel_images(tmp_path):
    folder = tmp_path / "images2"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for case in ("a", "b"):
        for channel in (0, 1):
            write_image(folder / f"{case}_{channel:04d}.nii.gz", rng.normal(size=(18, 20, 12)))
    return folder


CHANNEL_CASES = {
    "missing channel": (None, "missing channel 1", "CASE_0001 absent for a 2-channel model"),
    "channel shape": (dict(array=np.zeros((18, 20, 11))), "shape", "channel 1 one slice shorter"),
    "channel spacing": (dict(array=np.zeros((18, 20, 12)), spacing=(1.0, 1.0, 2.0)), "spacing",
                        "channel 1 with 2 mm slices"),
    "channel origin": (dict(array=np.zeros((18, 20, 12)), origin=(0.0, 0.0, 5.0)), "origin",
                       "channel 1 shifted by 5 mm"),
    "channel direction": (dict(array=np.zeros((18, 20, 12)), flip_x=True), "direction",
                          "channel 1 mirrored (x axis flipped)"),
}


@pytest.mark.parametrize("case", list(CHANNEL_CASES))
def test_channel_mismatch_is_one_line(case, server, models, two_channel_images, tmp_path, catalogue):
    change, problem, situation = CHANNEL_CASES[case]
    target = two_channel_images / "b_0001.nii.gz"
    if change is None:
        target.unlink()
    else:
        write_image(target, **change)
    out = tmp_path / "out"
    result = server.run(predict(models["two"], two_channel_images, out))
    expect_one_line(result, "b_0001.nii.gz", problem, out=out)
    catalogue.record(case, situation, result)


def test_3d_volume_into_a_2d_image_model_is_one_line(server, models, images, tmp_path, catalogue):
    out = tmp_path / "out"
    result = server.run(predict(models["2d"], images(1), out))
    expect_one_line(result, "hippocampus_038_0000.nii.gz", "is a 3D volume", "trained on 2D images", out=out)
    catalogue.record("3D image into 2D model", "a 3D volume for a model trained on 2D images", result)


def test_image_smaller_than_one_window_is_predicted_in_its_own_geometry(server, models, tmp_path, catalogue):
    folder = tmp_path / "small"
    folder.mkdir()
    write_image(folder / "tiny_0000.nii.gz", np.random.default_rng(1).normal(size=(9, 7, 5)), spacing=(1.0, 1.0, 1.0))
    out = tmp_path / "out"
    result = server.run(predict(models["one"], folder, out))  # the model's window is 40 x 56 x 40
    assert result.returncode == 0, result.stderr[-3000:]
    assert labels_of(out / "tiny.nii.gz").shape == (9, 7, 5)
    assert not [n for n in os.listdir(out) if n.startswith(".")]
    catalogue.record("image smaller than one window", "a 9×7×5 image, window 40×56×40", result,
                     expected="works (padded, cropped back)", message="predicted: tiny.nii.gz, 9×7×5")


# ---------------------------------------------------------------- the model folder


def copy_model(models, tmp_path, name="one") -> Path:
    target = tmp_path / "model"
    shutil.copytree(models[name], target)
    return target


def corrupt_checkpoint(model):
    path = model / "fold_0" / "checkpoint_final.pth"
    path.write_bytes(path.read_bytes()[:5000])
    return path, "cannot be loaded as a PyTorch checkpoint"


def other_trainer(model):
    path = model / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainerFromAnotherPlugin"
    torch.save(checkpoint, path)
    return path, "trained with trainer 'nnUNetTrainerFromAnotherPlugin'"


def other_plans(model):
    path = model / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=False)
    wider = tiny_plans((40, 56, 40), 1, features=(8, 16, 32))
    checkpoint["network_weights"] = build_network(wider, dataset_json(1, LABELS)).state_dict()
    torch.save(checkpoint, path)
    return path, "weights do not fit the network that plans.json describes"


def plans_without_configuration(model):
    path = model / "plans.json"
    plans = json.loads(path.read_text())
    plans["configurations"]["3d_lowres"] = plans["configurations"].pop("3d_fullres")
    path.write_text(json.dumps(plans))
    return path, "has no configuration '3d_fullres'"


def corrupt_plans(model):
    path = model / "plans.json"
    path.write_text(path.read_text()[:100])
    return path, "is not valid JSON"


MODEL_CASES = {
    "missing fold": (None, ("-f", "3"), "fold_3/checkpoint_final.pth", "checkpoint missing",
                     "-f 3, only fold_0 exists"),
    "missing checkpoint": (None, ("-chk", "checkpoint_best.pth"), "checkpoint_best.pth", "checkpoint missing",
                           "-chk names a file that is not there"),
    "corrupt checkpoint": (corrupt_checkpoint, (), None, None, "checkpoint_final.pth cut after 5 kB"),
    "checkpoint of another trainer": (other_trainer, (), None, None,
                                      "checkpoint names a trainer neither nnU-Net nor the plugin defines"),
    "checkpoint of other plans": (other_plans, (), None, None, "weights of a wider network than plans.json's"),
    "plans without the configuration": (plans_without_configuration, (), None, None,
                                        "plans.json lacks the checkpoint's configuration"),
    "corrupt plans.json": (corrupt_plans, (), None, None, "plans.json cut after 100 bytes"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_bad_model_folder_is_one_line(case, server, models, images, tmp_path, catalogue):
    setup, extra, name, problem, situation = MODEL_CASES[case]
    model = copy_model(models, tmp_path)
    if setup is not None:
        path, problem = setup(model)
        name = path.name
    out = tmp_path / "out"
    result = server.run(predict(model, images(1), out, *extra))
    expect_one_line(result, name, problem, out=out)
    catalogue.record(case, situation, result)


# ---------------------------------------------------------------- arguments


ARGUMENT_CASES = {
    "unknown strategy": (("--strategy", "no_such_strategy"), "--strategy", "invalid choice", 2),
    "--k 0": (("--strategy", "nmsw", "--k", "0"), "--k", "must be at least 1", 1),
    "-step_size 0": (("-step_size", "0"), "-step_size", "must be in (0, 1]", 1),
    "-part_id out of range": (("-num_parts", "2", "-part_id", "2"), "-part_id", "between 0 and", 1),
    "--batch_size 0": (("--batch_size", "0"), "--batch_size", "must be >= 1", 1),
    "-step_size not a number": (("-step_size", "half"), "-step_size", "expected a number in (0, 1] or 'auto'", 2),
}


@pytest.mark.parametrize("case", list(ARGUMENT_CASES))
def test_invalid_argument_is_one_line(case, server, models, images, tmp_path, catalogue):
    extra, name, problem, code = ARGUMENT_CASES[case]
    out = tmp_path / "out"
    result = server.run(predict(models["one"], images(1), out, *extra))
    lines = result.error_lines
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and name in lines[0] and problem in lines[0], result.stderr
    assert left_behind(out) == []
    catalogue.record(case, f"`{' '.join(extra)}`", result, expected=f"one line, exit {code}")


def test_nmsw_strategy_on_a_stock_model_is_one_line(server, models, images, tmp_path, catalogue):
    out = tmp_path / "out"
    result = server.run(predict(models["one"], images(1), out, "--strategy", "nmsw"))
    expect_one_line(result, "strategy 'nmsw' needs an NMSW model", "--strategy sliding_window", out=out)
    catalogue.record("NMSW strategy on a stock model", "`--strategy nmsw` with a plain U-Net", result)


# ---------------------------------------------------------------- the output folder


def test_output_folder_that_cannot_be_written_is_one_line(server, models, images, tmp_path, catalogue):
    if os.geteuid() == 0:  # root writes through any mode bits: a folder below a file cannot be created either
        blocker = tmp_path / "not_a_folder"
        blocker.write_text("")
        out = blocker / "out"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "out"
    result = server.run(predict(models["one"], images(1), out))
    expect_one_line(result, str(out), "cannot be written")
    assert not out.exists()
    catalogue.record("output folder not writable", "-o where folders cannot be created", result)


def test_output_folder_that_is_a_file_is_one_line(server, models, images, tmp_path, catalogue):
    out = tmp_path / "predictions"
    out.write_text("not a folder")
    result = server.run(predict(models["one"], images(1), out))
    expect_one_line(result, str(out), "is a file")
    assert out.read_text() == "not a folder"
    catalogue.record("output folder is a file", "-o names an existing file", result)


def test_output_equal_to_input_is_one_line(server, models, images, catalogue):
    folder = images()
    before = sorted(os.listdir(folder))
    result = server.run(predict(models["one"], folder, folder))
    expect_one_line(result, str(folder), "output folder is the input folder")
    assert sorted(os.listdir(folder)) == before
    catalogue.record("output equal to input", "-o is the -i folder", result)


def test_disk_full_during_export_leaves_no_file(server, models, tmp_path, catalogue):
    folder = tmp_path / "noise"
    folder.mkdir()
    write_image(folder / "noise_0000.nii.gz", np.random.default_rng(2).normal(size=(64, 64, 64)))
    out = tmp_path / "out"
    # files may grow to 8 kB: the run files fit, the label map (random weights: noisy, ~100 kB) does not
    result = server.run(predict(models["one"], folder, out), max_file_bytes=8000)
    expect_one_line(result, "noise.nii.gz", "written incompletely, disk full?", out=None)
    assert not (out / "noise.nii.gz").exists()
    assert not [n for n in left_behind(out) if n.startswith(".")]
    catalogue.record("disk full during export", "writes fail past 8 kB (RLIMIT_FSIZE, as ENOSPC would); "
                     "ITK's NIfTI writer reports success on a truncated file", result)


def test_second_process_writing_the_same_output_folder_is_refused(server, models, images, tmp_path, catalogue):
    folder, out = images(4), tmp_path / "out"
    slow = WITH_TTA
    first = server.start(predict(models["one"], folder, out, flags=slow))
    lock = out / ".nnunet_efficient_lock"
    deadline = time.time() + 120
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.02)
    second = server.run(predict(models["one"], folder, out, flags=slow))
    done = server.wait(first)
    expect_one_line(second, str(out), "another nnunet-efficient predict (pid", "is writing this output folder")
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(n for n in os.listdir(out) if n.endswith(".nii.gz"))
    assert names == [p.name.replace("_0000", "") for p in sorted(folder.iterdir())]
    for name in names:
        labels_of(out / name)  # complete files
    assert not [n for n in os.listdir(out) if n.startswith(".")]
    catalogue.record("two processes, same output folder", "a second predict into a folder being written", second)


def test_interrupted_run_keeps_complete_files_and_continue_finishes(server, models, images, tmp_path, catalogue):
    folder, out = images(4), tmp_path / "out"
    slow = WITH_TTA
    # nnU-Net's default mode: a preprocessing worker process beside the command (-npp 1)
    pid = server.start(predict(models["one"], folder, out, flags=(*slow[:-4], "-npp", "1", "-nps", "1")))
    deadline = time.time() + 300
    while not any(n.endswith(".nii.gz") for n in left_behind(out)) and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(pid, signal.SIGINT)  # Ctrl-C: the whole process group, the worker included
    interrupted = server.wait(pid)
    line = expect_one_line(interrupted, "interrupted;", "--continue_prediction")  # the worker says nothing
    kept = sorted(n for n in os.listdir(out) if n.endswith(".nii.gz"))
    assert 1 <= len(kept) < 4, "the run was not interrupted mid-way; make the cases slower"
    assert f"{len(kept)} case(s)" in line
    assert not [n for n in os.listdir(out) if n.startswith(".")], "staging folder or lock left behind"
    stamps = {n: os.path.getmtime(out / n) for n in kept}
    for name in kept:
        labels_of(out / name)
    resumed = server.run(predict(models["one"], folder, out, "--continue_prediction", flags=slow))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(kept)} case(s) already predicted, {4 - len(kept)} to go" in resumed.stdout
    names = sorted(n for n in os.listdir(out) if n.endswith(".nii.gz"))
    assert len(names) == 4
    assert all(os.path.getmtime(out / n) == stamps[n] for n in kept)
    for name in names:
        assert labels_of(out / name).shape == nibabel.load(str(folder / name.replace(".nii.gz", "_0000.nii.gz"))).shape
    catalogue.record("SIGINT mid-run", "Ctrl-C (SIGINT to the process group, a preprocessing worker included: "
                     "-npp 1 -nps 1) after the first case is written",
                     interrupted, expected="one line, exit 1; complete files only")
    catalogue.record("--continue_prediction after SIGINT", "the same command with --continue_prediction", resumed,
                     expected="works (predicts the rest)",
                     message=f"exit 0; {len(kept)} case(s) kept untouched, {4 - len(kept)} predicted")


# ---------------------------------------------------------------- the same input twice


@pytest.mark.parametrize("strategy, model", [("sliding_window", "one"), ("sparse", "one"), ("nmsw", "nmsw"),
                                             ("random_fg", "nmsw"), ("zoom", "nmsw"), ("global", "nmsw")])
def test_the_same_input_predicted_twice_gives_bit_identical_labels(strategy, model, server, models, images, tmp_path,
                                                                   catalogue):
    folder = images(1)
    outputs = [tmp_path / "first", tmp_path / "second"]
    runs = [server.run(predict(models[model], folder, out, "--strategy", strategy)) for out in outputs]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    name = "hippocampus_038.nii.gz"
    first, second = (labels_of(out / name) for out in outputs)
    assert first.dtype == second.dtype and np.array_equal(first, second)
    catalogue.record(f"repeatable labels: {strategy}", "the same image predicted twice, two processes", runs[1],
                     expected="works, bit-identical labels", message=f"identical ({first.size} voxels)")


# ---------------------------------------------------------------- plan_and_preprocess, train, benchmark


@pytest.fixture(scope="module")
def planned(workspace):
    """Dataset 901: raw and preprocessed (tiny plans 'nnUNetPlansTiny', 3d_fullres)."""
    return write_preprocessed_dataset(workspace, 901, "Reliability")


def test_plan_with_a_label_value_not_in_dataset_json_is_one_line(server, workspace, catalogue):
    write_preprocessed_dataset(workspace, 902, "BadLabel")
    label = workspace / "raw" / "Dataset902_BadLabel" / "labelsTr" / "case1.nii.gz"
    array = np.asanyarray(nibabel.load(str(label)).dataobj).copy()
    array[0, 0, 0] = 7
    write_image(label, array)
    result = server.run(["plan_and_preprocess", "-d", "902", "-c", "3d_fullres", "-np", "1", "-npfp", "1"])
    expect_one_line(result, "case1.nii.gz", "label value(s) [7]", "{0, 1, 2}")
    assert not (workspace / "preprocessed" / "Dataset902_BadLabel" / "nnUNetPlans.json").exists()
    catalogue.record("plan: label value not in dataset.json", "labelsTr/case1 holds a 7; labels are 0, 1, 2", result)


PLAN_CASES = {
    "plan: unknown planner": (("-d", "901", "-pl", "NoSuchPlanner"), "unknown planner 'NoSuchPlanner'",
                              "-pl names no planner"),
    "plan: unknown dataset": (("-d", "977"), "dataset '977' not found", "-d 977, no such dataset"),
}


@pytest.mark.parametrize("case", list(PLAN_CASES))
def test_plan_argument_errors_are_one_line(case, server, planned, catalogue):
    argv, problem, situation = PLAN_CASES[case]
    result = server.run(["plan_and_preprocess", *argv, "-c", "3d_fullres", "-np", "1", "-npfp", "1"])
    expect_one_line(result, problem)
    catalogue.record(case, situation, result)


def tamper_preprocessed_label(planned: Path) -> Path:
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    data = planned / "nnUNetPlansTiny_3d_fullres"
    dataset = nnUNetDatasetBlosc2(str(data))
    image, seg, _, properties = dataset.load_case("case1")
    seg = np.asarray(seg[:]).copy()
    seg[0, 0, 0, 0] = 5
    image = np.asarray(image[:])
    del dataset
    for name in ("case1.b2nd", "case1_seg.b2nd", "case1.pkl"):
        (data / name).unlink()
    nnUNetDatasetBlosc2.save_case(image, seg, properties, str(data / "case1"))
    return data / "case1_seg.b2nd"


TRAIN_CASES = {
    "train: unknown trainer": (("901", "3d_fullres", "0", "-p", "nnUNetPlansTiny", "-tr", "nnUNetTrainerNope"),
                               "unknown trainer 'nnUNetTrainerNope'", "-tr names no trainer"),
    "train: plans without the configuration": (("901", "3d_nmsw", "0", "-p", "nnUNetPlansTiny"),
                                               "has no configuration '3d_nmsw'", "-c 3d_nmsw, plans lack it"),
    "train: dataset not planned": (("901", "3d_fullres", "0", "-p", "nnUNetPlansCPU"),
                                   "nnUNetPlansCPU.json: missing", "-p names plans never made"),
    "train: fold not a number": (("901", "3d_fullres", "x", "-p", "nnUNetPlansTiny"),
                                 "fold must be a number >= 0 or 'all'", "fold 'x'"),
    "train: missing positional": (("901", "-p", "nnUNetPlansTiny"), "the following arguments are required",
                                  "no CONFIGURATION FOLD"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_setup_errors_are_one_line(case, server, planned, catalogue):
    argv, problem, situation = TRAIN_CASES[case]
    result = server.run(["train", *argv, "-device", "cpu"])
    lines = result.error_lines
    code = 2 if "required" in problem else 1
    assert result.returncode == code and len(lines) == 1 and problem in lines[0], result.stderr[-3000:]
    assert not (planned.parent.parent / "results" / "Dataset901_Reliability").exists()
    catalogue.record(case, situation, result, expected=f"one line, exit {code}")


def test_train_with_a_preprocessed_label_not_in_dataset_json_is_one_line(server, planned, catalogue):
    seg = tamper_preprocessed_label(planned)
    result = server.run(["train", "901", "3d_fullres", "0", "-p", "nnUNetPlansTiny", "-device", "cpu"])
    expect_one_line(result, seg.name, "label value(s) [5]")
    catalogue.record("train: label value not in dataset.json", "a preprocessed label map holds a 5 "
                     "(labels changed after preprocessing, or stock preprocessing without checks)", result)


def benchmark(model, images, reference, out, *extra):
    return ["benchmark", "-i", images, "-ref", reference, "-m", model, "-f", "0", "-o", out, "-device", "cpu",
            "--disable_progress_bar", "--disable_tta", "--no_warmup", *extra]


def test_benchmark_errors_are_one_line(server, models, images, tmp_path, catalogue):
    reference, out = SAMPLE / "labelsTs", tmp_path / "bench"
    cases = {
        "benchmark: unknown strategy": ((images(1, "a"), reference, "--strategies", "sliding_window", "nope"),
                                        "unknown strategy 'nope'", "--strategies lists 'nope'"),
        "benchmark: missing reference": ((images(1, "b"), tmp_path, "--strategies", "sliding_window"),
                                         "reference label of case 'hippocampus_038' is missing",
                                         "-ref without the case's label"),
        "benchmark: --repeat 0": ((images(1, "c"), reference, "--repeat", "0"), "--repeat must be >= 1",
                                  "--repeat 0"),
    }
    folder = images(1, "d")
    gzip_cut = first_image(folder)
    gzip_cut.write_bytes(gzip_cut.read_bytes()[:3000])
    cases["benchmark: truncated image"] = ((folder, reference), "truncated or corrupt", "a .nii.gz cut after 3000 B")
    for case, (argv, problem, situation) in cases.items():
        result = server.run(benchmark(models["one"], *argv[:2], out, *argv[2:]))
        expect_one_line(result, problem, out=out)
        catalogue.record(case, situation, result)


# ---------------------------------------------------------------- the console script itself


def test_console_script_answers_as_the_fork_server_does(server, models, images, command_env, tmp_path, catalogue):
    folder = images(1)
    truncated(folder)
    argv = predict(models["one"], folder, tmp_path / "out", flags=PREDICT_FLAGS[:-4])  # default -npp, -nps
    cold = run_console_script(argv, command_env)
    forked = server.run(argv)
    assert (cold.returncode, cold.error_lines) == (forked.returncode, forked.error_lines)
    expect_one_line(cold, "truncated or corrupt", out=tmp_path / "out")
    catalogue.record("truncated image (console script)", "as 'truncated image', `nnunet-efficient` started afresh, "
                     "default -npp/-nps", cold)
