"""NMSW's training objective and its random draws (SPEC 3.6), pure PyTorch.

The trainer draws the randomness here (:func:`draw_training_randomness`), runs
``NMSWNetwork.forward_train`` and sums :func:`nmsw_loss`; tests can fix the draws with a generator.

Example:
    >>> noise, starts = draw_training_randomness(net, target, generator)
    >>> out = net.forward_train(image, noise=noise, random_window_start=starts)
    >>> loss, parts = nmsw_loss(out, target, dice_ce)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nnunet_efficient.networks.nmsw import ENTROPY_WEIGHT, NMSWNetwork, downsample_label
from nnunet_efficient.sampling.topk import sample_gumbel, score_entropy
from nnunet_efficient.sampling.windows import crop_window, draw_random_window_start


def draw_training_randomness(
    net: NMSWNetwork, target: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """Gumbel noise for the top-k and the extra random window's start, for one batch.

    Args:
        net: the network (for the window size and candidate count).
        target: label batch ``(B, 1, X, Y, Z)`` on the CPU (foreground ``> 0`` centres the
            random window half the time, as in the reference).
        generator: CPU generator for reproducible draws.

    Returns:
        ``(noise (B, N) float32 on the CPU, B window starts)``.
    """
    b, spatial = target.shape[0], tuple(target.shape[2:])
    noise = sample_gumbel((b, net.num_candidates(spatial)), generator)
    starts = [draw_random_window_start(target[i, 0], net.window_size, generator) for i in range(b)]
    return noise, starts


def nmsw_loss(
    out: dict,
    target: torch.Tensor,
    seg_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    entropy_weight: float = ENTROPY_WEIGHT,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NMSW's loss: three segmentation terms (all weight 1) and the score-entropy bonus.

    ``seg_loss(full-res merged logits, target) + seg_loss(global logits, nearest-downsampled
    target) + seg_loss(local window logits, target windows) + entropy_weight * entropy``
    (``entropy_weight`` is negative: the entropy is maximised to keep exploring).

    Args:
        out: the dict of ``NMSWNetwork.forward_train``.
        target: label batch ``(B, 1, X, Y, Z)`` on the logits' device.
        seg_loss: e.g. nnU-Net's ``DC_and_CE_loss``, called as ``seg_loss(logits, target)``
            with ``(b, C, ...)`` logits and ``(b, 1, ...)`` labels.
        entropy_weight: weight of :func:`~nnunet_efficient.sampling.topk.score_entropy`.

    Returns:
        ``(total, parts)`` with parts ``full``, ``global``, ``local``, ``entropy`` (detached).
    """
    global_shape = tuple(out["global_logits"].shape[2:])
    window = tuple(out["local_logits"].shape[3:])
    local_target = torch.stack([crop_window(target[i], s, window)
                                for i, starts in enumerate(out["local_starts"]) for s in starts])
    parts = {
        "full": seg_loss(out["logits"], target),
        "global": seg_loss(out["global_logits"], downsample_label(target, global_shape)),
        "local": seg_loss(out["local_logits"].flatten(0, 1), local_target),
        "entropy": score_entropy(out["masked_scores"]),
    }
    total = parts["full"] + parts["global"] + parts["local"] + entropy_weight * parts["entropy"]
    return total, {k: v.detach() for k, v in parts.items()}
