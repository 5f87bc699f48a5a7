"""``nnunet-efficient compare``: several trainers trained at one budget and judged on the same images.

For each entry ``TRAINER[:PLANS[:CONFIGURATION]]`` it

1. plans and preprocesses the dataset if the plans are missing (with the planner that writes
   them: ``nnUNetPlansUXNetCPU`` → ``nnUNetPlannerUXNetCPU``, ``nnUNetPlans`` → nnU-Net's);
2. turns the budget into a schedule: ``--iterations N`` trains every entry N iterations;
   ``--minutes M`` first times a few of the trainer's own training steps (in a child process,
   :mod:`nnunet_efficient.benchmark.train_step_timing`) and gives each entry the iterations
   that fit in M minutes of training-step time — CPU time of the training process on the CPU,
   wall time on a GPU — so a cheap network gets more iterations than a costly one;
3. trains it with nnU-Net's own training (``nnunet-efficient train``) under the plugin's
   short-schedule name ``TRAINER_<E>epochs_<I>iters`` (nnU-Net's per-epoch validation and final
   validation are outside the budget), on the CPU with the torch threads its steps were timed
   with (``--torch_threads``); the schedule keeps checkpoints at fractions of the budget
   (default ¼, ½, ¾; the schedule name's ``_keep`` part, :mod:`nnunet_efficient.training.schedules`);
4. predicts the held-out images with ``nnunet-efficient benchmark`` (nnU-Net's sliding window,
   mirroring as ``--disable_tta`` says) for Dice per class, seconds per case, peak memory, and
   scores the kept checkpoints the same way (learning curves);
5. writes one table: CSV, Markdown, a Dice-vs-seconds PNG, and the learning curves (held-out
   Dice against training minutes, :mod:`nnunet_efficient.benchmark.curves`).

An entry may carry a seed (``TRAINER[:PLANS[:CONFIGURATION]][@SEED]``, or ``--seeds N`` for
every entry): each seed is its own run (schedule name ``_seed<S>``); runs of one entry share its
timing and schedule, and the table gives their mean and spread.

It resumes: ``compare_state.json`` in the output folder records each run's schedule, timing
and results under the budget; a run whose model has ``checkpoint_final.pth`` is not
retrained, one interrupted mid-training continues with ``--c`` (checkpoints it already kept
stay), one already predicted (or a kept checkpoint already scored) is not predicted again. A
progress line per entry and stage says where it is.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from nnunet_efficient.common.files import atomic_write_json, atomic_write_text
from nnunet_efficient.dataset_checks import dataset_name as resolve_dataset_name
from nnunet_efficient.errors import EfficientError

STATE_FILE = "compare_state.json"
#: Where the learning curves get their points besides the end: fractions of each entry's budget.
DEFAULT_SNAPSHOT_FRACTIONS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class Entry:
    """One contender: a trainer class name with the plans and configuration it trains on, and the
    seed of this run (None: unseeded, as nnU-Net trains)."""

    trainer: str
    plans: str = "nnUNetPlans"
    configuration: str = "3d_fullres"
    seed: int | None = None

    @classmethod
    def parse(cls, spec: str) -> Entry:
        """``TRAINER[:PLANS[:CONFIGURATION]][@SEED]``.

        Example:
            >>> Entry.parse("nnUNetTrainerUXNet:nnUNetPlansUXNetCPU")
            Entry(trainer='nnUNetTrainerUXNet', plans='nnUNetPlansUXNetCPU', configuration='3d_fullres', seed=None)
            >>> Entry.parse("nnUNetTrainer@1").seed
            1
        """
        from nnunet_efficient.training.schedules import parse_schedule_name

        spec_without_seed, at, seed = spec.partition("@")
        if at and not (seed.isdigit() and seed.isascii()):
            raise EfficientError(f"entry '{spec}': the seed after '@' must be a whole number >= 0, got '{seed}'")
        parts = spec_without_seed.split(":")
        if not 1 <= len(parts) <= 3 or not all(parts):
            raise EfficientError(f"entry '{spec}': expected TRAINER[:PLANS[:CONFIGURATION]][@SEED]")
        if parse_schedule_name(parts[0]) is not None:
            raise EfficientError(f"entry '{spec}': give the trainer without a schedule suffix; compare sets "
                                 f"epochs and iterations from the budget")
        return cls(*parts, **({"seed": int(seed)} if at else {}))

    @property
    def base(self) -> Entry:
        """The entry without its seed: all its runs share the timing and the schedule."""
        return Entry(self.trainer, self.plans, self.configuration)

    @property
    def label(self) -> str:
        return f"{self.trainer}:{self.plans}:{self.configuration}" + ("" if self.seed is None else f"@{self.seed}")


def expand_seeds(entries: Sequence[Entry], seeds: int | None) -> list[Entry]:
    """With ``seeds`` = N, every entry without a seed becomes N runs with seeds 0 … N−1.

    Example:
        >>> [e.label for e in expand_seeds([Entry("A"), Entry("B", seed=7)], 2)]
        ['A:nnUNetPlans:3d_fullres@0', 'A:nnUNetPlans:3d_fullres@1', 'B:nnUNetPlans:3d_fullres@7']
    """
    if seeds is None:
        return list(entries)
    if seeds < 1:
        raise EfficientError(f"--seeds must be >= 1, got {seeds}")
    return [run for entry in entries
            for run in ([entry] if entry.seed is not None else [replace(entry, seed=s) for s in range(seeds)])]


@dataclass(frozen=True)
class Budget:
    """Training budget shared by all entries: ``iterations`` or ``minutes`` of training steps."""

    iterations: int | None = None
    minutes: float | None = None
    iterations_per_epoch: int = 50

    def __post_init__(self):
        if (self.iterations is None) == (self.minutes is None):
            raise EfficientError("give exactly one budget: --iterations N or --minutes M")
        if self.iterations is not None and self.iterations < 1:
            raise EfficientError(f"--iterations must be >= 1, got {self.iterations}")
        if self.minutes is not None and not self.minutes > 0:
            raise EfficientError(f"--minutes must be > 0, got {self.minutes}")
        if self.iterations_per_epoch < 1:
            raise EfficientError(f"--iterations_per_epoch must be >= 1, got {self.iterations_per_epoch}")

    @property
    def key(self) -> str:
        """Identifies the budget in the state file (a new budget trains anew)."""
        amount = f"{self.iterations}iters" if self.iterations is not None else f"{self.minutes:g}min"
        return f"{amount}_{self.iterations_per_epoch}per_epoch"

    def epochs(self, seconds_per_iteration: float | None = None) -> int:
        """Epochs of ``iterations_per_epoch`` that the budget buys (at least one)."""
        if self.iterations is not None:
            return max(1, math.ceil(self.iterations / self.iterations_per_epoch))
        if not seconds_per_iteration or seconds_per_iteration <= 0:
            raise ValueError("a minutes budget needs the measured seconds per iteration")
        iterations = self.minutes * 60 / seconds_per_iteration
        return max(1, round(iterations / self.iterations_per_epoch))


def schedule_trainer_name(entry: Entry, epochs: int, iterations_per_epoch: int,
                          keep_epochs: Sequence[int] = ()) -> str:
    from nnunet_efficient.training.schedules import schedule_name

    return schedule_name(entry.trainer, epochs, iterations_per_epoch, entry.seed, tuple(keep_epochs))


def model_folder(dataset_name: str, trainer_name: str, entry: Entry) -> str:
    from nnunetv2.paths import nnUNet_results

    return os.path.join(nnUNet_results, dataset_name, f"{trainer_name}__{entry.plans}__{entry.configuration}")


class Comparison:
    """Runs the entries of one comparison; see the module docstring and :func:`run_compare`."""

    def __init__(self, dataset: str | int, entries: Sequence[Entry], budget: Budget, fold: int | str,
                 images: str, reference: str, output: str, device: str = "cpu", use_mirroring: bool = True,
                 timing_iterations: int = 5, jobs: int = 1, log=print, repredict: bool = False,
                 snapshot_fractions: Sequence[float] = DEFAULT_SNAPSHOT_FRACTIONS):
        from nnunet_efficient.benchmark.curves import check_snapshot_fractions
        from nnunet_efficient.common.plugin_env import register_plugin_trainers

        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            if not os.environ.get(name):
                raise EfficientError(f"environment variable {name} is not set (nnU-Net's data folders)")
        register_plugin_trainers()  # children (nnUNetv2_train, the benchmark) inherit it
        if len(set(entries)) != len(entries):
            raise EfficientError("an entry is listed twice")
        if not os.path.isdir(images):
            raise EfficientError(f"{images}: image folder does not exist")
        if not os.path.isdir(reference):
            raise EfficientError(f"{reference}: reference label folder does not exist")
        self.dataset_name = resolve_dataset_name(dataset)
        self.entries, self.budget, self.fold = list(entries), budget, fold
        self.images, self.reference, self.output = images, reference, output
        if jobs < 1:
            raise EfficientError(f"--jobs must be >= 1, got {jobs}")
        self.device, self.use_mirroring, self.timing_iterations, self.jobs, self.log = device, use_mirroring, \
            timing_iterations, jobs, log
        self.repredict = repredict
        self.snapshot_fractions = check_snapshot_fractions(snapshot_fractions)
        self.curve: list[dict[str, Any]] = []  # learning-curve points of every run, filled by run()
        self._lock = threading.Lock()
        for entry in self.entries:
            self._check_trainer(entry)
        os.makedirs(os.path.join(output, "logs"), exist_ok=True)
        self.state_path = os.path.join(output, STATE_FILE)
        self.state = self._load_state()

    # -- state ---------------------------------------------------------------------------------
    def _load_state(self) -> dict:
        if not os.path.isfile(self.state_path):
            return {}
        try:
            with open(self.state_path) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            raise EfficientError(f"{self.state_path}: unreadable compare state ({error}); move it away to "
                                 f"start afresh") from None

    def _record(self, entry: Entry) -> dict:
        with self._lock:
            budget = self.state.setdefault(self.dataset_name, {}).setdefault(f"fold_{self.fold}", {}) \
                .setdefault(self.budget.key, {})
            return budget.setdefault(entry.label, {})

    def _update(self, entry: Entry, **values: Any) -> dict:
        """Sets ``values`` in the entry's record and writes the state file (trainings may run in threads)."""
        record = self._record(entry)
        with self._lock:
            record.update(values)
            atomic_write_json(self.state_path, self.state)
        return record

    # -- steps ---------------------------------------------------------------------------------
    @staticmethod
    def _check_trainer(entry: Entry) -> None:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        try:
            recursive_find_trainer_class_by_name(entry.trainer)
        except (RuntimeError, AssertionError):
            raise EfficientError(f"entry '{entry.label}': unknown trainer '{entry.trainer}'") from None

    def _progress(self, index: int, entry: Entry, message: str) -> None:
        self.log(f"[{index + 1}/{len(self.entries)}] {entry.label}: {message}", flush=True)

    @staticmethod
    def _run(what: str, command: list[str], log_file: str, env: dict | None = None) -> dict:
        """Runs ``command`` with output to ``log_file``; returns wall seconds and the child's peak RSS."""
        start = time.perf_counter()
        with open(log_file, "a") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**os.environ, **(env or {})})
            _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            with open(log_file) as log:
                tail = [line.strip() for line in log.read().splitlines() if line.strip()][-1:]
            raise EfficientError(f"{what} failed (exit {process.returncode}); see {log_file}"
                                 + (f": {tail[0]}" if tail else ""))
        # ru_maxrss is in KiB on Linux
        return {"wall_seconds": time.perf_counter() - start, "peak_rss_mib": usage.ru_maxrss / 1024}

    def ensure_preprocessed(self, index: int, entry: Entry) -> None:
        from nnunetv2.paths import nnUNet_preprocessed

        from nnunet_efficient.planners import planner_for_plans
        from nnunet_efficient.planners.api import plan_and_preprocess

        folder = os.path.join(nnUNet_preprocessed, self.dataset_name)
        plans_file = os.path.join(folder, entry.plans + ".json")
        if os.path.isfile(plans_file):
            with open(plans_file) as f:
                configurations = json.load(f)["configurations"]
            if entry.configuration not in configurations:
                raise EfficientError(f"{plans_file}: no configuration '{entry.configuration}' "
                                     f"(has {', '.join(configurations)})")
            identifier = configurations[entry.configuration].get("data_identifier")
            parent = configurations[entry.configuration].get("inherits_from")
            if identifier is None and parent is not None:
                identifier = configurations[parent].get("data_identifier")
            if identifier is not None and os.path.isdir(os.path.join(folder, identifier)):
                return
        planner = planner_for_plans(entry.plans)
        if planner is None:
            raise EfficientError(f"{plans_file}: plans '{entry.plans}' missing and no known planner writes them; "
                                 f"run nnunet-efficient plan_and_preprocess -d {self.dataset_name} -pl ... first")
        self._progress(index, entry, f"planning and preprocessing with {planner.__name__}")
        plan_and_preprocess([int(self.dataset_name[7:10])], planner, configurations=[entry.configuration],
                            num_processes_fingerprint=2, num_processes=[2], progress_bar=False)

    def ensure_timing(self, index: int, entry: Entry) -> dict:
        entry = entry.base  # one timing per entry, shared by its seeds (so they share one schedule)
        record = self._record(entry)
        if "timing" in record:
            return record["timing"]
        self._progress(index, entry, f"timing {self.timing_iterations} training iterations")
        log_file = os.path.join(self.output, "logs", f"{entry.trainer}__{entry.plans}__{entry.configuration}"
                                                     f".timing.log")
        with tempfile.TemporaryDirectory(prefix="nnunet_efficient_timing_") as scratch:
            result_file = os.path.join(scratch, "timing.json")
            self._run(f"{entry.label}: timing", [sys.executable, "-m", "nnunet_efficient.benchmark.train_step_timing",
                       "--dataset", self.dataset_name, "--configuration", entry.configuration,
                       "--fold", str(self.fold), "--trainer", entry.trainer, "--plans", entry.plans,
                       "--device", self.device, "--iterations", str(self.timing_iterations),
                       "--output", result_file],
                      log_file, env={"nnUNet_results": scratch, "nnUNet_n_proc_DA": "0"})
            with open(result_file) as f:
                return self._update(entry, timing=json.load(f))["timing"]

    def ensure_trained(self, index: int, entry: Entry, timing: dict) -> str:
        record = self._record(entry)
        if "trainer_name" not in record:
            from nnunet_efficient.benchmark.curves import snapshot_epochs

            epochs = self.budget.epochs(timing["seconds_per_iteration"] if self.budget.minutes else None)
            keep = snapshot_epochs(self.snapshot_fractions, epochs)
            self._update(entry, trainer_name=schedule_trainer_name(entry, epochs, self.budget.iterations_per_epoch,
                                                                   keep),
                         epochs=epochs, iterations=epochs * self.budget.iterations_per_epoch)
        trainer_name = record["trainer_name"]
        folder = os.path.join(model_folder(self.dataset_name, trainer_name, entry), f"fold_{self.fold}")
        if os.path.isfile(os.path.join(folder, "checkpoint_final.pth")) and "training" in record:
            if "epoch_seconds" not in record["training"]:  # state written before epoch times were recorded
                self._update(entry, training={**record["training"], "epoch_seconds": epoch_seconds(folder)})
            self._progress(index, entry, f"trained already ({trainer_name})")
            return trainer_name
        resume = os.path.isfile(os.path.join(folder, "checkpoint_latest.pth"))
        log_file = os.path.join(self.output, "logs", f"{trainer_name}__{entry.plans}__{entry.configuration}.train.log")
        self._progress(index, entry, f"{'resuming' if resume else 'training'} {record['epochs']} epochs × "
                                     f"{self.budget.iterations_per_epoch} iterations as {trainer_name} "
                                     f"(log: {log_file})")
        command = [sys.executable, "-m", "nnunet_efficient.cli.main", "train", self.dataset_name,
                   entry.configuration, str(self.fold), "-p", entry.plans, "-tr", trainer_name, "-device",
                   self.device]
        if self.device == "cpu":  # train with the threads the budget was timed with, not one per core
            command += ["--torch_threads", str(timing["torch_threads"])]
        if not os.path.isfile(os.path.join(folder, "checkpoint_final.pth")):
            run = self._run(f"{entry.label}: training", command + (["--c"] if resume else []), log_file)
            self._update(entry, training={**run, "epoch_seconds": epoch_seconds(folder)})
        else:  # trained by an earlier run whose state was lost: only nnU-Net's own epoch times are left
            self._update(entry, training={"wall_seconds": None, "peak_rss_mib": None,
                                          "epoch_seconds": epoch_seconds(folder)})
        return trainer_name

    def _predict(self, index: int, entry: Entry, trainer_name: str, checkpoint: str | None = None) -> dict:
        """Benchmarks the held-out images with the model's final checkpoint or the kept ``checkpoint``."""
        stem = f"{trainer_name}__{entry.plans}__{entry.configuration}"
        bench = os.path.join(self.output, "predictions", stem)
        log_file = os.path.join(self.output, "logs", f"{stem}.predict.log")
        if checkpoint is not None:
            bench = os.path.join(bench, os.path.splitext(checkpoint)[0])
            log_file = os.path.join(self.output, "logs", f"{stem}.{os.path.splitext(checkpoint)[0]}.predict.log")
        self._progress(index, entry, f"predicting {self.images}{f' with {checkpoint}' if checkpoint else ''} "
                                     f"(log: {log_file})")
        command = [sys.executable, "-m", "nnunet_efficient.cli.main", "benchmark", "-i", self.images,
                   "-ref", self.reference, "-m", model_folder(self.dataset_name, trainer_name, entry),
                   "-f", str(self.fold), "-o", bench, "-device", self.device, "--strategies", "sliding_window",
                   "--disable_progress_bar"] + ([] if self.use_mirroring else ["--disable_tta"]) \
            + ([] if checkpoint is None else ["-chk", checkpoint])
        self._run(f"{entry.label}: prediction", command, log_file)
        with open(os.path.join(bench, "benchmark.json")) as f:
            summary = json.load(f)["summary"][0]
        keys = ("n_cases", "mean_dice", "dice", "windows", "macs", "total_seconds", "seconds", "peak_host_mib",
                "peak_device_mib")
        return {key: summary[key] for key in keys}

    def ensure_predicted(self, index: int, entry: Entry, trainer_name: str) -> dict:
        record = self._record(entry)
        if "prediction" in record and not self.repredict:
            return record["prediction"]
        return self._update(entry, prediction=self._predict(index, entry, trainer_name))["prediction"]

    def ensure_snapshots_scored(self, index: int, entry: Entry, trainer_name: str) -> dict[str, dict]:
        """Held-out Dice of every checkpoint the schedule kept, by iterations done (``{"500": {...}}``).

        Scored once each (``--repredict`` measures only the end point again); a run trained before
        it kept checkpoints has none.
        """
        from nnunet_efficient.training.schedules import parse_schedule_name, snapshot_checkpoint_name

        folder = os.path.join(model_folder(self.dataset_name, trainer_name, entry), f"fold_{self.fold}")
        for epoch in parse_schedule_name(trainer_name).keep_epochs:
            iterations = epoch * self.budget.iterations_per_epoch
            if str(iterations) in self._record(entry).get("snapshots", {}):
                continue
            checkpoint = snapshot_checkpoint_name(iterations)
            if not os.path.isfile(os.path.join(folder, checkpoint)):
                raise EfficientError(f"{os.path.join(folder, checkpoint)}: checkpoint kept after {iterations} "
                                     f"iterations is missing (training ended without it?)")
            scores = self._predict(index, entry, trainer_name, checkpoint)
            self._update(entry, snapshots={**self._record(entry).get("snapshots", {}),
                                           str(iterations): {k: scores[k] for k in ("n_cases", "mean_dice", "dice")}})
        return self._record(entry).get("snapshots", {})

    def run(self) -> list[dict[str, Any]]:
        """Every entry through every step; returns one table row per entry.

        Planning, timing and prediction run one entry at a time; with ``jobs`` > 1 up to that many
        trainings run at once (each its own ``nnUNetv2_train`` process), which a CPU-time budget
        keeps fair: each entry gets its CPU seconds however the machine is shared.
        """
        from nnunet_efficient.benchmark.curves import curve_points

        timings = []
        for index, entry in enumerate(self.entries):
            self.ensure_preprocessed(index, entry)
            timings.append(self.ensure_timing(index, entry))
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            trainer_names = list(pool.map(lambda i: self.ensure_trained(i, self.entries[i], timings[i]),
                                          range(len(self.entries))))
        rows, self.curve = [], []
        for index, (entry, timing, trainer_name) in enumerate(zip(self.entries, timings, trainer_names)):
            prediction = self.ensure_predicted(index, entry, trainer_name)
            snapshots = self.ensure_snapshots_scored(index, entry, trainer_name)
            rows.append(table_row(entry, self._record(entry), timing, prediction, self.budget))
            self.curve += curve_points(rows[-1], snapshots)
            self._progress(index, entry, f"done: mean Dice {prediction['mean_dice']:.4f}")
        return rows


