"""EfficientPredictor against nnU-Net's own predictor, and its strategy plumbing."""

import numpy as np
import pytest
import torch
from conftest import build_network, dataset_json, shared_dataset, tiny_plans
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_efficient.errors import EfficientError
from nnunet_efficient.inference.predictor import EfficientPredictor

BRATS_LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing": 3, "enhancing": 4}


def initialised(predictor, network, plans, dataset):
    manager = PlansManager(plans)
    predictor.manual_initialization(network, manager, manager.get_configuration("3d_fullres"), None, dataset,
                                    "nnUNetTrainer", (0, 1, 2))
    return predictor


@pytest.fixture(scope="module")
def brats_crop():
    """A 48×80×80 crop through the tumour of a real BraTSmini volume (2 channels, z-scored)."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    folder = shared_dataset("Dataset005_BraTSmini") / "imagesTr"
    image, _ = SimpleITKIO().read_images([str(folder / "brats_0003_0000.nii.gz"),
                                          str(folder / "brats_0003_0001.nii.gz")])
    return torch.from_numpy(np.ascontiguousarray(image[:, 50:98, 80:160, 80:160], dtype=np.float32))


@pytest.fixture(scope="module")
def brats_model():
    plans, dataset = tiny_plans((32, 48, 48), 2), dataset_json(2, BRATS_LABELS)
    return build_network(plans, dataset), plans, dataset


def predict(brats_crop, brats_model, predictor_class, use_mirroring, **kwargs):
    predictor = initialised(predictor_class(tile_step_size=0.5, use_mirroring=use_mirroring,
                                            device=torch.device("cpu"), allow_tqdm=False, **kwargs), *brats_model)
    return predictor, predictor.predict_sliding_window_return_logits(brats_crop).float()


@pytest.mark.parametrize("use_mirroring", [False, True], ids=["no_tta", "tta"])
def test_sliding_window_matches_nnunet_predictor_on_brats(brats_crop, brats_model, use_mirroring):
    _, reference = predict(brats_crop, brats_model, nnUNetPredictor, use_mirroring)
    predictor, logits = predict(brats_crop, brats_model, EfficientPredictor, use_mirroring)
    assert logits.shape == reference.shape == (5, *brats_crop.shape[1:])
    assert (logits - reference).abs().max().item() <= 1e-3
    assert torch.equal(logits.argmax(0), reference.argmax(0))
    assert predictor.last_run.windows == 2 * 3 * 3
    assert predictor.last_run.network_inputs == 18 * (8 if use_mirroring else 1)

    # A batch of windows runs through other convolution kernels, whose float32 rounding then
    # lands in float16 buffers: a few float16 ulps (2**-10 relative) and, where two classes tie
    # within that, a rare label change. float32 buffers make batching exact (next test).
    predictor, batched = predict(brats_crop, brats_model, EfficientPredictor, use_mirroring, sw_batch_size=4)
    assert predictor.last_run.network_passes == 5 * (8 if use_mirroring else 1)
    # Measured on a 2-core Zen 1 EPYC (no AVX-512): up to 0.0084 relative at 1 of 1.5 M values, so 2**-6;
    # on a Zen 4 machine the deviation stayed within 2**-8.
    assert ((batched - reference).abs() <= 2 ** -6 * reference.abs().clamp(min=1)).all()
    assert (batched.argmax(0) == reference.argmax(0)).float().mean() >= 0.9999


@pytest.mark.parametrize("use_mirroring", [False, True], ids=["no_tta", "tta"])
def test_batched_equals_unbatched_with_float32_accumulation(brats_crop, brats_model, use_mirroring):
    _, one = predict(brats_crop, brats_model, EfficientPredictor, use_mirroring, accumulate_dtype=torch.float32)
    _, many = predict(brats_crop, brats_model, EfficientPredictor, use_mirroring, accumulate_dtype=torch.float32,
                      sw_batch_size=7)
    # oneDNN picks other kernels for a batch; on a Zen 1 EPYC their float32 rounding moved a near-tie's label,
    # so labels must agree almost everywhere rather than everywhere
    assert (one - many).abs().max().item() <= 1e-2
    assert (one.argmax(0) == many.argmax(0)).float().mean() >= 0.9999


def test_volume_smaller_than_the_patch_is_padded_and_cropped_back():
    plans, dataset = tiny_plans((16, 16, 16), 1, features=(2, 4)), dataset_json(1, {"background": 0, "a": 1})
    predictor = initialised(EfficientPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=False),
                            build_network(plans, dataset), plans, dataset)
    logits = predictor.predict_sliding_window_return_logits(torch.randn(1, 10, 20, 16))
    assert logits.shape == (2, 10, 20, 16)
    assert torch.isfinite(logits).all()


def test_unknown_strategy_is_a_user_error():
    with pytest.raises(EfficientError, match="unknown strategy 'nope'"):
        EfficientPredictor(device=torch.device("cpu"), strategy="nope")


def test_unknown_strategy_option_is_a_user_error():
    with pytest.raises(EfficientError, match="no option"):
        EfficientPredictor(device=torch.device("cpu"), strategy="sliding_window", k=3)


def test_plugin_trainer_models_load_without_setting_nnunet_exttrainer(tmp_path, monkeypatch):
    from conftest import write_model_folder

    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    plans, dataset = tiny_plans((16, 16, 16), 1, features=(2, 4)), dataset_json(1, {"background": 0, "a": 1})
    model = write_model_folder(tmp_path / "model", plans, dataset, trainer_name="nnUNetTrainer_2epochs_3iters")
    predictor = EfficientPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), (0,))
    assert predictor.trainer_name == "nnUNetTrainer_2epochs_3iters"


def test_a_broken_plugin_trainer_module_shows_its_own_error(tmp_path, monkeypatch):
    """A bug inside an nnUNet_extTrainer module is not reported as an unknown trainer (issue 23)."""
    from conftest import write_model_folder

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "my_trainers.py").write_text("import a_module_that_is_not_installed\n")
    monkeypatch.setenv("nnUNet_extTrainer", str(plugins))
    plans, dataset = tiny_plans((16, 16, 16), 1, features=(2, 4)), dataset_json(1, {"background": 0, "a": 1})
    model = write_model_folder(tmp_path / "model", plans, dataset, trainer_name="MyPluginTrainer")
    predictor = EfficientPredictor(device=torch.device("cpu"), allow_tqdm=False)
    with pytest.raises(ModuleNotFoundError, match="a_module_that_is_not_installed"):
        predictor.initialize_from_trained_model_folder(str(model), (0,))


def test_a_trainer_no_module_defines_is_one_line_naming_the_checkpoint(tmp_path, monkeypatch):
    from conftest import write_model_folder

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "my_trainers.py").write_text("X = 1\n")
    monkeypatch.setenv("nnUNet_extTrainer", str(plugins))
    plans, dataset = tiny_plans((16, 16, 16), 1, features=(2, 4)), dataset_json(1, {"background": 0, "a": 1})
    model = write_model_folder(tmp_path / "model", plans, dataset, trainer_name="MyPluginTrainer")
    predictor = EfficientPredictor(device=torch.device("cpu"), allow_tqdm=False)
    with pytest.raises(EfficientError, match="checkpoint_final.pth: was trained with trainer 'MyPluginTrainer', "
                                             "which neither nnU-Net nor nnunet-efficient defines"):
        predictor.initialize_from_trained_model_folder(str(model), (0,))
