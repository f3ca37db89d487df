"""``nnUNet_SAM_seed``: one seed for a training's random draws, so that a demo or a learning-curve run repeats.

nnU-Net seeds nothing. With the setting, a trainer seeds Python's, NumPy's and torch's generators when it is built
(the added weights' initialisation, the network's dropout) and the embedding cache draws its (case, copy) pairs from
it. What stays unseeded is nnU-Net's multi-process augmentation of trainers without the cache: its workers' order
and generators are nnU-Net's (``nnUNet_n_proc_DA=0`` runs it in the main process, then seeded too).
"""
import random
from typing import Optional

import numpy as np
import torch

from sam_nnunet import settings


def training_seed() -> Optional[int]:
    return settings.get_non_negative_int(settings.SEED)


def seed_training(log=None) -> Optional[int]:
    """Seeds the generators from ``nnUNet_SAM_seed`` (nothing when unset); returns the seed."""
    seed = training_seed()
    if seed is None:
        return None
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if log is not None:
        log(f"Random generators seeded with {settings.SEED}={seed}")
    return seed
