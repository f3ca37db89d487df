"""The embedding cache of the ZAP trainers: what it stores equals what the encoder computes, it is keyed by what it
depends on, an interrupted build resumes, training steps run the decoder alone, a short disk is refused."""
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import make_trainer

from sam_nnunet.errors import UserFacingExit
from sam_nnunet.networks.zap25d import CachedEmbeddings
from sam_nnunet.trainers import ZAP25DSAMTrainer, ZAP25DSAMTrainer_prompted
from sam_nnunet.trainers.embedding_cache import CachedBatches, EmbeddingCache, _draw_copies, state_sha256


@pytest.fixture
def cached(sam_env, tmp_path, synthetic_dataset):
    sam_env.setenv("nnUNet_results", str(tmp_path / "results"))
    sam_env.setenv("nnUNet_n_proc_DA", "0")
    sam_env.setenv("nnUNet_SAM_encoder", "vit_test")
    sam_env.setenv("nnUNet_SAM_allow_random_init", "1")
    sam_env.setenv("nnUNet_SAM_cache_copies", "2")
    sam_env.setenv("nnUNet_SAM_cache_dir", str(tmp_path / "cache"))
    sam_env.setenv("nnUNet_SAM_skip_memory_check", "1")  # tested in test_memory_check; its trace costs ~15 s here
    return sam_env


class _CountingEncoder:
    """Counts the frozen encoder's calls (pseudo-slice groups) of a network."""

    def __init__(self, net, monkeypatch):
        self.calls = 0
        original = net.encoder.forward

        def counted(groups):
            self.calls += 1
            return original(groups)
        monkeypatch.setattr(net.encoder, "forward", counted)


def _entries(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".pt"))


def test_cached_patches_are_the_encoders_output_and_training_runs_the_decoder_alone(synthetic_dataset, cached,
                                                                                    monkeypatch):
    trainer = make_trainer(ZAP25DSAMTrainer, synthetic_dataset)
    trainer.on_train_start()
    cache = trainer.embedding_cache()
    files = _entries(cache.folder)
    assert len(files) == 2 * 8  # 2 copies of the 6 training and 2 validation cases of fold 0
    net = trainer.sam_network.eval()

    # an entry is what the encoder gives for the copy nnU-Net's loader draws again from the same seed
    _, dataset_tr, initial, transforms = trainer.embedding_cache_sources()[0]
    case = dataset_tr.identifiers[0]
    entry_path = trainer.dataloader_train.entries[case][1]
    embeddings, target = EmbeddingCache.read(entry_path)
    (data, again), = _draw_copies(dataset_tr, case, [1], cache.digest, initial, trainer.configuration_manager.patch_size,
                                  trainer.label_manager, trainer.oversample_foreground_percent, transforms)
    assert torch.equal(again, target)
    with torch.no_grad():
        uncached = net(data[None])
        from_cache = net(embeddings)
    torch.testing.assert_close(from_cache, uncached, rtol=2e-2, atol=2e-3)  # stored in float16

    # training and validation steps from the cache: the decoder learns, the encoder never runs
    counter = _CountingEncoder(net, monkeypatch)
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    trainer.on_train_epoch_start()
    batch = next(trainer.dataloader_train)
    assert isinstance(batch["data"], CachedEmbeddings) and batch["data"].batch == trainer.batch_size
    losses = [trainer.train_step(next(trainer.dataloader_train))["loss"] for _ in range(2)]
    trainer.on_validation_epoch_start()
    val = trainer.validation_step(next(trainer.dataloader_val))
    assert all(np.isfinite(losses)) and np.isfinite(val["loss"])
    assert counter.calls == 0
    assert all(torch.equal(p, frozen[n]) for n, p in net.named_parameters() if n in frozen)
    assert any(not torch.equal(p, trained[n]) for n, p in net.named_parameters() if n in trained)
    trainer.on_train_end()


def test_key_resume_and_stale_entries(synthetic_dataset, cached, monkeypatch):
    trainer = make_trainer(ZAP25DSAMTrainer, synthetic_dataset)
    trainer.initialize()
    cache = trainer.embedding_cache()
    # interrupted build: one entry present, one half-written temporary file (never read, never counted)
    os.makedirs(cache.folder, exist_ok=True)
    trainer.get_dataloaders()
    files = _entries(cache.folder)
    victim = os.path.join(cache.folder, files[0])
    os.remove(victim)
    open(victim + ".tmp123", "wb").write(b"half")
    counter = _CountingEncoder(trainer.sam_network, monkeypatch)
    trainer.get_dataloaders()
    per_patch = counter.calls
    assert per_patch > 0 and _entries(cache.folder) == files  # only the missing entry was encoded again
    trainer.get_dataloaders()
    assert counter.calls == per_patch  # complete: nothing encoded

    # the prompted variant (same network embedding, same augmentation) shares the cache
    prompted = make_trainer(ZAP25DSAMTrainer_prompted, synthetic_dataset, fold=1)
    prompted.initialize()
    prompted.sam_network.load_state_dict(trainer.sam_network.state_dict())
    assert prompted.embedding_cache().digest == cache.digest

    # the key follows the frozen weights and the network's arguments; a case's files change its entries' names
    digest = cache.digest
    with torch.no_grad():
        next(trainer.sam_network.encoder.parameters()).add_(1.0)
    assert trainer.embedding_cache().digest != digest
    assert state_sha256(trainer.sam_network.encoder) != cache.key["frozen_sha256"]
    # a cache built under another input to the encoder (encoders/contract.py's window) is another cache
    digest = trainer.embedding_cache().digest
    arch = trainer.configuration_manager.configuration["architecture"]["arch_kwargs"]
    arch["input_window"] = [[-3.0, 3.0]] if arch.get("input_window") is None else None
    assert trainer.embedding_cache().digest != digest
    case = files[0].split("__")[0]
    data_file = [f for f in os.listdir(trainer.preprocessed_dataset_folder) if f.startswith(case + ".")][0]
    path = os.path.join(trainer.preprocessed_dataset_folder, data_file)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10 ** 9))
    from sam_nnunet.trainers.embedding_cache import case_fingerprint
    assert case_fingerprint(trainer.preprocessed_dataset_folder, case) != files[0].split("__")[1]


