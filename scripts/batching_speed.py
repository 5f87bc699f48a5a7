"""Time nnU-Net's sliding window against batched windows on one volume, side by side in one process.

Usage:
    python scripts/batching_speed.py -m MODEL_FOLDER -i CASE_0000.nii.gz [CASE_0001.nii.gz ...]
        [-f 0] [-chk checkpoint_final.pth] [--batch_sizes 1 2 4] [--repeats 2] [--tta] [-device cpu]

Prints, per batch size, the median network seconds over the repeats (the runs are interleaved so
that load from other processes hits every setting alike), the ratio to batch size 1, and the
agreement of the label maps with nnU-Net's own predictor.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_efficient.inference.predictor import EfficientPredictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", required=True, help="trained nnU-Net model folder")
    parser.add_argument("-i", nargs="+", required=True, help="the channel files of one case")
    parser.add_argument("-f", default="0", help="fold. Default: 0")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint. Default: checkpoint_final.pth")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation on")
    parser.add_argument("-device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    fold = args.f if args.f == "all" else int(args.f)

    predictors = {}
    for batch_size in args.batch_sizes:
        predictor = EfficientPredictor(use_mirroring=args.tta, device=device, allow_tqdm=False,
                                       sw_batch_size=batch_size)
        predictor.initialize_from_trained_model_folder(args.m, (fold,), args.chk)
        predictors[batch_size] = predictor
    reference = nnUNetPredictor(use_mirroring=args.tta, device=device, allow_tqdm=False)
    reference.initialize_from_trained_model_folder(args.m, (fold,), args.chk)

    first = predictors[args.batch_sizes[0]]
    preprocessor = first.configuration_manager.preprocessor_class(verbose=False)
    data, _, _ = preprocessor.run_case(args.i, None, first.plans_manager, first.configuration_manager,
                                       first.dataset_json)
    data = torch.from_numpy(data)
    print(f"preprocessed volume {tuple(data.shape)}, patch {first.configuration_manager.patch_size}, "
          f"TTA {'on' if args.tta else 'off'}, device {device}, torch threads {torch.get_num_threads()}")

    with torch.inference_mode():
        nnunet_labels = reference.predict_sliding_window_return_logits(data).argmax(0)
        seconds = {b: [] for b in args.batch_sizes}
        labels = {}
        for _ in range(args.repeats):
            for batch_size, predictor in predictors.items():
                start = time.perf_counter()
                logits = predictor.predict_sliding_window_return_logits(data)
                seconds[batch_size].append(time.perf_counter() - start)
                labels[batch_size] = logits.argmax(0)

    base = statistics.median(seconds[args.batch_sizes[0]])
    print(f"\n| batch size | windows | median s | speed-up vs batch {args.batch_sizes[0]} | "
          f"voxels with nnU-Net's label |")
    print("|---|---|---|---|---|")
    for batch_size in args.batch_sizes:
        median = statistics.median(seconds[batch_size])
        agreement = (labels[batch_size] == nnunet_labels).float().mean().item()
        print(f"| {batch_size} | {predictors[batch_size].last_run.windows} | {median:.1f} | {base / median:.2f}× | "
              f"{100 * agreement:.4f} % |")


if __name__ == "__main__":
    main()
