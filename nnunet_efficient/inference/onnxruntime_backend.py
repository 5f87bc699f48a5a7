"""The onnxruntime backend: an exported folder's ONNX files behind the modules the strategies call.

``nnunet-efficient export`` writes ``fold_X/<part>.onnx`` with ``plans.json``, ``dataset.json`` and
``onnx_export.json``. Here each part becomes an :class:`OrtPart` (an ``nn.Module`` without
weights whose forward runs one onnxruntime session per fold), and the parts are assembled into
what :class:`~nnunet_efficient.inference.predictor.EfficientPredictor` expects of its network:

- ``kind="network"``: :class:`OrtNetwork`, ``(B, C_in, *window)`` → logits, so ``sliding_window``
  and ``sparse`` run unchanged (nnU-Net's grid, Gaussian, mirroring, float16 aggregation).
- ``kind="nmsw"``: :class:`OrtNMSWNetwork`, an :class:`~nnunet_efficient.networks.nmsw.NMSWPipeline`
  (NMSW's computation, the class :class:`~nnunet_efficient.networks.nmsw.NMSWNetwork` builds on)
  constructed from the ONNX global branch, scorer head, local branch and aggregator, so ``nmsw``,
  ``random_fg``, ``zoom``, ``global`` and ``sliding_window`` (the local part) run unchanged.

Fold ensembling stays nnU-Net's: it calls ``network.load_state_dict(parameters)`` for each fold;
the parameters here are ``{FOLD_KEY: fold}`` and select the sessions of that fold.

Sessions use onnxruntime's CPU execution provider with ``torch.get_num_threads()`` threads (the
same number the PyTorch backend uses).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nnunet_efficient.common.messages import one_line
from nnunet_efficient.errors import EfficientError, InputFileError
from nnunet_efficient.networks.nmsw import NMSWPipeline, downsample_image
from nnunet_efficient.sampling.topk import DEFAULT_TAU

EXPORT_METADATA = "onnx_export.json"
EXPORT_FORMAT = "nnunet-efficient-onnx"
#: key of the per-fold "parameters" handed to nnU-Net's fold loop (see the module docstring)
FOLD_KEY = "onnx_fold"
#: the pins of pyproject.toml's ``onnx`` extra, for the install hint
INSTALL_HINT = "pip install 'nnunet-efficient[onnx]' (onnxruntime==1.32.0, onnx==1.23.2)"


def require_onnxruntime():
    """Import onnxruntime, or fail in one line naming the install command."""
    try:
        import onnxruntime
    except ImportError:
        raise EfficientError(f"onnxruntime is not installed: {INSTALL_HINT}") from None
    return onnxruntime


class OrtPart(nn.Module):
    """One exported part: an onnxruntime session per fold, called with and returning torch tensors.

    Args:
        name: the part's name (for messages).
        paths: ``{fold: path to the .onnx file}``; the first fold is active.
        threads: intra-op threads (default ``torch.get_num_threads()``).
    """

    def __init__(self, name: str, paths: Mapping[str, str], threads: int | None = None):
        super().__init__()
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: onnxruntime warns about unused initialisers etc.
        self.name = name
        self.sessions = {}
        for fold, path in paths.items():
            try:
                self.sessions[str(fold)] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/NoSuchFile types
                raise InputFileError(path, f"cannot be loaded by onnxruntime ({one_line(error)})") from None
        self.fold = next(iter(self.sessions))
        first = self.sessions[self.fold]
        self.input_names = [i.name for i in first.get_inputs()]
        self.output_names = [o.name for o in first.get_outputs()]

    def select_fold(self, fold: str) -> None:
        if str(fold) not in self.sessions:
            raise EfficientError(f"part '{self.name}' has no fold {fold} (exported: {', '.join(self.sessions)})")
        self.fold = str(fold)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"part '{self.name}' takes {len(self.input_names)} input(s), got {len(inputs)}")
        device = inputs[0].device
        feeds = {name: x.detach().to("cpu", torch.float32).contiguous().numpy()
                 for name, x in zip(self.input_names, inputs)}
        outputs = [torch.from_numpy(o).to(device) for o in self.sessions[self.fold].run(self.output_names, feeds)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def extra_repr(self) -> str:
        return f"{self.name!r}, folds={list(self.sessions)}"


class _FoldSelection:
    """``load_state_dict({FOLD_KEY: fold})`` switches every part to that fold (nnU-Net's fold loop)."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if FOLD_KEY not in state_dict:
            raise EfficientError("an onnxruntime network takes {'onnx_fold': FOLD} in place of weights")
        for module in self.modules():
            if isinstance(module, OrtPart):
                module.select_fold(state_dict[FOLD_KEY])


class OrtNetwork(_FoldSelection, nn.Module):
    """An exported single-network model: ``(B, C_in, *window)`` → ``(B, classes, *window)`` logits."""

    def __init__(self, part: OrtPart):
        super().__init__()
        self.network = part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class _OrtScorer(nn.Module):
    """NMSW's ``Scorer`` interface: the weight-free resize to the grid here, the head in ONNX."""

    def __init__(self, head: OrtPart):
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        return self.head(downsample_image(features, grid)).flatten(1)


class OrtNMSWNetwork(_FoldSelection, NMSWPipeline):
    """An exported NMSW model: NMSW's inference (candidate grid, top-K, merge) on ONNX parts.

    Args:
        parts: the ``global``, ``scorer``, ``local`` and ``aggregator`` parts.
        num_classes, window_size, global_shape, step, k_train, k_infer, tau: NMSWNetwork's
            settings, as recorded in ``onnx_export.json``.
    """

    def __init__(self, parts: Mapping[str, OrtPart], num_classes: int, window_size: Sequence[int],
                 global_shape: Sequence[int], step: float = 0.5, k_train: int = 4, k_infer: int = 5,
                 tau: float = DEFAULT_TAU):
        missing = {"global", "scorer", "local", "aggregator"} - set(parts)
        if missing:
            raise EfficientError(f"an NMSW export needs the parts global, scorer, local, aggregator; "
                                 f"missing {', '.join(sorted(missing))}")
        super().__init__(parts["global"], _OrtScorer(parts["scorer"]), parts["local"], parts["aggregator"],
                         num_classes, window_size, global_shape, step, k_train, k_infer, tau)


def assemble_network(kind: str, paths: Mapping[str, Mapping[str, str]], nmsw: Mapping | None = None) -> nn.Module:
    """The network of an export from its files.

    Args:
        kind: ``"network"`` or ``"nmsw"`` (``onnx_export.json``'s ``kind``).
        paths: ``{part: {fold: path}}``.
        nmsw: NMSWNetwork's settings (``onnx_export.json``'s ``nmsw``) for ``kind="nmsw"``.
    """
    parts = {name: OrtPart(name, fold_paths) for name, fold_paths in paths.items()}
    if kind == "network":
        return OrtNetwork(parts["network"])
    if kind == "nmsw":
        return OrtNMSWNetwork(parts, **dict(nmsw or {}))
    raise EfficientError(f"unknown export kind '{kind}' (this nnunet-efficient reads 'network' and 'nmsw')")


def read_export_metadata(folder: str) -> dict:
    """``onnx_export.json`` of an exported folder, checked.

    Raises:
        InputFileError: missing folder or file, invalid JSON, not written by ``nnunet-efficient export``.
    """
    if not os.path.isdir(folder):
        raise InputFileError(folder, "exported model folder does not exist (-m)")
    path = os.path.join(folder, EXPORT_METADATA)
    if not os.path.isfile(path):
        raise InputFileError(path, "missing; --backend onnxruntime needs a folder written by `nnunet-efficient "
                                   "export` (a trained model folder holds checkpoints: use --backend pytorch)")
    try:
        with open(path) as f:
            metadata = json.load(f)
    except (OSError, ValueError) as error:
        raise InputFileError(path, f"is not valid JSON ({error})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != EXPORT_FORMAT:
        raise InputFileError(path, f"is not an nnunet-efficient ONNX export (no format '{EXPORT_FORMAT}')")
    return metadata


def read_export_jsons(folder: str) -> tuple[dict, dict]:
    """``plans.json`` and ``dataset.json`` of an exported folder.

    Raises:
        InputFileError: either is missing or not valid JSON.
    """
    jsons = []
    for name in ("plans.json", "dataset.json"):
        path = os.path.join(folder, name)
        try:
            with open(path) as f:
                jsons.append(json.load(f))
        except (OSError, ValueError) as error:
            raise InputFileError(path, f"missing or not valid JSON ({error})") from None
    return jsons[0], jsons[1]


def load_exported_network(folder: str, folds: Sequence[int | str] | None, metadata: dict) -> tuple[nn.Module, list]:
    """The assembled network of ``folds`` (None: all exported folds) and nnU-Net's per-fold "parameters".

    Raises:
        InputFileError: a fold's ONNX file is missing or unreadable.
    """
    folds = [str(f) for f in (metadata["folds"] if folds is None else folds)]
    paths: dict[str, dict[str, str]] = {}
    for fold in folds:
        for part in metadata["parts"]:
            path = os.path.join(folder, f"fold_{fold}", f"{part}.onnx")
            if not os.path.isfile(path):
                raise InputFileError(path, f"missing (exported folds: {', '.join(metadata['folds'])}; give them "
                                           f"with -f or export this fold)")
            paths.setdefault(part, {})[fold] = path
    network = assemble_network(metadata["kind"], paths, metadata.get("nmsw"))
    return network, [{FOLD_KEY: fold} for fold in folds]
