# Imported by nnU-Net's trainer lookup (nnUNet_extTrainer), like sam_nnunet_trainers.py: the nnU-Net baseline
# shortened for smoke tests and workflow tests (see sam_nnunet/trainers/short_run.py).
from sam_nnunet.trainers.short_run import nnUNetTrainerShortRun  # noqa: F401
