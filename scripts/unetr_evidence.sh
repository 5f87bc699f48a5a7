#!/usr/bin/env bash
# Evidence for token sparsification (issue 13, SPEC section 4): `nnunet-efficient compare` on the shared
# Hippocampus data, at one budget of CPU-minutes of training per entry, Dice on held-out cases:
#   nnUNetTrainer                  nnUNetPlansCPU                          (nnU-Net's U-Net, CPU plan)
#   nnUNetTrainerUNETR             nnUNetPlansUNETRCPU 3d_fullres          (dense UNETR, ViT-Ti on 8-voxel tokens)
#   nnUNetTrainerTokenSparseUNETR  nnUNetPlansUNETRCPU 3d_tokensparse_p90  (90 % pruned per stage, the BTCV rate)
#   nnUNetTrainerTokenSparseUNETR  nnUNetPlansUNETRCPU 3d_tokensparse_p75  (75 % pruned per stage, the BraTS rate)
# The table (WORK/unetr/compare.{md,csv,png}) has, per entry: Dice, parameters, GMACs per window, CPU seconds
# per training iteration (the budget's clock), seconds per case and peak memory. A Hippocampus case fits in one
# window of either plan (patches 40x56x40 and 48x64x48), so with --disable_tta seconds per case are seconds per
# window. The paper reports +60 % inference and +120 % training throughput at maintained Dice (ViT-B, 1728
# tokens); here the grid has 288 tokens (48x64x48 / 8^3), so p90 keeps two of the reference's three stages
# (288 -> 28 -> 2; a third would leave none) and p75 all three (288 -> 72 -> 18 -> 4).
#
# Data: ../shared/data/Dataset004_Hippocampus (240 cases, MSD Task04, CC BY-SA 4.0), linked as
# Dataset204_HippocampusHoldout exactly as scripts/compare_evidence.sh does (first 200 cases train, last 40 held
# out; fold 0 trains on 192 and validates on 8). By default both scripts share one work folder, and the
# nnUNetTrainer entry that scripts/compare_evidence.sh trained at the same budget is reused (its compare state is
# copied), so only the three UNETR entries are trained here; the table goes to WORK/unetr.
#
# Budget: UNETR_MINUTES (default 30) CPU-minutes of training steps per entry, 3 new entries = 90 CPU-minutes of
# training, plus per entry a timing run (about a minute), nnU-Net's validation of 8 cases and the prediction of
# the 40 held-out cases (a few minutes). With UNETR_JOBS=2 trainings at once on 2 cores: about 1 h of wall time.
#
# Usage: bash scripts/unetr_evidence.sh [WORK_DIR]   (default work_dirs/compare_hippocampus)
# Environment: UNETR_MINUTES (30), UNETR_JOBS (2), SHARED_DATA (../shared/data).
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

# Three entries share nnUNetPlansUNETRCPU: plan it once here rather than from parallel compare jobs.
if [ ! -f "$nnUNet_preprocessed/Dataset204_HippocampusHoldout/nnUNetPlansUNETRCPU.json" ]; then
    nnunet-efficient plan_and_preprocess -d 204 -pl nnUNetPlannerUNETRCPU -c 3d_fullres -np 2 --no_pbar
fi

# Reuse the nnUNetTrainer entry of scripts/compare_evidence.sh (same data, plan, fold and budget) when it exists.
if [ ! -f "$work/unetr/compare_state.json" ] && [ -f "$work/compare/compare_state.json" ]; then
    mkdir -p "$work/unetr" && cp "$work/compare/compare_state.json" "$work/unetr/"
fi
nnunet-efficient compare -d 204 \
    -e nnUNetTrainer:nnUNetPlansCPU nnUNetTrainerUNETR:nnUNetPlansUNETRCPU \
       nnUNetTrainerTokenSparseUNETR:nnUNetPlansUNETRCPU:3d_tokensparse_p90 \
       nnUNetTrainerTokenSparseUNETR:nnUNetPlansUNETRCPU:3d_tokensparse_p75 \
    --minutes "${UNETR_MINUTES:-30}" --jobs "${UNETR_JOBS:-2}" -f 0 --disable_tta \
    -i "$dataset/imagesTs" -ref "$dataset/labelsTs" -o "$work/unetr"
