"""The onnxruntime backend: exported folders predict what the PyTorch backend predicts, with the same strategies."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from export.models import write_architecture_model

from nnunet_efficient.errors import EfficientError, InputFileError
from nnunet_efficient.export import export_model_folder
from nnunet_efficient.inference.onnxruntime_backend import OrtNetwork, OrtNMSWNetwork
from nnunet_efficient.inference.predictor import EfficientPredictor
from nnunet_efficient.inference.strategies.sliding_window import SlidingWindow

#: float32 logits of the two runtimes differ by float32 summation order: ~1e-6 relative on these tiny
#: networks (measured); the bound leaves a margin and still fails for any real difference.
LOGIT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    """A two-fold PlainConvUNet model folder (a different seed per fold) and its export."""
    root = tmp_path_factory.mktemp("unet")
    folder, _ = write_architecture_model(root, "PlainConvUNet", folds=(0, 1))
    export_model_folder(str(folder), [0, 1], str(root / "onnx"), log=lambda line: None)
    return folder, root / "onnx"


@pytest.fixture(scope="module")
def nmsw(tmp_path_factory):
    root = tmp_path_factory.mktemp("nmsw")
    folder, _ = write_architecture_model(root, "NMSW")
    export_model_folder(str(folder), [0], str(root / "onnx"), log=lambda line: None)
    return folder, root / "onnx"


def predictors(model, folds, **options):
    """(PyTorch, onnxruntime) predictors of the same model and options; float32 aggregation so that the
    comparison measures the network, not float16 rounding of the buffers."""
    folder, exported = model
    options = {"device": torch.device("cpu"), "allow_tqdm": False, "accumulate_dtype": torch.float32, **options}
    pytorch = EfficientPredictor(**options)
    pytorch.initialize_from_trained_model_folder(str(folder), folds)
    onnx = EfficientPredictor(**options)
    onnx.initialize_from_exported_folder(str(exported), folds)
    return pytorch, onnx


def assert_same_prediction(pytorch, onnx, volume):
    """Logits within LOGIT_TOLERANCE; labels equal wherever PyTorch's two best logits are further apart than
    that (random weights leave near-ties, where either label is as right)."""
    expected = pytorch.predict_logits_from_preprocessed_data(volume)
    got = onnx.predict_logits_from_preprocessed_data(volume)
    assert got.shape == expected.shape
    bound = LOGIT_TOLERANCE * max(1.0, float(expected.abs().max()))
    assert (got - expected).abs().max() <= bound
    best_two = expected.topk(2, dim=0).values
    differ = got.argmax(0) != expected.argmax(0)
    assert ((best_two[0] - best_two[1])[differ] <= 2 * bound).all()
    assert differ.float().mean() < 1e-3
    return expected


def volume(shape, seed=0):
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("step, mirroring, batch", [(0.5, True, 1), (1.0, False, 3)])
def test_sliding_window_ensemble_matches_the_pytorch_backend(unet, step, mirroring, batch):
    pytorch, onnx = predictors(unet, (0, 1), tile_step_size=step, use_mirroring=mirroring, sw_batch_size=batch)
    assert isinstance(onnx.network, OrtNetwork) and onnx.backend == "onnxruntime"
    assert_same_prediction(pytorch, onnx, volume((24, 40, 44)))  # several windows, padded edges
    assert onnx.last_run.windows == pytorch.last_run.windows > 1


def test_one_fold_of_the_export_is_that_folds_network(unet):
    pytorch, onnx = predictors(unet, (1,), use_mirroring=False)
    both = EfficientPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=False,
                              accumulate_dtype=torch.float32)
    both.initialize_from_exported_folder(str(unet[1]))  # default: every exported fold
    x = volume((16, 32, 32))
    fold1 = assert_same_prediction(pytorch, onnx, x)
    assert len(both.list_of_parameters) == 2
    assert not torch.allclose(both.predict_logits_from_preprocessed_data(x), fold1)


def test_sparse_strategy_matches_the_pytorch_backend(unet):
    pytorch, onnx = predictors(unet, (0,), strategy="sparse", use_mirroring=False)
    assert_same_prediction(pytorch, onnx, volume((24, 40, 44), seed=1))
    assert onnx.strategy.last_selection == pytorch.strategy.last_selection


@pytest.mark.parametrize("strategy, options", [("nmsw", {"k": 3}), ("random_fg", {"k": 2, "seed": 1}),
                                               ("zoom", {}), ("global", {}), ("sliding_window", {})])
def test_nmsw_strategies_match_the_pytorch_backend(nmsw, strategy, options):
    pytorch, onnx = predictors(nmsw, (0,), strategy=strategy, use_mirroring=False, **options)
    assert isinstance(onnx.network, OrtNMSWNetwork)
    assert_same_prediction(pytorch, onnx, volume((24, 24, 24), seed=2))
    assert onnx.last_run == pytorch.last_run


def test_nmsw_float16_merge_with_mirroring_matches(nmsw):
    pytorch, onnx = predictors(nmsw, (0,), strategy="nmsw", accumulate_dtype=torch.half)
    expected = pytorch.predict_logits_from_preprocessed_data(volume((20, 24, 24), seed=3))
    got = onnx.predict_logits_from_preprocessed_data(volume((20, 24, 24), seed=3))
    # float16 buffers: a 1e-6 difference can move a value by one float16 step (relative 2^-10)
    assert (got.float() - expected.float()).abs().max() <= 2e-3 * max(1.0, expected.abs().max())


class PyTorchOnly(SlidingWindow):
    name = "pytorch_only"  # not registered: a strategy that reads the network's modules
    backends = ("pytorch",)


@pytest.mark.parametrize("options, message", [
    ({"device": torch.device("cuda")}, "the onnxruntime backend runs on the CPU"),
    ({"cpu_bf16": True}, "--cpu_bf16 is an autocast of the PyTorch backend"),
    ({"strategy": PyTorchOnly()}, "strategy 'pytorch_only' needs the PyTorch backend"),
])
def test_what_the_backend_cannot_run_is_refused_in_one_line(unet, options, message):
    predictor = EfficientPredictor(allow_tqdm=False, **{"device": torch.device("cpu"), **options})
    with pytest.raises(EfficientError, match=message) as error:
        predictor.initialize_from_exported_folder(str(unet[1]))
    assert "\n" not in str(error.value)


def test_a_trained_model_folder_is_not_an_export(unet):
    predictor = EfficientPredictor(device=torch.device("cpu"), allow_tqdm=False)
    with pytest.raises(InputFileError, match="onnx_export.json: missing; --backend onnxruntime needs a folder"):
        predictor.initialize_from_exported_folder(str(unet[0]))


def test_missing_fold_and_corrupt_onnx_name_the_file(unet, tmp_path):
    copy = tmp_path / "onnx"
    shutil.copytree(unet[1], copy)
    predictor = EfficientPredictor(device=torch.device("cpu"), allow_tqdm=False)
    with pytest.raises(InputFileError, match=r"fold_3/network.onnx: missing \(exported folds: 0, 1"):
        predictor.initialize_from_exported_folder(str(copy), (3,))
    (copy / "fold_1" / "network.onnx").write_bytes(b"not onnx")
    with pytest.raises(InputFileError, match="fold_1/network.onnx: cannot be loaded by onnxruntime"):
        predictor.initialize_from_exported_folder(str(copy), (1,))
    metadata = json.loads((copy / "onnx_export.json").read_text())
    (copy / "onnx_export.json").write_text(json.dumps({**metadata, "format": "other"}))
    with pytest.raises(InputFileError, match="is not an nnunet-efficient ONNX export"):
        predictor.initialize_from_exported_folder(str(copy), (0,))
