#!/usr/bin/env bash
# The main job on the Hippocampus sample shipped in examples/: plan and preprocess with the CPU
# planner, a short training with stock nnUNetv2_train (plugin schedule), prediction of the 4
# held-out cases with `nnunet-efficient predict`, and their Dice. About 10 minutes on 2 CPU cores
# (measured 9.5 min; the Dice of so short a training varies between runs, 0.55 to 0.82 seen).
#
# Usage: bash examples/run_demo.sh [WORK_DIR]   (default: work_dirs/demo in the repository)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$repo/scripts/setup_venv.sh"
work="$(mkdir -p "${1:-$repo/work_dirs/demo}" && cd "${1:-$repo/work_dirs/demo}" && pwd)"
trainer="${DEMO_TRAINER:-nnUNetTrainer_15epochs_40iters}"
dataset=Dataset990_HippocampusSample

export nnUNet_raw="$work/nnUNet_raw" nnUNet_preprocessed="$work/nnUNet_preprocessed" nnUNet_results="$work/nnUNet_results"
rm -rf "$nnUNet_preprocessed/$dataset" "$nnUNet_results/$dataset" "$work/predictions"
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
ln -sfn "$repo/examples/$dataset" "$nnUNet_raw/$dataset"
eval "$(nnunet-efficient env)"   # lets stock nnUNetv2_train find the plugin's trainers

t0=$SECONDS
nnunet-efficient plan_and_preprocess -d 990 -pl nnUNetPlannerCPU -c 3d_fullres -np 2 -npfp 2 --no_pbar \
    > "$work/plan.log"
t1=$SECONDS
nnUNetv2_train 990 3d_fullres 0 -p nnUNetPlansCPU -tr "$trainer" -device cpu > "$work/train.log"
t2=$SECONDS
nnunet-efficient predict -i "$nnUNet_raw/$dataset/imagesTs" -o "$work/predictions" -d 990 -p nnUNetPlansCPU \
    -tr "$trainer" -c 3d_fullres -f 0 -device cpu --batch_size 2 --disable_progress_bar > "$work/predict.log"
t3=$SECONDS

python - "$nnUNet_raw/$dataset/labelsTs" "$work/predictions" <<'PY'
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
print(f"mean Dice: anterior {mean[0]:.3f}, posterior {mean[1]:.3f}, both {mean.mean():.3f}")
PY
echo "seconds: plan+preprocess $((t1 - t0)), training $((t2 - t1)), prediction $((t3 - t2)), total $((t3 - t0))"
echo "logs and predictions: $work"
