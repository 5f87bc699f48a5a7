"""UNETR-style ViT segmenters for nnU-Net: a dense one and its token-sparse variant (SPEC section 4).

Both are pure PyTorch and plans-driven: nnU-Net builds them as
``cls(input_channels=..., num_classes=..., deep_supervision=..., **arch_kwargs)`` with the
configuration's ``patch_size`` and decoder ``strides`` in ``arch_kwargs``.

Encoder. A ViT on a grid of ``token_size``-voxel cubes of the patch (8 by default, so a
96³ patch gives 12³ = 1728 tokens): a strided conv embeds each cube, a [CLS] token is prepended
(it is never pruned) and a learned position embedding added, then ``depth`` pre-norm transformer
blocks (LayerNorm eps 1e-6, multi-head attention, GELU MLP ×4, stochastic depth rising
linearly to ``drop_path_rate``). Width, depth and heads are arguments; :data:`VIT_PRESETS` names
the paper's ViT-B (``vit_base``: 768, 12 blocks, 12 heads) and a CPU-sized ViT-Ti
(``vit_tiny``: 192, 12 blocks, 3 heads).

Token pruning (:class:`TokenSparseUNETR` only). After each block listed in
``prune_after_blocks`` (the reference's 2, 5, 8) a score predictor of its own
(:class:`ScorePredictor`) scores the current ``L`` non-[CLS] tokens and
``floor(keep_ratio · L)`` are kept (:func:`token_schedule`; the reference prunes r = 0.9 per stage
on BTCV: 1728 → 172 → 17 → 1, i.e. keep ratio 0.1). Training uses Gumbel soft top-k with a
straight-through estimator: the hard top-k of ``score + g`` is taken, and with ``P`` the
softmax of ``(score + g) / tau`` over the tokens, kept tokens are multiplied by
``1 - sg(P) + P`` and pruned ones by ``1 - (0 - sg(P) + P)``: both are 1 in the forward pass,
but the loss reaches the predictors. The Gumbel noise ``g`` is drawn in one place,
:meth:`TokenSparseUNETR.sample_gumbel_noise`, and can be passed to ``forward`` (tests fix it);
at inference the selection is a plain top-k of the scores, with no noise.

Completion ("multi-layer token assembly"). The pruned tokens of every stage (normalised by a
per-stage LayerNorm) and the final kept tokens (normalised by the encoder's final LayerNorm)
are each projected by a linear layer of their own and get a learned per-set token added; they
are then scattered back to grid order by the grid indices tracked through every pruning
(:func:`assemble_tokens`), a fixed 3D sin-cos position embedding is added
(:func:`sincos_position_embedding_3d`), ``completion_depth`` transformer blocks mix them, then a
LayerNorm and a linear layer back to the encoder width; the [CLS] token is dropped. The dense
:class:`UNETR` is the same network without pruning stages (its only set is all tokens), so the
two differ by the pruning alone, and a token-sparse model with keep ratios of 1 computes what
the dense one computes on the same weights.

Decoder (UNETR for small token sizes). Levels ``l = 0..S-1`` with cumulative strides
``prod(strides[0..l])`` per axis (``strides[0]`` all ones); the token grid is level ``T``, the
level whose cumulative stride equals ``token_size`` (8 with the default
``strides = [[1,1,1]] + [[2,2,2]] * 4``: ``T = 3``, bottleneck at 1/16). Every skip input is the same
completed token map, as in the reference: level 0 is a residual block on the raw input; a
level above ``T`` upsamples the map with a transposed conv, then (transposed conv + residual
block) per further level (MONAI's ``UnetrPrUpBlock``); level ``T`` is one residual block; a level
below ``T`` is average-pooled first. The bottleneck (level ``S-1``) is the map average-pooled to
its level (the patch-8 decoder's AvgPool bottleneck; the patch must therefore be a multiple of
the total stride, 16). Up path: transposed conv, concatenation with the skip, residual block
(``UnetrUpBlock``); widths ``feature_size · 2^l``; 1x1x1 heads at levels ``0..S-2`` (deep
supervision, nnU-Net's convention: full resolution first).

Example:
    >>> net = TokenSparseUNETR(input_channels=1, num_classes=3, patch_size=(32, 48, 32),
    ...                        strides=[[1, 1, 1]] + [[2, 2, 2]] * 4, **VIT_PRESETS["vit_tiny"],
    ...                        prune_after_blocks=[2, 5], keep_ratios=[0.5, 0.5]).eval()
    >>> net(torch.zeros(2, 1, 32, 48, 32)).shape
    torch.Size([2, 3, 32, 48, 32])
    >>> token_schedule(4 * 6 * 4, [0.5, 0.5])
    [96, 48, 24]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.regularization import DropPath
from torch import nn

from nnunet_efficient.errors import EfficientError
from nnunet_efficient.networks.uxnet import _residual_block

__all__ = [
    "VIT_PRESETS",
    "ScorePredictor",
    "TokenSparseUNETR",
    "TransformerBlock",
    "UNETR",
    "UNETRTokenDecoder",
    "assemble_tokens",
    "check_unetr_settings",
    "kept_count",
    "select_tokens",
    "sincos_position_embedding_3d",
    "token_schedule",
]

#: Named encoder sizes. ``vit_base`` is the paper's; ``vit_tiny`` (DeiT-Ti's width and heads) trains on a CPU.
VIT_PRESETS: dict[str, dict[str, int]] = {
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
}

#: LayerNorm epsilon of the reference's (timm's) ViT blocks.
LAYER_NORM_EPS = 1e-6


def kept_count(num_tokens: int, keep_ratio: float) -> int:
    """Tokens a pruning stage keeps: ``floor(keep_ratio · num_tokens)``.

    The reference computes ``int(L * (1 - r))`` with ``r`` the pruned fraction. A relative
    tolerance of 1e-9 makes decimal ratios count as written (0.1 of 10 tokens keeps 1, where
    ``int(10 * (1 - 0.9))`` is 0); at the reference's settings the two agree.

    Example:
        >>> [kept_count(1728, 0.1), kept_count(172, 0.1), kept_count(17, 0.1)]
        [172, 17, 1]
    """
    return int(math.floor(keep_ratio * num_tokens * (1 + 1e-9)))


def token_schedule(num_tokens: int, keep_ratios: Sequence[float]) -> list[int]:
    """Non-[CLS] tokens before the first and after every pruning stage.

    Example:
        >>> token_schedule(1728, [0.25, 0.25, 0.25])
        [1728, 432, 108, 27]
    """
    counts = [int(num_tokens)]
    for ratio in keep_ratios:
        counts.append(kept_count(counts[-1], ratio))
    return counts


def sincos_position_embedding_3d(grid_size: Sequence[int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 3D sin-cos position embedding with a zero row for the [CLS] token.

    A sixth of the channels per axis and function: ``[sin x, cos x, sin y, cos y, sin z, cos z]``
    with frequencies ``temperature^(-i / (dim / 6))``, ``i = 0..dim/6-1``; positions in C order of
    the grid (x slowest), as a ``(B, C, X, Y, Z)`` map flattens.

    Args:
        grid_size: token grid ``(g_x, g_y, g_z)``.
        dim: embedding width, divisible by 6.

    Returns:
        ``(1 + g_x g_y g_z, dim)`` float32; row 0 (the [CLS] token) is zero.
    """
    if dim % 6:
        raise EfficientError(f"completion width {dim} must be divisible by 6 for the 3D sin-cos position embedding")
    per_axis = dim // 6
    frequencies = temperature ** (-torch.arange(per_axis, dtype=torch.float64) / per_axis)
    axes = torch.meshgrid(*(torch.arange(int(g), dtype=torch.float64) for g in grid_size), indexing="ij")
    parts = []
    for axis in axes:
        angles = axis.reshape(-1, 1) * frequencies
        parts += [torch.sin(angles), torch.cos(angles)]
    table = torch.cat(parts, dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    if q.device.type == "cuda":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    # On the CPU the explicit product: torch's FLOP counter (the benchmark's MACs) counts CPU
    # scaled_dot_product_attention as zero, and at a few hundred tokens the fused kernel is no faster.
    return torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1) @ v


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's ViT attention)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(_attention(q, k, v, self.scale).transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: ``x + DropPath(Attn(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``.

    Args:
        dim: token width ``C``.
        num_heads: attention heads (``C`` divisible by it).
        mlp_ratio: hidden width of the GELU MLP over ``C``.
        drop_path: stochastic-depth probability.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, N, C)``. Returns: ``(B, N, C)``."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ScorePredictor(nn.Module):
    """Per-token keep score (the reference's MlpPredictor).

    LN → Linear → GELU per token; each token's first half of channels is concatenated with the
    mean over tokens of the second half (global context), then an MLP ``C → C/2 → C/4 → 1``
    with GELUs and a log-sigmoid.

    Args:
        dim: token width ``C`` (even).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.local = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.head = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(),
                                  nn.Linear(dim // 4, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Score.

        Args:
            tokens: ``(B, L, C)`` non-[CLS] tokens.

        Returns:
            ``(B, L)`` log-probabilities (≤ 0) of keeping each token.
        """
        x = self.local(tokens)
        half = x.shape[-1] // 2
        context = x[..., half:].mean(dim=1, keepdim=True).expand(-1, x.shape[1], -1)
        return F.logsigmoid(self.head(torch.cat([x[..., :half], context], dim=-1)).squeeze(-1))


