"""The training catalogue: preemption, kills, full disks, bad checkpoints, NaN losses and changed data.

Each case drives the real ``nnunet-efficient train`` (or stock ``nnUNetv2_train`` with the plugin's
trainer) on five Hippocampus cases with tiny plans, and checks what a user sees (one line, exit 1),
what is left on disk (checkpoints intact, no ``*.partial``) and that no data-loading worker
outlives its training. One interrupted run (``interrupted``) is shared: the resume, corrupt
checkpoint, full disk and changed plans cases start from copies of its fold folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability.harness import (
    TRAINING,
    TRAINING_ARGUMENTS,
    TRAINING_DATASET,
    write_training_dataset,
)

from nnunet_efficient.common.plugin_env import ext_trainer_folder

SCHEDULE = "nnUNetTrainer_10epochs_3iters"
FOLD = f"{SCHEDULE}__nnUNetPlansTiny__3d_fullres/fold_0"


def train_argv(*extra, trainer: str = SCHEDULE) -> list[str]:
    return [*TRAINING_ARGUMENTS.split(), "-tr", trainer, "-device", "cpu", *extra]


def nnunet_efficient_train(*extra, trainer: str = SCHEDULE) -> list[str]:
    return ["train", *train_argv(*extra, "--torch_threads", "1", trainer=trainer)]


def environment(results: Path, preprocessed: Path | None = None, workers: int = 2) -> dict[str, str]:
    env = {"nnUNet_results": str(results), "nnUNet_n_proc_DA": str(workers)}
    if preprocessed is not None:
        env["nnUNet_preprocessed"] = str(preprocessed)
    return env


STOCK = {"nnUNet_extTrainer": ext_trainer_folder()}  # what `nnunet-efficient env` exports for nnUNetv2_train


def wait_for(predicate, seconds: float = 120, what: str = "condition"):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def group_members(group: int) -> list[int]:
    """Live (not zombie) processes of process group ``group``: a command and its workers."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) ": state, ppid, pgrp, ...
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry))
    return members


def assert_no_worker_left(pid: int) -> None:
    wait_for(lambda: not group_members(pid), 10, f"the workers of pid {pid} to exit")


WARNING = re.compile(r"^\S+:\d+: \w*Warning: ")


def without_python_warnings(lines: list[str]) -> list[str]:
    """Drop ``path:line: XWarning: ...`` and the source line Python prints under it.

    Stock ``nnUNetv2_train`` prints torch's FutureWarning while nnU-Net imports its trainer modules,
    with or without the plugin; ``nnunet-efficient train`` silences it (and gets no such leniency).
    """
    kept, skip_source = [], False
    for line in lines:
        if WARNING.match(line):
            skip_source = True
        elif skip_source and line.startswith(" "):
            skip_source = False
        else:
            kept.append(line)
    return kept


def expect_one_line(result, *fragments) -> str:
    lines = result.error_lines if result.program != "nnUNetv2_train" else without_python_warnings(result.error_lines)
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]
    return lines[0]


def epoch_of(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["current_epoch"]


def partial_files(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".partial"))


