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
    plans["configurations"]["3d_nmsw"] = {"inherits_from": "3d_fullres", "patch_size": list(VOLUME), "nmsw": {
        "window_size": list(WINDOW), "global_shape": list(GLOBAL), "global_architecture": architecture,
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


@pytest.mark.parametrize("use_mirroring", [False, True], ids=["no_tta", "tta"])
@pytest.mark.parametrize("shape", [VOLUME, (20, 24, 17)], ids=["canvas", "padded"])
def test_stock_nnunet_predictor_on_an_nmsw_model_runs_nmsw(model, use_mirroring, shape):
    """nnU-Net's own predictor pads to the canvas (the 3d_nmsw patch size) and calls the network once
    per mirrored copy: the global pass, top-k (k_infer) and learned merge run, and its labels equal
    the ``nmsw`` strategy's up to float16 rounding.

    nnU-Net weighs its one canvas-sized window with its float16 Gaussian (peak 10, sigma = canvas/8),
    which underflows float16's normal range towards the canvas's corners: there, and where two
    classes' logits nearly tie, rounding decides. Everywhere else the labels are identical.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    net, plans, dataset = model
    manager = PlansManager(plans)
    x = volume(shape, seed=4)
    stock = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=use_mirroring)
    stock.manual_initialization(net, manager, manager.get_configuration("3d_nmsw"), None, dataset,
                                "nnUNetTrainerNMSW", (0, 1, 2))
    stock_labels = stock.predict_sliding_window_return_logits(x).argmax(0)
    nmsw = predictor_for(model, "nmsw", use_mirroring=use_mirroring, accumulate_dtype=torch.float32)
    nmsw_logits = nmsw.predict_sliding_window_return_logits(x)
    assert nmsw.last_run.windows == 5  # the plans' k_infer, of 8 candidates
    top2 = nmsw_logits.topk(2, 0).values
    weight = compute_gaussian(VOLUME, sigma_scale=1. / 8, value_scaling_factor=10, device=torch.device("cpu"))
    padded_away = [(c - n) // 2 for c, n in zip(VOLUME, shape)]  # pad_nd_image centres the volume
    weight = weight[tuple(slice(p, p + n) for p, n in zip(padded_away, shape))]
    decided = (top2[0] - top2[1] > 1e-2) & (weight >= 2 ** -14)
    assert decided.float().mean() > 0.7
    assert torch.equal(stock_labels[decided], nmsw_logits.argmax(0)[decided])
    assert (stock_labels == nmsw_logits.argmax(0)).float().mean() > 0.98
    # ... and not the local branch's sliding window (what stock prediction used to run)
    local = EfficientPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=use_mirroring)
    local.manual_initialization(net.local_net, manager, manager.get_configuration("3d_fullres"), None, dataset,
                                "nnUNetTrainer", (0, 1, 2))
    assert (stock_labels != local.predict_sliding_window_return_logits(x).argmax(0)).float().mean() > 0.1


def test_sliding_window_strategy_on_an_nmsw_model_is_nnunets_predictor(model):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    net, plans, dataset = model
    manager = PlansManager(plans)
    x = volume()
    stock = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=False)
    stock.manual_initialization(net, manager, manager.get_configuration("3d_nmsw"), None, dataset,
                                "nnUNetTrainerNMSW", (0, 1, 2))
    plugin = predictor_for(model, "sliding_window")
    assert torch.equal(plugin.predict_sliding_window_return_logits(x), stock.predict_sliding_window_return_logits(x))
    assert plugin.last_run.windows == 1  # one canvas


@pytest.mark.parametrize("on_device", [True, False], ids=["on_device", "not_on_device"])
@pytest.mark.parametrize("accumulate_dtype", [torch.float16, torch.float32])
def test_not_on_device_keeps_the_merged_logits_on_the_host(model, on_device, accumulate_dtype):
    net, plans, dataset = model
    manager = PlansManager(plans)
    predictor = EfficientPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=False, strategy="nmsw",
                                   perform_everything_on_device=on_device, accumulate_dtype=accumulate_dtype)
    predictor.manual_initialization(net, manager, manager.get_configuration("3d_nmsw"), None, dataset,
                                    "nnUNetTrainerNMSW", (0, 1, 2))
    # nnU-Net switches perform_everything_on_device off for a CPU device; a CUDA device keeps it (GPU test below)
    assert predictor.perform_everything_on_device is False
    logits = predictor.predict_sliding_window_return_logits(volume())
    assert logits.device.type == "cpu" and logits.dtype == accumulate_dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("on_device", [True, False], ids=["on_device", "not_on_device"])
def test_not_on_device_on_cuda_runs_the_network_on_the_gpu_and_merges_on_the_host(model, on_device):
    net, plans, dataset = model
    manager = PlansManager(plans)
    predictor = EfficientPredictor(device=torch.device("cuda"), allow_tqdm=False, use_mirroring=False, strategy="nmsw",
                                   perform_everything_on_device=on_device)
    predictor.manual_initialization(copy.deepcopy(net), manager, manager.get_configuration("3d_nmsw"), None,
                                    dataset, "nnUNetTrainerNMSW", (0, 1, 2))
    logits = predictor.predict_sliding_window_return_logits(volume())
    assert logits.device.type == ("cuda" if on_device else "cpu")
    reference = predictor_for(model, "nmsw").predict_sliding_window_return_logits(volume())
    assert (logits.cpu().argmax(0) == reference.argmax(0)).float().mean() >= 0.999


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
