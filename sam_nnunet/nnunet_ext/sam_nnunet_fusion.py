# Imported by nnU-Net's trainer lookup (nnUNet_extTrainer), like sam_nnunet_trainers.py: nnU-Net's network and recipe
# with a frozen SAM encoder's features fused in (``-tr nnUNetTrainerSAMFusion``; see sam_nnunet/trainers/fusion.py).
from sam_nnunet.trainers.fusion import nnUNetTrainerSAMFusion  # noqa: F401
