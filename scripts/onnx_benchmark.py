"""Seconds per case of the onnxruntime backend against the PyTorch backend on this CPU.

Exports the shipped demo model (examples/models/Dataset990_HippocampusSample, fold ``all``) with
``nnunet-efficient export``, preprocesses the sample's held-out ``imagesTs`` cases once, then
predicts each case's logits with both backends (the same ``EfficientPredictor``, strategy
``sliding_window``, nnU-Net's defaults: step 0.5, mirroring), interleaved, ``--repeat`` times.
Prints the machine, the versions, per backend the median CPU and wall seconds per case (network
and Gaussian aggregation; preprocessing and export are the same code for both and are excluded)
and per window (one forward of batch 1), and how many voxels' labels differ between the backends.

Usage: OMP_NUM_THREADS=1 python scripts/onnx_benchmark.py [--threads 1] [--repeat 3] [--cases 4] [--disable_tta]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# the one model folder shipped for the demo, whatever schedule trained it
(DEMO,) = (REPO / "examples" / "models" / "Dataset990_HippocampusSample").glob("*__nnUNetPlansCPU__3d_fullres")
IMAGES = REPO / "examples" / "Dataset990_HippocampusSample" / "imagesTs"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads. Default: 1")
    parser.add_argument("--repeat", type=int, default=3, help="predictions per case and backend. Default: 3")
    parser.add_argument("--cases", type=int, default=4, help="held-out cases to predict (at most 4). Default: 4")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring (nnU-Net's default is 8 passes)")
    parser.add_argument("--export_dir", help="reuse (or write) the export here instead of a temporary folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # onnxruntime sessions take torch.get_num_threads() threads

    import onnxruntime

    from nnunet_efficient.export import export_model_folder
    from nnunet_efficient.inference.predictor import EfficientPredictor

    with tempfile.TemporaryDirectory() as scratch:
        exported = Path(args.export_dir or Path(scratch) / "onnx")
        if not (exported / "onnx_export.json").is_file():
            report, export_cpu, export_wall = timed(lambda: export_model_folder(
                str(DEMO), ["all"], str(exported), check_images=[str(sorted(IMAGES.glob("*.nii.gz"))[0])],
                log=lambda line: None))
            print(report.summary())
            print(f"export: {export_cpu:.1f} CPU s, {export_wall:.1f} s wall (checks included)\n")

        options = dict(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=not args.disable_tta)
        predictors = {"pytorch": EfficientPredictor(**options), "onnxruntime": EfficientPredictor(**options)}
        predictors["pytorch"].initialize_from_trained_model_folder(str(DEMO), ["all"])
        predictors["onnxruntime"].initialize_from_exported_folder(str(exported))
        reference = predictors["pytorch"]
        preprocessor = reference.configuration_manager.preprocessor_class(verbose=False)
        cases = []
        for path in sorted(IMAGES.glob("*_0000.nii.gz"))[:args.cases]:
            data, _, _ = preprocessor.run_case([str(path)], None, reference.plans_manager,
                                               reference.configuration_manager, reference.dataset_json)
            cases.append((path.name[:-len("_0000.nii.gz")], torch.from_numpy(data)))

        seconds = {name: {"cpu": [], "wall": []} for name in predictors}
        differing = 0
        voxels = 0
        for _ in range(args.repeat):
            for _, data in cases:
                logits = {}
                for name, predictor in predictors.items():
                    logits[name], cpu, wall = timed(
                        lambda p=predictor, d=data: p.predict_logits_from_preprocessed_data(d))
                    seconds[name]["cpu"].append(cpu)
                    seconds[name]["wall"].append(wall)
                differing += int((logits["pytorch"].argmax(0) != logits["onnxruntime"].argmax(0)).sum())
                voxels += logits["pytorch"][0].numel()

        window = torch.randn(1, 1, *reference.configuration_manager.patch_size)
        per_window = {}
        with torch.inference_mode():
            for name, predictor in predictors.items():
                predictor.network(window)  # warm-up
                runs = [timed(lambda p=predictor: p.network(window))[1] for _ in range(5)]
                per_window[name] = statistics.median(runs)

    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs; {args.threads} thread(s); "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"{len(cases)} held-out case(s) x {args.repeat}, sliding_window, "
          f"{'no mirroring' if args.disable_tta else 'mirroring (8 passes)'}, medians:")
    print("| backend | CPU s per case | wall s per case | CPU s per window (batch 1) |")
    print("|---|---|---|---|")
    for name in predictors:
        print(f"| {name} | {statistics.median(seconds[name]['cpu']):.2f} | "
              f"{statistics.median(seconds[name]['wall']):.2f} | {per_window[name]:.3f} |")
    ratio = statistics.median(seconds["pytorch"]["cpu"]) / statistics.median(seconds["onnxruntime"]["cpu"])
    print(f"onnxruntime / PyTorch speed-up (CPU s per case): {ratio:.2f}x; labels differ on {differing} of "
          f"{voxels} voxels")


if __name__ == "__main__":
    main()
