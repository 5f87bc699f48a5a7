"""``cpu_bf16``: the network runs under bfloat16 autocast on the CPU, and only then."""

import torch
from conftest import dataset_json, tiny_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_efficient.inference.predictor import EfficientPredictor


class RecordsAutocast(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)
        self.seen = []

    def forward(self, x):
        self.seen.append(torch.is_autocast_enabled("cpu"))
        return self.conv(x)


def logits_and_autocast(cpu_bf16):
    plans, dataset = tiny_plans((8, 8, 8), 1), dataset_json(1, {"background": 0, "a": 1})
    manager = PlansManager(plans)
    network = RecordsAutocast()
    predictor = EfficientPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=False,
                                   cpu_bf16=cpu_bf16)
    predictor.manual_initialization(network, manager, manager.get_configuration("3d_fullres"), None, dataset,
                                    "nnUNetTrainer", (0, 1, 2))
    image = torch.randn(1, 12, 8, 8, generator=torch.Generator().manual_seed(0))
    return predictor.predict_sliding_window_return_logits(image).float(), network.seen


def test_network_runs_under_bf16_autocast_only_when_asked():
    reference, seen_off = logits_and_autocast(False)
    logits, seen_on = logits_and_autocast(True)
    assert seen_off == [False] * 2 and seen_on == [True] * 2  # two windows along the first axis
    assert not torch.equal(logits, reference)
    # bfloat16 keeps 8 mantissa bits: relative error about 2**-8 of the inputs' scale
    torch.testing.assert_close(logits, reference, atol=0.05, rtol=0.02)