def table_row(entry: Entry, record: dict, timing: dict, prediction: dict, budget: Budget) -> dict[str, Any]:
    """One flat row of the comparison table."""
    windows = prediction.get("windows") or float("nan")
    training = record.get("training") or {}
    # nnU-Net's epoch times add up over interrupted and resumed runs; the last process's wall time does not
    wall = training.get("epoch_seconds", training.get("wall_seconds"))
    row = {
        "entry": entry.label, "trainer": entry.trainer, "plans": entry.plans, "configuration": entry.configuration,
        "seed": entry.seed, "budget": budget.key, "epochs": record["epochs"], "schedule": record["trainer_name"],
        "iterations": record["iterations"],
        "parameters": timing["parameters"], "gmacs_per_window": timing["macs_per_window"] / 1e9,
        "patch_size": "x".join(str(p) for p in timing["patch_size"]), "batch_size": timing["batch_size"],
        "train_seconds_per_iteration": timing["seconds_per_iteration"], "train_clock": timing["clock"],
        "train_wall_seconds_per_iteration": timing["wall_seconds_per_iteration"],
        "training_minutes": None if wall is None else wall / 60,
        "training_peak_host_mib": training.get("peak_rss_mib"),
        "predict_seconds_per_case": prediction["total_seconds"],
        "network_passes_per_case": windows,
        "predict_gmacs_per_case": (prediction.get("macs") or float("nan")) / 1e9,
        "predict_peak_host_mib": prediction.get("peak_host_mib"),
        "predict_peak_device_mib": prediction.get("peak_device_mib"),
        "n_cases": prediction["n_cases"], "mean_dice": prediction["mean_dice"],
    }
    for label, value in prediction["dice"].items():
        row[f"dice_{label}"] = value
    return row


