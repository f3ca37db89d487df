#!/usr/bin/env bash
# Set up sam-nnunet in ./.venv: nnU-Net v2, PyTorch + torchvision, segment-anything and this package (editable),
# with the napari plugin and, as root on Debian, the virtual display its GUI tests use.
# About 2-3 minutes and ~6 GB on a fresh machine (PyTorch brings its CUDA libraries; it runs on CPU as well).
# Safe to re-run. Afterwards `source .venv/bin/activate` also exports nnUNet_extTrainer (see `sam-nnunet env`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The napari plugin's widget tests (tests/test_napari.py, marker napari) open a real viewer on a virtual display:
# Xvfb, Mesa's software OpenGL (vispy needs a GL context; Qt's offscreen platform gives none) and the libraries
# Qt's xcb platform plugin loads. Debian packages, installed only when missing (apt-get needs root).
GUI_PACKAGES="xvfb xauth libgl1-mesa-dri libglx-mesa0 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xkb1 libxcb-shape0
  libxcb-cursor0"
if command -v dpkg-query >/dev/null; then
  missing=""
  for package in $GUI_PACKAGES; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
  done
  if [ -n "$missing" ] && [ "$(id -u)" = 0 ]; then
    echo "installing the GUI tests' Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086  # one word per package
    apt-get install -y -q --no-install-recommends $missing >/dev/null
  elif [ -n "$missing" ]; then
    echo "WARNING: the napari widget tests need:$missing -- run as root: apt-get install$missing" \
         "(without them they are skipped)" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# [napari]: the plugin and its tests (napari, PyQt5, pytest-qt, pytest-xvfb; pinned in setup.py)
.venv/bin/python -m pip install --quiet -e ".[test,napari]"
# nnU-Net's trainer lookup imports timm -> torchvision: fail here, not in the first training, if they don't import
.venv/bin/python -c "import torch, torchvision, segment_anything, nnunetv2; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| nnunetv2 ok')"
if ! grep -q 'sam-nnunet env' .venv/bin/activate; then
  printf '\n# added by sam-nnunet scripts/setup.sh: lets nnU-Net find the sam-nnunet trainers\neval "$(sam-nnunet env)"\n' >> .venv/bin/activate
fi
echo "sam-nnunet is set up in $(pwd)/.venv"
