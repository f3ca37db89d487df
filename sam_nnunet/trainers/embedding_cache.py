"""The embedding cache: a frozen encoder run once per augmented patch, not once per training step.

ZAP-2.5DSAM trains only SAM's mask decoder; the frozen encoder (no gradients) costs ~10x the decoder's forward and
backward. nnU-Net's augmentation does not commute with the encoder, so what is cached is a **pool of K augmented
copies per case**: K patches drawn by nnU-Net's own data loader with nnU-Net's own training transforms (foreground
oversampling, rotation, scaling, elastic, intensity, mirroring: everything ``nnUNetTrainer`` would do) are encoded
once and stored with their targets; training then draws (case, copy) pairs — cases uniformly, as nnU-Net draws
them — and runs the decoder on the stored embeddings. The model is unchanged (the encoder sees exactly what it
would see uncached); what the cache gives up is augmentation diversity: K fixed copies per case instead of a new
one per draw (documentation/zap25dsam.md measures what that costs). Validation patches (nnU-Net's validation
transforms) are cached the same way; the final validation and ``nnUNetv2_predict`` run the encoder as always.

Where and how:
  - ``$nnUNet_preprocessed/DatasetXXX/sam_embedding_cache/<key>/`` (``nnUNet_SAM_cache_dir`` moves it), one file
    per copy; the key is a hash of everything the embeddings depend on: the frozen weights themselves (sha256 of
    the encoder's state), the network's arguments (encoder, in-plane scale, pool, plane layout), the plans'
    configuration and patch size, the trainer's augmentation (the methods that define it), foreground
    oversampling, the nnU-Net version; every file name carries the
    fingerprint of its case's preprocessed files. A stale entry is never read: it is not found.
  - Files are written atomically (temporary file, fsync, rename): an interrupted build resumes where it stopped, a
    half-written file is never used; several processes (folds, DDP ranks) read one cache at once. An entry damaged
    later (or deleted, with its folder) is found where the build counts it and where training reads it, and encoded
    again (trainers.cache_entries); folders superseded by other weights are listed in the log with the command
    that removes them.
  - Before writing, the size is estimated from the first copy and compared with the free disk space.
  - Under a wall-clock budget the cache is not built first but filled as drawn: a copy is encoded when training
    first draws it (the same copy, from the same seed), so a budget is never spent on encoding patches it does not
    reach, and no run costs more than an uncached one.
    ``nnUNet_SAM_cache_build_first=1`` builds it first under a budget too: the build is then the set-up the
    budget's first clock leaves out and its second counts (trainers.budget).
"""
import hashlib
import json
import os
import random
import shutil
from importlib.metadata import version
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from tqdm import tqdm

from sam_nnunet import settings
from sam_nnunet.errors import UserFacingExit
from sam_nnunet.networks.zap25d import CachedEmbeddings
from sam_nnunet.trainers.cache_entries import CacheEntryError, entry_is_usable, load_entry, superseded_report
from sam_nnunet.trainers.checkpoints import atomic_torch_save
from sam_nnunet.trainers.seeding import training_seed

# network arguments that do not change what the frozen encoder outputs (memory / speed, the decoder's start)
DECODER_ONLY_ARGUMENTS = ("encoder_batch", "checkpoint_decoder", "mask_token_source")
CACHE_FORMAT = 2  # 2: validation copies named apart from training copies (1 read one for the other across folds)
DEFAULT_COPIES = 4


