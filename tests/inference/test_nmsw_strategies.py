"""NMSW inference strategies on a tiny NMSW model built from tiny plans (no training needed)."""

import copy

import pytest
import torch
from conftest import build_network, dataset_json, tiny_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_efficient.cli.main import main
from nnunet_efficient.errors import EfficientError
from nnunet_efficient.inference.predictor import EfficientPredictor
from nnunet_efficient.networks.nmsw_baselines import global_only_infer
from nnunet_efficient.training.nmsw import nnUNetTrainerNMSW

LABELS = {"background": 0, "a": 1, "b": 2}
WINDOW, VOLUME, GLOBAL = (16, 16, 16), (24, 24, 24), (12, 12, 12)


def nmsw_plans() -> dict:
    """Tiny plans with a 3d_nmsw configuration as nnUNetPlannerNMSW writes it: 8 candidates."""
    plans = tiny_plans(WINDOW, 1, features=(4, 8))
    architecture = copy.deepcopy(plans["configurations"]["3d_fullres"]["architecture"])
    plans["configurations"]["3d_nmsw"] = {"inherits_from": "3d_fullres", "nmsw": {
        "volume_shape": list(VOLUME), "global_shape": list(GLOBAL), "global_architecture": architecture,
        "step": 0.5, "k_train": 4, "k_infer": 5, "batch_size": 1}}
    return plans


@pytest.fixture(scope="module")
def model():
    plans, dataset = nmsw_plans(), dataset_json(1, LABELS)
    manager = PlansManager(plans)
    torch.manual_seed(0)
    net = nnUNetTrainerNMSW.build_network_architecture(manager, manager.get_configuration("3d_nmsw"), 1, 3)
    return net.eval(), plans, dataset


def predictor_for(model, strategy, configuration="3d_nmsw", use_mirroring=False, **options):
    net, plans, dataset = model
    manager = PlansManager(plans)
    predictor = EfficientPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=use_mirroring,
                                   strategy=strategy, **options)
    predictor.manual_initialization(net, manager, manager.get_configuration(configuration), None, dataset,
                                    "nnUNetTrainerNMSW", (0, 1, 2))
    return predictor


def volume(shape=VOLUME, seed=0):
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))


def test_nmsw_strategy_is_the_core_top_k_and_deterministic(model):
    x = volume()
    predictor = predictor_for(model, "nmsw", k=3, accumulate_dtype=torch.float32)
    logits = predictor.predict_sliding_window_return_logits(x)
    expected = model[0].forward_infer(x[None], k=3)["logits"][0]
    assert logits.shape == (3, *VOLUME)
    assert torch.equal(logits, expected)
    assert torch.equal(predictor.predict_sliding_window_return_logits(x), logits)
    run = predictor.last_run
    assert (run.windows, run.network_inputs, run.global_passes, run.network_passes) == (3, 3, 1, 4)


def test_nmsw_default_k_is_the_plans_k_infer_and_large_k_takes_all_candidates(model):
    predictor = predictor_for(model, "nmsw")
    predictor.predict_sliding_window_return_logits(volume())
    assert predictor.last_run.windows == 5
    predictor = predictor_for(model, "nmsw", k=1000)
    predictor.predict_sliding_window_return_logits(volume())
    assert predictor.last_run.windows == 8  # 2 x 2 x 2 candidates


def test_random_fg_is_reproducible_with_a_seed(model):
    x = volume()
    first = predictor_for(model, "random_fg", k=2, seed=3)
    a = first.predict_sliding_window_return_logits(x)
    b = predictor_for(model, "random_fg", k=2, seed=3).predict_sliding_window_return_logits(x)
    assert torch.equal(a, b)
    assert first.last_run.windows == 2


@pytest.mark.parametrize("strategy, options", [("nmsw", {"k": 3}), ("random_fg", {"k": 2, "seed": 1}),
                                               ("global", {})])
