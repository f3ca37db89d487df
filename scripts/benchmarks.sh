#!/usr/bin/env bash
# Regenerates the results block of documentation/benchmarks.md: nnU-Net's trainer and every sam-nnunet trainer on
# MSD Task04 hippocampus, one `sam-nnunet benchmark` run. Run it on a quiet machine (nothing else running): the
# table records the machine and the versions, and timings from a busy machine mean nothing.
#
#   bash scripts/benchmarks.sh [PATH/TO/Task04_Hippocampus]        (default ../shared/data/Task04_Hippocampus)
#
# Settings (environment variables):
#   EPOCHS, ITERATIONS   training budget per trainer (default 1 x 50 iterations; the same for every trainer)
#   VAL_CASES            validation cases of fold 0 to predict and score (default 10; "all" for every one)
#   FOLD                 default 0
#   BATCH_SIZE           one batch size for every trainer (default: the plans')
#   VAL_ITERATIONS       nnU-Net's validation iterations per epoch (default: ITERATIONS / 5)
#   NO_MIRRORING=1       predict without test-time mirroring
#   TRAINERS             default: nnUNetTrainer and every trainer in sam_nnunet.trainers.__all__
#   ENCODERS             encoders: "name" for every trainer of its family, "Trainer=name" for one (default: vit_b
#                        for the SAM ViT trainers; SAM 2's keep their default, sam2.1_hiera_t)
#   CHECKPOINTS          per-trainer checkpoints, "Trainer=/path ..." or one path for all; without any, SAM
#                        trainers start from random weights (the table says so)
#   WORK                 working folder (default benchmark_work: nnU-Net folders, models, predictions, logs)
#   DEVICE               cpu or cuda (default: cuda when available)
#   DOC                  the page whose generated block is replaced (default documentation/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=${1:-../shared/data/Task04_Hippocampus}
WORK=$(realpath -m "${WORK:-benchmark_work}")
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
EPOCHS=${EPOCHS:-1}
ITERATIONS=${ITERATIONS:-50}
VAL_CASES=${VAL_CASES:-10}
FOLD=${FOLD:-0}

export nnUNet_raw=$WORK/nnUNet_raw nnUNet_preprocessed=$WORK/nnUNet_preprocessed nnUNet_results=$WORK/nnUNet_results
export nnUNet_def_n_proc=${nnUNet_def_n_proc:-2}
eval "$("$PY" -m sam_nnunet.cli env)"
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"

if [ ! -d "$nnUNet_raw/Dataset004_Hippocampus" ]; then
  "$BIN/nnUNetv2_convert_MSD_dataset" -i "$TASK" -np 2
fi
if [ ! -f "$nnUNet_preprocessed/Dataset004_Hippocampus/nnUNetPlans.json" ]; then
  "$BIN/nnUNetv2_plan_and_preprocess" -d 4 -c 3d_fullres -np 2 --verify_dataset_integrity
fi

SAM_TRAINERS=$("$PY" -c 'import sam_nnunet.trainers as t; print(" ".join(n for n in t.__all__ if n != "SAMTrainerBase"))')
TRAINERS=${TRAINERS:-"nnUNetTrainer $SAM_TRAINERS"}
ARGS=(--epochs "$EPOCHS" --iterations "$ITERATIONS" --fold "$FOLD")
[ "$VAL_CASES" != "all" ] && ARGS+=(--val-cases "$VAL_CASES")
[ -n "${DEVICE:-}" ] && ARGS+=(--device "$DEVICE")
[ -n "${BATCH_SIZE:-}" ] && ARGS+=(--batch-size "$BATCH_SIZE")
[ -n "${VAL_ITERATIONS:-}" ] && ARGS+=(--val-iterations "$VAL_ITERATIONS")
[ "${NO_MIRRORING:-0}" = 1 ] && ARGS+=(--no-mirroring)
# shellcheck disable=SC2206
ARGS+=(--encoder ${ENCODERS:-vit_b})
if [ -n "${CHECKPOINTS:-}" ]; then
  # shellcheck disable=SC2206
  ARGS+=(--checkpoint $CHECKPOINTS)
else
  echo "No CHECKPOINTS: the SAM trainers start from RANDOM weights (parameters, time and memory are the real" \
       "architecture's; their accuracy says nothing about the methods)."
  ARGS+=(--allow-random-init)
fi

# shellcheck disable=SC2086
"$BIN/sam-nnunet" benchmark -d 4 -tr $TRAINERS "${ARGS[@]}" -o "$WORK/results" \
  --update-doc "${DOC:-documentation/benchmarks.md}"
