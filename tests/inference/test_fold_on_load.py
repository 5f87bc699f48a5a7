"""EfficientPredictor folds RepUX-Net's re-parameterisation when it loads a model folder."""

from __future__ import annotations

import json

import torch
from conftest import dataset_json
from training.test_uxnet_trainers import uxnet_plans

from nnunet_efficient.inference.predictor import EfficientPredictor
from nnunet_efficient.networks.uxnet import BFMDepthwiseConv3d, RepUXNet


def test_predictor_folds_repux_kernels_and_keeps_the_logits(tmp_path):
    plans = uxnet_plans(RepUXNet, kernel=21)
    plans.pop("continue_training")
    dataset = dataset_json(1, {"background": 0, "a": 1, "b": 2})
    kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    torch.manual_seed(0)
    trained = RepUXNet(input_channels=1, num_classes=3, deep_supervision=False, **kwargs).eval()
    folder = tmp_path / "nnUNetTrainerRepUXNet__nnUNetPlansTiny__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    torch.save({"network_weights": trained.state_dict(), "trainer_name": "nnUNetTrainerRepUXNet",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")

    predictor = EfficientPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), (0,))
    convs = [m for m in predictor.network.modules() if isinstance(m, BFMDepthwiseConv3d)]
    assert convs and all(c.is_folded for c in convs)
    # nnU-Net loads the checkpoint's (unfolded) weights again before each fold's prediction
    predictor.network.load_state_dict(predictor.list_of_parameters[0])
    assert all(c.is_folded for c in convs)
    image = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(predictor.network.eval()(image), trained(image), rtol=1e-5, atol=1e-5)
