"""Reading foundation-model checkpoints as untrusted input.

A checkpoint is read with ``torch.load(..., weights_only=True)`` only: no arbitrary unpickling. Every way a user can
point at the wrong file ends in a :class:`CheckpointError` whose message names the fix.
"""
import hashlib
import os
import pickle
import zipfile
from typing import Dict, Optional

import torch

# what a user reads when no real checkpoint is at hand
WHERE_TO_GET = "see documentation/weights.md for where to download official SAM / MedSAM / SAM2 checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint the user pointed at cannot be used. The message says why and what to do."""


def sha256_of_file(path: str, chunk_size: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def _unwrap(obj, path: str) -> Dict[str, torch.Tensor]:
    # official SAM / MedSAM checkpoints are a bare state dict; SAM2 and many fine-tuning scripts wrap it
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} is a PyTorch file but not a model state dict (expected a mapping of parameter names to "
            f"tensors, as in the official SAM checkpoints). Point nnUNet_SAM_checkpoint at the original "
            f"checkpoint file; {WHERE_TO_GET}.")
    # checkpoints saved from nn.DataParallel carry a 'module.' prefix
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def read_state_dict(path: Optional[str], env_var: str = "nnUNet_SAM_checkpoint",
                    mmap: bool = True) -> Dict[str, torch.Tensor]:
    """Load a state dict from ``path`` safely (``weights_only=True``), memory-mapped where the format allows.

    Raises CheckpointError for a missing path, a directory, a file that is not a PyTorch checkpoint, a checkpoint
    that needs unpickling of arbitrary objects, and a file that holds no state dict.
    """
    if not path:
        raise CheckpointError(f"{env_var} is empty. Set it to the path of a checkpoint file; {WHERE_TO_GET}.")
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise CheckpointError(
            f"{env_var}={path}: no such file. Check the path (absolute paths are safest); {WHERE_TO_GET}.")
    if os.path.isdir(path):
        raise CheckpointError(f"{env_var}={path} is a directory. Point it at the checkpoint file itself "
                              f"(for example .../sam_vit_b_01ec64.pth).")
    # mmap only works for the zip format written by torch.save since 1.6; older files are read normally
    use_mmap = mmap and zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():  # a text file or another format, not a pickle of objects
            raise CheckpointError(
                f"{env_var}={path} is not a readable PyTorch checkpoint. The file may be truncated or of another "
                f"format: download it again and check its size; {WHERE_TO_GET}.") from None
        raise CheckpointError(
            f"{env_var}={path} cannot be loaded safely: it contains objects other than tensors, and checkpoints "
            f"are only read with torch.load(weights_only=True). Use the original checkpoint as published (a plain "
            f"state dict), or re-save yours with torch.save(model.state_dict(), path).") from None
    except Exception as e:  # truncated downloads, text files, other formats
        raise CheckpointError(
            f"{env_var}={path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no details'}). The file may be truncated or of another "
            f"format: download it again and check its size; {WHERE_TO_GET}.") from None
    return _unwrap(obj, path)
