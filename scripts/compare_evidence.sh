#!/usr/bin/env bash
# Evidence for the large-kernel architectures: `nnunet-efficient compare` on the shared Hippocampus
# data, nnUNetTrainer vs 3D UX-Net vs RepUX-Net on the CPU plans, at one budget of CPU-minutes of
# training per entry, Dice on held-out cases. Results: WORK/compare/compare.{md,csv,png}.
#
# Data: ../shared/data/Dataset004_Hippocampus (240 cases, MSD Task04, CC BY-SA 4.0), linked as
# Dataset204_HippocampusHoldout: the first 200 cases (sorted by name) are imagesTr, the last 40 are
# held out as imagesTs/labelsTs. The fold-0 split trains on 192 cases and validates on 8 (a custom
# splits_final.json, so nnU-Net's end-of-training validation stays short; it is not the test set).
#
# Usage: bash scripts/compare_evidence.sh [WORK_DIR]   (default work_dirs/compare_hippocampus)
# Environment: COMPARE_MINUTES (30), COMPARE_JOBS (3 trainings at once), SHARED_DATA (../shared/data).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$repo/scripts/setup_venv.sh"
source_data="${SHARED_DATA:-$repo/../shared/data}/Dataset004_Hippocampus"
work="$(mkdir -p "${1:-$repo/work_dirs/compare_hippocampus}" && cd "${1:-$repo/work_dirs/compare_hippocampus}" && pwd)"
export nnUNet_raw="$work/nnUNet_raw" nnUNet_preprocessed="$work/nnUNet_preprocessed" nnUNet_results="$work/nnUNet_results"
# One thread per training: CPU time then equals the time the training process holds a core.
export OMP_NUM_THREADS=1 nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-2}"
dataset="$nnUNet_raw/Dataset204_HippocampusHoldout"

python "$repo/scripts/hippocampus_holdout.py" "$source_data" "$dataset"

nnunet-efficient compare -d 204 \
    -e nnUNetTrainer:nnUNetPlansCPU nnUNetTrainerUXNet:nnUNetPlansUXNetCPU nnUNetTrainerRepUXNet:nnUNetPlansRepUXNetCPU \
    --minutes "${COMPARE_MINUTES:-30}" --jobs "${COMPARE_JOBS:-3}" -f 0 --disable_tta \
    -i "$dataset/imagesTs" -ref "$dataset/labelsTs" -o "$work/compare"
