"""Dense and token-sparse UNETR: pruning schedule, selection, completion, equivalence, bad settings.

Small ViTs (width 24, 4 blocks) on 32×32×48 patches (token grid 4×4×6 = 96 tokens) keep each test
well under a second on one CPU thread.
"""

from __future__ import annotations

import pytest
import torch

from nnunet_efficient.benchmark.measure import count_macs
from nnunet_efficient.errors import EfficientError
from nnunet_efficient.networks.unetr import (
    UNETR,
    VIT_PRESETS,
    TokenSparseUNETR,
    assemble_tokens,
    kept_count,
    select_tokens,
    sincos_position_embedding_3d,
    token_schedule,
)

PATCH = (32, 32, 48)
STRIDES = [[1, 1, 1]] + [[2, 2, 2]] * 4
SMALL = {"embed_dim": 24, "depth": 4, "num_heads": 2, "feature_size": 4}


def sparse(keep_ratios=(0.5, 0.5), after=(0, 2), patch=PATCH, **kwargs) -> TokenSparseUNETR:
    torch.manual_seed(0)
    return TokenSparseUNETR(1, 3, patch, STRIDES, **{**SMALL, **kwargs}, prune_after_blocks=list(after),
                            keep_ratios=list(keep_ratios))


def zero_noise(net: TokenSparseUNETR, batch: int) -> list[torch.Tensor]:
    return [torch.zeros(batch, n) for n in net.schedule[:-1]]


@pytest.mark.parametrize("tokens, ratios, expected", [
    (1728, [0.1, 0.1, 0.1], [1728, 172, 17, 1]),    # the reference on BTCV (r = 0.9 pruned)
    (1728, [0.25, 0.25, 0.25], [1728, 432, 108, 27]),  # the reference on BraTS (r = 0.75)
    (288, [0.1, 0.1], [288, 28, 2]),                 # a 48×64×48 Hippocampus patch: floor(28.8), floor(2.8)
    (10, [0.1], [10, 1]),                            # 0.1 × 10 is exactly 1 token, not 0.99…
    (7, [0.5, 0.5], [7, 3, 1]),
    (96, [1.0, 1.0], [96, 96, 96]),
])
def test_token_schedule_is_the_floor_of_ratio_times_tokens(tokens, ratios, expected):
    assert token_schedule(tokens, ratios) == expected
    assert [kept_count(n, r) for n, r in zip(expected, ratios)] == expected[1:]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_tokens_after_each_stage_follow_the_schedule(training):
    net = sparse(keep_ratios=(0.3, 0.5, 0.5), after=(0, 1, 3)).train(training)
    assert net.schedule == [96, 28, 14, 7]  # floor(28.8), 14, 7
    pruned, (final, final_index) = net.encode(torch.randn(2, 1, *PATCH), zero_noise(net, 2) if training else None)
    assert [p.shape[1] for p, _ in pruned] == [96 - 28, 28 - 14, 14 - 7]
    assert final.shape[:2] == (2, 1 + 7) and final_index.shape == (2, 8)
    assert (final_index[:, 0] == 0).all()  # [CLS] is always kept, first


def test_completion_puts_every_grid_position_back_exactly_once():
    # hand-made: 2 sets of a 5-position grid, values equal to their position
    indices = [torch.tensor([[3, 0]]), torch.tensor([[4, 1, 2]])]
    values = [i.unsqueeze(-1).float() for i in indices]
    assert assemble_tokens(values, indices, 5)[0, :, 0].tolist() == [0, 1, 2, 3, 4]
    # in the network: the tracked indices of the pruned sets and the final set are a permutation
    net = sparse(keep_ratios=(0.3, 0.5), after=(1, 2)).eval()
    pruned, final = net.encode(torch.randn(3, 1, *PATCH))
    everything = torch.cat([i for _, i in pruned] + [final[1]], dim=1)
    assert everything.shape == (3, 1 + 96)
    for row in everything:
        assert torch.equal(torch.bincount(row, minlength=97), torch.ones(97, dtype=torch.long))
    # and assembling the sets' own indices as values restores grid order
    restored = assemble_tokens([i.unsqueeze(-1).float() for _, i in pruned] + [final[1].unsqueeze(-1).float()],
                               [i for _, i in pruned] + [final[1]], 97)
    assert torch.equal(restored[..., 0], torch.arange(97.0).expand(3, -1))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_keep_ratio_one_equals_the_dense_network_on_the_same_weights(training):
    net = sparse(keep_ratios=(1.0, 1.0, 1.0), after=(0, 1, 2)).train(training)
    dense = UNETR(1, 3, PATCH, STRIDES, **SMALL).train(training)
    missing, unexpected = dense.load_state_dict(net.state_dict(), strict=False)
    assert missing == []
    assert {k.split(".")[0] for k in unexpected} == {"score_predictors", "pruned_norms", "completion"}
    assert all(k.startswith(("completion.pruned_projs", "completion.pruned_tokens")) for k in unexpected
               if k.startswith("completion"))
    x = torch.randn(2, 1, *PATCH)
    with torch.no_grad():
        expected = dense(x)
        got = net(x, zero_noise(net, 2) if training else None)
    # the pruning stages only permute the tokens; attention sums in another order
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_score_predictor():
    net = sparse(keep_ratios=(0.5, 0.5, 0.5), after=(0, 1, 2)).train()
    net.decoder.deep_supervision = True
    generator = torch.Generator().manual_seed(1)
    outputs = net(torch.randn(2, 1, *PATCH), net.sample_gumbel_noise(2, generator=generator))
    sum(o.square().mean() for o in outputs).backward()
    for stage, predictor in enumerate(net.score_predictors):
        for name, parameter in predictor.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), (stage, name)
            assert parameter.grad.abs().sum() > 0, (stage, name)


