#!/usr/bin/env bash
# Retrain the weights shipped in examples/models/ (what `bash examples/run_demo.sh` predicts with):
# the CPU plan of the Hippocampus sample, stock nnUNetv2_train on all 20 imagesTr cases (fold
# `all`), a plugin schedule of EPOCHS x ITERS iterations, then the model folder trimmed to what
# prediction needs (plans.json, dataset.json, fold_all/checkpoint_final.pth holding the network
# weights in float16 and the three keys nnU-Net's predictor reads; no optimiser state).
#
# Usage: bash examples/train_demo_weights.sh [WORK_DIR [OUT_DIR]]
#   (rerun with the same WORK_DIR and trainer after an interruption: it resumes from the last epoch)
#   WORK_DIR  nnU-Net folders and logs (default: work_dirs/demo_weights)
#   OUT_DIR   where the trimmed model folder goes (default: WORK_DIR/shipped/TRAINER__nnUNetPlansCPU__3d_fullres;
#             copy it into examples/models/ to replace the shipped one)
# Environment: DEMO_WEIGHTS_TRAINER (default nnUNetTrainer_30epochs_50iters), TORCH_THREADS
# (default 1: torch threads of the training, `nnunet-efficient train --torch_threads`; nnUNetv2_train
# itself would take every core, which on a shared 2-core machine is slower), nnUNet_n_proc_DA (default 1).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$repo/scripts/setup_venv.sh"
work="$(mkdir -p "${1:-$repo/work_dirs/demo_weights}" && cd "${1:-$repo/work_dirs/demo_weights}" && pwd)"
trainer="${DEMO_WEIGHTS_TRAINER:-nnUNetTrainer_30epochs_50iters}"
out="${2:-$work/shipped/${trainer}__nnUNetPlansCPU__3d_fullres}"
threads="${TORCH_THREADS:-1}"
dataset=Dataset990_HippocampusSample

export nnUNet_raw="$work/nnUNet_raw" nnUNet_preprocessed="$work/nnUNet_preprocessed" nnUNet_results="$work/nnUNet_results"
export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-1}" OMP_NUM_THREADS="$threads"
fold="$nnUNet_results/$dataset/${trainer}__nnUNetPlansCPU__3d_fullres/fold_all"
# an interrupted run of the same schedule resumes (short schedules checkpoint every epoch); anything else starts over
resume=()
if [ -f "$fold/checkpoint_latest.pth" ] && [ ! -f "$fold/checkpoint_final.pth" ]; then
    resume=(--c)
    echo "resuming $trainer from $fold/checkpoint_latest.pth"
else
    rm -rf "${nnUNet_preprocessed:?}/$dataset" "${nnUNet_results:?}/$dataset" "$work/train.log"
fi
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
ln -sfn "$repo/examples/$dataset" "$nnUNet_raw/$dataset"
eval "$(nnunet-efficient env)"   # lets stock nnUNetv2_train find the plugin's schedules

t0=$SECONDS
if [ ${#resume[@]} -eq 0 ]; then
    nnunet-efficient plan_and_preprocess -d 990 -pl nnUNetPlannerCPU -c 3d_fullres -np 2 -npfp 2 --no_pbar \
        > "$work/plan.log"
fi
# nnU-Net's training, held at $threads torch threads (nnUNetv2_train itself takes one per core)
nnunet-efficient train 990 3d_fullres all -p nnUNetPlansCPU -tr "$trainer" -device cpu --torch_threads "$threads" \
    "${resume[@]}" >> "$work/train.log" 2>&1
t1=$SECONDS

python - "$nnUNet_results/$dataset/${trainer}__nnUNetPlansCPU__3d_fullres" "$out" <<'PY'
import json
import os
import shutil
import sys

import torch

source, target = sys.argv[1:]
os.makedirs(os.path.join(target, "fold_all"), exist_ok=True)
for name in ("plans.json", "dataset.json"):
    shutil.copy(os.path.join(source, name), os.path.join(target, name))
checkpoint = torch.load(os.path.join(source, "fold_all", "checkpoint_final.pth"), map_location="cpu",
                        weights_only=False)
halves = {}  # the decoder's state_dict repeats the encoder's tensors: convert each storage once, keep it shared


def half(tensor):
    key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
    if key not in halves:
        halves[key] = tensor.half() if tensor.is_floating_point() else tensor
    return halves[key]


trimmed = {
    # float16 storage halves the file; nnU-Net's load_state_dict copies it into the float32 network
    "network_weights": {k: half(v) for k, v in checkpoint["network_weights"].items()},
    "trainer_name": checkpoint["trainer_name"],
    "init_args": {"configuration": checkpoint["init_args"]["configuration"], "fold": "all"},
    "inference_allowed_mirroring_axes": tuple(checkpoint["inference_allowed_mirroring_axes"]),
}
torch.save(trimmed, os.path.join(target, "fold_all", "checkpoint_final.pth"))
with open(os.path.join(source, "fold_all", "validation", "summary.json")) as f:
    print("Dice on the training cases (nnU-Net's fold-all validation):", json.load(f)["foreground_mean"]["Dice"])
print(f"model folder: {target}")
PY
echo "seconds: plan+preprocess and training $((t1 - t0)); train log: $work/train.log"
