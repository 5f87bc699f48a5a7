#!/usr/bin/env bash
# Evidence for NMSW on a model worth using (issue 21), on BraTSmini: brats_0003-0005 train,
# brats_0006 is held out (it is fold 0's validation case, so nnU-Net's own end-of-training
# validation scores it too; no training step ever sees it).
#
# Phases, each resumable (a rerun continues where the last one stopped, with nnU-Net's --c):
#   baseline   stock nnUNetv2_train, nnUNetTrainer on the CPU plan (nnUNetPlansCPU 3d_fullres),
#              BASELINE_EPOCHS x ITERS iterations, one torch thread (4.3 CPU s per iteration on
#              a 2-core AMD EPYC, so 60 x 50 = 3,000 iterations are about 4 CPU-hours)
#   retrofit   `nnunet-efficient add_nmsw` adds 3d_nmsw to nnUNetPlansCPU (naming the baseline as
#              the model to retrofit), then stock nnUNetv2_train 3d_nmsw with
#              nnUNetTrainerNMSWRetrofit (the baseline's fold-0 checkpoint_final.pth as the frozen
#              local branch; AdamW 3e-4, cosine, clipping at 1), RETROFIT_EPOCHS x RETROFIT_ITERS
#              iterations: at most 1/4 of the baseline's training time (an NMSW iteration, a whole
#              volume with 4 + 1 windows, costs about 4-5 baseline iterations; `budget` checks it)
#   retrofit_finetune   the same with the local branch fine-tuned (nnUNetTrainerNMSWRetrofitFinetune);
#              optional, not in the default list
#   joint      NMSW from scratch on the same 3d_nmsw (nnUNetTrainerNMSWAdamW: the reference's AdamW
#              3e-4, cosine, clipping at 1), JOINT_EPOCHS x JOINT_ITERS iterations: about the
#              baseline's training time
#   benchmark  one `nnunet-efficient benchmark` on brats_0006: the baseline's sliding window without
#              and with mirroring, nmsw K = 1, 3, 5, 10 on the retrofit, nmsw K = 5 on the joint model,
#              global, random_fg and zoom on the retrofit, nmsw K = 5 with bfloat16 where the CPU has
#              it; Dice per label and for the BraTS regions (WT=1,2,3,4 TC=1,3,4 ET=4)
#   budget     the training seconds of each phase (sum of nnU-Net's epoch times) and their ratios
#
# Usage: bash scripts/brats_evidence.sh [PHASE ...]   (default: baseline retrofit joint benchmark budget)
# Environment: EVIDENCE_DIR (default $HOME/nnunet-efficient-evidence/brats: outside the clone, so
# that a fresh checkout of the repository does not lose hours of training), BASELINE_EPOCHS (60),
# ITERS (50), RETROFIT_EPOCHS (8), RETROFIT_ITERS (20), JOINT_EPOCHS (25), JOINT_ITERS (20),
# SHARED_DATA (../shared/data).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$repo/scripts/setup_venv.sh"
data="${SHARED_DATA:-$repo/../shared/data}/Dataset005_BraTSmini"
work="${EVIDENCE_DIR:-$HOME/nnunet-efficient-evidence/brats}"
baseline_epochs="${BASELINE_EPOCHS:-60}"
iters="${ITERS:-50}"
retrofit_epochs="${RETROFIT_EPOCHS:-8}"
retrofit_iters="${RETROFIT_ITERS:-20}"
joint_epochs="${JOINT_EPOCHS:-25}"
joint_iters="${JOINT_ITERS:-20}"
if [ "$#" -gt 0 ]; then phases=("$@"); else phases=(baseline retrofit joint benchmark budget); fi
[ -d "$data" ] || { echo "brats_evidence.sh: BraTSmini not found at $data (set SHARED_DATA)" >&2; exit 1; }

mkdir -p "$work"
# A fresh machine continues from the state an earlier session packed into the repository
# (scripts/evidence_state.py; nothing is restored over existing results).
pack="$repo/evidence_state/brats.tar"
[ -f "$pack" ] && python "$repo/scripts/evidence_state.py" restore "$pack" "$work"
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

baseline_trainer="nnUNetTrainer_${baseline_epochs}epochs_${iters}iters"
retrofit_trainer="nnUNetTrainerNMSWRetrofit_${retrofit_epochs}epochs_${retrofit_iters}iters"
finetune_trainer="nnUNetTrainerNMSWRetrofitFinetune_${retrofit_epochs}epochs_${retrofit_iters}iters"
joint_trainer="nnUNetTrainerNMSWAdamW_${joint_epochs}epochs_${joint_iters}iters"
baseline_model="$results/${baseline_trainer}__nnUNetPlansCPU__3d_fullres"

