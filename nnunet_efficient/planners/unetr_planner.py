"""Planners that write UNETR / token-sparse UNETR into nnU-Net's plans (``network_class_name`` + kwargs).

nnU-Net's rules choose spacing, normalisation and batch size as usual; the 3D configurations
then change in three ways (see :mod:`nnunet_efficient.networks.unetr`):

- patch: every axis rounded up to a multiple of 16, because the token-8 decoder pools the
  12³-style token grid once more for its bottleneck; if that grid exceeds :attr:`max_tokens`
  (attention grows with its square), the longest axis shrinks by 16 until it fits;
- ``strides``: the decoder's levels, ``[1,1,1]`` then four ``[2,2,2]`` (tokens at level 3,
  bottleneck at 1/16), which nnU-Net also reads for its deep-supervision scales;
- ``architecture``: the dense :class:`UNETR` in ``3d_fullres`` (and ``3d_lowres``), with the
  encoder preset, ``token_size`` 8, drop-path 0.1 (the reference's).

Two more configurations inherit from ``3d_fullres`` (same preprocessed data) and swap in
:class:`TokenSparseUNETR` at the reference's pruning rates: ``3d_tokensparse_p90`` prunes 90 %
of the tokens per stage (BTCV; keep ratio 0.1) and ``3d_tokensparse_p75`` 75 % (BraTS; keep
0.25), after blocks 2, 5 and 8. A stage that would leave no token on this dataset's grid is
dropped (the reference's 0.9 needs about 1000 tokens for three stages: 1728 → 172 → 17 → 1; a
Hippocampus patch of 48×64×48 has 288, so p90 keeps two stages: 288 → 28 → 2).

2D configurations stay nnU-Net's PlainConvUNet (the networks are 3D only; the trainers refuse 2D).
"""

from __future__ import annotations

import math

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from nnunet_efficient.errors import EfficientError
from nnunet_efficient.networks.unetr import UNETR, VIT_PRESETS, TokenSparseUNETR, token_schedule
from nnunet_efficient.planners.cpu_planner import nnUNetPlannerCPU

#: Token-sparse configurations the planners add: name -> fraction of tokens pruned per stage.
TOKEN_SPARSE_CONFIGURATIONS = {"3d_tokensparse_p90": 0.9, "3d_tokensparse_p75": 0.75}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class UNETRPlanningMixin:
    """Writes the UNETRs into the 3D configurations (see the module docstring)."""

    vit_preset: str = "vit_base"
    token_size: int = 8
    decoder_levels: int = 5
    max_tokens: int = 4096
    feature_size: int = 16
    drop_path_rate: float = 0.1
    prune_after_blocks: tuple[int, ...] = (2, 5, 8)

    def unetr_patch_size(self, patch_size) -> list[int]:
        """nnU-Net's patch rounded up to the decoder's total stride and held to :attr:`max_tokens` tokens."""
        step = 2 ** (self.decoder_levels - 1)  # the decoder's total stride
        patch = [max(step, math.ceil(int(p) / step) * step) for p in patch_size]
        while math.prod(p // self.token_size for p in patch) > self.max_tokens and max(patch) > step:
            longest = patch.index(max(patch))
            patch[longest] -= step
        return patch

    def unetr_architecture(self, patch_size, keep_ratios=None) -> dict:
        """The plans' ``architecture`` entry: dense UNETR, or TokenSparseUNETR with ``keep_ratios`` per stage."""
        kwargs = {
            "patch_size": [int(p) for p in patch_size],
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (self.decoder_levels - 1),
            "token_size": self.token_size,
            **VIT_PRESETS[self.vit_preset],
            "feature_size": self.feature_size,
            "drop_path_rate": self.drop_path_rate,
        }
        cls = UNETR
        if keep_ratios is not None:
            cls = TokenSparseUNETR
            kwargs.update(prune_after_blocks=list(self.prune_after_blocks[:len(keep_ratios)]),
                          keep_ratios=list(keep_ratios))
        return {"network_class_name": _qualname(cls), "arch_kwargs": kwargs, "_kw_requires_import": []}

    def reference_keep_ratios(self, patch_size, pruned: float) -> list[float]:
        """Keep ratio ``1 - pruned`` for as many of :attr:`prune_after_blocks` as leave a token on the grid."""
        keep = round(1.0 - pruned, 6)
        tokens = math.prod(int(p) // self.token_size for p in patch_size)
        ratios = [keep] * len(self.prune_after_blocks)
        while ratios and token_schedule(tokens, ratios)[-1] < 1:
            ratios.pop()
        return ratios

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset,
                                    _cache):
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        if len(plan["patch_size"]) == 3:
            plan["patch_size"] = self.unetr_patch_size(plan["patch_size"])
            plan["architecture"] = self.unetr_architecture(plan["patch_size"])
        return plan

    def plan_experiment(self):
        plans = super().plan_experiment()
        fullres = plans["configurations"].get("3d_fullres")
        if fullres is None:
            raise EfficientError(f"{self.dataset_name}: no 3d_fullres configuration was planned (2D data?); "
                                 f"the UNETRs need a 3D dataset")
        for name, pruned in TOKEN_SPARSE_CONFIGURATIONS.items():
            ratios = self.reference_keep_ratios(fullres["patch_size"], pruned)
            if not ratios:  # a grid so small that even one stage would prune every token
                continue
            plans["configurations"][name] = {"inherits_from": "3d_fullres",
                                             "architecture": self.unetr_architecture(fullres["patch_size"], ratios)}
        self.plans = plans
        self.save_plans(plans)
        return plans


class nnUNetPlannerUNETR(UNETRPlanningMixin, ExperimentPlanner):
    """nnU-Net's default plans with ViT-B UNETRs (patch ≤ 4096 tokens); plans ``nnUNetPlansUNETR``."""

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlansUNETR",
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)


class nnUNetPlannerUNETRCPU(UNETRPlanningMixin, nnUNetPlannerCPU):
    """:class:`nnUNetPlannerCPU`'s plans (batch ≤ 2) with ViT-Ti UNETRs (patch ≤ 512 tokens); plans
    ``nnUNetPlansUNETRCPU``."""

    vit_preset = "vit_tiny"
    max_tokens = 512

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 0.5,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlansUNETRCPU",
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