def epoch_seconds(fold_folder: str) -> float | None:
    """Wall seconds of all training epochs of a finished fold, from nnU-Net's log in ``checkpoint_final.pth``.

    nnU-Net keeps every epoch's start and end time in the checkpoint and carries them over when a
    training resumes with ``--c``, so this is the whole training however often it was interrupted
    (validation and start-up not included). None when the checkpoint holds no such log.
    """
    import torch

    checkpoint = torch.load(os.path.join(fold_folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    logging = checkpoint.get("logging") or {}
    starts, ends = logging.get("epoch_start_timestamps"), logging.get("epoch_end_timestamps")
    if not starts or not ends:
        return None
    return float(sum(end - start for start, end in zip(starts, ends)))


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as a Markdown table, first entry as the reference for the Dice difference.

    Runs of one entry (seeds) make one line with their means; where an entry has several runs, the
    table adds the runs, the min–max of their mean Dice, and whether each entry's difference to the
    first exceeds the run-to-run spread (:func:`nnunet_efficient.benchmark.curves.beyond_spread`).
    """
    from nnunet_efficient.benchmark.curves import aggregate_runs

    rows = aggregate_runs(rows)
    with_seeds = any(r["runs"] > 1 for r in rows)
    dice_keys = [k for k in rows[0] if k.startswith("dice_")] if rows else []
    header = (["entry"] + (["runs"] if with_seeds else [])
              + ["iterations", "params (M)", "GMACs/window", "train s/iter", "training wall min"]
              + [f"Dice {k[5:]}" for k in dice_keys]
              + ["mean Dice"] + (["min–max"] if with_seeds else []) + ["Δ pts"]
              + (["Δ beyond spread"] if with_seeds else [])
              + ["predict s/case", "peak predict MiB", "peak train MiB"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    reference = rows[0]["mean_dice"] if rows else float("nan")
    for r in rows:
        seeds = ", ".join("–" if s is None else str(s) for s in r["seeds"])
        cells = [f"`{r['trainer']}` ({r['plans']}, {r['configuration']})"]
        cells += [f"{r['runs']} (seeds {seeds})" if r["seeds"] != [None] else "1"] if with_seeds else []
        cells += [str(r["iterations"]),
                  _fmt(r["parameters"] / 1e6, ".2f"), _fmt(r["gmacs_per_window"], ".2f"),
                  _fmt(r["train_seconds_per_iteration"], ".3f") + (" (CPU)" if r["train_clock"] == "cpu" else ""),
                  _fmt(r["training_minutes"], ".1f")]
        cells += [_fmt(r[k], ".4f") for k in dice_keys]
        cells += [_fmt(r["mean_dice"], ".4f")]
        if with_seeds:
            cells += [f"{r['mean_dice_min']:.4f}–{r['mean_dice_max']:.4f}" if r["runs"] > 1 else "–"]
        cells += [_fmt(100 * (r["mean_dice"] - reference), "+.2f")]
        if with_seeds:
            cells += [{True: "yes", False: "no", None: "–"}[r.get("beyond_spread")]]
        cells += [_fmt(r["predict_seconds_per_case"], ".2f"), _fmt(r["predict_peak_host_mib"], ".0f"),
                  _fmt(r["training_peak_host_mib"], ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    if with_seeds:
        lines += ["", "Runs of one entry differ only in their seed; numbers are their means (peak memory: the "
                      "largest). *Δ beyond spread*: the difference of mean Dice to the first entry is larger than "
                      "the larger min–max range of the two entries' runs (– where neither has two runs)."]
    return "\n".join(lines) + "\n"


def write_compare_report(rows: Sequence[dict[str, Any]], output: str, title: str,
                         curve: Sequence[dict[str, Any]] = ()) -> dict[str, str]:
    """CSV, Markdown and a Dice-vs-seconds-per-case PNG of the comparison; with ``curve`` points
    (:func:`nnunet_efficient.benchmark.curves.curve_points`) also their CSV, a Markdown section and a PNG."""
    from nnunet_efficient.benchmark.curves import (
        CURVE_NOTE,
        aggregate_runs,
        curve_markdown,
        plot_learning_curves,
    )
    from nnunet_efficient.benchmark.report import plot_pareto, write_csv

    paths = {"csv": os.path.join(output, "compare.csv"), "markdown": os.path.join(output, "compare.md"),
             "png": os.path.join(output, "compare.png")}
    write_csv(rows, paths["csv"])
    curve_section = ""
    if curve:
        paths.update(curve_csv=os.path.join(output, "compare_curve.csv"),
                     curve_png=os.path.join(output, "compare_curve.png"))
        write_csv(curve, paths["curve_csv"])
        plot_learning_curves(curve, paths["curve_png"], title.lstrip("# ").split("\n")[0] + ": learning curves")
        curve_section = (f"\n## Learning curves: held-out mean Dice during training\n\n{CURVE_NOTE} With several "
                         f"seeds: mean (min–max).\n\n{curve_markdown(curve)}\n![learning curves](compare_curve.png)\n")
    atomic_write_text(paths["markdown"], f"{title}\n\n{markdown_table(rows)}{curve_section}")
    points = [{"label": r["trainer"], "total_seconds": r["predict_seconds_per_case"], "mean_dice": r["mean_dice"],
               "is_baseline": i == 0} for i, r in enumerate(aggregate_runs(rows))]
    plot_pareto(points, paths["png"], title=title.lstrip("# ").split("\n")[0] or "Dice vs seconds per case")
    return paths


def run_compare(dataset: str | int, entries: Sequence[str], budget: Budget, fold: int | str, images: str,
                reference: str, output: str, device: str = "cpu", use_mirroring: bool = True,
                timing_iterations: int = 5, jobs: int = 1, log=print, repredict: bool = False,
                seeds: int | None = None,
                snapshot_fractions: Sequence[float] = DEFAULT_SNAPSHOT_FRACTIONS) -> dict[str, str]:
    """Train every entry at ``budget``, predict ``images``, and write the table into ``output``.

    Args:
        dataset: dataset id or name (its raw data in ``nnUNet_raw``).
        entries: ``TRAINER[:PLANS[:CONFIGURATION]][@SEED]`` strings (plans default ``nnUNetPlans``,
            configuration ``3d_fullres``, no seed: nnU-Net's unseeded training).
        budget: shared training budget.
        fold: the fold to train (``all`` for every training case).
        images, reference: held-out images (nnU-Net raw naming) and their labels, not used in training.
        output: folder for the state file, logs, predictions and the table.
        device: ``cpu``, ``cuda`` or ``mps``.
        use_mirroring: nnU-Net's mirroring test-time augmentation at prediction.
        timing_iterations: training steps timed per entry (after two warm-up steps).
        jobs: trainings run at once.
        repredict: predict every entry again even where a prediction is recorded, so that the seconds per
            case of all entries come from one run (e.g. on a machine that is now quiet); Dice does not change.
            Kept checkpoints are not scored again.
        seeds: N runs (seeds 0 … N−1) of every entry that names no seed.
        snapshot_fractions: fractions of each entry's schedule after which a checkpoint is kept and scored
            (the learning curves); empty for the end only.

    Returns:
        Paths of ``csv``, ``markdown`` and ``png``, and where there are curve points ``curve_csv`` and
        ``curve_png``.
    """
    parsed = expand_seeds([Entry.parse(e) for e in entries], seeds)
    if not parsed:
        raise EfficientError("give at least one entry")
    comparison = Comparison(dataset, parsed, budget, fold, images, reference, output, device, use_mirroring,
                            timing_iterations, jobs, log, repredict, snapshot_fractions)
    rows = comparison.run()
    amount = (f"{budget.iterations} iterations" if budget.iterations is not None
              else f"{budget.minutes:g} minutes of training steps "
                   f"({'CPU time' if device == 'cpu' else 'wall time'}) per entry")
    title = (f"# {comparison.dataset_name}, fold {fold}: {amount}, {budget.iterations_per_epoch} iterations per "
             f"epoch; Dice on {rows[0]['n_cases']} held-out cases ({os.path.abspath(images)})")
    return write_compare_report(rows, output, title, comparison.curve)
