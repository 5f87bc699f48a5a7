"""Choosing K of N candidate windows: differentiable Gumbel top-k, plain top-k, random foreground.

Pure PyTorch (never imports nnunetv2). Randomness is drawn by :func:`sample_gumbel` /
passed-in generators and handed to deterministic selection functions, so tests can fix it and
inference can switch it off.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

#: Additive score for background candidates: log of float32's smallest normal (~ -87.3), as in
#: the reference. Finite on purpose: once the foreground candidates run out, the best-scoring
#: background ones are picked next, and a softmax over a row of masked scores stays defined.
LOG_TINY = math.log(torch.finfo(torch.float32).tiny)

#: Temperature of the Gumbel-softmax (NMSW paper and reference: constant 2/3).
DEFAULT_TAU = 2.0 / 3.0


class GumbelTopK(NamedTuple):
    """Result of :func:`gumbel_topk`.

    Attributes:
        z: straight-through one-hot selections ``(B, K, N)``: value ``onehot(argmax y_k)``,
            gradient that of ``y_k``.
        y: soft selections ``(B, K, N)`` (softmax of the sequentially masked logits / tau).
        indices: chosen candidate per step ``(B, K)``, all distinct within a row.
    """

    z: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor


def sample_gumbel(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw standard Gumbel noise ``-log(-log(U))``, ``U ~ Uniform(0, 1)``.

    Args:
        shape: noise shape, normally ``(B, N)`` (one vector per sample and pass).
        generator: generator for reproducible draws; must live on ``device``.
        device: where to draw (default: the generator's device, else CPU).
        dtype: floating dtype of the result.

    Returns:
        Finite noise of ``shape``.
    """
    if device is None:
        device = generator.device if generator is not None else "cpu"
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    # U = 0 or 1 would give +-inf; clamping keeps the noise within about [-4.5, 16.6].
    eps = torch.finfo(dtype)
    u = u.clamp(min=eps.tiny, max=1.0 - eps.eps)
    return -torch.log(-torch.log(u))


def background_log_mask(foreground: torch.Tensor) -> torch.Tensor:
    """Additive score mask: 0 on foreground candidates, :data:`LOG_TINY` on background ones.

    Args:
        foreground: boolean ``(B, N)``.

    Returns:
        float32 ``(B, N)``.
    """
    zero = torch.zeros((), dtype=torch.float32, device=foreground.device)
    return torch.where(foreground, zero, zero + LOG_TINY)


def gumbel_topk(
    scores: torch.Tensor, k: int, noise: torch.Tensor | None = None, tau: float = DEFAULT_TAU
) -> GumbelTopK:
    """Differentiable top-k: Gumbel-softmax with sequential masking and a straight-through estimator.

    With ``l = scores + noise``: for step ``i = 1..K``, ``y_i = softmax((l + sum_{j<i} log m_j) / tau)``
    where ``m_j`` removes the candidate chosen at step ``j`` (``argmax y_j``), and
    ``z_i = onehot(argmax y_i) - stopgrad(y_i) + y_i`` (SPEC 3.3). ``K`` is capped at ``N``: the
    reference does not cap, and with ``K > N`` a row becomes all ``-inf`` and softmax gives NaN.
    Up to ``N`` steps at least one candidate is always left, so rows stay finite.

    Args:
        scores: finite candidate scores ``(B, N)`` (background already masked additively).
        k: number of candidates to choose; ``k >= N`` chooses all of them.
        noise: Gumbel noise ``(B, N)`` from :func:`sample_gumbel`, or ``None`` for no noise
            (the relaxation of a plain top-k).
        tau: softmax temperature.

    Returns:
        :class:`GumbelTopK` with ``z``, ``y`` of shape ``(B, K', N)`` and ``indices`` ``(B, K')``,
        ``K' = min(k, N)``.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (B, N), got shape {tuple(scores.shape)}.")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    # A -inf score (e.g. a mask built with log(0)) would empty a row once the finite ones are
    # taken; the finite LOG_TINY mask is the supported way to exclude candidates.
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite; mask background with LOG_TINY, not -inf.")
    k = min(int(k), scores.shape[1])
    logits = scores if noise is None else scores + noise.to(scores.dtype)
    taken = torch.zeros_like(logits, dtype=torch.bool)
    ys, zs, indices = [], [], []
    for _ in range(k):
        # -inf (not a large finite number) for already chosen candidates: a finite penalty could
        # tie with the LOG_TINY-masked background and re-select a window.
        masked = logits.masked_fill(taken, float("-inf"))
        y = F.softmax(masked / tau, dim=-1)
        # argmax on the logits rather than y: same winner, but immune to softmax underflow ties.
        idx = masked.argmax(dim=-1)
        hard = F.one_hot(idx, logits.shape[1]).to(y.dtype)
        zs.append(hard - y.detach() + y)
        ys.append(y)
        indices.append(idx)
        taken = taken | hard.bool()
    return GumbelTopK(torch.stack(zs, 1), torch.stack(ys, 1), torch.stack(indices, 1))


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Deterministic top-k for inference: no noise, best first, ties broken by lower index.

    Args:
        scores: masked scores ``(B, N)``.
        k: number of candidates; ``k >= N`` returns all of them.

    Returns:
        Long ``(B, min(k, N))``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    k = min(int(k), scores.shape[1])
    # A stable sort fixes the tie order, which torch.topk leaves unspecified.
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]


def random_foreground_indices(
    foreground: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The ``random_fg`` baseline: K candidates drawn uniformly among foreground cells.

    Without replacement; when there are fewer than K foreground cells, the rest are drawn
    uniformly among background cells (like NMSW, which falls back to background).

    Args:
        foreground: boolean ``(B, N)``.
        k: number of candidates; ``k >= N`` returns all of them.
        generator: generator for reproducible draws (any device).

    Returns:
        Long ``(B, min(k, N))``.
    """
    # Uniform keys in [0, 1) ranked with foreground lifted to [1, 2): a uniform random subset of
    # the foreground first, then of the background.
    # Drawn where the generator lives (a CPU generator works for a CUDA mask too).
    device = generator.device if generator is not None else foreground.device
    keys = torch.rand(foreground.shape, generator=generator, device=device).to(foreground.device)
    return topk_indices(keys + foreground.to(keys.dtype), k)


def score_entropy(masked_scores: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(masked scores)`` (no tau, no noise), averaged over the batch.

    NMSW adds ``-1e-5 * entropy`` to the loss (see ``ENTROPY_WEIGHT`` in
    ``nnunet_efficient.networks.nmsw``) to keep the sampler exploring.

    Args:
        masked_scores: clamped, background-masked scores ``(B, N)``.

    Returns:
        Scalar tensor.
    """
    # log_softmax instead of log(p + 1e-20): exact, and p * log p -> 0 without a fudge term.
    log_p = F.log_softmax(masked_scores.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()