@pytest.fixture(scope="module")
def preprocessed(workspace) -> Path:
    """Dataset 905 in the session's nnUNet_preprocessed, with nnU-Net's 5-fold split written."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    folder = write_training_dataset(workspace)
    cases = sorted(p.name[:-len(".pkl")] for p in (folder / "nnUNetPlansTiny_3d_fullres").glob("*.pkl"))
    save_json(generate_crossval_split(cases, seed=12345, n_splits=5), str(folder / "splits_final.json"))
    return folder


def own_preprocessed(preprocessed: Path, tmp_path: Path) -> Path:
    """A copy of dataset 905 to tamper with; returns the nnUNet_preprocessed folder holding it."""
    root = tmp_path / "pre"
    shutil.copytree(preprocessed, root / TRAINING_DATASET)
    return root


@pytest.fixture(scope="module")
def interrupted(server, preprocessed, tmp_path_factory):
    """A training stopped by SIGTERM to its process group in epoch 1, after a second training was refused.

    Returns the two results and the fold folder as the interruption left it (copy it before use).
    """
    results = tmp_path_factory.mktemp("interrupted") / "results"
    fold = results / TRAINING_DATASET / FOLD
    pid = server.start(nnunet_efficient_train(), env=environment(results))
    wait_for(lambda: (fold / "checkpoint_latest.pth").exists(), what="the first checkpoint_latest.pth")
    workers = [p for p in group_members(pid) if p != pid]
    second = server.run(nnunet_efficient_train(), env=environment(results))
    os.killpg(pid, signal.SIGTERM)  # as a cluster scheduler does: the command and its workers
    first = server.wait(pid)
    members_after = group_members(pid)
    snapshot = tmp_path_factory.mktemp("snapshot") / "fold_0"
    shutil.copytree(fold, snapshot)
    return {"first": first, "second": second, "workers": workers, "left": members_after, "fold": snapshot,
            "pid": pid}


def results_from(interrupted, tmp_path) -> tuple[Path, Path]:
    """A results folder holding a copy of the interrupted fold folder: (nnUNet_results, fold folder)."""
    results = tmp_path / "results"
    fold = results / TRAINING_DATASET / FOLD
    shutil.copytree(interrupted["fold"], fold)
    return results, fold


def test_sigterm_saves_the_state_and_says_how_to_resume(interrupted, catalogue):
    first, fold = interrupted["first"], interrupted["fold"]
    line = expect_one_line(first, "interrupted by SIGTERM in epoch", "state saved to", "checkpoint_latest.pth",
                           "resume with: nnunet-efficient train", "--c")
    assert len(interrupted["workers"]) == 3, "expected 2 training and 1 validation worker while training"
    assert_no_worker_left(interrupted["pid"])
    epoch = int(line.split("in epoch ")[1].split()[0])
    assert epoch >= 1 and epoch_of(fold / "checkpoint_latest.pth") == epoch  # --c restarts the interrupted epoch
    assert not (fold / "checkpoint_final.pth").exists()
    assert partial_files(fold) == [] and not (fold / ".nnunet_efficient_training_lock").exists()
    catalogue.record("SIGTERM mid-training", "SIGTERM to the process group (command and workers) after "
                     "epoch 0's checkpoint", first, expected="one line, exit 1; state saved", section=TRAINING)


def test_second_training_on_the_same_fold_is_refused(interrupted, catalogue):
    second = interrupted["second"]
    expect_one_line(second, "another training (pid", "is running in this fold folder", FOLD)
    catalogue.record("two trainings, same fold", "a second training of the same fold while the first runs", second,
                     section=TRAINING)


def test_continue_after_sigterm_finishes_the_training(server, interrupted, tmp_path, catalogue):
    results, fold = results_from(interrupted, tmp_path)
    start_epoch = epoch_of(fold / "checkpoint_latest.pth")
    pid = server.start(nnunet_efficient_train("--c"), env=environment(results))
    resumed = server.wait(pid)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_no_worker_left(pid)
    assert epoch_of(fold / "checkpoint_final.pth") == 10
    assert not (fold / "checkpoint_latest.pth").exists()  # nnU-Net removes it at the end
    assert f"Epoch {start_epoch}\n" in resumed.stdout and f"Epoch {start_epoch - 1}\n" not in resumed.stdout
    catalogue.record("--c after SIGTERM", "the interrupted command with --c", resumed, section=TRAINING,
                     expected="works (resumes the interrupted epoch)",
                     message=f"exit 0; resumed at epoch {start_epoch}, checkpoint_final.pth after epoch 9")


def test_kill_9_leaves_the_last_checkpoint_whole_and_no_worker(server, preprocessed, tmp_path, catalogue):
    results = tmp_path / "results"
    fold = results / TRAINING_DATASET / FOLD
    pid = server.start(nnunet_efficient_train(), env=environment(results))
    wait_for(lambda: (fold / "checkpoint_latest.pth").exists(), what="checkpoint_latest.pth")
    wait_for(lambda: (epoch_of_or_none(fold / "checkpoint_latest.pth") or 0) >= 2, what="the epoch-1 checkpoint")
    assert len(group_members(pid)) == 4  # the training and its three workers
    os.kill(pid, signal.SIGKILL)  # the training only: its workers must follow on their own
    killed = server.wait(pid)
    assert killed.returncode == -signal.SIGKILL
    assert_no_worker_left(pid)
    assert epoch_of(fold / "checkpoint_latest.pth") >= 2  # loads: never half-written
    # --c resumes from it; Ctrl-C (SIGINT to the group) once it has written a new checkpoint
    before = epoch_of(fold / "checkpoint_latest.pth")
    pid = server.start(nnunet_efficient_train("--c"), env=environment(results))
    wait_for(lambda: (epoch_of_or_none(fold / "checkpoint_latest.pth") or 0) > before, what="a resumed checkpoint")
    os.killpg(pid, signal.SIGINT)
    interrupted = server.wait(pid)
    expect_one_line(interrupted, "interrupted by SIGINT in epoch", "resume with:")
    assert f"Epoch {before}\n" in interrupted.stdout and "Epoch 0\n" not in interrupted.stdout
    assert_no_worker_left(pid)
    assert partial_files(fold) == []
    catalogue.record("kill -9 mid-training", "SIGKILL to the training process alone, in epoch 2", killed,
                     expected="checkpoint intact, no orphan worker", section=TRAINING,
                     message=f"killed (exit -9); its 3 workers gone; checkpoint_latest.pth loads (epoch {before})")
    catalogue.record("--c after kill -9, then Ctrl-C", "--c, then SIGINT to the process group once it wrote a "
                     "new checkpoint", interrupted, expected="resumes; one line, exit 1", section=TRAINING)


def epoch_of_or_none(path: Path) -> int | None:
    try:
        return epoch_of(path)
    except (OSError, RuntimeError, EOFError):  # not there yet (or, without atomic writes, half-written)
        return None


@pytest.mark.parametrize("program", ["nnunet-efficient", "nnUNetv2_train"])
def test_corrupt_checkpoint_latest_at_continue_is_one_line(program, server, interrupted, tmp_path, catalogue):
    results, fold = results_from(interrupted, tmp_path)
    latest = fold / "checkpoint_latest.pth"
    latest.write_bytes(latest.read_bytes()[:5000])
    if program == "nnunet-efficient":
        result = server.run(nnunet_efficient_train("--c"), env=environment(results))
    else:
        result = server.run(train_argv("--c"), env=environment(results) | STOCK, program=program)
    line = expect_one_line(result, str(latest), "cannot be loaded, truncated or corrupt?",
                           "delete it and rerun with --c to resume from checkpoint_best.pth")
    assert line.startswith(f"{program}{' train' if program == 'nnunet-efficient' else ''}: error: ")
    assert len(latest.read_bytes()) == 5000
    catalogue.record(f"truncated checkpoint_latest.pth at --c ({program})", "checkpoint_latest.pth cut after 5 kB",
                     result, section=TRAINING)


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(server, interrupted, tmp_path, catalogue):
    results, fold = results_from(interrupted, tmp_path)
    latest = fold / "checkpoint_latest.pth"
    before = latest.read_bytes()
    # files may grow to just under a checkpoint's size: logs and JSON fit, the next checkpoint does not
    result = server.run(nnunet_efficient_train("--c"), env=environment(results), max_file_bytes=len(before) - 20000)
    expect_one_line(result, str(latest), "could not be written", "disk full?",
                    "the previous checkpoint_latest.pth is intact", "resume with:")
    assert latest.read_bytes() == before
    assert partial_files(fold) == []
    catalogue.record("disk full while writing a checkpoint", "writes fail past the checkpoint's size "
                     "(RLIMIT_FSIZE, as ENOSPC would)", result, section=TRAINING)


def test_continue_after_the_plans_changed_is_refused(server, interrupted, preprocessed, tmp_path, catalogue):
    results, fold = results_from(interrupted, tmp_path)
    pre = own_preprocessed(preprocessed, tmp_path)
    plans_file = pre / TRAINING_DATASET / "nnUNetPlansTiny.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = [16, 16, 24]
    plans_file.write_text(json.dumps(plans))
    before = (fold / "checkpoint_latest.pth").read_bytes()
    result = server.run(nnunet_efficient_train("--c"), env=environment(results, pre))
    expect_one_line(result, "checkpoint_latest.pth", "was trained with another '3d_fullres' configuration",
                    "patch_size changed", str(plans_file))
    assert (fold / "checkpoint_latest.pth").read_bytes() == before
    catalogue.record("--c after the plans changed", "patch_size 16³ → 16×16×24 in the plans after the interruption",
                     result, section=TRAINING)


def nan_images(pre: Path) -> None:
    """Overwrite every preprocessed image with NaN (as a broken normalisation would leave it)."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    data = pre / TRAINING_DATASET / "nnUNetPlansTiny_3d_fullres"
    dataset = nnUNetDatasetBlosc2(str(data))
    for case in dataset.identifiers:
        image, seg, _, properties = dataset.load_case(case)
        image, seg = np.full(image.shape, np.nan, np.float32), np.asarray(seg[:])
        for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
            (data / f"{case}{suffix}").unlink()
        nnUNetDatasetBlosc2.save_case(image, seg, properties, str(data / case))