def state_sha256(*modules: torch.nn.Module) -> str:
    """sha256 of the tensors of ``modules`` (names, shapes, dtypes, values): the frozen weights the cache holds the
    output of, whether they came from a checkpoint or a random initialisation."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            if not isinstance(tensor, torch.Tensor):
                continue
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            # flattened: 0-d tensors (BatchNorm's num_batches_tracked in LiteMedSAM) cannot be viewed as bytes
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def case_fingerprint(folder: str, identifier: str) -> str:
    """Short hash of the names, sizes and modification times of a case's preprocessed files (nnU-Net rewrites them
    when it preprocesses again)."""
    stats = []
    for name in sorted(os.listdir(folder)):
        if name.startswith(identifier + ".") or name.startswith(identifier + "_seg."):
            st = os.stat(join(folder, name))
            stats.append((name, st.st_size, st.st_mtime_ns))
    if not stats:
        raise FileNotFoundError(f"no preprocessed files of case {identifier} in {folder}")
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:12]


class EmbeddingCache:
    """The folder of one cache key: entries ``<case>__<fingerprint>__<copy>.pt`` (validation copies:
    ``...<copy>.validation.pt``) and ``key.json``."""

    def __init__(self, root: str, key: Dict) -> None:
        self.key = key
        self.digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = join(root, self.digest)

    def path(self, case: str, fingerprint: str, copy: int, pool: str = "training") -> str:
        # a case is a training case in one fold and a validation case in another (in fold "all" both): the two
        # pools' copies (augmented / validation transforms) must not be read for one another
        return join(self.folder, f"{case}__{fingerprint}__{copy}{'' if pool == 'training' else '.' + pool}.pt")

    def prepare(self) -> None:
        maybe_mkdir_p(self.folder)
        key_file = join(self.folder, "key.json")
        if not os.path.isfile(key_file):  # for people looking at the folder; the digest is the folder's name
            tmp = f"{key_file}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(self.key, f, indent=1, sort_keys=True)
            os.replace(tmp, key_file)

    def write(self, path: str, embeddings: CachedEmbeddings, target: torch.Tensor) -> int:
        self.prepare()  # the folder may have been deleted while training ran
        entry = {"format": CACHE_FORMAT,
                 "embeddings": {str(a): e.detach().to("cpu", torch.float16).contiguous()
                                for a, e in embeddings.embeddings.items()},
                 "slice_shapes": {str(a): list(s) for a, s in embeddings.slice_shapes.items()},
                 "spatial": list(embeddings.spatial),
                 "target": target.detach().cpu().contiguous()}
        atomic_torch_save(entry, path)
        return os.path.getsize(path)

    @staticmethod
    def read(path: str) -> Tuple[CachedEmbeddings, torch.Tensor]:
        """Raises CacheEntryError for a missing or damaged entry (``weights_only``: tensors and plain values)."""
        entry = load_entry(path)
        embeddings = {int(a): e for a, e in entry["embeddings"].items()}
        shapes = {int(a): tuple(s) for a, s in entry["slice_shapes"].items()}
        return CachedEmbeddings(embeddings, shapes, tuple(entry["spatial"]), 1), entry["target"]


class CachedBatches:
    """An endless iterator of nnU-Net batches ({'data': CachedEmbeddings, 'target', 'keys'}) drawn from the cache:
    ``batch_size`` cases uniformly with replacement (as nnU-Net's loader), one of their copies each. With ``fill``
    (case, copy, path), a copy missing from the cache is encoded when it is first drawn (and read back, so that it
    is used exactly as later draws read it). With ``repair`` (the same signature), an entry found missing or damaged
    when drawn is encoded again (the log says which); without, it stops training with one line naming it."""

    def __init__(self, entries: Dict[str, List[str]], batch_size: int, seed: Optional[int] = None,
                 fill: Optional[Callable[[str, int, str], None]] = None,
                 repair: Optional[Callable[[str, int, str], None]] = None, log=print) -> None:
        self.entries = entries
        self.cases = sorted(entries)
        self.batch_size = batch_size
        self.rng = random.Random(seed)
        self.fill = fill
        self.repair = repair
        self.log = log

    def __iter__(self):
        return self

    def _read(self, case: str) -> Tuple[CachedEmbeddings, torch.Tensor]:
        paths = self.entries[case]
        path = self.rng.choice(paths)
        if self.fill is not None and not os.path.isfile(path):
            self.fill(case, paths.index(path), path)
        try:
            return EmbeddingCache.read(path)
        except CacheEntryError as e:
            if self.repair is None:
                raise UserFacingExit(f"The embedding-cache entry {e}. Delete it (it is encoded again at the next "
                                     f"start), or train without the cache ({settings.CACHE_COPIES}=0)") from None
            self.log(f"Embedding cache: {e}; encoding it again")
            self.repair(case, paths.index(path), path)
        try:
            return EmbeddingCache.read(path)
        except CacheEntryError as e:
            raise UserFacingExit(
                f"The embedding-cache entry {e}, even after encoding it again: is the disk failing or full? Delete "
                f"the cache folder {os.path.dirname(path)} (it is rebuilt), point {settings.CACHE_DIR} at another "
                f"disk, or train without the cache ({settings.CACHE_COPIES}=0)") from None

    def __next__(self) -> dict:
        cases = [self.rng.choice(self.cases) for _ in range(self.batch_size)]
        items = [self._read(c) for c in cases]
        return {"data": CachedEmbeddings.concatenate([e for e, _ in items]),
                "target": torch.stack([t for _, t in items]), "keys": cases}


def _seed_for(digest: str, case: str, copy: int) -> int:
    return int(hashlib.sha256(f"{digest}:{case}:{copy}".encode()).hexdigest()[:8], 16)


def _draw_copies(dataset, case: str, copies: Sequence[int], digest: str, patch_size, final_patch_size,
                 label_manager, oversample: float, transforms) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """nnU-Net's own loader and transforms on one case: one augmented (data, target) per copy, each from its own
    seed (the pool is the same whoever builds it, and a larger K only adds copies)."""
    loader = nnUNetDataLoader(dataset, 1, patch_size, final_patch_size, label_manager,
                              oversample_foreground_percent=oversample, probabilistic_oversampling=True,
                              transforms=transforms)
    drawn = []
    numpy_state = np.random.get_state()
    try:
        for copy in copies:
            seed = _seed_for(digest, case, copy)
            np.random.seed(seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                batch = loader.generate_train_batch()
            target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
            drawn.append((torch.as_tensor(batch["data"][0]), torch.as_tensor(target[0])))  # (C, *patch), (1, *patch)
    finally:
        np.random.set_state(numpy_state)
    return drawn


def build_cache(cache: EmbeddingCache, network, dataset, fingerprints: Dict[str, str], copies: int,
                patch_size, final_patch_size, label_manager, oversample: float, transforms, device: torch.device,
                what: str, log=print) -> Dict[str, List[str]]:
    """Encode the missing copies of every case of ``dataset`` into ``cache``; returns {case: [entry paths]}.
    Checks the free disk space after the first new entry."""
    cache.prepare()
    entries = {c: [cache.path(c, fingerprints[c], k, what) for k in range(copies)] for c in dataset.identifiers}
    # present = readable (zip and pickle checked, tensors mapped, not read): a damaged entry is encoded again
    missing = {c: [k for k, p in enumerate(paths) if not entry_is_usable(p)] for c, paths in entries.items()}
    missing = {c: ks for c, ks in missing.items() if ks}
    todo = sum(len(ks) for ks in missing.values())
    damaged = [entries[c][k] for c, ks in missing.items() for k in ks if os.path.isfile(entries[c][k])]
    if damaged:
        log(f"Embedding cache ({what}): {len(damaged)} damaged entries are encoded again: "
            f"{', '.join(os.path.basename(p) for p in damaged[:5])}{', ...' if len(damaged) > 5 else ''}")
    if not todo:
        log(f"Embedding cache ({what}): all {copies} copies of {len(entries)} cases present in {cache.folder}")
        return entries
    log(f"Embedding cache ({what}): encoding {todo} of {copies * len(entries)} augmented patches once "
        f"({len(entries)} cases x {copies} copies) into {cache.folder}")
    was_training = network.training
    network.eval()
    checked = False
    try:
        for case, ks in tqdm(sorted(missing.items()), desc=f"embedding cache ({what})", unit="case"):
            drawn = _draw_copies(dataset, case, ks, cache.digest, patch_size, final_patch_size, label_manager,
                                 oversample, transforms)
            for k, (data, target) in zip(ks, drawn):
                size = _encode_entry(cache, network, data, target, entries[case][k], device)
                if not checked:
                    _check_disk(cache.folder, size * (todo - 1), what)
                    checked = True
    finally:
        network.train(was_training)
    return entries


def _encode_entry(cache: EmbeddingCache, network, data: torch.Tensor, target: torch.Tensor, path: str,
                  device: torch.device) -> int:
    # the frozen part only (ZAP's encoder stays in eval mode whatever the network's mode)
    with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
        planes, spatial = network.embed(data[None].to(device))
    return cache.write(path, CachedEmbeddings.of(planes, spatial), target)


def filler(cache: EmbeddingCache, network, dataset, entries: Dict[str, List[str]], patch_size, final_patch_size,
           label_manager, oversample: float, transforms, device: torch.device, what: str, log=print
           ) -> Callable[[str, int, str], None]:
    """``CachedBatches``' ``fill``: encodes one missing copy (the same one ``build_cache`` would store: its seed is
    the copy's) when it is first drawn. The disk is checked after the first one."""
    cache.prepare()
    state = {"checked": False}
    encode = encoder_of(cache, network, dataset, patch_size, final_patch_size, label_manager, oversample, transforms,
                        device)

    def fill(case: str, copy: int, path: str) -> None:
        size = encode(case, copy, path)
        if not state["checked"]:
            state["checked"] = True
            missing = sum(not os.path.isfile(p) for paths in entries.values() for p in paths)
            log(f"Embedding cache ({what}): filled as drawn, {missing} of "
                f"{sum(len(p) for p in entries.values())} copies still to encode ({size / 2 ** 20:.1f} MiB each)")
            _check_disk(cache.folder, size * missing, what)
    return fill


def encoder_of(cache: EmbeddingCache, network, dataset, patch_size, final_patch_size, label_manager,
               oversample: float, transforms, device: torch.device) -> Callable[[str, int, str], int]:
    """(case, copy, path) -> bytes written: draws and encodes one copy, the same patch whenever it is encoded (its
    seed is the copy's). ``CachedBatches``' ``repair`` of a damaged entry, and the core of ``filler``."""
    def encode(case: str, copy: int, path: str) -> int:
        (data, target), = _draw_copies(dataset, case, [copy], cache.digest, patch_size, final_patch_size,
                                       label_manager, oversample, transforms)
        return _encode_entry(cache, network, data, target, path, device)
    return encode


def _check_disk(folder: str, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    margin = 1 << 30  # leave a GiB to nnU-Net's checkpoints and logs
    if needed + margin > free:
        raise UserFacingExit(
            f"The embedding cache ({what}) needs about {needed / 2 ** 30:.1f} GiB more in {folder}, but only "
            f"{free / 2 ** 30:.1f} GiB are free. Free some space, point {settings.CACHE_DIR} at a larger disk, "
            f"cache fewer copies per case ({settings.CACHE_COPIES}=2), or train without the cache "
            f"({settings.CACHE_COPIES}=0; every step then runs the encoder).")


class EmbeddingCacheMixin:
    """Mixed into a trainer whose network has ``embed`` / ``decode`` and takes ``CachedEmbeddings`` (ZAP): nnU-Net's
    training and validation loaders are replaced by ``CachedBatches`` over a cache built (or completed) at the start
    of training. ``nnUNet_SAM_cache_copies`` sets K (0: no cache, every step runs the encoder); by default K = 4
    where the training draws at least twice as many patches as the cache encodes, else no cache (short runs).
    Under a wall-clock budget (``nnUNet_SAM_time_budget_seconds``) nothing is built first: each copy is encoded when
    it is first drawn (``filler``), inside the budget."""

    cache_copies: int = DEFAULT_COPIES

    def embedding_cache_copies(self) -> int:
        try:
            copies = settings.get_non_negative_int(settings.CACHE_COPIES)
        except ValueError as e:
            raise UserFacingExit(str(e)) from None
        return self.cache_copies if copies is None else copies

    def embedding_cache(self) -> EmbeddingCache:
        root = settings.get_str(settings.CACHE_DIR) or join(self.preprocessed_dataset_folder_base,
                                                            "sam_embedding_cache")
        net = self.sam_network
        arch = self.configuration_manager.network_arch_init_kwargs
        # the augmentation is whatever these methods of the trainer's class do: trainers that share them (ZAP and its
        # prompted variant: nnUNetTrainer's) share a cache, a trainer that overrides one gets its own
        augmentation = [getattr(type(self), m).__qualname__ for m in (
            "get_training_transforms", "get_validation_transforms",
            "configure_rotation_dummyDA_mirroring_and_inital_patch_size")]
        key = {"format": CACHE_FORMAT, "augmentation": augmentation, "plans": self.plans_manager.plans_name,
               "configuration": self.configuration_name, "patch_size": list(self.configuration_manager.patch_size),
               "network": {k: arch[k] for k in sorted(arch) if k not in DECODER_ONLY_ARGUMENTS},
               "frozen_sha256": state_sha256(net.channels, net.encoder), "nnunetv2": version("nnunetv2"),
               "oversample_foreground_percent": self.oversample_foreground_percent}
        return EmbeddingCache(root, key)

    def embedding_cache_sources(self) -> List[Tuple[str, object, Sequence[int], object]]:
        """(what, nnU-Net dataset, patch size drawn, nnU-Net's transforms) for the training and validation pools:
        what ``nnUNetTrainer.get_dataloaders`` hands its two loaders."""
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        lm, patch = self.label_manager, self.configuration_manager.patch_size
        regions = lm.foreground_regions if lm.has_regions else None
        tr_transforms = self.get_training_transforms(
            patch, rotation, None, mirror_axes, dummy_2d, use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            is_cascaded=self.is_cascaded, foreground_labels=lm.foreground_labels, regions=regions,
            ignore_label=lm.ignore_label)
        val_transforms = self.get_validation_transforms(None, is_cascaded=self.is_cascaded,
                                                        foreground_labels=lm.foreground_labels, regions=regions,
                                                        ignore_label=lm.ignore_label)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        return [("training", dataset_tr, initial_patch_size, tr_transforms),
                ("validation", dataset_val, patch, val_transforms)]

    def get_dataloaders(self):
        copies = self.embedding_cache_copies()
        if not copies:
            return super().get_dataloaders()
        sources = self.embedding_cache_sources()
        encodings = copies * sum(len(dataset.identifiers) for _, dataset, _, _ in sources)
        draws = self.num_epochs * (self.num_iterations_per_epoch + self.num_val_iterations_per_epoch) * \
            self.batch_size
        if settings.get_str(settings.CACHE_COPIES) is None and draws < 2 * encodings:
            # a short run (smoke test, demo) would spend more on building the cache than on encoding every patch
            self.print_to_log_file(
                f"Embedding cache not used: this training draws {draws} patches, the cache would encode "
                f"{encodings}; every step runs the encoder ({settings.CACHE_COPIES}=N forces a cache of N copies)")
            return super().get_dataloaders()
        cache = self.embedding_cache()
        report = superseded_report(os.path.dirname(cache.folder), cache.key, cache.digest) \
            if self.local_rank == 0 else None
        if report:
            self.print_to_log_file(report)
        folder, patch = self.preprocessed_dataset_folder, self.configuration_manager.patch_size
        # under a wall-clock budget the cache fills as it is drawn: building it first could take the whole budget,
        # and a copy encoded at its first draw costs what an uncached step costs, later draws only the decoder;
        # nnUNet_SAM_cache_build_first builds it first all the same (the set-up then times the build: the reading
        # of a budget that leaves the one-off build out, trainers.budget)
        as_drawn = settings.get_positive_float(settings.TIME_BUDGET_SECONDS) is not None and \
            not settings.get_flag(settings.CACHE_BUILD_FIRST)
        loaders = []
        seed = training_seed()
        for i, (what, dataset, size, transforms) in enumerate(sources):
            fingerprints = {c: case_fingerprint(folder, c) for c in dataset.identifiers}
            entries = {c: [cache.path(c, fingerprints[c], k, what) for k in range(copies)]
                       for c in dataset.identifiers}
            fill = None
            if as_drawn:
                fill = filler(cache, self.sam_network, dataset, entries, size, patch, self.label_manager,
                              self.oversample_foreground_percent, transforms, self.device, what,
                              log=self.print_to_log_file)
            else:
                if self.local_rank == 0:
                    build_cache(cache, self.sam_network, dataset, fingerprints, copies, size, patch,
                                self.label_manager, self.oversample_foreground_percent, transforms, self.device,
                                what, log=self.print_to_log_file)
                if self.is_ddp:
                    torch.distributed.barrier()  # the other ranks read what rank 0 wrote
            repair = encoder_of(cache, self.sam_network, dataset, size, patch, self.label_manager,
                                self.oversample_foreground_percent, transforms, self.device)
            loaders.append(CachedBatches(entries, self.batch_size, seed=None if seed is None else seed + i,
                                         fill=fill, repair=repair,
                                         log=self.print_to_log_file))
        self.print_to_log_file(f"Training from the embedding cache: {copies} augmented copies per case"
                               f"{', each encoded when first drawn (time budget)' if as_drawn else ''} "
                               f"({settings.CACHE_COPIES}=0 trains without it)")
        return tuple(loaders)
