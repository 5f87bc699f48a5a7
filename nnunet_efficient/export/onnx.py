"""``nnunet-efficient export``: a trained model folder's network(s) to ONNX, checked with onnxruntime.

The network is loaded as :class:`~nnunet_efficient.inference.predictor.EfficientPredictor` loads
it (RepUX-Net's kernels folded), split into parts by its registered
:class:`~nnunet_efficient.export.architectures.ArchitectureSpec` and each part written as
``OUT/fold_X/<part>.onnx`` with a dynamic batch axis (and dynamic spatial axes where the
architecture allows). Beside them go ``plans.json``, ``dataset.json`` and ``onnx_export.json``
(what the onnxruntime backend needs: trainer, configuration, mirroring axes, parts, and the
checks), so ``nnunet-efficient predict --backend onnxruntime -m OUT`` runs without the
checkpoint or PyTorch's network code. A fold's ``patch_performance.json`` is copied along, so
``-step_size auto`` reads the same recommendation from the export as from the model folder.

Every file is checked against PyTorch on (1) the seeded random input it was traced with,
(2) a random input of another batch size (and, where spatial axes are dynamic, another spatial
size) and (3) a real input: a case preprocessed by the model's own preprocessing, its central
window. The largest absolute difference must stay within ``tolerance × max(1, max |PyTorch
output|)``; otherwise the export fails (non-zero exit), the files stay for inspection.

The exporter is torch's TorchScript-based one (``dynamo=False``): on this CPU it exported a tiny
U-Net in 4 s where the ``torch.export`` path took 80-100 s, with the same 1e-5 agreement.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from nnunet_efficient.common.cases import case_id
from nnunet_efficient.common.files import atomic_write_bytes
from nnunet_efficient.common.messages import one_line
from nnunet_efficient.common.modules import unwrap_network
from nnunet_efficient.errors import EfficientError, InputFileError
from nnunet_efficient.export.architectures import (
    ArchitectureSpec,
    ExportContext,
    ExportPart,
    architecture_of,
    example_input,
)
from nnunet_efficient.inference.onnxruntime_backend import (
    EXPORT_FORMAT,
    EXPORT_METADATA,
    OrtPart,
    assemble_network,
    require_onnxruntime,
)

#: ONNX opset: 17 has LayerNormalization and is read by every onnxruntime since 1.13.
OPSET = 17

#: Allowed largest |onnxruntime - PyTorch| relative to max(1, largest |PyTorch output|). Float32
#: kernels of the two runtimes sum in different orders: measured 1e-7 to 4e-6 relative on random and
#: real inputs (docs/onnx.md); InstanceNorm over near-constant windows amplifies that, hence the margin.
DEFAULT_TOLERANCE = 1e-4


@dataclass
class Check:
    """One comparison of an ONNX file with PyTorch.

    Attributes:
        fold: the fold.
        part: the part (``network``, ``global``, ...) or ``pipeline`` (NMSW's whole inference).
        input: ``random``, ``random, other shape`` or ``real (CASE)``.
        shape: shape of the (first) input.
        max_abs_diff: largest absolute difference over all outputs.
        scale: max(1, largest |PyTorch output|).
        tolerance: allowed ``max_abs_diff / scale``.
        label_mismatches: voxels whose argmax differs (logits outputs only), or None.
    """

    fold: str
    part: str
    input: str
    shape: tuple[int, ...]
    max_abs_diff: float
    scale: float
    tolerance: float
    label_mismatches: int | None = None

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_diff <= self.tolerance * self.scale)

    def line(self) -> str:
        labels = "" if self.label_mismatches is None else f", {self.label_mismatches} label(s) differ"
        return (f"fold {self.fold} {self.part:<10} {self.input:<24} {str(tuple(self.shape)):<22} "
                f"max |ORT - PyTorch| = {self.max_abs_diff:.2e} (tolerance {self.tolerance:g} x {self.scale:.3g})"
                f"{labels}  {'ok' if self.passed else 'FAILED'}")


@dataclass
class ExportReport:
    """What :func:`export_model_folder` wrote and measured."""

    output_folder: str
    architecture: str
    kind: str
    spatial: str
    spatial_note: str
    folds: list[str]
    files: dict[str, str]
    checks: list[Check] = field(default_factory=list)
    real_input: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def summary(self) -> str:
        axes = ("dynamic batch and spatial axes" if self.spatial == "dynamic"
                else "dynamic batch axis, fixed spatial axes")
        lines = [f"exported {self.architecture} ({self.kind}) to {self.output_folder} in {self.seconds:.1f} s",
                 f"  {axes}: {self.spatial_note}",
                 *(f"  fold_X/{name}.onnx: {description}" for name, description in self.files.items()),
                 f"  real input: {self.real_input}",
                 *(f"  {c.line()}" for c in self.checks)]
        worst = max(self.checks, key=lambda c: c.max_abs_diff / c.scale / c.tolerance, default=None)
        if worst is not None:
            lines.append(f"largest difference {worst.max_abs_diff:.2e} (fold {worst.fold}, {worst.part}, "
                         f"{worst.input}) against tolerance {worst.tolerance:g} x {worst.scale:.3g}: "
                         f"{'passed' if self.passed else 'FAILED'}")
        return "\n".join(lines)


def export_model_folder(model_folder: str, folds: Sequence[int | str], output_folder: str,
                        checkpoint_name: str = "checkpoint_final.pth", check_images: Sequence[str] | None = None,
                        tolerance: float = DEFAULT_TOLERANCE, log: Callable[[str], None] = print) -> ExportReport:
    """Export a trained model folder's network to ONNX and check it with onnxruntime.

    Args:
        model_folder: ``TRAINER__PLANS__CONFIG`` folder.
        folds: folds to export (``fold_X/<checkpoint_name>`` each).
        output_folder: created if missing; receives ``plans.json``, ``dataset.json``,
            ``onnx_export.json`` and ``fold_X/<part>.onnx``.
        checkpoint_name: checkpoint file name in each fold folder.
        check_images: the channel files of one case for the real-input check; None: the first case
            of ``$nnUNet_raw/<dataset>/imagesTr`` (or ``imagesTs``) when it exists, else the check is skipped.
        tolerance: see :data:`DEFAULT_TOLERANCE`.
        log: where progress lines go.

    Returns:
        The report; ``report.passed`` is False when a check exceeded the tolerance.

    Raises:
        InputFileError: missing model file, output folder is a file, unreadable image.
        EfficientError: unregistered architecture, a part the exporter cannot translate,
            onnxruntime missing.
    """
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    from nnunet_efficient.inference.predictor import EfficientPredictor

    require_onnxruntime()
    if tolerance <= 0:
        raise EfficientError(f"--tolerance must be > 0, got {tolerance}")
    if os.path.exists(output_folder) and not os.path.isdir(output_folder):
        raise InputFileError(output_folder, "is a file; the export is written into a folder (-o)")
    if os.path.isdir(model_folder) and os.path.realpath(output_folder) == os.path.realpath(model_folder):
        raise EfficientError(f"{output_folder}: -o is the model folder itself; give another folder")
    start = time.perf_counter()
    predictor = EfficientPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, list(folds), checkpoint_name)
    network = unwrap_network(predictor.network).eval()
    spec = architecture_of(network)
    num_channels = determine_num_input_channels(predictor.plans_manager, predictor.configuration_manager,
                                                predictor.dataset_json)
    context = ExportContext(num_channels, tuple(int(p) for p in predictor.configuration_manager.patch_size),
                            predictor.configuration_manager.configuration)
    real_volume, real_name = _real_volume(predictor, check_images, num_channels)

    from nnunet_efficient.inference.output_folder import check_output_folder

    check_output_folder(output_folder)
    folds = [str(f) for f in folds]
    report = ExportReport(os.path.abspath(output_folder), type(network).__name__, spec.kind, spec.spatial,
                          spec.spatial_note, folds, {}, real_input=real_name)
    for fold, parameters in zip(folds, predictor.list_of_parameters):
        network.load_state_dict(parameters)  # RepUX-Net converts the unfolded weights on loading
        network.eval()
        parts = spec.parts(network, context)
        report.files = {p.name: p.description for p in parts}
        os.makedirs(os.path.join(output_folder, f"fold_{fold}"), exist_ok=True)
        for part in parts:
            path = os.path.join(output_folder, f"fold_{fold}", f"{part.name}.onnx")
            log(f"fold {fold}: exporting {part.name} -> {path}")
            _export_part(part, path, spec)
            report.checks += _check_part(part, path, fold, tolerance,
                                         None if real_volume is None else (real_name, real_volume), network, context)
        if spec.kind == "nmsw":
            report.checks.append(_check_nmsw_pipeline(network, output_folder, fold, parts, tolerance,
                                                      real_volume, real_name, context))
    _copy_step_recommendations(model_folder, output_folder, folds)
    _write_metadata(output_folder, predictor, spec, report, folds,
                    _configuration_name(model_folder, folds[0], checkpoint_name))
    report.seconds = time.perf_counter() - start
    return report


# ---------------------------------------------------------------------------------------------- export
def _export_part(part: ExportPart, path: str, spec: ArchitectureSpec) -> None:
    module = part.module.eval()
    requires_grad = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in requires_grad:  # no autograd while tracing: UX-Net's FFT training path must not be taken
        p.requires_grad_(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the TorchScript exporter is deprecated in favour of torch.export (module docstring); tracer
            # warnings name Python checks of input sizes, which the graph does not need
            warnings.simplefilter("ignore")
            torch.onnx.export(module, part.inputs, path, input_names=list(part.input_names),
                              output_names=list(part.output_names), dynamic_axes=part.dynamic_axes,
                              opset_version=OPSET, do_constant_folding=True, dynamo=False)
    except Exception as error:
        # the exporter's first line says what failed; later lines dump the whole TorchScript graph
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[0][:300] if lines else one_line(error)
        raise EfficientError(f"cannot export {spec.name} (part '{part.name}') to ONNX: {reason}") from None
    finally:
        for p, flag in requires_grad:
            p.requires_grad_(flag)


# ---------------------------------------------------------------------------------------------- checks
def _compare(torch_out, ort_out, fold: str, part: str, name: str, shape, tolerance: float,
             logits: bool) -> Check:
    torch_out = torch_out if isinstance(torch_out, (tuple, list)) else (torch_out,)
    ort_out = ort_out if isinstance(ort_out, (tuple, list)) else (ort_out,)
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(torch_out, ort_out))
    scale = max(1.0, max(float(a.float().abs().max()) for a in torch_out))
    mismatches = None
    if logits and torch_out[0].shape[1] > 1:
        mismatches = int((torch_out[0].argmax(1) != ort_out[0].argmax(1)).sum())
    return Check(fold, part, name, tuple(shape), diff, scale, tolerance, mismatches)


def _other_shape(x: torch.Tensor, spatial_dynamic: bool) -> list[int]:
    """Batch 1 (traced with 2) and, where spatial axes are dynamic, the first spatial axis doubled."""
    shape = [1, *x.shape[1:]]
    if spatial_dynamic:
        shape[2] *= 2
    return shape


def _check_part(part: ExportPart, path: str, fold: str, tolerance: float, real: tuple[str, torch.Tensor] | None,
                network, context: ExportContext) -> list[Check]:
    session = OrtPart(part.name, {fold: path})
    dynamic = {name: set(axes) - {0} for name, axes in part.dynamic_axes.items()}
    logits = "logits" in part.output_names[0]
    cases = [("random", part.inputs)]
    varied = tuple(example_input(1, x.shape[1], _other_shape(x, bool(dynamic[n]))[2:], seed=5 + i)
                   for i, (x, n) in enumerate(zip(part.inputs, part.input_names)))
    cases.append(("random, other shape" if any(dynamic.values()) else "random, batch 1", varied))
    if real is not None:
        inputs = _real_part_inputs(part, network, context, real[1])
        if inputs is not None:
            cases.append((f"real ({real[0]})", inputs))
    checks = []
    for name, inputs in cases:
        with torch.no_grad():
            expected = part.module(*inputs)
        checks.append(_compare(expected, session(*inputs), fold, part.name, name, inputs[0].shape, tolerance, logits))
    return checks


def _real_part_inputs(part: ExportPart, network, context: ExportContext,
                      volume: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """A real input for ``part``: the central window of the preprocessed case (``volume``:
    ``(C, *spatial)``); for NMSW's parts, what that part receives in NMSW's own inference."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    def centre(x: torch.Tensor, size) -> torch.Tensor:
        x = pad_nd_image(x, size, "constant", {"value": 0})
        starts = [(n - s) // 2 for n, s in zip(x.shape[1:], size)]
        return x[(slice(None), *(slice(a, a + s) for a, s in zip(starts, size)))][None]

    if part.name in ("network", "local"):
        return (centre(volume, part.inputs[0].shape[2:]),)
    from nnunet_efficient.networks.nmsw import downsample_image, resize_linear_window
    from nnunet_efficient.networks.nmsw_plans import nmsw_settings

    settings = nmsw_settings(context.configuration)
    canvas = pad_nd_image(volume, settings.volume_shape, "constant", {"value": 0})[None]
    lowres = downsample_image(canvas, network.global_shape)
    if part.name == "global":
        return (lowres,)
    with torch.no_grad():
        global_logits, features = network.global_branch(lowres)
        spatial = tuple(canvas.shape[2:])
        if part.name == "scorer":
            return (downsample_image(features, network.grid(spatial)[1]),)
        if part.name == "aggregator":
            starts = [(n - w) // 2 for n, w in zip(spatial, network.window_size)]
            window = canvas[(slice(None), slice(None), *(slice(a, a + w) for a, w in zip(starts, network.window_size)))]
            return (network.local_pass(window), resize_linear_window(global_logits.float(), spatial, starts,
                                                                 network.window_size))
    return None


def _check_nmsw_pipeline(network, output_folder: str, fold: str, parts: list[ExportPart], tolerance: float,
                         real_volume: torch.Tensor | None, real_name: str | None, context: ExportContext) -> Check:
    """NMSW's whole inference (global pass, top-K windows, local passes, learned merge) on the ONNX parts."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    from nnunet_efficient.networks.nmsw_plans import nmsw_settings

    settings = nmsw_settings(context.configuration)
    paths = {p.name: {fold: os.path.join(output_folder, f"fold_{fold}", f"{p.name}.onnx")} for p in parts}
    onnx_net = assemble_network("nmsw", paths, _nmsw_attributes(network))
    if real_volume is None:
        volume, name = example_input(1, context.num_input_channels, settings.volume_shape, seed=7)[0], "random"
    else:
        volume, name = real_volume, f"real ({real_name})"
    canvas = pad_nd_image(volume, settings.volume_shape, "constant", {"value": 0})[None]
    with torch.no_grad():
        expected = network.forward_infer(canvas)
        got = onnx_net.forward_infer(canvas)
    check = _compare(expected["logits"], got["logits"], fold, "pipeline", name, canvas.shape, tolerance, True)
    if expected["window_starts"] != got["window_starts"]:  # the scorer's top-K chose other windows
        check.max_abs_diff = float("inf")
    return check


def _nmsw_attributes(network) -> dict:
    return {"num_classes": network.num_classes, "window_size": list(network.window_size),
            "global_shape": list(network.global_shape), "step": network.step, "k_train": network.k_train,
            "k_infer": network.k_infer, "tau": network.tau}


# ---------------------------------------------------------------------------------------------- real input
def _real_volume(predictor, check_images: Sequence[str] | None, num_channels: int
                 ) -> tuple[torch.Tensor | None, str]:
    """The preprocessed ``(C, *spatial)`` case for the real-input check, and how to name it."""
    from nnunet_efficient.inference.input_checks import ModelInput, check_case_files, list_cases

    if predictor.configuration_manager.previous_stage_name is not None:
        return None, "skipped (a cascade stage: its input includes the previous stage's segmentation)"
    files = list(check_images) if check_images else None
    if files is None:
        raw = os.environ.get("nnUNet_raw")
        dataset = predictor.plans_manager.dataset_name
        for sub in ("imagesTr", "imagesTs"):
            folder = os.path.join(raw, dataset, sub) if raw else None
            if folder and os.path.isdir(folder):
                try:
                    files = list_cases(folder, predictor.dataset_json["file_ending"], num_channels)[0]
                    break
                except InputFileError:
                    continue
        if files is None:
            return None, f"skipped (no -i given and no $nnUNet_raw/{dataset}/imagesTr)"
    check_case_files(files, predictor.plans_manager.image_reader_writer_class, num_channels,
                     ModelInput.of(predictor.plans_manager, predictor.configuration_manager, num_channels))
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, _ = preprocessor.run_case(files, None, predictor.plans_manager, predictor.configuration_manager,
                                       predictor.dataset_json)
    name = case_id(files[0], predictor.dataset_json["file_ending"])
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), name


# ---------------------------------------------------------------------------------------------- metadata
def _copy_step_recommendations(model_folder: str, output_folder: str, folds: list[str]) -> None:
    """``fold_X/patch_performance.json`` (what ``-step_size auto`` reads) into the export, where a fold has one."""
    from nnunet_efficient.patch_performance.files import RECOMMENDATION_FILE

    for fold in folds:
        source = os.path.join(model_folder, f"fold_{fold}", RECOMMENDATION_FILE)
        if os.path.isfile(source):
            with open(source, "rb") as f:
                atomic_write_bytes(os.path.join(output_folder, f"fold_{fold}", RECOMMENDATION_FILE), f.read())



def _write_metadata(output_folder: str, predictor, spec: ArchitectureSpec, report: ExportReport,
                    folds: list[str], configuration: str) -> None:
    import onnxruntime
    from batchgenerators.utilities.file_and_folder_operations import save_json

    network = predictor.network
    save_json(predictor.plans_manager.plans, os.path.join(output_folder, "plans.json"), sort_keys=False)
    save_json(predictor.dataset_json, os.path.join(output_folder, "dataset.json"), sort_keys=False)
    axes = predictor.allowed_mirroring_axes
    metadata = {
        "format": EXPORT_FORMAT,
        "version": 1,
        "trainer_name": predictor.trainer_name,
        "configuration": configuration,
        "inference_allowed_mirroring_axes": None if axes is None else [int(a) for a in axes],
        "architecture": spec.name,
        "network_class": f"{type(network).__module__}.{type(network).__qualname__}",
        "kind": spec.kind,
        "spatial": spec.spatial,
        "spatial_note": spec.spatial_note,
        "folds": folds,
        "parts": report.files,
        "nmsw": _nmsw_attributes(network) if spec.kind == "nmsw" else None,
        "opset": OPSET,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "real_input": report.real_input,
        "checks": [{**asdict(c), "passed": c.passed} for c in report.checks],
    }
    with open(os.path.join(output_folder, EXPORT_METADATA), "w") as f:
        json.dump(metadata, f, indent=2)


def _configuration_name(model_folder: str, fold: str, checkpoint_name: str) -> str:
    """The configuration the checkpoint was trained with (nnU-Net's ConfigurationManager does not keep its name)."""
    checkpoint = torch.load(os.path.join(model_folder, f"fold_{fold}", checkpoint_name), map_location="cpu",
                            weights_only=False)
    return checkpoint["init_args"]["configuration"]
