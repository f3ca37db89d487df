"""Reading foundation-model checkpoints as untrusted input, and loading their weights strictly into a module.

A checkpoint is read with ``torch.load(..., weights_only=True)`` only: no arbitrary unpickling. Every way a user can
point at the wrong file ends in a :class:`CheckpointError` whose message names the fix.
"""
import hashlib
import os
import pickle
import zipfile
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from sam_nnunet.encoders.surgery import adapt_state_dict_shapes

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


def _looks_like_torch_file(path: str) -> bool:
    """torch.save writes a zip archive (PK..) or, before 1.6, a pickle (protocol 2: 0x80 0x02); random bytes or a
    text file are neither, and torch's error for them ("unsupported operand", "objects other than tensors") would
    send the user the wrong way."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _refused_for_objects(error: pickle.UnpicklingError) -> bool:
    """Whether torch's weights-only unpickler refused a global/class (objects other than tensors), rather than a
    broken pickle stream."""
    text = str(error)
    details = text[text.find("WeightsUnpickler error:"):] if "WeightsUnpickler error:" in text else text
    return "GLOBAL" in details or "add_safe_globals" in details or "Can only build" in details or \
        "Can only create new object" in details


def nonfinite_tensors(state: Dict[str, torch.Tensor]) -> List[Tuple[str, int, int]]:
    """(name, NaN count, Inf count) of every floating-point tensor holding NaN or Inf, in the state dict's order."""
    found = []
    for name, tensor in state.items():
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        if bool(torch.isfinite(tensor).all()):  # the common case: one pass, no counts
            continue
        found.append((name, int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())))
    return found


def refuse_nonfinite(state: Dict[str, torch.Tensor], path: str, env_var: str = "nnUNet_SAM_checkpoint",
                     show: int = 3) -> None:
    """CheckpointError naming the first tensors with NaN or Inf: trained from them, every loss is NaN and the
    validation Dice 0, with nothing said about the weights."""
    bad = nonfinite_tensors(state)
    if not bad:
        return
    named = "; ".join(f"{name} ({n_nan} NaN, {n_inf} Inf of {state[name].numel()} values)"
                      for name, n_nan, n_inf in bad[:show])
    more = f"; and {len(bad) - show} more" if len(bad) > show else ""
    raise CheckpointError(
        f"{env_var}={path} holds NaN or Inf values in {len(bad)} of its {len(state)} tensors: {named}{more}. "
        f"Training from these weights would give NaN losses and a Dice of 0. The file is damaged or was saved "
        f"from a diverged training: download it again (compare its sha256) or use another checkpoint; "
        f"{WHERE_TO_GET}.")


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
    if not _looks_like_torch_file(path):
        raise CheckpointError(
            f"{env_var}={path} is not a readable PyTorch checkpoint: it is neither a zip archive nor a pickle, as "
            f"every file written by torch.save is (a damaged or incomplete download, or another file): download it "
            f"again and check its size and sha256; {WHERE_TO_GET}.")
    # mmap only works for the zip format written by torch.save since 1.6; older files are read normally
    use_mmap = mmap and zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as e:
        if not _refused_for_objects(e):  # a damaged pickle stream (bad opcodes), not a pickle of objects
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


def load_submodule_state(module: nn.Module, state: Dict[str, torch.Tensor], prefix: str,
                         ignore_prefixes: Iterable[str] = (), path: str = "the checkpoint") -> list:
    """Strictly load ``state[prefix*]`` into ``module``, resizing position tables to the module's grid.

    Every parameter and buffer of ``module`` must come from the checkpoint, and every checkpoint key under
    ``prefix`` must land in ``module`` unless it starts with one of ``ignore_prefixes`` (parts of SAM a method
    deliberately drops, e.g. the 2D neck). Returns the list of resized tensors.
    """
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise CheckpointError(f"{path} has no '{prefix}*' weights; it is not a checkpoint for this model; "
                              f"{WHERE_TO_GET}.")
    ignore = tuple(ignore_prefixes)
    sub = {k: v for k, v in sub.items() if not k.startswith(ignore)}
    target = module.state_dict()
    sub, resized = adapt_state_dict_shapes(sub, {k: v.shape for k, v in target.items()})
    missing = sorted(set(target) - set(sub))
    unexpected = sorted(set(sub) - set(target))
    wrong = sorted(k for k in set(sub) & set(target) if tuple(sub[k].shape) != tuple(target[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {prefix}{missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {prefix}{unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {prefix}{k}: checkpoint {tuple(sub[k].shape)}, "
                         f"model {tuple(target[k].shape)})")
        raise CheckpointError(
            f"{path} does not match the model being built: {'; '.join(parts)}. The checkpoint is for another "
            f"model or model size; use a checkpoint of the size named by nnUNet_SAM_encoder (or unset "
            f"nnUNet_SAM_encoder so the size is taken from the checkpoint).")
    module.load_state_dict({k: v.to(target[k].dtype) for k, v in sub.items()}, strict=True)
    return resized
