#!/usr/bin/env bash
# The learning curve of documentation/learning_curve.md: test-set Dice against the number of training cases,
# nnUNetTrainer and the ZAP-2.5DSAM trainers with LiteMedSAM, every run on the same wall-clock budget, through
# nnU-Net's own command line. A thin wrapper of `sam-nnunet learning-curve`; resumable: run the same command again
# and only the runs missing from the results JSON are done.
#
#   bash scripts/learning_curve.sh [SOURCE] [options of sam-nnunet learning-curve]
#   bash scripts/learning_curve.sh --help
#
# SOURCE: an MSD task folder or an nnU-Net dataset id (default ../shared/data/Task04_Hippocampus). Defaults: 40 test
# cases held out with seed 0, sizes 10 25 all, budget 1200 s, seed 0, clicks 0 1 3, results in
# documentation/learning_curve/learning_curve.json, work files in learning_curve_work/. Another test set:
#   bash scripts/learning_curve.sh Task04_Hippocampus --test-folder /data/other   (imagesTs + labelsTs)
# Run it on a quiet machine: the budget is wall-clock time, and the table records the machine and load average.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  echo
  exec "$PY" -m sam_nnunet.cli learning-curve --help
fi
SOURCE=../shared/data/Task04_Hippocampus
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  SOURCE=$1
  shift
fi
export nnUNet_def_n_proc=${nnUNet_def_n_proc:-2}
exec "$PY" -m sam_nnunet.cli learning-curve "$SOURCE" "$@"
