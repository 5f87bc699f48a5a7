"""CPU seconds per window of RepUX-Net with unfolded (``w * BFM`` every forward) and folded kernels.

Both variants run in one process, interleaved, on the same random window; prints the median of
``--repeat`` forwards each, their ratio and the largest output difference. The architecture comes
from a plans file (``--plans PLANS.json [--configuration 3d_fullres]``, e.g. the
``nnUNetPlansRepUXNetCPU.json`` that ``nnunet-efficient plan_and_preprocess -pl
nnUNetPlannerRepUXNetCPU`` writes) or defaults to the Hippocampus CPU plan (patch 40x56x40, 16-128
features).

Usage: OMP_NUM_THREADS=1 python scripts/repux_fold_speed.py [--plans P.json] [--repeat 7] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from nnunet_efficient.networks.uxnet import RepUXNet

HIPPOCAMPUS_CPU = {"n_stages": 4, "features_per_stage": [16, 32, 64, 128],
                   "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], "patch_size": [40, 56, 40],
                   "kernel_size": 21, "blocks_per_stage": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", help="plans JSON with a RepUXNet configuration")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--input_channels", type=int, default=1)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    kwargs = HIPPOCAMPUS_CPU
    if args.plans:
        with open(args.plans) as f:
            kwargs = json.load(f)["configurations"][args.configuration]["architecture"]["arch_kwargs"]
    torch.manual_seed(0)
    unfolded = RepUXNet(input_channels=args.input_channels, num_classes=args.classes, **kwargs).eval()
    folded = RepUXNet(input_channels=args.input_channels, num_classes=args.classes, **kwargs).eval()
    folded.fold_reparameterisation()
    folded.load_state_dict(unfolded.state_dict())  # converted to folded kernels on loading
    window = torch.randn(args.batch, args.input_channels, *kwargs["patch_size"])
    seconds = {"unfolded": [], "folded": []}
    with torch.inference_mode():
        difference = (unfolded(window) - folded(window)).abs().max().item()  # also the warm-up
        for _ in range(args.repeat):
            for name, network in (("unfolded", unfolded), ("folded", folded)):
                start = time.process_time()
                network(window)
                seconds[name].append((time.process_time() - start) / args.batch)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"RepUX-Net {kwargs['features_per_stage']} on {kwargs['patch_size']}, {torch.get_num_threads()} thread(s), "
          f"batch {args.batch}, median of {args.repeat}:")
    print(f"  unfolded: {median['unfolded']:.3f} CPU s per window")
    print(f"  folded:   {median['folded']:.3f} CPU s per window ({median['unfolded'] / median['folded']:.2f}x)")
    print(f"  largest output difference: {difference:.2e}")


if __name__ == "__main__":
    main()
