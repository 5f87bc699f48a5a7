"""Time one network window on the CPU: float32 vs channels_last_3d vs bfloat16 autocast.

Usage:
    python scripts/cpu_throughput.py -m MODEL_FOLDER -i CASE_0000.nii.gz [CASE_0001.nii.gz ...]
        [-f 0] [-chk checkpoint_final.pth] [--windows 3] [--repeats 5] [--threads 2]

Cuts ``--windows`` patch-sized windows through the middle of the preprocessed case, then runs
every setting on them in turn (interleaved, so load from other processes hits every setting
alike). Prints, per setting, the median seconds per window, the speed-up over float32 and the
share of voxels whose label (argmax) differs from float32's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from nnunet_efficient.inference.predictor import EfficientPredictor

SETTINGS = {
    "float32": (torch.contiguous_format, False),
    "channels_last_3d": (torch.channels_last_3d, False),
    "bf16 autocast": (torch.contiguous_format, True),
    "bf16 autocast + channels_last_3d": (torch.channels_last_3d, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", required=True, help="trained nnU-Net model folder")
    parser.add_argument("-i", nargs="+", required=True, help="the channel files of one case")
    parser.add_argument("-f", default="0", help="fold. Default: 0")
    parser.add_argument("-chk", default="checkpoint_final.pth")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    predictor = EfficientPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(args.m, (args.f if args.f == "all" else int(args.f),),
                                                   args.chk)
    network = predictor.network.eval()
    network.load_state_dict(predictor.list_of_parameters[0])
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, _ = preprocessor.run_case(args.i, None, predictor.plans_manager, predictor.configuration_manager,
                                       predictor.dataset_json)
    data = torch.from_numpy(data)
    slicers = predictor.strategy_context().slicers(data.shape[1:])
    middle = len(slicers) // 2
    picked = slicers[max(0, middle - args.windows // 2):][:args.windows]
    x = torch.stack([data[s] for s in picked])
    print(f"{len(picked)} window(s) of {tuple(x.shape[1:])}, {args.threads} thread(s), {args.repeats} repeats")

    def run(memory_format, bf16):
        net = network.to(memory_format=memory_format)
        out = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            for window in x:
                out.append(net(window[None].contiguous(memory_format=memory_format)).float())
        return torch.cat(out)

    times = {name: [] for name in SETTINGS}
    labels = {}
    for name, setting in SETTINGS.items():  # warm-up, and the labels to compare
        labels[name] = run(*setting).argmax(1)
    for _ in range(args.repeats):
        for name, setting in SETTINGS.items():
            start = time.perf_counter()
            run(*setting)
            times[name].append((time.perf_counter() - start) / len(picked))
    base = statistics.median(times["float32"])
    print(f"{'setting':34s} {'s/window':>9s} {'speed-up':>9s} {'labels changed':>15s}")
    for name in SETTINGS:
        median = statistics.median(times[name])
        changed = (labels[name] != labels["float32"]).float().mean().item()
        print(f"{name:34s} {median:9.3f} {base / median:8.2f}x {100 * changed:14.3f}%")


if __name__ == "__main__":
    main()