def test_a_short_disk_is_refused_before_filling_it(synthetic_dataset, cached, monkeypatch):
    trainer = make_trainer(ZAP25DSAMTrainer_prompted, synthetic_dataset)
    trainer.initialize()
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=2 ** 20))
    with pytest.raises(UserFacingExit, match="nnUNet_SAM_cache_copies=0"):
        trainer.get_dataloaders()
    assert len(_entries(trainer.embedding_cache().folder)) == 1  # stopped after the first entry


def test_without_the_cache_it_is_nnunets_loader(synthetic_dataset, cached):
    cached.setenv("nnUNet_SAM_cache_copies", "0")
    trainer = make_trainer(ZAP25DSAMTrainer, synthetic_dataset)
    trainer.initialize()
    train, _ = trainer.get_dataloaders()
    assert isinstance(next(train)["data"], torch.Tensor)
    # by default a short run, which would encode more patches for the cache than it trains on, runs uncached
    cached.delenv("nnUNet_SAM_cache_copies")
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 2, 5, 1
    assert isinstance(next(trainer.get_dataloaders()[0])["data"], torch.Tensor)  # 24 draws < 2 x 4 x 8 encodings
    trainer.num_epochs = 6  # 72 draws >= 64
    assert isinstance(next(trainer.get_dataloaders()[0])["data"], CachedEmbeddings)


def test_under_a_time_budget_copies_are_encoded_when_first_drawn(synthetic_dataset, cached, monkeypatch):
    cached.setenv("nnUNet_SAM_time_budget_seconds", "60")
    trainer = make_trainer(ZAP25DSAMTrainer, synthetic_dataset)
    trainer.initialize()
    counter = _CountingEncoder(trainer.sam_network, monkeypatch)
    train, _ = trainer.get_dataloaders()
    cache = trainer.embedding_cache()
    assert counter.calls == 0 and not _entries(cache.folder)  # nothing built first
    batch = next(train)
    assert isinstance(batch["data"], CachedEmbeddings) and batch["data"].batch == trainer.batch_size
    filled = _entries(cache.folder)
    assert 1 <= len(filled) <= trainer.batch_size and counter.calls > 0

    # the copy a build would have stored: what the encoder gives for the patch drawn again from its seed
    _, dataset_tr, initial, transforms = trainer.embedding_cache_sources()[0]
    case, _, copy = filled[0][:-len(".pt")].split("__")
    embeddings, target = EmbeddingCache.read(os.path.join(cache.folder, filled[0]))
    (data, again), = _draw_copies(dataset_tr, case, [int(copy)], cache.digest, initial,
                                  trainer.configuration_manager.patch_size, trainer.label_manager,
                                  trainer.oversample_foreground_percent, transforms)
    assert torch.equal(again, target)
    with torch.no_grad():
        planes, _ = trainer.sam_network.embed(data[None])
    for axis, plane in planes.items():
        torch.testing.assert_close(embeddings.embeddings[axis], plane.embeddings.half())

    # a copy already in the cache is read, not encoded again
    present = {c: [p for p in paths if os.path.isfile(p)] for c, paths in train.entries.items()}
    again = CachedBatches({c: p for c, p in present.items() if p}, trainer.batch_size, fill=train.fill)
    calls = counter.calls
    next(again)
    assert counter.calls == calls


def test_under_a_time_budget_the_cache_can_be_built_first(synthetic_dataset, cached):
    # the reading of a budget that leaves the one-off build out (trainers.budget times it as set-up)
    cached.setenv("nnUNet_SAM_time_budget_seconds", "60")
    cached.setenv("nnUNet_SAM_cache_build_first", "1")
    # fold "all": every case is a training and a validation case, and each pool has its own copies (augmented /
    # validation transforms), none read for the other
    trainer = make_trainer(ZAP25DSAMTrainer, synthetic_dataset, fold="all")
    trainer.initialize()
    loaders = trainer.get_dataloaders()
    (_, training, _, _), (_, validation, _, _) = trainer.embedding_cache_sources()
    assert set(training.identifiers) == set(validation.identifiers)
    files = _entries(trainer.embedding_cache().folder)
    assert len(files) == 2 * 2 * len(training.identifiers)  # nnUNet_SAM_cache_copies=2, two pools
    assert len([f for f in files if f.endswith(".validation.pt")]) == 2 * len(validation.identifiers)
    assert all(loader.fill is None for loader in loaders)
    assert not set(loaders[0].entries[training.identifiers[0]]) & set(loaders[1].entries[training.identifiers[0]])


def test_the_weights_hash_covers_every_tensor_batchnorm_counters_included():
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    digest = state_sha256(module)
    module[1].num_batches_tracked += 1  # a 0-d buffer
    assert state_sha256(module) != digest