def select_tokens(scores: torch.Tensor, keep: int, noise: torch.Tensor | None = None, tau: float = 1.0,
                  straight_through: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Choose the ``keep`` highest-scoring tokens.

    Args:
        scores: ``(B, L)`` scores.
        keep: tokens to keep, ``0 <= keep <= L``.
        noise: ``(B, L)`` Gumbel noise added before choosing (training), or None (plain top-k).
        tau: Gumbel-softmax temperature.
        straight_through: also return the straight-through selection weights.

    Returns:
        ``(kept, pruned, weights)``: ``kept`` ``(B, keep)`` and ``pruned`` ``(B, L - keep)`` positions
        in ``0..L-1`` (kept ones by descending perturbed score, ties by position), and with
        ``straight_through`` the ``(B, L)`` float32 ``hard - sg(soft) + soft``, with ``soft`` the
        softmax over tokens of ``(scores + noise) / tau``: exactly 1 on kept and 0 on pruned
        positions up to rounding, differentiable w.r.t. ``scores``; else None.
    """
    logits = scores.float() if noise is None else scores.float() + noise.float()
    if torch.onnx.is_in_onnx_export():
        # ONNX has no stable sort; its TopK over all tokens orders ties by position, as the stable argsort does
        order = torch.topk(logits, logits.shape[-1], dim=-1, largest=True, sorted=True).indices
    else:
        order = torch.argsort(logits, dim=-1, descending=True, stable=True)
    kept, pruned = order[:, :keep], order[:, keep:]
    if not straight_through:
        return kept, pruned, None
    soft = torch.softmax(logits / tau, dim=-1)
    hard = torch.zeros_like(soft).scatter_(1, kept, 1.0)
    return kept, pruned, hard - soft.detach() + soft


def assemble_tokens(values: Sequence[torch.Tensor], indices: Sequence[torch.Tensor],
                    num_positions: int) -> torch.Tensor:
    """Scatter token sets back to grid order.

    Args:
        values: token sets ``(B, n_i, C)``.
        indices: their positions ``(B, n_i)`` in ``0..num_positions-1``; together a permutation.
        num_positions: ``N``.

    Returns:
        ``(B, N, C)`` with row ``p`` the token whose index is ``p`` (zero where none is).
    """
    v = torch.cat(list(values), dim=1)
    i = torch.cat(list(indices), dim=1)
    out = v.new_zeros(v.shape[0], num_positions, v.shape[2])
    return out.scatter(1, i.unsqueeze(-1).expand(-1, -1, v.shape[2]), v)


class TokenCompletion(nn.Module):
    """Multi-layer token assembly: project each token set, scatter to grid order, add sin-cos, mix.

    Args:
        enc_dim: encoder width.
        dim: completion width (divisible by 6).
        num_heads: heads of the mixing blocks.
        depth: mixing blocks (the reference's 1).
        grid_size: token grid.
        num_pruned_sets: pruning stages (0 for the dense network).

    Attributes:
        final_proj, final_token: projection and learned token of the final kept set ([CLS] included).
        pruned_projs, pruned_tokens: the same per pruning stage.
        pos_embed: ``(1, 1 + L, dim)`` non-persistent buffer.
    """

    def __init__(self, enc_dim: int, dim: int, num_heads: int, depth: int, grid_size: Sequence[int],
                 num_pruned_sets: int):
        super().__init__()
        self.final_proj = nn.Linear(enc_dim, dim)
        self.final_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pruned_projs = nn.ModuleList(nn.Linear(enc_dim, dim) for _ in range(num_pruned_sets))
        self.pruned_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, 1, dim)) for _ in range(num_pruned_sets))
        self.register_buffer("pos_embed", sincos_position_embedding_3d(grid_size, dim)[None], persistent=False)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.out = nn.Linear(dim, enc_dim)

    def forward(self, pruned: Sequence[tuple[torch.Tensor, torch.Tensor]],
                final: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Complete.

        Args:
            pruned: per stage ``(tokens (B, n_j, C_enc), grid indices (B, n_j))``, normalised.
            final: the kept tokens with [CLS] first ``(B, 1 + n, C_enc)`` and their indices (0 = [CLS]).

        Returns:
            ``(B, L, C_enc)`` tokens in grid order, [CLS] dropped.
        """
        values = [proj(t) + token for (t, _), proj, token in zip(pruned, self.pruned_projs, self.pruned_tokens)]
        values.append(self.final_proj(final[0]) + self.final_token)
        x = assemble_tokens(values, [i for _, i in pruned] + [final[1]], self.pos_embed.shape[1])
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x))[:, 1:]


