#!/usr/bin/env bash
# Evidence for patch-performance maps (issue 15): train stock nnU-Net's network on BraTSmini with the
# map-making trainer, then benchmark the held-out case at nnU-Net's step 0.5 against `step=auto`
# (the step the map recommends), in one benchmark run. NOT run in CI.
#
#   bash scripts/patch_performance_evidence.sh [WORK_DIR]      (default work_dirs/patch_performance_brats)
#   EPOCHS=10 ITERS=25 STRATEGIES="sliding_window:tta=0 sliding_window:tta=0,step=auto" bash scripts/...
# The map is made by the trainer after nnU-Net's own (mirrored) validation; `nnunet-efficient patch_performance
# -m MODEL -f 0` makes the same map from the final checkpoint without it.
#
# Split of the 4 BraTSmini cases (2 modalities, 4 tumour labels, 155x240x240): brats_0003 and
# brats_0004 train, brats_0005 validates (the map is made from its un-augmented tiles at the end
# of training), brats_0006 is the held-out case of the benchmark, so the step is never tuned on
# the case it is judged on. Budget: EPOCHS x ITERS iterations of the CPU plan (48x80x80 windows,
# batch 2), about 10 s each on an idle 2-core CPU with one torch thread.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$repo/scripts/setup_venv.sh"
data="${NNUNET_EFFICIENT_SHARED_DATA:-$repo/../shared/data}/Dataset005_BraTSmini"
[ -d "$data" ] || { echo "BraTSmini not found at $data (set NNUNET_EFFICIENT_SHARED_DATA)" >&2; exit 1; }
work="$(mkdir -p "${1:-$repo/work_dirs/patch_performance_brats}" && cd "${1:-$repo/work_dirs/patch_performance_brats}" && pwd)"
epochs="${EPOCHS:-10}" iters="${ITERS:-25}"
strategies="${STRATEGIES:-sliding_window:tta=0 sliding_window:tta=0,step=auto sliding_window:tta=0,step=1 sliding_window:tta=0,step=0.75}"
trainer="nnUNetTrainerPatchPerformance_${epochs}epochs_${iters}iters"
export nnUNet_raw="$work/raw" nnUNet_preprocessed="$work/preprocessed" nnUNet_results="$work/results"
export OMP_NUM_THREADS="${TORCH_THREADS:-1}" nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-1}"
eval "$(nnunet-efficient env)"

raw="$nnUNet_raw/Dataset005_BraTSmini"
mkdir -p "$raw" "$work/test/images" "$work/test/labels"
ln -sfn "$data/imagesTr" "$raw/imagesTr"
ln -sfn "$data/labelsTr" "$raw/labelsTr"
cp "$data/dataset.json" "$raw/dataset.json"
cp "$data/imagesTr/brats_0006_0000.nii.gz" "$data/imagesTr/brats_0006_0001.nii.gz" "$work/test/images/"
cp "$data/labelsTr/brats_0006.nii.gz" "$work/test/labels/"

nnunet-efficient plan_and_preprocess -d 5 -pl nnUNetPlannerCPU -c 3d_fullres -np 2 -npfp 2 --no_pbar \
    > "$work/plan.log"
python -c 'import json, sys; json.dump([{"train": ["brats_0003", "brats_0004"], "val": ["brats_0005"]}],
                                       open(sys.argv[1], "w"))' "$nnUNet_preprocessed/Dataset005_BraTSmini/splits_final.json"

t0=$SECONDS
nnunet-efficient train 5 3d_fullres 0 -p nnUNetPlansCPU -tr "$trainer" -device cpu \
    --torch_threads "${TORCH_THREADS:-1}" $([ -f "$nnUNet_results/Dataset005_BraTSmini/${trainer}__nnUNetPlansCPU__3d_fullres/fold_0/checkpoint_latest.pth" ] && echo --c) \
    > "$work/train.log" 2>&1
echo "training: $((SECONDS - t0)) s; log $work/train.log"
model="$nnUNet_results/Dataset005_BraTSmini/${trainer}__nnUNetPlansCPU__3d_fullres"
grep "patch performance" "$work/train.log" || true

# shellcheck disable=SC2086
nnunet-efficient benchmark -i "$work/test/images" -ref "$work/test/labels" -m "$model" -f 0 -device cpu \
    -o "$work/benchmark" --strategies $strategies
echo "map: $model/fold_0/patch_performance.png; table: $work/benchmark/benchmark.md"
