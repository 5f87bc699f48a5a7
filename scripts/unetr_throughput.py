"""Throughput of dense UNETR against token-sparse UNETR: seconds per window and per training step.

The paper (Token-sparse UNETR, IPMI 2023) reports +60 % inference and +120 % training throughput
for ViT-B on 96³ patches (12³ = 1728 tokens of 8 voxels) at the reference pruning rates. This
script measures both on this machine, with every variant built on the same architecture and run
interleaved in one process (load from other processes hits all alike):

- without ``--plans``: the paper's setting, ViT-B (768 wide, 12 blocks, 12 heads), patch 96³,
  14 classes (BTCV), pruning after blocks 2, 5, 8 with 90 % pruned per stage (1728 -> 172 -> 17 -> 1)
  and 75 % (1728 -> 432 -> 108 -> 27);
- with ``--plans nnUNetPlansUNETR(CPU).json``: the configurations ``3d_fullres``,
  ``3d_tokensparse_p90`` and ``3d_tokensparse_p75`` that ``nnUNetPlannerUNETR(CPU)`` wrote.

Per variant: MACs per window (``torch.utils.flop_counter``), the median seconds of ``--repeat``
inference forwards of one window (eval mode, no grad) and of ``--repeat`` training steps (train
mode with Gumbel top-k, cross-entropy on the full-resolution output, backward, AdamW step) on a
batch of ``--batch`` windows; throughput gains are against the dense variant.

Usage: OMP_NUM_THREADS=1 python scripts/unetr_throughput.py [--plans P.json] [--repeat 3] [--batch 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from nnunet_efficient.benchmark.measure import count_macs
from nnunet_efficient.networks.unetr import UNETR, VIT_PRESETS, TokenSparseUNETR

PAPER_STRIDES = [[1, 1, 1]] + [[2, 2, 2]] * 4
PAPER_VARIANTS = {"dense": None, "p90 (keep 0.1 per stage)": [0.1] * 3, "p75 (keep 0.25 per stage)": [0.25] * 3}
PLAN_VARIANTS = {"dense": "3d_fullres", "p90": "3d_tokensparse_p90", "p75": "3d_tokensparse_p75"}


def paper_networks(input_channels: int, classes: int) -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    patch = (96, 96, 96)
    networks = {}
    for name, keep in PAPER_VARIANTS.items():
        common = dict(input_channels=input_channels, num_classes=classes, patch_size=patch, strides=PAPER_STRIDES,
                      **VIT_PRESETS["vit_base"])
        networks[name] = (UNETR(**common) if keep is None
                          else TokenSparseUNETR(**common, prune_after_blocks=[2, 5, 8], keep_ratios=keep), patch)
    return networks


def plan_networks(plans_file: str, input_channels: int, classes: int
                  ) -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    with open(plans_file) as f:
        manager = PlansManager(json.load(f))
    networks = {}
    for name, configuration in PLAN_VARIANTS.items():
        if configuration not in manager.available_configurations:
            raise SystemExit(f"{plans_file}: no configuration '{configuration}'")
        config = manager.get_configuration(configuration)  # resolves inherits_from
        patch = tuple(config.patch_size)
        network = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                         config.network_arch_init_kwargs_req_import, input_channels, classes,
                                         allow_init=True, deep_supervision=False)
        networks[f"{name} ({configuration})"] = (network, patch)
    return networks


def seconds(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", help="plans JSON written by nnUNetPlannerUNETR(CPU); default: the paper's ViT-B")
    parser.add_argument("--input_channels", type=int, default=1)
    parser.add_argument("--classes", type=int, help="output classes. Default: 14 (BTCV), 3 with --plans")
    parser.add_argument("--batch", type=int, default=2, help="windows per training step. Default: 2")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    classes = args.classes or (3 if args.plans else 14)
    torch.manual_seed(0)
    networks = (plan_networks(args.plans, args.input_channels, classes) if args.plans
                else paper_networks(args.input_channels, classes))
    print(f"{'plans ' + args.plans if args.plans else 'paper setting (ViT-B, 96^3)'}; {torch.get_num_threads()} "
          f"torch thread(s); inference batch 1, training batch {args.batch}; median of {args.repeat}")

    rows = {}
    for name, (network, patch) in networks.items():
        window = torch.randn(1, args.input_channels, *patch)
        with torch.no_grad():
            _, macs = count_macs(network.eval(), window)
        rows[name] = {"macs": macs, "tokens": getattr(network, "schedule", [network.num_tokens])}
    steps = {}
    for name, (network, patch) in networks.items():
        window = torch.randn(1, args.input_channels, *patch)
        batch = torch.randn(args.batch, args.input_channels, *patch)
        target = torch.randint(0, classes, (args.batch, *patch))
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)

        def infer(network=network, window=window):
            network.eval()
            with torch.no_grad():
                network(window)

        def train(network=network, batch=batch, target=target, optimizer=optimizer):
            network.train()
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(network(batch), target).backward()
            optimizer.step()

        steps[name] = {"infer": infer, "train": train}
        infer(), train()  # warm-up: allocator, kernel selection, optimiser state
        rows[name].update(infer=[], train=[])
    # interleaved rounds: load from other processes hits every variant alike
    for round_ in range(args.repeat):
        for name in networks:
            for kind in ("infer", "train"):
                rows[name][kind].append(seconds(steps[name][kind]))
        print(f"  round {round_ + 1}/{args.repeat}: " + ", ".join(
            f"{name} {rows[name]['infer'][-1]:.2f} / {rows[name]['train'][-1]:.2f} s" for name in networks), flush=True)
    for row in rows.values():
        row["infer"], row["train"] = statistics.median(row["infer"]), statistics.median(row["train"])

    dense = rows[next(iter(rows))]
    print("\n| variant | tokens per stage | GMACs/window | s/window (inference) | inference throughput | "
          "s/training step | training throughput |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {' → '.join(str(t) for t in row['tokens'])} | {row['macs'] / 1e9:.1f} | "
              f"{row['infer']:.2f} | {dense['infer'] / row['infer']:.2f}× | {row['train']:.2f} | "
              f"{dense['train'] / row['train']:.2f}× |")


if __name__ == "__main__":
    main()
