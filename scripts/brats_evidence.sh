#!/usr/bin/env bash
# Evidence for NMSW on a model worth using (issue 21), on BraTSmini: brats_0003-0005 train,
# brats_0006 is held out (it is fold 0's validation case, so nnU-Net's own end-of-training
# validation scores it too; no training step ever sees it).
#
# Phases, each resumable (a rerun continues where the last one stopped, with nnU-Net's --c):
#   baseline   stock nnUNetv2_train, nnUNetTrainer on the CPU plan (nnUNetPlansCPU 3d_fullres),
#              BASELINE_EPOCHS x ITERS iterations, one torch thread (4.3 CPU s per iteration on
#              a 2-core AMD EPYC, so 60 x 50 = 3,000 iterations are about 4 CPU-hours)
#
# Usage: bash scripts/brats_evidence.sh [PHASE ...]   (default: every phase, in order)
# Environment: EVIDENCE_DIR (default $HOME/nnunet-efficient-evidence/brats: outside the clone, so
# that a fresh checkout of the repository does not lose hours of training), BASELINE_EPOCHS (60),
# ITERS (50), SHARED_DATA (../shared/data).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$repo/scripts/setup_venv.sh"
data="${SHARED_DATA:-$repo/../shared/data}/Dataset005_BraTSmini"
work="${EVIDENCE_DIR:-$HOME/nnunet-efficient-evidence/brats}"
baseline_epochs="${BASELINE_EPOCHS:-60}"
iters="${ITERS:-50}"
phases=("${@:-baseline}")
[ -d "$data" ] || { echo "brats_evidence.sh: BraTSmini not found at $data (set SHARED_DATA)" >&2; exit 1; }

mkdir -p "$work"
export nnUNet_raw="$work/raw" nnUNet_preprocessed="$work/preprocessed" nnUNet_results="$work/results"
export nnUNet_compile=0 OMP_NUM_THREADS=1 nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-2}"
eval "$(nnunet-efficient env)"
dataset=Dataset005_BraTSmini
results="$nnUNet_results/$dataset"

prepare() {
    local raw="$nnUNet_raw/$dataset" pre="$nnUNet_preprocessed/$dataset"
    mkdir -p "$raw" "$work/test/images" "$work/test/labels"
    ln -sfn "$data/imagesTr" "$raw/imagesTr"
    ln -sfn "$data/labelsTr" "$raw/labelsTr"
    cp "$data/dataset.json" "$raw/dataset.json"
    cp "$data/imagesTr/brats_0006_0000.nii.gz" "$data/imagesTr/brats_0006_0001.nii.gz" "$work/test/images/"
    cp "$data/labelsTr/brats_0006.nii.gz" "$work/test/labels/"
    if [ ! -f "$pre/nnUNetPlansCPU.json" ]; then
        nnunet-efficient plan_and_preprocess -d 5 -pl nnUNetPlannerCPU -c 3d_fullres -np 2 -npfp 2 --no_pbar \
            > "$work/plan.log"
    fi
    python - "$pre/splits_final.json" <<'PY'
import json, sys
json.dump([{"train": ["brats_0003", "brats_0004", "brats_0005"], "val": ["brats_0006"]}], open(sys.argv[1], "w"))
PY
}

# Train, or continue a training that stopped (nnU-Net's --c), until checkpoint_final.pth exists.
train() {  # CONFIG TRAINER PLANS LOG [extra nnUNetv2_train args]
    local config="$1" trainer="$2" plans="$3" log="$4"
    shift 4
    local folder="$results/${trainer}__${plans}__${config}/fold_0"
    if [ -f "$folder/checkpoint_final.pth" ]; then
        echo "$trainer ($config): finished earlier"
        return
    fi
    local resume=()
    [ -f "$folder/checkpoint_latest.pth" ] && resume=(--c)
    echo "$trainer ($config): training${resume:+ (resumed)}, log $log"
    nnUNetv2_train 5 "$config" 0 -tr "$trainer" -p "$plans" -device cpu "${resume[@]}" "$@" >> "$log" 2>&1
}

prepare
for phase in "${phases[@]}"; do
    case "$phase" in
        baseline) train 3d_fullres "nnUNetTrainer_${baseline_epochs}epochs_${iters}iters" nnUNetPlansCPU \
            "$work/baseline.log" ;;
        *) echo "brats_evidence.sh: unknown phase '$phase' (baseline)" >&2; exit 2 ;;
    esac
done
