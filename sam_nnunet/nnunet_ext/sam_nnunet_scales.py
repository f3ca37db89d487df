# Imported by nnU-Net's trainer lookup (nnUNet_extTrainer): ZAP-2.5DSAM and SAM2-3dMed at in-plane scale x2
# (``-tr ZAP25DSAMTrainer_upsample2``; see sam_nnunet/trainers/scales.py).
from sam_nnunet.trainers.scales import *  # noqa: F401,F403
