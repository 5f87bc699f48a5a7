#!/usr/bin/env bash
# Evidence for issue 22, "which architecture to pick": `nnunet-efficient compare` of every architecture at a
# budget where nnU-Net's own U-Net is good, with learning curves and seed spread, on the shared Hippocampus data:
#   nnUNetTrainer                  nnUNetPlansCPU                          (nnU-Net's U-Net, CPU plan)
#   nnUNetTrainerUXNet             nnUNetPlansUXNetCPU                     (3D UX-Net)
#   nnUNetTrainerRepUXNet          nnUNetPlansRepUXNetCPU                  (RepUX-Net, AdamW 1e-4 as its reference)
#   nnUNetTrainerDistillDSM        nnUNetPlansDistillDSMCPU                (Distill-DSM, alpha = 1/2)
#   nnUNetTrainerUNETR             nnUNetPlansUNETRCPU 3d_fullres          (dense UNETR, layer decay 0.75)
#   nnUNetTrainerTokenSparseUNETR  nnUNetPlansUNETRCPU 3d_tokensparse_p90  (90 % of the tokens pruned per stage)
# Each entry gets ARCH_MINUTES CPU-minutes of training steps (compare times each trainer's own step and turns the
# budget into epochs of 50 iterations; the demo's U-Net reached 0.854 after 1,500 iterations). The default, 45, was
# set on a 2-core AMD EPYC with AVX-512 (Zen 4), where nnU-Net's CPU-plan step takes 0.85 CPU s: 3,150 U-Net
# iterations, twice the demo's. The earlier 30-minute tables were timed on a Zen 1 machine at 3.64 s per step
# (500 iterations), so CPU-minutes are only comparable on one machine; the iterations are what carry over. Every run is seeded: nnUNetTrainer and the entry named by ARCH_SEEDED_ENTRY run with seeds 0 and 1
# (the table then says whether their difference exceeds the run-to-run spread), the others with seed 0. Each run
# keeps checkpoints at ARCH_SNAPSHOTS of its schedule and scores them on the held-out cases: the learning curves
# (held-out Dice against CPU-minutes, points inside one schedule, not separately trained budgets).
#
# Results: WORK/compare/compare.{md,csv,png} (table), WORK/compare/compare_curve.{csv,png} (curves); logs in
# WORK/compare/logs; WORK/runs.log records the code commit of every (re)start.
#
# Data: ../shared/data/Dataset004_Hippocampus (240 cases, MSD Task04, CC BY-SA 4.0), linked as
# Dataset204_HippocampusHoldout exactly as scripts/compare_evidence.sh does (first 200 cases sorted by name for
# training, fold 0 = 192 train / 8 validation, the last 40 held out as imagesTs/labelsTs).
#
# Cost: 8 runs x ARCH_MINUTES (default 45) = 6 CPU-hours of training steps, plus per run nnU-Net's per-epoch
# validation, data augmentation, 4 predictions of the 40 held-out cases, and per entry a timing run. With one
# training at a time (ARCH_JOBS=1, one torch thread; the augmentation workers take the second core) about
# 8-10 hours of wall time on 2 cores. NOT run in CI.
#
# Resumable: all state (raw links, plans, models, kept checkpoints, compare_state.json) lives in WORK, by default
# OUTSIDE the clone so a fresh checkout finds it; rerun the script to continue. A training stopped mid-way
# continues with --c from its last epoch, checkpoints already kept and points already scored are reused.
#
# Usage: bash scripts/architecture_evidence.sh [WORK_DIR]   (default $HOME/nnunet-efficient-evidence/architectures)
# Environment: ARCH_MINUTES (45), ARCH_JOBS (1; COMPARE_JOBS is read too), ARCH_SEEDED_ENTRY (the plugin entry with
# two seeds; default nnUNetTrainerUXNet:nnUNetPlansUXNetCPU), ARCH_SNAPSHOTS ("0.25 0.5 0.75"),
# SHARED_DATA (../shared/data), nnUNet_n_proc_DA (2).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$repo/scripts/setup_venv.sh"
source_data="${SHARED_DATA:-$repo/../shared/data}/Dataset004_Hippocampus"
[ -d "$source_data" ] || { echo "Hippocampus not found at $source_data (set SHARED_DATA)" >&2; exit 1; }
default_work="${HOME}/nnunet-efficient-evidence/architectures"
work="$(mkdir -p "${1:-$default_work}" && cd "${1:-$default_work}" && pwd)"
# A fresh machine continues from the state an earlier session packed into the repository
# (scripts/evidence_state.py; nothing is restored over existing results).
pack="$repo/evidence_state/architectures.tar"
[ -f "$pack" ] && python "$repo/scripts/evidence_state.py" restore "$pack" "$work"
export nnUNet_raw="$work/nnUNet_raw" nnUNet_preprocessed="$work/nnUNet_preprocessed" nnUNet_results="$work/nnUNet_results"
# One thread per training: CPU time then equals the time the training process holds a core.
export OMP_NUM_THREADS=1 nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-2}"
dataset="$nnUNet_raw/Dataset204_HippocampusHoldout"
minutes="${ARCH_MINUTES:-45}"
jobs="${ARCH_JOBS:-${COMPARE_JOBS:-1}}"
seeded="${ARCH_SEEDED_ENTRY:-nnUNetTrainerUXNet:nnUNetPlansUXNetCPU}"
read -r -a snapshots <<< "${ARCH_SNAPSHOTS:-0.25 0.5 0.75}"

echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
     "minutes=$minutes jobs=$jobs seeded=$seeded snapshots=${snapshots[*]}" >> "$work/runs.log"

python "$repo/scripts/hippocampus_holdout.py" "$source_data" "$dataset"

# Two entries share nnUNetPlansUNETRCPU: plan it once here (its 3d_fullres data serves both configurations).
if [ ! -f "$nnUNet_preprocessed/Dataset204_HippocampusHoldout/nnUNetPlansUNETRCPU.json" ]; then
    nnunet-efficient plan_and_preprocess -d 204 -pl nnUNetPlannerUNETRCPU -c 3d_fullres -np 2 --no_pbar
fi

entries=(nnUNetTrainer:nnUNetPlansCPU
         nnUNetTrainerUXNet:nnUNetPlansUXNetCPU
         nnUNetTrainerRepUXNet:nnUNetPlansRepUXNetCPU
         nnUNetTrainerDistillDSM:nnUNetPlansDistillDSMCPU
         nnUNetTrainerUNETR:nnUNetPlansUNETRCPU
         nnUNetTrainerTokenSparseUNETR:nnUNetPlansUNETRCPU:3d_tokensparse_p90)
found=0
runs=()
for entry in "${entries[@]}"; do
    if [ "$entry" = "nnUNetTrainer:nnUNetPlansCPU" ] || [ "$entry" = "$seeded" ]; then
        runs+=("$entry@0" "$entry@1")
        [ "$entry" = "$seeded" ] && found=1
    else
        runs+=("$entry@0")
    fi
done
[ "$found" = 1 ] || { echo "ARCH_SEEDED_ENTRY='$seeded' is none of: ${entries[*]:1}" >&2; exit 1; }

nnunet-efficient compare -d 204 -e "${runs[@]}" \
    --minutes "$minutes" --jobs "$jobs" --snapshots "${snapshots[@]}" -f 0 --disable_tta \
    -i "$dataset/imagesTs" -ref "$dataset/labelsTs" -o "$work/compare"
