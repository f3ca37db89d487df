#!/usr/bin/env bash
# Set up sam-nnunet in ./.venv: nnU-Net v2, PyTorch + torchvision, segment-anything and this package (editable).
# About 2-3 minutes and ~6 GB on a fresh machine (PyTorch brings its CUDA libraries; it runs on CPU as well).
# Safe to re-run. Afterwards `source .venv/bin/activate` also exports nnUNet_extTrainer (see `sam-nnunet env`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
# nnU-Net's trainer lookup imports timm -> torchvision: fail here, not in the first training, if they don't import
.venv/bin/python -c "import torch, torchvision, segment_anything, nnunetv2; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| nnunetv2 ok')"
if ! grep -q 'sam-nnunet env' .venv/bin/activate; then
  printf '\n# added by sam-nnunet scripts/setup.sh: lets nnU-Net find the sam-nnunet trainers\neval "$(sam-nnunet env)"\n' >> .venv/bin/activate
fi
echo "sam-nnunet is set up in $(pwd)/.venv"