# 3d_nmsw in the baseline's own plans, naming the baseline as the model to retrofit (once; the joint
# phase needs only the configuration, so it can train beside the baseline)
add_nmsw() {  # [retrofit]
    if [ "${1:-}" = retrofit ] && [ ! -f "$baseline_model/fold_0/checkpoint_final.pth" ]; then
        echo "brats_evidence.sh: run the baseline phase first ($baseline_model/fold_0/checkpoint_final.pth)" >&2
        exit 1
    fi
    if ! grep -q '"3d_nmsw"' "$nnUNet_preprocessed/$dataset/nnUNetPlansCPU.json"; then
        nnunet-efficient add_nmsw -d 5 -p nnUNetPlansCPU -tr "$baseline_trainer"
    fi
}

# One benchmark run (skipped once its report exists; a partial one is redone)
benchmark() {
    local out="$work/benchmark" bf16=()
    if [ -f "$out/benchmark.json" ]; then
        echo "benchmark: finished earlier, $out/benchmark.md"
        return
    fi
    for model in "$results/${retrofit_trainer}__nnUNetPlansCPU__3d_nmsw" "$results/${joint_trainer}__nnUNetPlansCPU__3d_nmsw"; do
        [ -f "$model/fold_0/checkpoint_final.pth" ] \
            || { echo "brats_evidence.sh: run the retrofit and joint phases first ($model)" >&2; exit 1; }
    done
    rm -rf "$out"
    # bfloat16 only where the CPU computes it natively (otherwise it is emulated, and slower)
    grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo && bf16=(nmsw:model=retrofit,k=5,bf16=1)
    nnunet-efficient benchmark -i "$work/test/images" -ref "$work/test/labels" -m "$baseline_model" -f 0 \
        -device cpu --disable_tta --disable_progress_bar -o "$out" \
        --models retrofit="$results/${retrofit_trainer}__nnUNetPlansCPU__3d_nmsw" \
                 joint="$results/${joint_trainer}__nnUNetPlansCPU__3d_nmsw" \
        --regions WT=1,2,3,4 TC=1,3,4 ET=4 \
        --strategies sliding_window sliding_window:tta=1 nmsw:model=retrofit,k=1 nmsw:model=retrofit,k=3 \
                     nmsw:model=retrofit,k=5 nmsw:model=retrofit,k=10 nmsw:model=joint,k=5 global:model=retrofit \
                     random_fg:model=retrofit,k=5 zoom:model=retrofit "${bf16[@]}" \
        > "$work/benchmark.log" 2>&1
    cat "$out/benchmark.md"
}

# Training seconds per phase: the sum of nnU-Net's epoch times in each training log
budget() {
    python - "$results" "$baseline_trainer" "$retrofit_trainer" "$finetune_trainer" "$joint_trainer" <<'PY'
import glob, os, re, sys

results, baseline, *others = sys.argv[1:]

def seconds(trainer):
    logs = glob.glob(os.path.join(results, f"{trainer}__nnUNetPlansCPU__3d_*", "fold_0", "training_log_*.txt"))
    return sum(float(t) for log in logs for t in re.findall(r"Epoch time: ([0-9.]+) s", open(log).read()))

base = seconds(baseline)
print(f"{baseline}: {base / 3600:.2f} h of epochs")
for trainer in others:
    spent = seconds(trainer)
    if spent:
        print(f"{trainer}: {spent / 3600:.2f} h = {spent / base if base else float('nan'):.2f} x the baseline")
PY
}

prepare
for phase in "${phases[@]}"; do
    case "$phase" in
        baseline) train 3d_fullres "nnUNetTrainer_${baseline_epochs}epochs_${iters}iters" nnUNetPlansCPU \
            "$work/baseline.log" ;;
        retrofit) add_nmsw retrofit; train 3d_nmsw "$retrofit_trainer" nnUNetPlansCPU "$work/retrofit.log" ;;
        retrofit_finetune) add_nmsw retrofit; train 3d_nmsw "$finetune_trainer" nnUNetPlansCPU "$work/retrofit_finetune.log" ;;
        joint) add_nmsw; train 3d_nmsw "$joint_trainer" nnUNetPlansCPU "$work/joint.log" ;;
        benchmark) benchmark ;;
        budget) budget ;;
        *) echo "brats_evidence.sh: unknown phase '$phase' (baseline retrofit retrofit_finetune joint benchmark budget)" >&2
           exit 2 ;;
    esac
done