def _transp(cin: int, cout: int, stride: Sequence[int]) -> nn.ConvTranspose3d:
    return nn.ConvTranspose3d(cin, cout, tuple(stride), stride=tuple(stride), bias=False)


class UNETRTokenDecoder(nn.Module):
    """UNETR decoder fed one token map on every skip (see the module docstring).

    Args:
        input_channels: image channels (level-0 skip).
        hidden: token width.
        feature_size: width of level 0; level ``l`` has ``feature_size · 2^l``.
        strides: ``S`` per-level strides (3 ints each), ``strides[0]`` all ones.
        token_level: ``T``, the level of the token grid (``1 <= T <= S-1``).
        num_classes: head outputs.
        deep_supervision: return the logits of levels ``0..S-2``; nnU-Net flips this attribute.
    """

    def __init__(self, input_channels: int, hidden: int, feature_size: int, strides: Sequence[Sequence[int]],
                 token_level: int, num_classes: int, deep_supervision: bool = False):
        super().__init__()
        n = len(strides)
        f = [feature_size * 2 ** level for level in range(n - 1)]
        cumulative = np.cumprod(np.asarray(strides, dtype=int), axis=0)
        self.token_level = token_level
        skips = [_residual_block(input_channels, f[0])]
        for level in range(1, n - 1):
            if level < token_level:
                layers = [_transp(hidden, f[level], strides[token_level])]
                for m in range(token_level - 1, level, -1):
                    layers += [_transp(f[level], f[level], strides[m]), _residual_block(f[level], f[level])]
                skips.append(nn.Sequential(*layers))
            else:
                ratio = tuple(int(r) for r in cumulative[level] // cumulative[token_level])
                pool = [nn.AvgPool3d(ratio, ratio)] if level > token_level else []
                skips.append(nn.Sequential(*pool, _residual_block(hidden, f[level])))
        self.skips = nn.ModuleList(skips)
        ratio = tuple(int(r) for r in cumulative[n - 1] // cumulative[token_level])
        self.bottleneck = nn.AvgPool3d(ratio, ratio) if any(r > 1 for r in ratio) else nn.Identity()
        # ups[l - 1], up_blocks[l - 1] take level l to level l - 1
        self.ups = nn.ModuleList(_transp(hidden if level == n - 1 else f[level], f[level - 1], strides[level])
                                 for level in range(1, n))
        self.up_blocks = nn.ModuleList(_residual_block(2 * f[level - 1], f[level - 1]) for level in range(1, n))
        self.seg_layers = nn.ModuleList(nn.Conv3d(f[level], num_classes, 1) for level in range(n - 1))
        self.deep_supervision = deep_supervision

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Decode.

        Args:
            x: network input ``(B, C_in, X, Y, Z)``.
            tokens: completed token map ``(B, hidden, *grid)``.

        Returns:
            ``(B, num_classes, X, Y, Z)``; with deep supervision a list, full resolution first.
        """
        skips = [self.skips[0](x)] + [skip(tokens) for skip in self.skips[1:]]
        y = self.bottleneck(tokens)
        logits = []
        for level in range(len(self.ups) - 1, -1, -1):
            y = self.up_blocks[level](torch.cat((self.ups[level](y), skips[level]), dim=1))
            if self.deep_supervision or level == 0:
                logits.append(self.seg_layers[level](y))
        return logits[::-1] if self.deep_supervision else logits[0]


def _triple(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    values = (value,) * 3 if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != 3 or any(int(v) < 1 for v in values):
        raise EfficientError(f"{name}={value}: give one or three positive integers (the UNETRs are 3D only)")
    return tuple(int(v) for v in values)


def _init_vit_weights(module: nn.Module) -> None:
    # timm's ViT initialisation, as the reference: truncated normal (std 0.02) linears, zero biases.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def check_unetr_settings(name: str, patch_size: Sequence[int], strides: Sequence[Sequence[int] | int],
                         token_size: int | Sequence[int] = 8, embed_dim: int = 768, depth: int = 12,
                         num_heads: int = 12, feature_size: int = 16, completion_depth: int = 1,
                         completion_dim: int | None = None, completion_heads: int | None = None,
                         prune_after_blocks: Sequence[int] = (), keep_ratios: Sequence[float] = (),
                         gumbel_tau: float = 1.0, requires_pruning: bool = False) -> dict:
    """Validate a UNETR's settings without building it (the trainers call it before nnU-Net starts).

    Args:
        name: network class name, for the messages.
        patch_size ... gumbel_tau: as :class:`TokenSparseUNETR`.
        requires_pruning: at least one pruning stage must be given (the token-sparse network).

    Returns:
        ``patch``, ``token``, ``strides`` (normalised tuples), ``token_level``, ``grid_size``,
        ``num_tokens``, ``schedule``, ``completion_dim``, ``completion_heads``.

    Raises:
        EfficientError: one line naming the setting (patch not divisible by the token size or by the
            decoder's total stride, keep ratios outside (0, 1] or pruning every token, ...).
    """
    if isinstance(patch_size, (int, np.integer)) or len(patch_size) != 3:
        raise EfficientError(f"patch_size {patch_size}: {name} is 3D only, the patch needs 3 sizes")
    patch = tuple(int(p) for p in patch_size)
    token = _triple(token_size, "token_size")
    if any(p % t for p, t in zip(patch, token)):
        raise EfficientError(f"patch_size {list(patch)} is not divisible by token_size {list(token)}: "
                             f"every axis must hold whole tokens")
    level_strides = [_triple(s, "strides") for s in strides]
    if len(level_strides) < 2 or any(s != 1 for s in level_strides[0]):
        raise EfficientError(f"strides {[list(s) for s in level_strides]}: give at least 2 levels, the first "
                             f"[1, 1, 1] (level 0 is the input resolution)")
    cumulative = [tuple(int(c) for c in row) for row in np.cumprod(np.asarray(level_strides), axis=0)]
    if token not in cumulative[1:]:
        raise EfficientError(f"token_size {list(token)} is not the cumulative stride of a decoder level of "
                             f"strides {[list(s) for s in level_strides]} ({[list(c) for c in cumulative]})")
    total = cumulative[-1]
    if any(p % t for p, t in zip(patch, total)):
        raise EfficientError(f"patch_size {list(patch)} is not a multiple of {list(total)}, the decoder's total "
                             f"downsampling (the token-{token[0]} decoder pools the token grid to its bottleneck)")
    if embed_dim < 1 or num_heads < 1 or embed_dim % num_heads:
        raise EfficientError(f"embed_dim={embed_dim} must be a positive multiple of num_heads={num_heads}")
    completion_dim = int(completion_dim or embed_dim)
    completion_heads = int(completion_heads or num_heads)
    if completion_dim % 6 or completion_dim % completion_heads:
        raise EfficientError(f"completion_dim={completion_dim} must be divisible by 6 (3D sin-cos embedding) "
                             f"and by completion_heads={completion_heads}")
    if depth < 1 or completion_depth < 0 or feature_size < 1:
        raise EfficientError(f"depth={depth}, completion_depth={completion_depth} and feature_size={feature_size} "
                             f"must be >= 1, >= 0 and >= 1")
    grid = tuple(p // t for p, t in zip(patch, token))
    after, ratios = [int(b) for b in prune_after_blocks], [float(r) for r in keep_ratios]
    if requires_pruning and not after:
        raise EfficientError(f"prune_after_blocks={after}: a {name} needs at least one pruning stage "
                             f"(the dense network is UNETR)")
    if len(after) != len(ratios):
        raise EfficientError(f"prune_after_blocks={after} and keep_ratios={ratios}: give one keep ratio per "
                             f"pruning stage")
    if after != sorted(set(after)) or any(not 0 <= b < depth for b in after):
        raise EfficientError(f"prune_after_blocks={after}: block indices must increase strictly and lie in "
                             f"0..{depth - 1} (depth={depth})")
    for ratio in ratios:
        if not 0 < ratio <= 1:
            raise EfficientError(f"keep_ratios={ratios}: every keep ratio must lie in (0, 1], got {ratio}")
    counts = token_schedule(math.prod(grid), ratios)
    for stage, count in enumerate(counts[1:]):
        if count < 1:
            raise EfficientError(f"keep_ratios={ratios} prune every token at stage {stage} (after block "
                                 f"{after[stage]}): floor({ratios[stage]} × {counts[stage]}) = 0 of the "
                                 f"{counts[0]}-token grid {list(grid)}; schedule {counts}")
    if not gumbel_tau > 0:
        raise EfficientError(f"gumbel_tau={gumbel_tau} must be > 0")
    return {"patch": patch, "token": token, "strides": level_strides, "token_level": cumulative.index(token),
            "grid_size": grid, "num_tokens": counts[0], "schedule": counts, "completion_dim": completion_dim,
            "completion_heads": completion_heads}


class _ViTSegmenter(nn.Module):
    """Shared body of :class:`UNETR` and :class:`TokenSparseUNETR` (arguments there)."""

    requires_pruning = False

    def __init__(self, input_channels: int, num_classes: int, patch_size: Sequence[int],
                 strides: Sequence[Sequence[int] | int], token_size: int | Sequence[int] = 8, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, feature_size: int = 16,
                 drop_path_rate: float = 0.0, completion_depth: int = 1, completion_dim: int | None = None,
                 completion_heads: int | None = None, prune_after_blocks: Sequence[int] = (),
                 keep_ratios: Sequence[float] = (), gumbel_tau: float = 1.0, deep_supervision: bool = False):
        super().__init__()
        checked = check_unetr_settings(type(self).__name__, patch_size, strides, token_size, embed_dim, depth,
                                       num_heads, feature_size, completion_depth, completion_dim, completion_heads,
                                       prune_after_blocks, keep_ratios, gumbel_tau, self.requires_pruning)
        self.patch_size, self.token_size, self.strides = checked["patch"], checked["token"], checked["strides"]
        self.grid_size, self.num_tokens = checked["grid_size"], checked["num_tokens"]
        self.schedule = checked["schedule"]
        self.prune_after_blocks = [int(b) for b in prune_after_blocks]
        self.keep_ratios = [float(r) for r in keep_ratios]
        self.gumbel_tau = float(gumbel_tau)
        self.embed_dim = int(embed_dim)

        token = self.token_size
        self.patch_embed = nn.Conv3d(input_channels, embed_dim, token, stride=token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_tokens, embed_dim))
        rates = np.linspace(0, float(drop_path_rate), depth).tolist()
        self.blocks = nn.ModuleList(TransformerBlock(embed_dim, num_heads, mlp_ratio, rate) for rate in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        n_stages = len(self.keep_ratios)
        self.score_predictors = nn.ModuleList(ScorePredictor(embed_dim) for _ in range(n_stages))
        self.pruned_norms = nn.ModuleList(nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS) for _ in range(n_stages))
        self.completion = TokenCompletion(embed_dim, checked["completion_dim"], checked["completion_heads"],
                                          completion_depth, self.grid_size, n_stages)
        self.decoder = UNETRTokenDecoder(input_channels, embed_dim, feature_size, self.strides,
                                         checked["token_level"], num_classes, deep_supervision)
        self.apply(_init_vit_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def sample_gumbel_noise(self, batch_size: int, device: torch.device | str | None = None,
                            generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """The Gumbel(0, 1) noise of one training forward: one ``(B, L_j)`` float32 tensor per stage.

        The only place where the network draws random numbers for its token selection.
        """
        noise = []
        for count in self.schedule[:-1]:
            u = torch.empty(batch_size, count, device=device).exponential_(generator=generator)
            noise.append(-u.log())
        return noise

    def encode(self, x: torch.Tensor, gumbel_noise: Sequence[torch.Tensor] | None = None
               ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
        """Run the ViT with its pruning stages.

        Args:
            x: ``(B, C_in, *patch_size)``.
            gumbel_noise: per stage ``(B, L_j)`` noise for training; drawn by :meth:`sample_gumbel_noise`
                when None in training mode; unused in evaluation mode (plain top-k).

        Returns:
            ``(pruned, final)``: per stage the normalised pruned tokens ``(B, n_j, C)`` with their
            grid indices ``(B, n_j)`` (1-based: 0 is [CLS]); the normalised final tokens
            ``(B, 1 + n, C)`` ([CLS] first) with their indices.
        """
        b = x.shape[0]
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1) + self.pos_embed
        index = torch.arange(1 + self.num_tokens, device=x.device).expand(b, -1)
        if self.training and self.keep_ratios and gumbel_noise is None:
            gumbel_noise = self.sample_gumbel_noise(b, x.device)
        pruned = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i not in self.prune_after_blocks:
                continue
            stage = self.prune_after_blocks.index(i)
            cls, body, body_index = h[:, :1], h[:, 1:], index[:, 1:]
            scores = self.score_predictors[stage](body)
            noise = gumbel_noise[stage] if self.training else None
            kept, dropped, weights = select_tokens(scores, self.schedule[stage + 1], noise, self.gumbel_tau,
                                                   straight_through=self.training)
            kept_h = body.gather(1, kept.unsqueeze(-1).expand(-1, -1, body.shape[-1]))
            dropped_h = body.gather(1, dropped.unsqueeze(-1).expand(-1, -1, body.shape[-1]))
            if weights is not None:
                kept_h = kept_h * weights.gather(1, kept).unsqueeze(-1).to(h.dtype)
                dropped_h = dropped_h * (1 - weights.gather(1, dropped)).unsqueeze(-1).to(h.dtype)
            pruned.append((self.pruned_norms[stage](dropped_h), body_index.gather(1, dropped)))
            h = torch.cat([cls, kept_h], dim=1)
            index = torch.cat([index[:, :1], body_index.gather(1, kept)], dim=1)
        return pruned, (self.norm(h), index)

    def forward(self, x: torch.Tensor, gumbel_noise: Sequence[torch.Tensor] | None = None
                ) -> torch.Tensor | list[torch.Tensor]:
        """Segment one batch of patches.

        Args:
            x: ``(B, input_channels, *patch_size)`` (nnU-Net's sliding window feeds patch-sized windows).
            gumbel_noise: see :meth:`encode`.

        Returns:
            Logits ``(B, num_classes, *patch_size)``; with ``decoder.deep_supervision`` a list, full
            resolution first, then each level of ``strides`` down to the one above the bottleneck.
        """
        if tuple(x.shape[2:]) != self.patch_size:
            raise EfficientError(f"{type(self).__name__}: input of spatial size {tuple(x.shape[2:])}, but the "
                                 f"network was built for patch_size {list(self.patch_size)} (its token grid and "
                                 f"position embedding are fixed)")
        pruned, final = self.encode(x, gumbel_noise)
        tokens = self.completion(pruned, final)
        tokens = tokens.transpose(1, 2).reshape(x.shape[0], self.embed_dim, *self.grid_size)
        return self.decoder(x, tokens)


class UNETR(_ViTSegmenter):
    """Dense UNETR: the ViT, the token assembly block and the token-map decoder, no pruning.

    Args:
        input_channels: image channels.
        num_classes: output channels.
        patch_size: nnU-Net's patch ``(X, Y, Z)``, a multiple of the decoder's total stride.
        strides: decoder level strides (``S`` levels, three ints or one per level, first all ones).
        token_size: voxels per token side (8 by default), the cumulative stride of one decoder level.
        embed_dim, depth, num_heads, mlp_ratio: ViT size (:data:`VIT_PRESETS`).
        feature_size: decoder width at full resolution (UNETR's 16).
        drop_path_rate: stochastic depth of the last encoder block (linear from 0).
        completion_depth, completion_dim, completion_heads: mixing blocks after the encoder
            (default 1 block at the encoder's width and heads).
        deep_supervision: initial ``decoder.deep_supervision``.
    """

    def __init__(self, input_channels: int, num_classes: int, patch_size: Sequence[int],
                 strides: Sequence[Sequence[int] | int], token_size: int | Sequence[int] = 8, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, feature_size: int = 16,
                 drop_path_rate: float = 0.0, completion_depth: int = 1, completion_dim: int | None = None,
                 completion_heads: int | None = None, deep_supervision: bool = False):
        super().__init__(input_channels, num_classes, patch_size, strides, token_size, embed_dim, depth, num_heads,
                         mlp_ratio, feature_size, drop_path_rate, completion_depth, completion_dim,
                         completion_heads, deep_supervision=deep_supervision)


class TokenSparseUNETR(_ViTSegmenter):
    """UNETR with learned token pruning and completion (IPMI 2023; see the module docstring).

    Same arguments as :class:`UNETR`, plus:

    Args:
        prune_after_blocks: 0-based blocks after which a pruning stage runs (the reference's [2, 5, 8]).
        keep_ratios: fraction of the current non-[CLS] tokens each stage keeps, in (0, 1]
            (the reference prunes 0.9 or 0.75 per stage: keep 0.1 or 0.25); kept counts are
            ``floor(ratio · L)`` and must stay >= 1.
        gumbel_tau: Gumbel-softmax temperature (the reference's 1).

    Attributes:
        schedule: non-[CLS] token counts before the first and after each stage.
    """

    requires_pruning = True

    def __init__(self, input_channels: int, num_classes: int, patch_size: Sequence[int],
                 strides: Sequence[Sequence[int] | int], token_size: int | Sequence[int] = 8, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, feature_size: int = 16,
                 drop_path_rate: float = 0.0, completion_depth: int = 1, completion_dim: int | None = None,
                 completion_heads: int | None = None, prune_after_blocks: Sequence[int] = (2, 5, 8),
                 keep_ratios: Sequence[float] = (0.1, 0.1, 0.1), gumbel_tau: float = 1.0,
                 deep_supervision: bool = False):
        super().__init__(input_channels, num_classes, patch_size, strides, token_size, embed_dim, depth, num_heads,
                         mlp_ratio, feature_size, drop_path_rate, completion_depth, completion_dim,
                         completion_heads, prune_after_blocks, keep_ratios, gumbel_tau, deep_supervision)
