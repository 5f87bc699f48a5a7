#!/usr/bin/env bash
# Evidence for Distill-DSM (issue 14 A, SPEC section 6): `nnunet-efficient compare` on the shared
# Hippocampus data, nnUNetTrainer (3D U-Net, CPU plans) vs nnUNetTrainerDistillDSM (2.5D U-Net with
# depth shift modules, alpha = 1/2, CPU plans), at one budget of CPU-minutes of training per entry:
# parameters, GMACs per window, seconds per iteration and Dice on held-out cases. The paper reports
# 28 % of a 3D U-Net's parameters at comparable Hippocampus Dice (.8955/.8786 vs .8993/.8847).
# Results: WORK/distill_dsm/compare.{md,csv,png}.
#
# Budget: DSM_MINUTES (default 30) CPU-minutes of training per entry, timed by compare (one thread
# per training), i.e. about 2 x 30 min of training with 2 jobs on 2 cores, plus planning (~2 min),
# timing and prediction of the 40 held-out cases (a few minutes). NOT run in CI.
#
# Data: ../shared/data/Dataset004_Hippocampus (240 cases, MSD Task04, CC BY-SA 4.0), linked as
# Dataset204_HippocampusHoldout exactly as scripts/compare_evidence.sh does (first 200 cases sorted
# by name for training, fold 0 = 192 train / 8 validation, the last 40 held out), so by default
# both scripts share one work folder: raw data, preprocessed nnUNetPlansCPU data and nnU-Net's
# results are reused, but this script keeps its own compare state and table (WORK/distill_dsm).
#
# Usage: bash scripts/distill_dsm_evidence.sh [WORK_DIR]   (default work_dirs/compare_hippocampus)
# Environment: DSM_MINUTES (30), DSM_JOBS (2 trainings at once), SHARED_DATA (../shared/data).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$repo/scripts/setup_venv.sh"
source_data="${SHARED_DATA:-$repo/../shared/data}/Dataset004_Hippocampus"
[ -d "$source_data" ] || { echo "Hippocampus not found at $source_data (set SHARED_DATA)" >&2; exit 1; }
work="$(mkdir -p "${1:-$repo/work_dirs/compare_hippocampus}" && cd "${1:-$repo/work_dirs/compare_hippocampus}" && pwd)"
export nnUNet_raw="$work/nnUNet_raw" nnUNet_preprocessed="$work/nnUNet_preprocessed" nnUNet_results="$work/nnUNet_results"
# One thread per training: CPU time then equals the time the training process holds a core.
export OMP_NUM_THREADS=1 nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-2}"
dataset="$nnUNet_raw/Dataset204_HippocampusHoldout"

python "$repo/scripts/hippocampus_holdout.py" "$source_data" "$dataset"

# compare plans and preprocesses nnUNetPlansDistillDSMCPU itself (with nnUNetPlannerDistillDSMCPU) if missing.
# The nnUNetTrainer entry is the one scripts/compare_evidence.sh trained at the same budget: start from its state
# so that it is reused (timing, training and prediction) instead of trained again.
if [ ! -f "$work/distill_dsm/compare_state.json" ] && [ -f "$work/compare/compare_state.json" ]; then
    mkdir -p "$work/distill_dsm" && cp "$work/compare/compare_state.json" "$work/distill_dsm/"
fi
nnunet-efficient compare -d 204 \
    -e nnUNetTrainer:nnUNetPlansCPU nnUNetTrainerDistillDSM:nnUNetPlansDistillDSMCPU \
    --minutes "${DSM_MINUTES:-30}" --jobs "${DSM_JOBS:-2}" -f 0 --disable_tta \
    -i "$dataset/imagesTs" -ref "$dataset/labelsTs" -o "$work/distill_dsm"
