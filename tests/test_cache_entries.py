"""Issue 37: a damaged or missing embedding-cache entry is found where a build counts it and where training draws
it, and encoded again (one line naming the file where it cannot be); a cache folder deleted mid-run is recreated;
folders superseded by other weights are listed with their size and the command that removes them. Entries here are
tiny hand-made ones and the encoder a stub: no network runs."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import sam_nnunet.trainers.embedding_cache as embedding_cache
from sam_nnunet.errors import UserFacingExit
from sam_nnunet.networks.zap25d import CachedEmbeddings
from sam_nnunet.trainers.cache_entries import CacheEntryError, superseded_report
from sam_nnunet.trainers.embedding_cache import CachedBatches, EmbeddingCache, build_cache

KEY = {"format": 2, "plans": "nnUNetPlans", "configuration": "3d_fullres", "patch_size": [8, 8, 8],
       "augmentation": ["nnUNetTrainer.get_training_transforms"], "network": {"encoder": "vit_test"},
       "frozen_sha256": "new weights"}
DAMAGE = {"truncated": lambda b: b[:len(b) // 2], "random bytes": lambda b: np.random.default_rng(0).bytes(len(b)),
          "text": lambda b: b"this is not a checkpoint\n", "empty": lambda b: b""}


def _embeddings(value: float) -> CachedEmbeddings:
    return CachedEmbeddings({0: torch.full((2, 4, 2, 2), value)}, {0: (2, 2)}, (2, 8, 8), 1)


def _write(cache: EmbeddingCache, path: str, value: float) -> int:
    return cache.write(path, _embeddings(value), torch.full((1, 2, 8, 8), value))


@pytest.fixture
def cache(tmp_path):
    c = EmbeddingCache(str(tmp_path / "sam_embedding_cache"), KEY)
    c.prepare()
    return c


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_entry_is_encoded_again_when_drawn(cache, damage):
    path = cache.path("case", "fp", 0)
    _write(cache, path, 3.0)
    with open(path, "rb") as f:
        good = f.read()
    with open(path, "wb") as f:
        f.write(DAMAGE[damage](good))
    with pytest.raises(CacheEntryError, match="damaged"):
        EmbeddingCache.read(path)
    repaired, logged = [], []
    batches = CachedBatches({"case": [path]}, 1, seed=0, log=logged.append,
                            repair=lambda case, copy, p: repaired.append((case, copy)) or _write(cache, p, 3.0))
    batch = next(batches)
    assert repaired == [("case", 0)] and torch.equal(batch["target"], torch.full((1, 1, 2, 8, 8), 3.0))
    assert logged[0].startswith(f"Embedding cache: {path}: damaged (") and logged[0].endswith("encoding it again")
    # without a way to encode it: one line naming the file and the fix, no PytorchStreamReader traceback
    with open(path, "wb") as f:
        f.write(DAMAGE[damage](good))
    with pytest.raises(UserFacingExit, match=rf"The embedding-cache entry {path}: damaged .*Delete it .*"
                                             rf"nnUNet_SAM_cache_copies=0"):
        next(CachedBatches({"case": [path]}, 1, seed=0))


def test_a_cache_folder_deleted_while_training_is_recreated(cache):
    path = cache.path("case", "fp", 0)
    _write(cache, path, 1.0)
    shutil.rmtree(cache.folder)
    logged = []
    batches = CachedBatches({"case": [path]}, 1, seed=0, log=logged.append,
                            repair=lambda case, copy, p: _write(cache, p, 1.0))
    assert torch.equal(next(batches)["target"], torch.full((1, 1, 2, 8, 8), 1.0))
    assert "missing (deleted while in use?)" in logged[0]
    assert os.path.isfile(os.path.join(cache.folder, "key.json"))
    # an entry still unreadable after encoding it again: one line with the fix
    bad = CachedBatches({"case": [path]}, 1, seed=0, log=logged.append,
                        repair=lambda case, copy, p: open(p, "wb").close())
    os.remove(path)
    with pytest.raises(UserFacingExit, match=r"even after encoding it again: is the disk failing or full\? Delete "):
        next(bad)


class _Dataset:
    identifiers = ["a", "b"]


class _Network(torch.nn.Module):
    pass


def test_a_build_counts_only_readable_entries(cache, monkeypatch):
    encoded = []
    monkeypatch.setattr(embedding_cache, "_draw_copies",
                        lambda dataset, case, copies, *args: [(torch.zeros(1), torch.zeros(1)) for _ in copies])
    monkeypatch.setattr(embedding_cache, "_encode_entry",
                        lambda c, net, data, target, path, device: encoded.append(os.path.basename(path)) or
                        _write(c, path, 2.0))
    monkeypatch.setattr(embedding_cache, "_check_disk", lambda *args: None)

    def build():
        logged = []
        encoded.clear()
        build_cache(cache, _Network(), _Dataset(), {"a": "fa", "b": "fb"}, 2, None, None, None, 0.33, None,
                    torch.device("cpu"), "training", log=logged.append)
        return logged

    build()
    assert sorted(encoded) == ["a__fa__0.pt", "a__fa__1.pt", "b__fb__0.pt", "b__fb__1.pt"]
    assert build()[0].startswith("Embedding cache (training): all 2 copies of 2 cases present") and not encoded
    with open(cache.path("b", "fb", 1), "r+b") as f:
        f.truncate(100)
    logged = build()
    assert encoded == ["b__fb__1.pt"]  # counted as missing, encoded again
    assert logged[0] == "Embedding cache (training): 1 damaged entries are encoded again: b__fb__1.pt"
    EmbeddingCache.read(cache.path("b", "fb", 1))


def test_superseded_folders_are_listed_with_size_and_the_command(tmp_path, cache):
    root = os.path.dirname(cache.folder)
    old = EmbeddingCache(root, dict(KEY, frozen_sha256="old weights"))
    _write(old, old.path("case", "fp", 0), 1.0)
    other_plans = EmbeddingCache(root, dict(KEY, plans="nnUNetSAMPlans", frozen_sha256="old weights"))
    other_plans.prepare()  # another setup: another training may use it, not listed
    os.makedirs(os.path.join(root, "not_a_cache"))
    assert superseded_report(root, cache.key, cache.digest) == superseded_report(root, KEY, cache.digest)
    report = superseded_report(root, KEY, cache.digest)
    assert report.startswith("Embedding cache: 1 superseded cache folder(s) of this dataset, ")
    assert f"{old.folder} (0.00 GiB, last written " in report and other_plans.folder not in report
    assert report.endswith(f"with: rm -rf {old.folder}")
    with open(os.path.join(old.folder, "key.json")) as f:
        assert json.load(f)["frozen_sha256"] == "old weights"
    shutil.rmtree(old.folder)
    assert superseded_report(root, KEY, cache.digest) is None
