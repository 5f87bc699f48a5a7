"""``nnunet-efficient benchmark``: several inference strategies on the same cases, model and machine.

The nnU-Net adapter of the benchmark: it loads a trained model folder once, and for every case
and strategy variant runs nnU-Net's own preprocessing, the strategy (through
:class:`EfficientPredictor`), the label export of ``nnunet-efficient predict`` and a Dice against
the reference label, timing each stage and counting MACs and peak memory of the network stage with
:mod:`nnunet_efficient.benchmark.measure`. The report (:mod:`nnunet_efficient.benchmark.report`)
compares every variant with the first ``sliding_window`` variant.

Variants are written ``STRATEGY[:KEY=VALUE[,KEY=VALUE...]]``:

- a strategy option, by its flag without dashes, optionally without the strategy's name as
  prefix (``sparse:margin=8`` = ``sparse:sparse_margin=8``; ``nmsw:k=5``);
- ``tta=0``/``tta=1``: mirroring off/on for this variant (default: on unless ``--disable_tta``);
- ``step=S``: the sliding-window step of this variant (default: ``-step_size``); ``step=auto``: the
  step recommended by the model's patch-performance maps (``-step_size auto`` in ``predict``).
  NMSW strategies do not read it (``nmsw``, ``random_fg``: the model's candidate grid; ``zoom``,
  ``global``: no grid), so a ``step`` key on them is refused; every row records the step the
  variant actually evaluated (``step_size``, None without a grid);
- ``bf16=0``/``bf16=1``: bfloat16 autocast on the CPU off/on (default: off unless ``--cpu_bf16``);
- ``model=NAME``: run this variant on the model ``--models NAME=FOLDER`` names instead of ``-m``
  (so one report compares, e.g., a stock model's sliding window with NMSW models' strategies).

Example: ``sliding_window sliding_window:tta=0 sparse sparse:tta=0,margin=0 nmsw:k=1 nmsw:k=5``.

``--regions WT=1,2,3,4 TC=1,3,4 ET=4`` adds the Dice of label unions
(:mod:`nnunet_efficient.benchmark.regions`) to every row, next to the per-label Dice.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from nnunet_efficient.benchmark.measure import PeakMemory, StageTimer, count_macs, dice_per_class, mean_dice
from nnunet_efficient.benchmark.regions import check_regions, mean_region_dice, region_dice
from nnunet_efficient.benchmark.report import BASELINE, write_report
from nnunet_efficient.common.arguments import check_batch_size, check_step_size
from nnunet_efficient.common.cases import case_id
from nnunet_efficient.errors import EfficientError, InputFileError
from nnunet_efficient.inference.predictor import EfficientPredictor
from nnunet_efficient.inference.strategies import STRATEGIES, InferenceStrategy, StrategyOption, get_strategy

PREDICTOR_KEYS = ("tta", "step", "bf16", "model")
_TRUE, _FALSE = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def _parse_bool(text: str, what: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise EfficientError(f"{what}: expected 0 or 1, got '{text}'")


def _option_for(strategy: str, key: str) -> StrategyOption | None:
    for option in STRATEGIES[strategy].options:
        if option.dest in (key, f"{strategy}_{key}"):
            return option
    return None


def _short_key(strategy: str, dest: str) -> str:
    prefix = f"{strategy}_"
    return dest[len(prefix):] if dest.startswith(prefix) else dest


@dataclass(frozen=True)
class Variant:
    """One strategy with its options, as a column of the benchmark.

    Attributes:
        strategy: registered strategy name.
        options: strategy options given in the variant (option ``dest`` → typed value).
        tta: mirroring for this variant, or None for the benchmark's default.
        step: sliding-window step for this variant, ``"auto"`` (the model's recommendation), or None for
            the benchmark's default.
        bf16: bfloat16 autocast on the CPU for this variant, or None for the benchmark's default.
        model: name of the model (``--models NAME=FOLDER``) this variant runs on, or None for ``-m``.
    """

    strategy: str
    options: Mapping[str, Any] = field(default_factory=dict)
    tta: bool | None = None
    step: float | str | None = None
    bf16: bool | None = None
    model: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Variant:
        """Parse ``STRATEGY[:KEY=VALUE[,KEY=VALUE...]]`` (see the module docstring).

        Raises:
            EfficientError: unknown strategy or key, or a value of the wrong type.
        """
        name, _, rest = spec.partition(":")
        if name not in STRATEGIES:
            raise EfficientError(f"--strategies: unknown strategy '{name}' in '{spec}'; choose one of "
                                 f"{', '.join(sorted(STRATEGIES))}")
        options: dict[str, Any] = {}
        tta = step = bf16 = model = None
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq or not key or not value:
                raise EfficientError(f"--strategies: '{item}' in '{spec}' is not KEY=VALUE")
            what = f"--strategies {spec}: {key}"
            if key == "tta":
                tta = _parse_bool(value, what)
            elif key == "bf16":
                bf16 = _parse_bool(value, what)
            elif key == "model":
                model = value
            elif key == "step" and value == "auto":
                step = value
            elif key == "step":
                step = _parse_float(value, what)
                if not 0 < step <= 1:
                    raise EfficientError(f"{what} must be in (0, 1] or auto, got {value}")
            elif (option := _option_for(name, key)) is not None:
                if option.type is bool:
                    options[option.dest] = _parse_bool(value, what)
                else:
                    try:
                        options[option.dest] = option.type(value)
                    except ValueError:
                        raise EfficientError(f"{what}: expected {option.type.__name__}, got '{value}'") from None
            else:
                accepted = [_short_key(name, o.dest) for o in STRATEGIES[name].options] + list(PREDICTOR_KEYS)
                raise EfficientError(f"--strategies: '{name}' has no key '{key}'; it accepts {', '.join(accepted)}")
        return cls(name, options, tta, step, bf16, model)

    def build(self, defaults: Mapping[str, Any] | None = None) -> InferenceStrategy:
        """The strategy, with ``defaults`` (option dest → value) for options the variant does not set."""
        known = {o.dest for o in STRATEGIES[self.strategy].options}
        given = {k: v for k, v in (defaults or {}).items() if k in known and v is not None}
        return get_strategy(self.strategy, **{**given, **self.options})

    def report_options(self, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What tells this variant apart in the report: its own keys and non-default command-line options."""
        out: dict[str, Any] = {}
        for option in STRATEGIES[self.strategy].options:
            if option.dest in self.options:
                out[_short_key(self.strategy, option.dest)] = self.options[option.dest]
            elif (defaults or {}).get(option.dest) not in (None, option.default):
                out[_short_key(self.strategy, option.dest)] = defaults[option.dest]
        if self.tta is not None:
            out["tta"] = int(self.tta)
        if self.step is not None:
            out["step"] = self.step
        if self.bf16 is not None:
            out["bf16"] = int(self.bf16)
        if self.model is not None:
            out["model"] = self.model
        return out


def _parse_float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise EfficientError(f"{what}: expected a number, got '{text}'") from None


def variant_folder(strategy: str, options: Mapping[str, Any]) -> str:
    """Output sub-folder of a variant, e.g. ``sliding_window__tta=0``."""
    return strategy + "".join(f"__{k}={options[k]}" for k in sorted(options))


def _median(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _machine(device: torch.device) -> dict[str, Any]:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
            "torch": torch.__version__, "nnunetv2": importlib.metadata.version("nnunetv2"), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class _RecordingPredictor(EfficientPredictor):
    """Keeps the :class:`WindowRun` of every fold (``last_run`` holds only the last one)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.runs = []

    def predict_sliding_window_return_logits(self, input_image):
        logits = super().predict_sliding_window_return_logits(input_image)
        self.runs.append(self.last_run)
        return logits


class Benchmark:
    """Runs variants over cases with one loaded model; see :func:`run_benchmark`."""

    def __init__(self, model_folder: str, folds: Sequence[int | str], device: torch.device,
                 use_mirroring: bool = True, step_size: float | str = 0.5, batch_size: int = 1,
                 checkpoint_name: str = "checkpoint_final.pth", cpu_bf16: bool = False):
        check_step_size(step_size)
        check_batch_size(batch_size)
        self.use_mirroring, self.step_size, self.cpu_bf16, self.device = use_mirroring, step_size, cpu_bf16, device
        # window progress bars would fight with the benchmark's own bar
        self.model_folder, self.folds, self.auto_step = model_folder, list(folds), None
        self.predictor = _RecordingPredictor(tile_step_size=0.5 if step_size == "auto" else step_size,
                                            use_mirroring=use_mirroring, device=device,
                                            allow_tqdm=False, sw_batch_size=batch_size)
        self.predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint_name)
        if self.predictor.configuration_manager.previous_stage_name is not None:
            raise EfficientError(f"{model_folder}: cascade configurations need previous-stage predictions, "
                                 "which the benchmark does not provide")
        self.preprocessor = self.predictor.configuration_manager.preprocessor_class(verbose=False)
        self.reader_writer = self.predictor.plans_manager.image_reader_writer_class
        label_manager = self.predictor.label_manager
        self.labels = label_manager.foreground_regions if label_manager.has_regions \
            else label_manager.foreground_labels
        self.ignore_label = label_manager.ignore_label

    @property
    def file_ending(self) -> str:
        return self.predictor.dataset_json["file_ending"]

    def cases(self, images: str, reference: str) -> list[tuple[str, list[str], str]]:
        """``(case id, channel files, reference file)`` per case, every file checked before any work."""
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        from nnunet_efficient.inference.input_checks import ModelInput, check_case_files, list_cases

        p = self.predictor
        channels = determine_num_input_channels(p.plans_manager, p.configuration_manager, p.dataset_json)
        if not os.path.isdir(reference):
            raise InputFileError(reference, "reference label folder does not exist")
        model = ModelInput.of(p.plans_manager, p.configuration_manager, channels)
        out = []
        for files in list_cases(images, self.file_ending, channels):
            check_case_files(files, self.reader_writer, channels, model)
            case = case_id(files[0], self.file_ending)
            ref = os.path.join(reference, case + self.file_ending)
            if not os.path.isfile(ref):
                raise InputFileError(ref, f"reference label of case '{case}' is missing")
            out.append((case, files, ref))
        return out

    def resolve_auto_step(self) -> float:
        """The step ``auto`` stands for (the model's patch-performance recommendation); prints why, once."""
        if self.auto_step is None:
            from nnunet_efficient.patch_performance.files import resolve_auto_step

            self.auto_step, message = resolve_auto_step(self.model_folder, self.folds)
            print(message)
        return self.auto_step

    def configure(self, variant: Variant, strategy: InferenceStrategy) -> None:
        self.predictor.strategy = strategy
        self.predictor.use_mirroring = self.use_mirroring if variant.tta is None else variant.tta
        step = self.step_size if variant.step is None else variant.step
        self.predictor.tile_step_size = self.resolve_auto_step() if step == "auto" else step
        self.predictor.cpu_bf16 = self.cpu_bf16 if variant.bf16 is None else variant.bf16

    def count_macs(self, files: Sequence[str]) -> int:
        """MACs of the configured variant's network stage on one case, in an untimed pass.

        Counting is kept out of the timed passes: ``FlopCounterMode`` sends some operations
        through slow decompositions (measured 12× slower for NMSW's global pass with its
        trilinear upsampling, a few percent for a convolution-bound sliding window).
        """
        _, macs = count_macs(self.predictor.predict_logits_from_preprocessed_data, self._preprocess(files)[0])
        return macs

    def _preprocess(self, files: Sequence[str]) -> tuple[torch.Tensor, dict]:
        p = self.predictor
        data, _, properties = self.preprocessor.run_case(list(files), None, p.plans_manager,
                                                         p.configuration_manager, p.dataset_json)
        return torch.from_numpy(data), properties

    def measure(self, files: Sequence[str], output_file: str | None) -> tuple[dict[str, Any], np.ndarray]:
        """One timed pass of the configured variant over one case (MACs: :meth:`count_macs`).

        Returns:
            The measurements (``seconds`` per stage, memory, windows) and the segmentation.
        """
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        from nnunet_efficient.inference.label_export import logits_to_labels

        p = self.predictor
        # the export `nnunet-efficient predict` runs: class by class, or nnU-Net's own
        if p.bounded_export:
            export = logits_to_labels
        else:
            def export(logits, *args):
                return convert_predicted_logits_to_segmentation_with_correct_shape(
                    logits, *args[:4], num_threads_torch=args[4])
        timer = StageTimer(self.device)
        with timer.stage("preprocess"):
            data, properties = self._preprocess(files)
        p.runs = []
        with PeakMemory(self.device) as memory, timer.stage("network"):
            logits = p.predict_logits_from_preprocessed_data(data)
        runs, write_seconds = p.runs, None
        with timer.stage("export"):
            segmentation = export(logits, p.plans_manager, p.configuration_manager, p.label_manager, properties,
                                  torch.get_num_threads())
            if output_file is not None:
                write_start = timer.clock()
                self.reader_writer().write_seg(segmentation, output_file, properties)
                write_seconds = timer.clock() - write_start
        record = {
            "seconds": dict(timer.seconds), "total_seconds": timer.total,
            "windows": sum(r.windows for r in runs), "network_inputs": sum(r.network_inputs for r in runs),
            "peak_host_mib": memory.host_peak_mib, "host_delta_mib": memory.host_delta_mib,
            "peak_device_mib": memory.device_peak_mib,
            "write_seconds": write_seconds,
        }
        details = getattr(p.strategy, "last_selection", None)
        if details is not None and hasattr(details, "as_dict"):
            record["details"] = details.as_dict()
        return record, segmentation

    def dice(self, segmentation: np.ndarray, reference_file: str) -> dict[Any, float]:
        reference, _ = self.reader_writer().read_seg(reference_file)
        return dice_per_class(segmentation, reference[0], self.labels, self.ignore_label)


def run_benchmark(images: str, reference: str, model_folder: str, output: str, variants: Sequence[Variant],
                  folds: Sequence[int | str] = (0,), device: torch.device = torch.device("cpu"),
                  use_mirroring: bool = True, step_size: float | str = 0.5, batch_size: int = 1, repeat: int = 1,
                  checkpoint_name: str = "checkpoint_final.pth", cpu_bf16: bool = False,
                  strategy_defaults: Mapping[str, Any] | None = None,
                  warmup: bool = True, progress: bool = True, command: str | None = None,
                  models: Mapping[str, str] | None = None,
                  regions: Mapping[str, Sequence[int]] | None = None) -> dict[str, str]:
    """Benchmark strategy variants on a folder of cases and write the report.

    Args:
        images: nnU-Net raw image folder (``CASE_XXXX<ending>``).
        reference: folder of reference labels ``CASE<ending>``.
        model_folder: trained model folder (``TRAINER__PLANS__CONFIG``).
        output: report folder; each variant's segmentations go to ``output/<variant>/``.
        variants: what to compare (``Variant.parse``); the first ``sliding_window`` one is the baseline.
        folds: folds to ensemble.
        device: inference device.
        use_mirroring: default mirroring TTA (a variant's ``tta`` overrides it).
        step_size: default sliding-window step, or ``"auto"`` (a variant's ``step`` overrides it).
        batch_size: windows per network call.
        repeat: timed passes per case and variant; stage times and memory are their medians (MACs
            come from one extra untimed pass before them).
        checkpoint_name: checkpoint file in each ``fold_X``.
        cpu_bf16: default bfloat16 autocast on the CPU (a variant's ``bf16`` overrides it).
        strategy_defaults: strategy options from the command line (option dest → value or None).
        warmup: one untimed pass (first case, first variant) before timing.
        progress: show a progress bar over cases × variants.
        command: the command line, recorded in ``benchmark_settings.json``.
        models: more trained model folders by name, for variants with ``model=NAME``.
        regions: label unions to score too (name → labels), e.g. BraTS's ``{"WT": (1, 2, 3, 4)}``.

    Returns:
        The report files by kind (see ``report.write_report``) plus ``settings``.

    Raises:
        EfficientError: a bad argument, variant, model folder, image or reference, before any work.
    """
    from nnunet_efficient.inference.output_folder import check_output_folder

    if repeat < 1:
        raise EfficientError(f"--repeat must be >= 1, got {repeat}")
    if not variants:
        raise EfficientError("--strategies: give at least one strategy")
    strategies = [v.build(strategy_defaults) for v in variants]
    labelled = [(v.strategy, v.report_options(strategy_defaults)) for v in variants]
    names = [variant_folder(*lab) for lab in labelled]
    for name in names:
        if names.count(name) > 1:
            raise EfficientError(f"--strategies: variant {name} is listed twice")
    models = dict(models or {})
    for variant in variants:
        if variant.model is not None and variant.model not in models:
            raise EfficientError(f"--strategies: model '{variant.model}' is not named by --models NAME=FOLDER "
                                 f"(named: {', '.join(sorted(models)) or 'none'})")
    folders_by_model = {None: model_folder, **{name: models[name] for name in {v.model for v in variants} - {None}}}
    benches = {name: Benchmark(folder, folds, device, use_mirroring, step_size, batch_size, checkpoint_name, cpu_bf16)
               for name, folder in folders_by_model.items()}
    bench = benches[None]
    cases = bench.cases(images, reference)
    for name, other in benches.items():
        if name is not None and [c[0] for c in other.cases(images, reference)] != [c[0] for c in cases]:
            raise EfficientError(f"model '{name}' reads other cases from {images} than {model_folder}")
        check_regions(regions or {}, other.predictor.label_manager.foreground_labels,
                      folders_by_model[name], other.predictor.label_manager.has_regions)
    if step_size == "auto" or any(v.step == "auto" for v in variants):
        for variant in variants:  # before the first timed pass, so the message is not inside the progress bar
            if step_size == "auto" or variant.step == "auto":
                benches[variant.model].resolve_auto_step()
    check_output_folder(output)
    folders = [os.path.join(output, name) for name in names]
    for folder in folders:
        check_output_folder(folder)

    for variant, strategy in zip(variants, strategies):
        if variant.step is not None:  # a step asked for one variant must be one its strategy evaluates
            benches[variant.model].configure(variant, strategy)
            benches[variant.model].predictor.check_step_used(variant.step)

    if warmup:
        benches[variants[0].model].configure(variants[0], strategies[0])
        benches[variants[0].model].measure(cases[0][1], None)

    rows = []
    with tqdm(total=len(cases) * len(variants), desc="benchmark", unit="run", disable=not progress) as bar:
        for case, files, ref in cases:
            for variant, strategy, (name, options), folder in zip(variants, strategies, labelled, folders):
                bar.set_postfix_str(f"{case} {variant_folder(name, options)}")
                bench = benches[variant.model]
                bench.configure(variant, strategy)
                macs = bench.count_macs(files)
                records = []
                for _ in range(repeat):
                    record, segmentation = bench.measure(files, os.path.join(folder, case + bench.file_ending))
                    records.append(record)
                dice = bench.dice(segmentation, ref)
                if regions:
                    scores = region_dice(segmentation, bench.reader_writer().read_seg(ref)[0][0], regions,
                                         bench.ignore_label)
                row = {
                    "case": case, "strategy": name, "options": options,
                    "variant": variant_folder(name, options), "describe": strategy.describe(),
                    "tta": bool(bench.predictor.use_mirroring), "step_size": bench.predictor.step_used(),
                    "bf16": bench.predictor.cpu_bf16 and device.type == "cpu",
                    "batch_size": batch_size, "repeats": repeat,
                    "dice": dice, "mean_dice": mean_dice(dice), "macs": macs,
                    "model": os.path.basename(os.path.normpath(folders_by_model[variant.model])),
                    "seconds": {stage: _median([r["seconds"].get(stage) for r in records])
                                for stage in records[0]["seconds"]},
                }
                for key in ("total_seconds", "windows", "network_inputs", "peak_host_mib",
                            "host_delta_mib", "peak_device_mib", "write_seconds"):
                    row[key] = _median([r[key] for r in records])
                if regions:
                    row["region_dice"], row["mean_region_dice"] = scores, mean_region_dice(scores)
                if "details" in records[-1]:
                    row["details"] = records[-1]["details"]
                rows.append(row)
                bar.update()

    baselines = [options for name, options in labelled if name == BASELINE]
    paths = write_report(rows, output, baseline_options=baselines[0] if baselines else None)
    settings = {
        "command": command, "images": os.path.abspath(images), "reference": os.path.abspath(reference),
        "model_folder": os.path.abspath(model_folder), "folds": list(folds), "checkpoint": checkpoint_name,
        "models": {name: os.path.abspath(folder) for name, folder in models.items()},
        "regions": {name: list(labels) for name, labels in (regions or {}).items()},
        "tta_default": use_mirroring, "step_size_default": step_size, "auto_step": bench.auto_step,
        "cpu_bf16_default": cpu_bf16,
        "batch_size": batch_size, "repeat": repeat, "warmup": warmup, "variants": names,
        "machine": _machine(device),
    }
    paths["settings"] = os.path.join(output, "benchmark_settings.json")
    with open(paths["settings"], "w") as f:
        json.dump(settings, f, indent=2)
    return paths
