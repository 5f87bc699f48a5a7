"""The sparse sliding window: exact where it matters, and it skips background windows."""

import pytest
import torch
from conftest import build_network, dataset_json, tiny_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_efficient.errors import EfficientError
from nnunet_efficient.inference.predictor import EfficientPredictor
from nnunet_efficient.inference.strategies import get_strategy
from nnunet_efficient.sampling.sparse import grow_mask

LABELS = {"background": 0, "fg": 1}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions run fastest on one thread, and on a busy machine many times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Threshold(torch.nn.Module):
    """Foreground wherever a 3×3×3 box mean of the input exceeds 0.5 (zero-padded at the window border).

    The padding makes a voxel's logits depend on where the window lies, so overlapping windows
    disagree near their borders and the Gaussian aggregation matters.
    """

    def __init__(self, context: bool = True):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3 if context else 1, padding=1 if context else 0, bias=True)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0] = -1 / self.conv.weight[0].numel()
            self.conv.weight[1] = 1 / self.conv.weight[1].numel()
            self.conv.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, x):
        return self.conv(x)


def predictor_for(network, patch, strategy="sliding_window", step=0.5, mirroring=False, **options):
    plans, dataset = tiny_plans(patch, 1), dataset_json(1, LABELS)
    manager = PlansManager(plans)
    predictor = EfficientPredictor(tile_step_size=step, use_mirroring=mirroring, device=torch.device("cpu"),
                                   allow_tqdm=False, strategy=strategy, **options)
    predictor.manual_initialization(network, manager, manager.get_configuration("3d_fullres"), None, dataset,
                                    "nnUNetTrainer", (0, 1, 2))
    return predictor


def corner_blob(size=64):
    """Dim noise (below the threshold) with a bright 4³ blob in the first 16³ window."""
    image = 0.3 * torch.rand(1, size, size, size, generator=torch.Generator().manual_seed(0))
    image[:, 4:8, 4:8, 4:8] = 1.0
    return image


@pytest.mark.parametrize("mirroring", [False, True], ids=["no_tta", "tta"])
def test_sparse_equals_sliding_window_when_every_window_holds_foreground(mirroring):
    plans, dataset = tiny_plans((16, 16, 16), 1), dataset_json(1, LABELS)
    network = build_network(plans, dataset)
    with torch.no_grad():  # every voxel of every window predicts foreground
        network.decoder.seg_layers[-1].bias.copy_(torch.tensor([-20.0, 20.0]))
    image = torch.randn(1, 32, 40, 32, generator=torch.Generator().manual_seed(0))
    reference = predictor_for(network, (16, 16, 16), mirroring=mirroring)
    sparse = predictor_for(network, (16, 16, 16), "sparse", mirroring=mirroring)
    expected = reference.predict_sliding_window_return_logits(image)
    logits = sparse.predict_sliding_window_return_logits(image)
    assert torch.equal(logits, expected)
    selection = sparse.strategy.last_selection
    assert selection.fine_windows == selection.candidate_windows == reference.last_run.windows == 3 * 4 * 3
    assert sparse.last_run.windows == 2 * 3 * 2 + 3 * 4 * 3  # guide grid at step 1.0 + every window
    assert selection.foreground_voxels == selection.hot_voxels == 32 * 40 * 32


@pytest.mark.parametrize("margin, fine_windows", [(0, 1), (4, 2 ** 3), (12, 3 ** 3)])
def test_background_windows_are_skipped(margin, fine_windows):
    # 64³ at patch 16³: a 4×4×4 guide grid; the requested grid (step 0.5) starts every 8 voxels,
    # 7 per axis. The guide's foreground is the blob [4, 8)³: overlapped by the windows starting
    # at 0; grown by 4 to [0, 12)³, also by those at 8; grown by 12 to [0, 20)³, also at 16.
    predictor = predictor_for(Threshold(context=False), (16, 16, 16), "sparse", sparse_margin=margin)
    logits = predictor.predict_sliding_window_return_logits(corner_blob())
    selection = predictor.strategy.last_selection
    assert (selection.guide_windows, selection.foreground_voxels) == (64, 4 ** 3)
    assert selection.hot_voxels == min(4 + 2 * margin, 8 + margin) ** 3
    assert (selection.candidate_windows, selection.fine_windows) == (7 ** 3, fine_windows)
    assert predictor.last_run.windows == 64 + fine_windows
    expected = torch.zeros(64, 64, 64, dtype=torch.long)
    expected[4:8, 4:8, 4:8] = 1
    assert torch.equal(logits.argmax(0), expected)


def test_hot_region_equals_sliding_window_and_the_rest_keeps_the_guide():
    image = corner_blob(32)
    sparse = predictor_for(Threshold(), (16, 16, 16), "sparse", mirroring=True, sparse_margin=4)
    logits = sparse.predict_sliding_window_return_logits(image)
    full = predictor_for(Threshold(), (16, 16, 16), mirroring=True).predict_sliding_window_return_logits(image)
    guide = predictor_for(Threshold(), (16, 16, 16), step=1.0).predict_sliding_window_return_logits(image)
    hot = grow_mask(guide.argmax(0) != 0, 4)
    assert sparse.strategy.last_selection.hot_voxels == hot.sum() > 0
    assert torch.equal(logits[:, hot], full[:, hot])
    assert not torch.equal(full[:, hot], guide[:, hot])  # the test would prove nothing otherwise
    # the hot region reaches past voxel 8, so the windows starting at 0 and 8 per axis are
    # selected; they reach voxel 23, and beyond the guide's logits stay
    assert sparse.strategy.last_selection.fine_windows == 8
    beyond = torch.ones(32, 32, 32, dtype=torch.bool)
    beyond[:24, :24, :24] = False
    assert torch.equal(logits[:, beyond], guide[:, beyond])
    assert sparse.last_run.network_inputs == 8 + 8 * 8


def test_step_one_without_tta_is_the_guide_pass_alone():
    image = corner_blob(32)
    sparse = predictor_for(Threshold(), (16, 16, 16), "sparse", step=1.0)
    reference = predictor_for(Threshold(), (16, 16, 16), step=1.0)
    assert torch.equal(sparse.predict_sliding_window_return_logits(image),
                       reference.predict_sliding_window_return_logits(image))
    assert sparse.last_run.windows == 8


def test_no_foreground_returns_the_guide_logits():
    predictor = predictor_for(Threshold(), (16, 16, 16), "sparse")
    logits = predictor.predict_sliding_window_return_logits(torch.zeros(1, 32, 32, 32))
    assert predictor.last_run.windows == 8
    assert predictor.strategy.last_selection.fine_windows == 0
    assert (logits.argmax(0) == 0).all()


def test_negative_margin_is_a_user_error():
    with pytest.raises(EfficientError, match="--sparse_margin"):
        get_strategy("sparse", sparse_margin=-1)