@pytest.mark.parametrize("use_mirroring", [False, True], ids=["no_tta", "tta"])
def test_float16_merge_equals_the_float32_merge_up_to_float16_rounding(model, strategy, options, use_mirroring):
    x = volume((28, 20, 24))  # padded to the 24^3 canvas on two axes, so cropping back is covered too
    compact = predictor_for(model, strategy, use_mirroring=use_mirroring, **options)
    exact = predictor_for(model, strategy, use_mirroring=use_mirroring, accumulate_dtype=torch.float32, **options)
    logits, reference = compact.predict_sliding_window_return_logits(x), exact.predict_sliding_window_return_logits(x)
    assert logits.dtype == torch.float16 and reference.dtype == torch.float32
    assert logits.shape == reference.shape == (3, 28, 20, 24)
    # one rounding to float16 per window and pass added (at most 8 windows x 8 passes per voxel)
    assert ((logits.float() - reference).abs() <= 2 ** -7 * reference.abs().clamp(min=1)).all()
    assert (logits.argmax(0) == reference.argmax(0)).float().mean() >= 0.999
    assert (compact.last_run.windows, compact.last_run.network_inputs) == (exact.last_run.windows,
                                                                           exact.last_run.network_inputs)


def test_mirroring_runs_the_whole_strategy_per_flip(model):
    predictor = predictor_for(model, "nmsw", use_mirroring=True, k=2)
    logits = predictor.predict_sliding_window_return_logits(volume())
    run = predictor.last_run
    assert (run.windows, run.network_inputs, run.global_passes) == (2, 16, 8)
    assert torch.isfinite(logits).all()


def test_global_strategy_is_the_upsampled_global_branch(model):
    x = volume()
    predictor = predictor_for(model, "global", accumulate_dtype=torch.float32)
    logits = predictor.predict_sliding_window_return_logits(x)
    assert torch.equal(logits, global_only_infer(model[0], x[None])["logits"][0])
    assert predictor.last_run.windows == 0


def test_zoom_evaluates_one_window_per_predicted_class(model):
    net = copy.deepcopy(model[0])
    x = volume()
    bias = net.global_branch.unet.decoder.seg_layers[-1].bias
    # a global head biased to background everywhere -> no box, the output is the global branch's
    with torch.no_grad():
        bias.copy_(torch.tensor([50.0, 0.0, 0.0]))
    predictor = predictor_for((net, *model[1:]), "zoom")
    assert torch.equal(predictor.predict_sliding_window_return_logits(x),
                       global_only_infer(net, x[None])["logits"][0])
    assert predictor.last_run.windows == 0
    # ... to class 1 everywhere -> one box (the whole volume), zoomed to one window and back
    with torch.no_grad():
        bias.copy_(torch.tensor([0.0, 50.0, 0.0]))
    predictor = predictor_for((net, *model[1:]), "zoom")
    logits = predictor.predict_sliding_window_return_logits(x)
    assert predictor.last_run.windows == 1
    assert logits.shape == (3, *VOLUME) and torch.isfinite(logits).all()


def test_sliding_window_on_an_nmsw_model_is_the_local_branch(model):
    net, plans, dataset = model
    x = volume()
    nmsw_sw = predictor_for(model, "sliding_window").predict_sliding_window_return_logits(x)
    manager = PlansManager(plans)
    stock = EfficientPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=False)
    stock.manual_initialization(net.local_net, manager, manager.get_configuration("3d_fullres"), None, dataset,
                                "nnUNetTrainer", (0, 1, 2))
    assert torch.equal(nmsw_sw, stock.predict_sliding_window_return_logits(x))


@pytest.mark.parametrize("strategy", ["nmsw", "zoom"])
def test_volume_smaller_than_one_window_is_padded_and_cropped_back(model, strategy):
    logits = predictor_for(model, strategy).predict_sliding_window_return_logits(volume((10, 20, 12)))
    assert logits.shape == (3, 10, 20, 12)
    assert torch.isfinite(logits).all()


