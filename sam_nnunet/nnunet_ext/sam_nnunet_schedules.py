# Imported by nnU-Net's trainer lookup (nnUNet_extTrainer): the shorter schedules of the frozen-encoder trainers
# (``-tr ZAP25DSAMTrainer_250epochs``; see sam_nnunet/trainers/schedules.py).
from sam_nnunet.trainers.schedules import *  # noqa: F401,F403
