"""The class-by-class label export: nnU-Net's labels, with memory that does not grow with the classes."""

import ctypes

import nibabel
import numpy as np
import pytest
import torch
from conftest import dataset_json, tiny_plans
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_efficient.benchmark.measure import PeakMemory
from nnunet_efficient.inference.label_export import logits_to_labels, resize_axis_linear, resize_axis_nearest


def setup(classes, model_spacing, image_spacing, shape, regions=False, probabilities_kwargs=None, name=None):
    """Plans, label manager and the properties nnU-Net's preprocessing would record for one case."""
    plans = tiny_plans((16, 16, 16), 1, spacing=model_spacing)
    configuration = plans["configurations"]["3d_fullres"]
    if probabilities_kwargs is not None:
        configuration["resampling_fn_probabilities_kwargs"] = probabilities_kwargs
    if name is not None:
        configuration["resampling_fn_probabilities"] = name
    labels = {"background": 0, **{f"c{i}": i for i in range(1, classes)}}
    dataset = dataset_json(1, labels)
    if regions:  # nested regions, as BraTS: whole tumour (1, 2, 3), tumour core (2, 3), enhancing (3)
        dataset = dataset_json(1, {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3})
        dataset["regions_class_order"] = [1, 2, 3]
    manager = PlansManager(plans)
    original = [int(round(n * m / s)) for n, m, s in zip(shape, model_spacing, image_spacing)]
    properties = {"spacing": list(image_spacing), "shape_after_cropping_and_before_resampling": original,
                  "shape_before_cropping": [original[0] + 3, original[1], original[2] + 2],
                  "bbox_used_for_cropping": [[2, 2 + original[0]], [0, original[1]], [1, 1 + original[2]]]}
    return manager, manager.get_configuration("3d_fullres"), manager.get_label_manager(dataset), properties


def random_logits(classes, shape, dtype=np.float16, seed=0):
    # small differences between classes: many near-ties, where rounding could flip a label
    return torch.from_numpy(np.random.default_rng(seed).normal(scale=0.3, size=(classes, *shape)).astype(dtype))


@pytest.mark.parametrize("model_spacing, image_spacing", [
    ((3.0, 3.0, 3.0), (5.0, 1.5, 1.5)),  # thick slices: linear in-plane, nearest between slices
    ((1.0, 1.0, 1.0), (1.3, 0.7, 0.9)),  # mildly anisotropic: trilinear
    ((4.0, 1.0, 1.0), (4.0, 0.8, 1.1)),  # anisotropic model spacing, slice count kept
    ((2.0, 2.0, 2.0), (2.0, 2.0, 2.0)),  # no resampling
], ids=["separate_z", "trilinear", "in_plane_only", "same_spacing"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["float16", "float32"])
def test_labels_equal_nnunet_export(model_spacing, image_spacing, dtype):
    plans, configuration, labels, properties = setup(9, model_spacing, image_spacing, (20, 26, 31))
    logits = random_logits(9, (20, 26, 31), dtype)
    expected = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.numpy().copy(), plans, configuration, labels, properties, num_threads_torch=1)
    ours = logits_to_labels(logits, plans, configuration, labels, properties, num_threads=1)
    assert ours.shape == expected.shape == tuple(properties["shape_before_cropping"])
    assert ours.dtype == expected.dtype == np.uint8
    assert (ours == expected).mean() >= 0.9999
    assert set(np.unique(ours)) == set(np.unique(expected))


def test_regions_follow_nnunet_region_order():
    plans, configuration, labels, properties = setup(4, (3.0, 3.0, 3.0), (5.0, 1.5, 1.5), (12, 14, 16), regions=True)
    logits = random_logits(3, (12, 14, 16), seed=1) * 4
    expected = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.numpy().copy(), plans, configuration, labels, properties, num_threads_torch=1)
    ours = logits_to_labels(logits, plans, configuration, labels, properties, num_threads=1)
    assert np.array_equal(ours, expected)
    assert set(np.unique(ours)) == {0, 1, 2, 3}


