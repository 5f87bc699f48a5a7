"""``nnunet-efficient export`` per architecture: tiny random-weight models, checked against PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import SAMPLE, SHARED_DATA, dataset_json, write_model_folder
from export.models import (
    ARCHITECTURES,
    LABELS,
    PATCH,
    STATIC,
    FixedSizeNet,
    fixed_size_plans,
    write_architecture_model,
)

from nnunet_efficient.export import ARCHITECTURES as REGISTRY
from nnunet_efficient.export import architecture_of, export_model_folder, register_architecture
from nnunet_efficient.export.onnx import DEFAULT_TOLERANCE
from nnunet_efficient.networks.nmsw import NMSWNetwork
from nnunet_efficient.patch_performance.files import RECOMMENDATION_FILE, resolve_auto_step


def hippocampus_image() -> str:
    """A real Hippocampus image: the shared dataset's when present, else the shipped sample's."""
    shared = sorted((SHARED_DATA / "Dataset004_Hippocampus" / "imagesTr").glob("*_0000.nii.gz"))
    return str(shared[0] if shared else sorted((SAMPLE / "imagesTs").glob("*_0000.nii.gz"))[0])


def input_dims(path) -> dict[str, list]:
    """Per graph input, each axis as its symbolic name (dynamic) or its size (fixed)."""
    graph = onnx.load(str(path)).graph
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}


def run_onnx(path, *inputs: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)})[0]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    folder, networks = write_architecture_model(root, request.param)
    # a patch-performance recommendation, as `nnunet-efficient patch_performance` leaves it in the fold
    (folder / "fold_0" / RECOMMENDATION_FILE).write_text(json.dumps({"step": 0.3, "reason": "test"}))
    report = export_model_folder(str(folder), [0], str(root / "onnx"), check_images=[hippocampus_image()],
                                 log=lambda line: None)
    return request.param, folder, networks["0"], report


def test_export_passes_its_checks_on_random_and_real_input(exported):
    name, _, _, report = exported
    assert report.passed, report.summary()
    inputs = {c.input for c in report.checks}
    assert {"random", "random, batch 1" if name in STATIC else "random, other shape"} <= inputs
    assert any(i.startswith("real (hippocampus_") for i in inputs)
    assert all(c.max_abs_diff <= DEFAULT_TOLERANCE * c.scale for c in report.checks)
    expected_parts = ["global", "scorer", "local", "aggregator"] if name == "NMSW" else ["network"]
    assert list(report.files) == expected_parts
    assert ("pipeline" in {c.part for c in report.checks}) == (name == "NMSW")


def test_onnx_file_computes_the_trained_network(exported):
    """Independently of the export's own checks: a fresh input through the file equals the network as trained
    (RepUX-Net unfolded: the export folded it, which must not change the function)."""
    name, _, network, report = exported
    part = "local" if name == "NMSW" else "network"
    module = network.local_net if name == "NMSW" else network
    window = (16, 16, 16) if name == "NMSW" else PATCH
    x = torch.randn(3, 1, *window, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        expected = module(x).numpy()
    got = run_onnx(f"{report.output_folder}/fold_0/{part}.onnx", x)
    assert np.abs(got - expected).max() <= DEFAULT_TOLERANCE * max(1.0, np.abs(expected).max())


def test_batch_is_dynamic_and_spatial_axes_as_the_architecture_allows(exported):
    name, _, _, report = exported
    for part in report.files:
        for dims in input_dims(f"{report.output_folder}/fold_0/{part}.onnx").values():
            assert dims[0] == "batch"
            if name in STATIC:
                assert dims[2:] == list(PATCH), (part, dims)
            else:
                assert all(isinstance(d, str) for d in dims[2:]), (part, dims)


def test_plans_dataset_and_metadata_are_written_beside_the_onnx(exported):
    name, folder, _, report = exported
    out = report.output_folder
    assert json.loads(open(f"{out}/plans.json").read()) == json.loads((folder / "plans.json").read_text())
    assert json.loads(open(f"{out}/dataset.json").read()) == json.loads((folder / "dataset.json").read_text())
    metadata = json.loads(open(f"{out}/onnx_export.json").read())
    assert metadata["format"] == "nnunet-efficient-onnx"
    assert metadata["trainer_name"] == folder.name.split("__")[0]
    assert metadata["configuration"] == folder.name.split("__")[2]
    assert metadata["inference_allowed_mirroring_axes"] == [0, 1, 2]
    assert metadata["kind"] == ("nmsw" if name == "NMSW" else "network")
    assert metadata["folds"] == ["0"] and list(metadata["parts"]) == list(report.files)
    assert all(c["passed"] for c in metadata["checks"])
    if name == "NMSW":
        assert metadata["nmsw"]["window_size"] == [16, 16, 16] and metadata["nmsw"]["k_infer"] == 5


def test_step_size_auto_reads_the_same_recommendation_from_the_export(exported):
    _, folder, _, report = exported
    assert resolve_auto_step(report.output_folder, ["0"])[0] == resolve_auto_step(str(folder), [0])[0] == 0.3


@pytest.mark.parametrize("exported", ["RepUXNet"], indirect=True)
def test_repux_is_exported_with_folded_kernels(exported):
    _, _, network, report = exported
    graph = onnx.load(f"{report.output_folder}/fold_0/network.onnx").graph
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    conv = next(m for m in network.modules() if type(m).__name__ == "BFMDepthwiseConv3d")
    folded = (conv.weight * conv.bfm).detach().numpy()
    assert any(w.shape == folded.shape and np.allclose(w, folded, atol=1e-7) for w in weights.values())


def test_every_architecture_on_main_is_registered():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    from nnunet_efficient.networks.uxnet import RepUXNet, UXNet

    registered = {c for spec in REGISTRY for c in spec.classes}
    assert {PlainConvUNet, ResidualEncoderUNet, UXNet, NMSWNetwork} <= registered
    assert architecture_of(RepUXNet.__new__(RepUXNet)).spatial == "dynamic"  # a subclass matches its family


def test_a_new_architecture_is_one_registration_and_static_axes_stay_fixed(tmp_path):
    plans, dataset = fixed_size_plans(), dataset_json(1, LABELS)
    folder = write_model_folder(tmp_path / "nnUNetTrainer__nnUNetPlansTiny__3d_fullres", plans, dataset)
    spec = register_architecture(FixedSizeNet, "static", "a learned position map of the patch's size")
    try:
        report = export_model_folder(str(folder), [0], str(tmp_path / "onnx"), log=lambda line: None)
    finally:
        REGISTRY.remove(spec)
    assert report.passed, report.summary()
    assert report.spatial == "static" and "fixed spatial axes" in report.summary()
    assert input_dims(tmp_path / "onnx" / "fold_0" / "network.onnx")["image"] == ["batch", 1, *PATCH]
    assert {c.input for c in report.checks} >= {"random", "random, batch 1"}


def test_real_input_check_is_skipped_and_said_without_images(tmp_path, monkeypatch, hippocampus_model):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    report = export_model_folder(str(hippocampus_model), [0], str(tmp_path / "onnx"), log=lambda line: None)
    assert report.passed
    assert report.real_input.startswith("skipped (no -i given and no $nnUNet_raw/Dataset999_Test/imagesTr")
    assert "real input: skipped" in report.summary()


def test_real_input_defaults_to_the_datasets_first_raw_case(tmp_path, monkeypatch, hippocampus_model):
    raw = tmp_path / "raw" / "Dataset999_Test" / "imagesTr"
    raw.mkdir(parents=True)
    name = "hippocampus_038_0000.nii.gz"
    (raw / name).write_bytes((SAMPLE / "imagesTs" / name).read_bytes())
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    report = export_model_folder(str(hippocampus_model), [0], str(tmp_path / "onnx"), log=lambda line: None)
    assert report.real_input == "hippocampus_038"
    assert any(c.input == "real (hippocampus_038)" and c.passed for c in report.checks)