@pytest.mark.parametrize("program", ["nnunet-efficient", "nnUNetv2_train"])
def test_nonfinite_loss_stops_without_writing_checkpoints(program, server, preprocessed, tmp_path, catalogue):
    pre = own_preprocessed(preprocessed, tmp_path)
    nan_images(pre)
    results = tmp_path / "results"
    trainer = "nnUNetTrainer_2epochs_8iters"
    env = environment(results, pre, workers=0)
    if program == "nnunet-efficient":
        result = server.run(nnunet_efficient_train(trainer=trainer), env=env)
    else:
        result = server.run(train_argv(trainer=trainer), env=env | STOCK, program=program)
    expect_one_line(result, "training stopped in epoch 0: the loss was NaN or infinite in 5 consecutive iterations",
                    "no checkpoint of this model was written", "learning rate", "NaN/Inf values in the preprocessed")
    fold = results / TRAINING_DATASET / f"{trainer}__nnUNetPlansTiny__3d_fullres" / "fold_0"
    assert not list(fold.glob("*.pth*"))
    catalogue.record(f"NaN loss ({program})", "every preprocessed image NaN; 8 iterations per epoch", result,
                     section=TRAINING)


def truncate_image(pre: Path) -> Path:
    path = pre / TRAINING_DATASET / "nnUNetPlansTiny_3d_fullres" / "hippocampus_003.b2nd"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def remove_case(pre: Path) -> Path:
    data = pre / TRAINING_DATASET / "nnUNetPlansTiny_3d_fullres"
    for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
        (data / f"hippocampus_004{suffix}").unlink()
    return data / "hippocampus_004.b2nd"