@pytest.mark.parametrize("kwargs, name", [
    ({"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}, None),  # spline: no fast path
    ({"is_seg": False, "force_separate_z": None}, "resample_torch_fornnunet"),  # nnU-Net's torch resampling
])
def test_other_resampling_functions_run_class_by_class_as_configured(kwargs, name):
    plans, configuration, labels, properties = setup(5, (3.0, 3.0, 3.0), (5.0, 1.5, 1.5), (10, 12, 14),
                                                     probabilities_kwargs=kwargs, name=name)
    logits = random_logits(5, (10, 12, 14), seed=2)
    expected = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.numpy().copy(), plans, configuration, labels, properties, num_threads_torch=1)
    assert np.array_equal(logits_to_labels(logits, plans, configuration, labels, properties, num_threads=1), expected)


def test_one_axis_resizes_match_scipy_by_hand():
    x = torch.tensor([0.0, 10.0, 20.0], dtype=torch.float64)
    # pixel centres of 6 outputs over 3 inputs: -0.25, 0.25, 0.75, 1.25, 1.75, 2.25 (edges clamped)
    assert resize_axis_linear(x, 0, 6).tolist() == [0.0, 2.5, 7.5, 12.5, 17.5, 20.0]
    assert resize_axis_nearest(torch.arange(6.0), 0, 3).tolist() == [1.0, 3.0, 5.0]


def release_freed_heap():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pytest.skip("needs glibc's malloc_trim to measure memory deltas")


def test_peak_memory_does_not_grow_with_the_classes_unlike_nnunet():
    shape = (64, 64, 64)  # the export doubles the resolution in-plane: 4x more voxels

    def peak_mib(export, classes, repeats=1):
        plans, configuration, labels, properties = setup(classes, (3.0, 3.0, 3.0), (3.0, 1.5, 1.5), shape)
        logits = random_logits(classes, shape)  # allocated before the measurement: only the export counts
        deltas = []
        for _ in range(repeats):
            release_freed_heap()  # else memory freed by an earlier export is reused unseen
            with PeakMemory() as memory:
                export(logits, plans, configuration, labels, properties)
            deltas.append(memory.host_delta_mib)
        return min(deltas)

    def ours(*args):
        return logits_to_labels(*args, num_threads=1)

    def nnunet(logits, *args):
        return convert_predicted_logits_to_segmentation_with_correct_shape(logits.numpy(), *args, num_threads_torch=1)

    accumulator_growth = (64 - 4) * np.prod(shape) * 2 / 2 ** 20  # float16 logits: 30 MiB
    ours_growth = peak_mib(ours, 64, repeats=2) - peak_mib(ours, 4, repeats=2)  # first repeat warms kernels up
    nnunet_growth = peak_mib(nnunet, 64) - peak_mib(nnunet, 4)
    assert ours_growth < 0.5 * accumulator_growth, (ours_growth, nnunet_growth)
    assert nnunet_growth > 4 * accumulator_growth  # float64 copy + resampled float16 array


def test_predicted_files_equal_those_of_nnunet_export(hippocampus_model, sample_images, tmp_path):
    from nnunet_efficient.inference.predictor import EfficientPredictor

    written = {}
    for bounded in (True, False):
        predictor = EfficientPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False,
                                       bounded_export=bounded)
        predictor.initialize_from_trained_model_folder(str(hippocampus_model), (0,))
        out = tmp_path / f"bounded_{bounded}"
        predictor.predict_from_files_sequential(str(sample_images), str(out))
        written[bounded] = {p.name: np.asanyarray(nibabel.load(str(p)).dataobj) for p in sorted(out.glob("*.nii.gz"))}
        assert (out / "plans.json").is_file() and (out / "dataset.json").is_file()
    assert written[True].keys() == written[False].keys() and len(written[True]) == 2
    for name, labels in written[True].items():
        assert labels.dtype == written[False][name].dtype
        assert np.array_equal(labels, written[False][name])
