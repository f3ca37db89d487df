"""Reading the embedding cache's files safely (trainers.embedding_cache): a damaged entry is found, not trained on
or crashed on, and folders superseded by new weights are reported.

An entry can be damaged after it was written whole: a disk that filled up, a copy or a sync cut short, a cache folder
deleted while a training runs. Each entry is therefore checked where a build counts it as present (the zip
structure and the pickle, with ``mmap``: the tensors are not read) and read with ``torch.load(weights_only=True)``
inside a check where training draws it; a damaged one is encoded again by the caller (its seed is the copy's, so
the new entry is the same patch).

Superseded folders are listed, not removed: a key differs for other weights but also for another trainer's
augmentation or another plans' patch, and another fold of this dataset (or another training of the same one) may be
reading such a folder right now; the trainer cannot know that it is no longer wanted. The log names each folder of
the same plans, configuration, patch size, augmentation and encoder with other weights or versions, its size and
the command that removes it.
"""
import datetime
import json
import os
from typing import List, Optional, Tuple

import torch

ENTRY_KEYS = ("embeddings", "slice_shapes", "spatial", "target")


class CacheEntryError(RuntimeError):
    """An embedding-cache entry that is missing or cannot be read; ``reason`` says which."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def load_entry(path: str, mmap: bool = False) -> dict:
    """The entry's dict (tensors and plain values only); raises CacheEntryError for a missing, truncated, foreign or
    incomplete file. ``mmap``: map the tensors instead of reading them (the check of a build's count)."""
    if not os.path.isfile(path):
        raise CacheEntryError(path, "missing (deleted while in use?)")
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, random or text bytes, objects other than tensors: never trained on
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CacheEntryError(path, f"damaged ({first[:200]})") from None
    if not isinstance(entry, dict) or any(k not in entry for k in ENTRY_KEYS):
        raise CacheEntryError(path, "not an embedding-cache entry (keys missing)")
    return entry


def entry_is_usable(path: str) -> bool:
    """What a build counts as present: the file exists and its structure reads (tensors mapped, not read)."""
    try:
        load_entry(path, mmap=True)
        return True
    except CacheEntryError:
        return False


def _same_setup(a: dict, b: dict) -> bool:
    fields = ("plans", "configuration", "patch_size", "augmentation")
    return all(a.get(f) == b.get(f) for f in fields) and \
        (a.get("network") or {}).get("encoder") == (b.get("network") or {}).get("encoder")


def folder_bytes(folder: str) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                continue
    return total


def superseded_folders(root: str, key: dict, digest: str) -> List[Tuple[str, int, float]]:
    """(folder, bytes, last modified) of every other cache folder under ``root`` with the same setup as ``key``
    (other weights, nnU-Net version or cache format)."""
    found = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return found
    for name in names:
        folder = os.path.join(root, name)
        if name == digest or not os.path.isdir(folder):
            continue
        try:
            with open(os.path.join(folder, "key.json")) as f:
                other = json.load(f)
        except (OSError, ValueError):
            continue  # not a cache folder of ours (or one without its description): not ours to judge
        if isinstance(other, dict) and _same_setup(key, other):
            found.append((folder, folder_bytes(folder), os.path.getmtime(folder)))
    return found


def superseded_report(root: str, key: dict, digest: str) -> Optional[str]:
    """One log line naming the superseded folders, their size and the command that removes them; None if none."""
    found = superseded_folders(root, key, digest)
    if not found:
        return None
    listed = "; ".join(f"{folder} ({size / 2 ** 30:.2f} GiB, last written "
                       f"{datetime.datetime.fromtimestamp(mtime).strftime('%Y-%m-%d %H:%M')})"
                       for folder, size, mtime in found)
    total = sum(size for _, size, _ in found)
    return (f"Embedding cache: {len(found)} superseded cache folder(s) of this dataset, {total / 2 ** 30:.2f} GiB "
            f"(the same plans, configuration, patch, augmentation and encoder, but other frozen weights or "
            f"versions: only a training with those older weights reads them): {listed}. Remove them, once no "
            f"such training runs, with: rm -rf {' '.join(f for f, _, _ in found)}")
