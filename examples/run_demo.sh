#!/usr/bin/env bash
# The main job on the Hippocampus sample shipped in examples/: the model shipped in
# examples/models/ (trained from the sample's 20 imagesTr cases by examples/train_demo_weights.sh)
# segments the sample's 4 held-out cases with `nnunet-efficient predict` (nnU-Net's defaults:
# Gaussian sliding window with mirroring), their Dice is printed, then `nnunet-efficient benchmark`
# runs nnU-Net's default against the plugin's faster settings on the same cases and prints the
# table (Dice, seconds, MACs, speed-up) and the path of its Pareto plot.
#
# With --train, the model is trained first, as nnU-Net would: the CPU planner's plan and
# preprocessing, then stock nnUNetv2_train on fold 0 with a plugin schedule (DEMO_TRAINER, default
# nnUNetTrainer_15epochs_40iters: minutes, not the shipped model's quality), and that model is
# used for the prediction and the benchmark.
#
# Usage: bash examples/run_demo.sh [--train] [WORK_DIR]   (default WORK_DIR: work_dirs/demo)
# Environment: DEMO_STRATEGIES (benchmark variants, default: nnU-Net's default and tta=0, plus bf16
# variants where the CPU has native bfloat16), DEMO_TRAINER (the --train schedule).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
train=0
if [ "${1:-}" = "--train" ]; then
    train=1
    shift
fi
case "${1:-}" in
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | cut -c3-; exit 0 ;;
    -*) echo "run_demo.sh: unknown option '$1' (usage: bash examples/run_demo.sh [--train] [WORK_DIR])" >&2; exit 2 ;;
esac
# shellcheck disable=SC1091
source "$repo/scripts/setup_venv.sh"
work="$(mkdir -p "${1:-$repo/work_dirs/demo}" && cd "${1:-$repo/work_dirs/demo}" && pwd)"
dataset=Dataset990_HippocampusSample
images="$repo/examples/$dataset/imagesTs"
labels="$repo/examples/$dataset/labelsTs"
rm -rf "$work/predictions" "$work/benchmark"

t0=$SECONDS
if [ "$train" = 1 ]; then
    trainer="${DEMO_TRAINER:-nnUNetTrainer_15epochs_40iters}"
    export nnUNet_raw="$work/nnUNet_raw" nnUNet_preprocessed="$work/nnUNet_preprocessed" nnUNet_results="$work/nnUNet_results"
    rm -rf "$nnUNet_preprocessed/$dataset" "$nnUNet_results/$dataset"
    mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
    ln -sfn "$repo/examples/$dataset" "$nnUNet_raw/$dataset"
    eval "$(nnunet-efficient env)"   # lets stock nnUNetv2_train find the plugin's schedules
    echo "training: plan and preprocess, then nnUNetv2_train 990 3d_fullres 0 -tr $trainer (log: $work/train.log)"
    nnunet-efficient plan_and_preprocess -d 990 -pl nnUNetPlannerCPU -c 3d_fullres -np 2 -npfp 2 --no_pbar \
        > "$work/plan.log"
    nnUNetv2_train 990 3d_fullres 0 -p nnUNetPlansCPU -tr "$trainer" -device cpu > "$work/train.log"
    model="$nnUNet_results/$dataset/${trainer}__nnUNetPlansCPU__3d_fullres"
    fold=0
else
    model="$(echo "$repo"/examples/models/$dataset/*__nnUNetPlansCPU__3d_fullres)"
    fold=all
    if [ ! -f "$model/fold_all/checkpoint_final.pth" ]; then
        echo "run_demo.sh: no shipped model in examples/models/$dataset; train one with" \
            "'bash examples/train_demo_weights.sh' or run 'bash examples/run_demo.sh --train'" >&2
        exit 1
    fi
fi
t1=$SECONDS

echo "model: $model (fold $fold)"
nnunet-efficient predict -i "$images" -o "$work/predictions" -m "$model" -f "$fold" -device cpu \
    -npp 0 -nps 0 --disable_progress_bar > "$work/predict.log"
python - "$labels" "$work/predictions" <<'PY'
import os
import sys

import numpy as np
import SimpleITK as sitk

from nnunet_efficient.benchmark.measure import dice_per_class

references, predictions = sys.argv[1:]
scores = []
for name in sorted(os.listdir(references)):
    ref = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(references, name)))
    pred = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(predictions, name)))
    dice = dice_per_class(pred, ref, [1, 2])
    scores.append([dice[1], dice[2]])
    print(f"{name}: Dice anterior {dice[1]:.3f}, posterior {dice[2]:.3f}")
mean = np.nanmean(scores, axis=0)
print(f"mean Dice: anterior {mean[0]:.4f}, posterior {mean[1]:.4f}, both {mean.mean():.4f}")
PY
t2=$SECONDS

# nnU-Net's default (the first sliding_window: mirroring on) against the plugin's faster settings. Each
# Hippocampus case fits in one window, so batched windows and `sparse` have nothing to save here (README,
# "Demo"); bfloat16 autocast pays only where the CPU has native bfloat16, and is many times slower elsewhere.
strategies="sliding_window sliding_window:tta=0"
if grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then
    strategies="$strategies sliding_window:bf16=1 sliding_window:tta=0,bf16=1"
fi
strategies="${DEMO_STRATEGIES:-$strategies}"
echo "benchmark: nnU-Net's default against faster settings on the same cases: $strategies (log: $work/benchmark.log)"
# shellcheck disable=SC2086  # a list of variants
nnunet-efficient benchmark -i "$images" -ref "$labels" -m "$model" -f "$fold" -o "$work/benchmark" -device cpu \
    --strategies $strategies \
    --repeat 3 --disable_progress_bar > "$work/benchmark.log"
t3=$SECONDS
echo
cat "$work/benchmark/benchmark.md"
python - "$work/benchmark/benchmark_settings.json" <<'PY'
import json
import sys

machine = json.load(open(sys.argv[1]))["machine"]
try:
    with open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
except (OSError, StopIteration):
    cpu = machine["processor"]
print(f"Time: seconds per case (median of 3 passes: preprocessing, network, export). Speed-up, MAC ratio: nnU-Net's\n"
      f"default over the variant. Machine: {machine['cpu_count']} CPU cores ({cpu}), "
      f"{machine['torch_threads']} torch thread(s), torch {machine['torch']}, nnunetv2 {machine['nnunetv2']}.")
PY
echo
if [ "$train" = 1 ]; then
    echo "seconds: training $((t1 - t0)), prediction $((t2 - t1)), benchmark $((t3 - t2)), total $((t3 - t0))"
else
    echo "seconds: prediction $((t2 - t1)), benchmark $((t3 - t2)), total $((t3 - t0))"
fi
echo "predictions: $work/predictions"
echo "benchmark report: $work/benchmark (benchmark.md, benchmark_cases.csv, benchmark.json)"
echo "Pareto plot (Dice vs seconds): $work/benchmark/benchmark_pareto.png"
