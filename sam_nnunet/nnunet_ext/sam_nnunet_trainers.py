# The only module in the folder that nnUNet_extTrainer points at. nnU-Net imports it as a top-level module while
# looking up `-tr NAME`; it re-exports our trainers, so nnU-Net gets the canonical classes of sam_nnunet.trainers.
from sam_nnunet.trainers import *  # noqa: F401,F403
from sam_nnunet.trainers import __all__  # noqa: F401