DATA_CASES = {
    "truncated preprocessed image": (truncate_image, "cannot be read, truncated or corrupt?",
                                     "hippocampus_003.b2nd cut in half"),
    "missing preprocessed case": (remove_case, "missing: case 'hippocampus_004' is listed in splits_final.json",
                                  "the three files of a case of the split deleted"),
}


@pytest.mark.parametrize("program", ["nnunet-efficient", "nnUNetv2_train"])
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_damaged_preprocessed_data_is_named_before_training(case, program, server, preprocessed, tmp_path,
                                                            catalogue):
    setup, problem, situation = DATA_CASES[case]
    pre = own_preprocessed(preprocessed, tmp_path)
    path = setup(pre)
    results = tmp_path / "results"
    env = environment(results, pre)
    if program == "nnunet-efficient":
        pid = server.start(nnunet_efficient_train(), env=env)
    else:
        pid = server.start(train_argv(), env=env | STOCK, program=program)
    result = server.wait(pid)
    expect_one_line(result, str(path), problem, "preprocess the dataset again")
    assert "Epoch 0" not in result.stdout
    assert_no_worker_left(pid)
    fold = results / TRAINING_DATASET / FOLD
    assert not fold.exists() or not list(fold.glob("*.pth*"))
    catalogue.record(f"{case} ({program})", situation, result, section=TRAINING)


def test_stock_nnunetv2_train_with_a_plugin_schedule_is_guarded_too(server, preprocessed, tmp_path, catalogue):
    """Long evidence runs use stock ``nnUNetv2_train -tr <Trainer>_<E>epochs_<I>iters``: Ctrl-C, the fold lock."""
    results = tmp_path / "results"
    fold = results / TRAINING_DATASET / FOLD
    env = environment(results) | STOCK
    pid = server.start(train_argv(), env=env, program="nnUNetv2_train")
    wait_for(lambda: (fold / "checkpoint_latest.pth").exists(), what="checkpoint_latest.pth")
    second = server.run(train_argv(), env=env, program="nnUNetv2_train")
    os.killpg(pid, signal.SIGINT)  # Ctrl-C in the terminal: the command and its workers
    first = server.wait(pid)
    expect_one_line(second, "nnUNetv2_train: error:", "another training (pid", "is running in this fold folder")
    line = expect_one_line(first, "nnUNetv2_train: error: interrupted by SIGINT in epoch", "state saved to",
                           "resume with: nnUNetv2_train " + " ".join(train_argv()) + " --c")
    assert_no_worker_left(pid)
    epoch = int(line.split("in epoch ")[1].split()[0])
    assert epoch_of(fold / "checkpoint_latest.pth") == epoch
    assert torch.load(fold / "checkpoint_latest.pth", weights_only=False)["trainer_name"] == SCHEDULE
    catalogue.record("Ctrl-C (stock nnUNetv2_train)", "SIGINT to the process group after epoch 0's checkpoint",
                     first, expected="one line, exit 1; state saved", section=TRAINING)
    catalogue.record("two trainings, same fold (stock nnUNetv2_train)", "a second nnUNetv2_train of the same fold",
                     second, section=TRAINING)