def test_inference_is_deterministic_and_ignores_noise():
    net = sparse().eval()
    x = torch.randn(2, 1, *PATCH)
    with torch.no_grad():
        first = net(x)
        assert torch.equal(net(x), first)
        assert torch.equal(net(x, [torch.randn(2, n) * 100 for n in net.schedule[:-1]]), first)


def test_training_selection_is_fixed_by_the_noise_passed_in():
    net = sparse(after=(0, 3)).train()
    x = torch.randn(2, 1, *PATCH)
    noise = net.sample_gumbel_noise(2, generator=torch.Generator().manual_seed(3))
    _, (_, a) = net.encode(x, noise)
    _, (_, b) = net.encode(x, noise)
    assert torch.equal(a, b)
    # large noise overrides the scores: the kept tokens are the noise's top-k
    loud = [torch.arange(n, 0, -1, dtype=torch.float32).expand(2, -1) * 1e6 for n in net.schedule[:-1]]
    pruned, _ = net.encode(x, loud)
    assert sorted(pruned[0][1][0].tolist()) == list(range(1 + 48, 1 + 96))  # positions 48..95 (+1 for [CLS])


def test_straight_through_weights_are_hard_forward_and_soft_backward():
    scores = torch.tensor([[0.0, -1.0, -0.1, -3.0]], requires_grad=True)
    kept, pruned, weights = select_tokens(scores, 2, torch.zeros(1, 4), straight_through=True)
    assert kept.tolist() == [[0, 2]] and pruned.tolist() == [[1, 3]]
    torch.testing.assert_close(weights, torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    (weights * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert scores.grad.abs().sum() > 0  # the softmax's gradient
    kept, _, none = select_tokens(scores.detach(), 1)
    assert kept.tolist() == [[0]] and none is None


def test_sincos_embedding_rows():
    table = sincos_position_embedding_3d((2, 3, 4), 12)
    assert table.shape == (1 + 24, 12)
    assert torch.equal(table[0], torch.zeros(12))
    # position (x=1, y=2, z=3) is row 1 + 1*12 + 2*4 + 3; frequencies 1 and 1e-2 per axis
    row = table[1 + 12 + 8 + 3]
    torch.testing.assert_close(row[:4], torch.tensor([0.8415, 0.0100, 0.5403, 0.9999]), atol=1e-4, rtol=0)
    assert len({tuple(r.tolist()) for r in table[1:]}) == 24
    with pytest.raises(EfficientError, match="divisible by 6"):
        sincos_position_embedding_3d((2, 2, 2), 16)


@pytest.mark.parametrize("token_size, patch", [(8, PATCH), (16, PATCH), (4, (16, 16, 32))])
def test_decoder_outputs_every_level_for_any_token_level(token_size, patch):
    net = UNETR(1, 3, patch, STRIDES, token_size=token_size, **SMALL)
    net.decoder.deep_supervision = True
    outputs = net(torch.randn(1, 1, *patch))
    assert [tuple(o.shape[2:]) for o in outputs] == [tuple(p // 2 ** k for p in patch) for k in range(4)]
    net.decoder.deep_supervision = False
    assert net(torch.randn(1, 1, *patch)).shape == (1, 3, *patch)


def test_pruning_saves_macs():
    x = torch.zeros(1, 1, *PATCH)
    with torch.no_grad():
        _, dense = count_macs(UNETR(1, 3, PATCH, STRIDES, **SMALL).eval(), x)
        _, pruned = count_macs(sparse(keep_ratios=(0.25, 0.25), after=(0, 1)).eval(), x)
        _, unpruned = count_macs(sparse(keep_ratios=(1.0, 1.0), after=(0, 1)).eval(), x)
    assert pruned < dense < unpruned  # the score predictors cost a little; pruning saves more


def test_presets_name_the_paper_and_cpu_sizes():
    assert VIT_PRESETS["vit_base"] == {"embed_dim": 768, "depth": 12, "num_heads": 12}
    assert VIT_PRESETS["vit_tiny"]["embed_dim"] % 6 == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"patch": (36, 32, 48)}, r"patch_size \[36, 32, 48\] is not divisible by token_size \[8, 8, 8\]"),
    ({"patch": (40, 32, 48)}, r"patch_size \[40, 32, 48\] is not a multiple of \[16, 16, 16\]"),
    ({"keep_ratios": (0.1, 0.1)}, r"keep_ratios=\[0.1, 0.1\] prune every token at stage 1 .*floor\(0.1 × 9\) = 0"),
    ({"keep_ratios": (0.0, 0.5)}, r"keep_ratios=\[0.0, 0.5\]: every keep ratio must lie in \(0, 1\]"),
    ({"keep_ratios": (1.5, 0.5)}, r"keep_ratios=\[1.5, 0.5\]: every keep ratio must lie in \(0, 1\]"),
    ({"keep_ratios": (0.5,)}, r"give one keep ratio per pruning stage"),
    ({"after": (2, 1)}, r"prune_after_blocks=\[2, 1\]: block indices must increase"),
    ({"after": (0, 4)}, r"lie in 0..3"),
    ({"after": (), "keep_ratios": ()}, r"prune_after_blocks=\[\]"),
    ({"token_size": 6, "patch": (48, 48, 48)}, r"token_size \[6, 6, 6\] is not the cumulative stride"),
])
def test_bad_settings_fail_in_one_line_naming_the_setting(kwargs, message):
    with pytest.raises(EfficientError, match=message) as error:
        sparse(**kwargs)
    assert "\n" not in str(error.value)


def test_input_of_another_size_is_refused():
    with pytest.raises(EfficientError, match="built for patch_size"):
        sparse().eval()(torch.zeros(1, 1, 32, 32, 32))