def test_nmsw_strategy_on_a_stock_model_is_one_clear_error():
    plans, dataset = tiny_plans(WINDOW, 1, features=(4, 8)), dataset_json(1, LABELS)
    manager = PlansManager(plans)
    predictor = EfficientPredictor(device=torch.device("cpu"), allow_tqdm=False, strategy="nmsw")
    with pytest.raises(EfficientError, match="needs an NMSW model.*sliding_window"):
        predictor.manual_initialization(build_network(plans, dataset), manager, manager.get_configuration("3d_fullres"),
                                        None, dataset, "nnUNetTrainer", (0, 1, 2))


def test_configuration_without_nmsw_entry_is_one_clear_error(model):
    with pytest.raises(EfficientError, match="no 'nmsw' entry.*nnUNetPlannerNMSW"):
        predictor_for(model, "nmsw", configuration="3d_fullres")


@pytest.mark.parametrize("strategy", ["nmsw", "random_fg"])
def test_k_below_one_is_rejected(strategy):
    with pytest.raises(EfficientError, match="--k must be at least 1"):
        EfficientPredictor(device=torch.device("cpu"), strategy=strategy, k=0)


def test_cli_rejects_k_below_one_with_one_line(tmp_path, capsys):
    code = main(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(tmp_path),
                 "--strategy", "nmsw", "--k", "-1", "-device", "cpu"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--k must be at least 1" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("strategy, used", [("nmsw", 0.5), ("random_fg", 0.5), ("zoom", None), ("global", None),
                                            ("sliding_window", 0.25)])
def test_each_strategy_reports_the_step_it_evaluates(model, strategy, used):
    predictor = predictor_for(model, strategy, tile_step_size=0.25)
    assert predictor.step_used() == used


@pytest.mark.parametrize("strategy, message", [
    ("nmsw", "-step_size 0.25 does not apply to strategy 'nmsw': it chooses among the model's candidate windows, "
             "nnU-Net's grid at step 0.5"),
    ("zoom", "-step_size 0.25 does not apply to strategy 'zoom': it evaluates no sliding-window grid"),
])
def test_a_step_an_nmsw_strategy_would_ignore_is_refused(model, strategy, message):
    predictor = predictor_for(model, strategy, tile_step_size=0.25)
    with pytest.raises(EfficientError, match=message.replace("(", r"\(").replace(")", r"\)")):
        predictor.check_step_used(0.25)
    predictor_for(model, "nmsw", tile_step_size=0.5).check_step_used(0.5)  # the model's own step is accepted


def test_strategies_see_a_context_and_leave_the_predictor_alone(model):
    predictor = predictor_for(model, "nmsw", k=2)
    before = dict(vars(predictor))
    predictor.predict_sliding_window_return_logits(volume())
    changed = {k for k, v in vars(predictor).items() if before.get(k, object()) is not v}
    assert changed <= {"last_run", "last_network_seconds", "network"}  # what the predictor itself records
    context = predictor.strategy_context()
    assert (context.step, context.batch_size, context.mirror_axes) == (0.5, 1, None)


def test_cli_refuses_a_step_size_nmsw_would_ignore_in_one_line(tmp_path, capsys):
    from conftest import write_model_folder

    model = write_model_folder(tmp_path / "model", nmsw_plans(), dataset_json(1, LABELS),
                               trainer_name="nnUNetTrainerNMSW", configuration="3d_nmsw",
                               trainer_class=nnUNetTrainerNMSW)
    images = tmp_path / "images"
    images.mkdir()
    code = main(["predict", "-i", str(images), "-o", str(tmp_path / "out"), "-m", str(model), "-f", "0",
                 "--strategy", "nmsw", "-step_size", "0.25", "-device", "cpu", "--disable_progress_bar"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "-step_size 0.25 does not apply to strategy 'nmsw'" in err[0], err
    assert not (tmp_path / "out").exists()
