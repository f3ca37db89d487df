"""One trainer of ``sam-nnunet benchmark``, in a process of its own (so that its peak memory is its own).

Runs nnU-Net's machinery through its API, as ``nnUNetv2_train`` and ``nnUNetv2_predict`` do:
``recursive_find_trainer_class_by_name`` (our trainers through nnUNet_extTrainer), the trainer built from the
preprocessed plans, ``initialize``/``run_training``; then ``nnUNetPredictor`` loads the model folder the training
wrote (``checkpoint_final.pth``) and predicts the fold's validation images from nnUNet_raw, one case at a time;
finally ``sam-nnunet evaluate`` scores them against nnU-Net's ``gt_segmentations``.

What is measured, and how:
- time per training iteration: ``train_step`` (forward, loss, backward, optimiser step; CUDA synchronised) timed
  around each call; the first iteration is left out as warm-up. ``wall`` per iteration also counts waiting for
  data augmentation (time between consecutive steps). nnU-Net's own epoch timestamps are kept too.
- peak memory of training: CUDA ``torch.cuda.max_memory_allocated`` over ``run_training``; CPU: the peak resident
  set size of this process (Linux: ``VmHWM``, elsewhere ``ru_maxrss``) when training ends. Data-augmentation worker processes
  (nnUNet_n_proc_DA) are not included; they run the same code for every trainer.
- prediction time per case: ``predict_single_npy_array`` on the image already read: nnU-Net preprocessing,
  sliding-window inference (with test-time mirroring unless disabled), resampling, export of the segmentation.
- prompted trainers (``PromptedTrainerMixin``): the automatic row above, then the same validation cases with N
  simulated clicks per class for each N of ``clicks`` (``evaluate_clicks_on_fold``: clicks drawn from the
  reference labels, seed 0, the trainer's paper protocol for the tiles unless ``click_tiles``), evaluated alike;
  for those whose network takes boxes, the interaction protocol (``evaluate_interaction``: box / clicks /
  box+clicks, ``interaction_rounds`` corrections) and the pretrained weights' box as a zero-shot row.

Usage (by the benchmark, not by hand): ``python -m sam_nnunet.evaluation.benchmark_worker SPEC RESULT PROGRESS``.
"""
import gc
import json
import os
import resource
import sys
import time
import traceback
from typing import Dict, List

import numpy as np
import torch

from sam_nnunet.errors import UserFacingExit
from sam_nnunet.evaluation.interaction import evaluate_interaction
from sam_nnunet.evaluation.prompted import evaluate_clicks_on_fold, paper_tiles
from sam_nnunet.metrics.evaluate import evaluate_folders
from sam_nnunet.nnunet_checkpoint import SafeCheckpointPredictor
from sam_nnunet.nnunet_prediction import unwrapped
from sam_nnunet.trainers.prompted import PromptedTrainerMixin


class Progress:
    """Appends one JSON line per update to a file the benchmark polls: {"stage", "done", "total"}."""
    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, stage: str, done: int, total: int) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"stage": stage, "done": done, "total": total}) + "\n")


def parameter_counts(network: torch.nn.Module) -> Dict[str, int]:
    """total / trainable / frozen / pretrained / added.

    ``added`` = parameters not initialised from a pretrained checkpoint. A SAM network reports it itself
    (``parameter_report``); any other network (nnU-Net's U-Net) starts from random weights, so all its parameters
    are added and none are pretrained."""
    net = unwrapped(network)
    if hasattr(net, "parameter_report"):
        report = net.parameter_report()
        return {"total": report["total"], "trainable": report["trainable"], "frozen": report["frozen"],
                "pretrained": report["total"] - report["added"], "added": report["added"]}
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable, "pretrained": 0, "added": total}


def peak_rss_bytes() -> int:
    # Linux: VmHWM, the peak of this process's own address space. Not ru_maxrss: Linux carries the launching
    # process's peak over through fork + exec, so a worker started by a large process (a 1.8 GB pytest run) would
    # report at least that parent's size.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # elsewhere ru_maxrss: macOS reports it in bytes, other systems in KiB
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value if sys.platform == "darwin" else value * 1024)


def configure_torch(device: torch.device, threads: int) -> None:
    """What nnUNetv2_train sets before training (nnunetv2.run.run_training): on the CPU all ``threads``; on CUDA one
    CPU thread and cuDNN autotuning (without it nnU-Net's convolutions run with cuDNN's default algorithms, which is
    not how nnUNetv2_train trains)."""
    if device.type == "cuda":
        torch.set_num_threads(1)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    elif device.type == "cpu":
        torch.set_num_threads(threads)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summary_of_steps(starts: List[float], ends: List[float], epoch_of: List[int]) -> Dict:
    compute = [e - s for s, e in zip(starts, ends)]
    wall = [starts[i + 1] - starts[i] for i in range(len(starts) - 1) if epoch_of[i + 1] == epoch_of[i]]
    timed = compute[1:] if len(compute) > 1 else compute  # the first step is warm-up
    return {"iterations": len(compute), "seconds_per_iteration": float(np.median(timed)),
            "seconds_per_iteration_mean": float(np.mean(timed)),
            "wall_seconds_per_iteration": float(np.median(wall)) if wall else None,
            "step_seconds": [round(c, 4) for c in compute]}


def _loader_summary(trainer, seconds: List[float]) -> Dict:
    """Set-up time of the training loaders and, for trainers with an embedding cache, whether it was used and its
    size (cases x copies encoded, or found)."""
    summary = {"setup_seconds": float(sum(seconds))}
    entries = getattr(trainer.dataloader_train, "entries", None)
    if entries is not None:
        copies = len(next(iter(entries.values())))
        cases = len(entries) + len(trainer.dataloader_val.entries)
        summary.update({"embedding_cache": True, "copies": copies, "cases": cases})  # setup: build or find it
    elif hasattr(trainer, "embedding_cache_copies"):
        summary["embedding_cache"] = False
    return summary


def train(spec: dict, progress: Progress) -> dict:
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    device = torch.device(spec["device"])
    trainer_class = recursive_find_trainer_class_by_name(spec["trainer"])
    preprocessed = join(nnUNet_preprocessed, spec["dataset"])
    plans = load_json(join(preprocessed, spec["plans"] + ".json"))
    if spec["batch_size"]:
        plans["configurations"][spec["configuration"]]["batch_size"] = spec["batch_size"]
    plans["continue_training"] = False
    dataset_json = load_json(join(preprocessed, "dataset.json"))
    trainer = trainer_class(plans=plans, configuration=spec["configuration"], fold=spec["fold"],
                            dataset_json=dataset_json, device=device)
    # the same budget for every trainer, set as nnU-Net's own attributes before initialize() builds the schedules
    trainer.num_epochs = spec["epochs"]
    trainer.num_iterations_per_epoch = spec["iterations"]
    trainer.num_val_iterations_per_epoch = spec["val_iterations"]
    trainer.initialize()
    counts = parameter_counts(trainer.network)

    total = spec["epochs"] * spec["iterations"]
    starts, ends, epoch_of = [], [], []
    original_step = trainer.train_step

    def timed_step(batch):
        _synchronize(device)
        starts.append(time.perf_counter())
        out = original_step(batch)
        _synchronize(device)
        ends.append(time.perf_counter())
        epoch_of.append(trainer.current_epoch)
        progress("train", len(ends), total)
        return out

    trainer.train_step = timed_step
    # the loaders' set-up: for the ZAP trainers the one-off embedding cache build (all cases x copies), else nnU-Net's
    # loader start; timed apart from the steps, and reported beside them
    loader_seconds = []
    original_loaders = trainer.get_dataloaders

    def timed_loaders():
        start = time.perf_counter()
        out = original_loaders()
        loader_seconds.append(time.perf_counter() - start)
        return out

    trainer.get_dataloaders = timed_loaders
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    progress("train", 0, total)
    trainer.run_training()
    memory = {"peak_rss_bytes": peak_rss_bytes()}
    if device.type == "cuda":
        memory["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
        memory["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))

    log = trainer.logger.get_value
    epoch_seconds = [e - s for s, e in zip(log("epoch_start_timestamps", None), log("epoch_end_timestamps", None))]
    network = unwrapped(trainer.network)
    result = {
        "parameters": counts,
        "training": {**_summary_of_steps(starts, ends, epoch_of), "epoch_seconds": epoch_seconds,
                     "epochs": trainer.num_epochs, "batch_size": int(trainer.batch_size),
                     "patch_size": [int(p) for p in trainer.configuration_manager.patch_size],
                     "final_train_loss": float(log("train_losses", -1))},
        "memory": memory,
        "loaders": _loader_summary(trainer, loader_seconds),
        "network": f"{type(network).__module__}.{type(network).__name__}",
        "pretrained": getattr(network, "pretrained_info", None),
        "model_folder": trainer.output_folder_base,
        "validation_keys": list(trainer.do_split()[1]),
        "mirror_axes": list(trainer.inference_allowed_mirroring_axes or []),
        "prompted": is_prompted(trainer_class),
    }
    del trainer, network
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def predict_and_evaluate(spec: dict, trained: dict, progress: Progress) -> dict:
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    device = torch.device(spec["device"])
    predictor = SafeCheckpointPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=spec["mirroring"],
                                        perform_everything_on_device=device.type == "cuda", device=device,
                                        verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(trained["model_folder"], use_folds=(spec["fold"],),
                                                   checkpoint_name="checkpoint_final.pth")
    dataset_json = predictor.dataset_json
    ending = dataset_json["file_ending"]
    num_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {"0": None})))
    keys = trained["validation_keys"][:spec["val_cases"]] if spec["val_cases"] else trained["validation_keys"]
    images = join(nnUNet_raw, spec["dataset"], "imagesTr")
    out_dir = spec["predictions"]
    os.makedirs(out_dir, exist_ok=True)
    reader = predictor.plans_manager.image_reader_writer_class()
    seconds = []
    progress("predict", 0, len(keys))
    for i, key in enumerate(keys):
        files = [join(images, f"{key}_{c:04d}{ending}") for c in range(num_channels)]
        image, properties = reader.read_images(files)
        _synchronize(device)
        start = time.perf_counter()
        predictor.predict_single_npy_array(image, properties, None, join(out_dir, key), False)
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
        progress("predict", i + 1, len(keys))

    progress("evaluate", 0, 1)
    label_manager = predictor.plans_manager.get_label_manager(dataset_json)
    labels = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    summary_file = join(out_dir, "summary.json")
    summary = evaluate_folders(join(nnUNet_preprocessed, spec["dataset"], "gt_segmentations"), out_dir, labels,
                               summary_file, spec["tolerance"], label_manager.ignore_label, reader, ending,
                               num_processes=1, chill=True)
    progress("evaluate", 1, 1)
    return {"prediction": {"cases": keys, "seconds_per_case": float(np.median(seconds)),
                           "seconds_per_case_mean": float(np.mean(seconds)),
                           "case_seconds": [round(s, 4) for s in seconds], "mirroring": spec["mirroring"]},
            "metrics": {"foreground_mean": summary["foreground_mean"],
                        "mean": {str(k): v for k, v in summary["mean"].items()},
                        "summary_file": summary_file}}


def is_prompted(trainer_class: type) -> bool:
    """Trainers whose network takes clicks: those built with PromptedTrainerMixin."""
    return issubclass(trainer_class, PromptedTrainerMixin)


def evaluate_clicks(spec: dict, trained: dict, keys: List[str], progress: Progress) -> dict:
    """The validation cases ``keys`` with N simulated clicks per class, for each N of ``spec["clicks"]``."""
    counts = list(spec["clicks"])
    tiles = spec["click_tiles"] or paper_tiles(spec["trainer"])
    progress("clicks", 0, 1)
    start = time.perf_counter()
    results = evaluate_clicks_on_fold(trained["model_folder"], spec["fold"], counts, tiles=tiles, seed=0,
                                      device=torch.device(spec["device"]), disable_tta=not spec["mirroring"],
                                      output_folder=spec["click_predictions"], cases=keys,
                                      tolerance_mm=spec["tolerance"])
    progress("clicks", 1, 1)
    return {"tiles": tiles, "seed": 0, "cases": keys, "output_folder": spec["click_predictions"],
            "seconds": time.perf_counter() - start,
            "counts": {str(n): {"foreground_mean": results[n]["foreground_mean"],
                                "mean": {str(k): v for k, v in results[n]["mean"].items()}} for n in counts}}


def evaluate_interactions(spec: dict, trained: dict, keys: List[str], progress: Progress) -> dict:
    """The interaction protocol (``sam-nnunet interaction``) on the cases ``keys``: every first prompt kind, then
    ``interaction_rounds`` corrections; and the pretrained weights' box (zero-shot), where the encoder has them."""
    common = dict(fold=spec["fold"], cases=keys, tiles=spec["click_tiles"], device=torch.device(spec["device"]),
                  disable_tta=not spec["mirroring"])
    progress("interaction", 0, 2)
    start = time.perf_counter()
    try:
        trained_rows = evaluate_interaction(trained["model_folder"], rounds=spec["interaction_rounds"], **common)
    except ValueError as e:  # a network without boxes (SAMAdapterTrainer_prompted's clicks-only public variant)
        return {"skipped": str(e)}
    result = {"rows": trained_rows["rows"], "rounds_to_target": trained_rows["rounds_to_target"],
              "target_dice": trained_rows["target_dice"], "tiles": trained_rows["tiles"], "cases": keys,
              "seconds": round(time.perf_counter() - start, 1)}
    progress("interaction", 1, 2)
    try:
        zero = evaluate_interaction(trained["model_folder"], prompts=("box",), rounds=0, zero_shot=True, **common)
        result["rows"] += zero["rows"]
    except ValueError as e:  # random weights: no zero-shot row to give
        result["zero_shot_skipped"] = str(e)
    progress("interaction", 2, 2)
    return result


def main(spec_file: str, result_file: str, progress_file: str) -> int:
    with open(spec_file) as f:
        spec = json.load(f)
    progress = Progress(progress_file)
    configure_torch(torch.device(spec["device"]), spec["threads"])
    start = time.time()
    try:
        result = train(spec, progress)
        result.update(predict_and_evaluate(spec, result, progress))
        if result["prompted"] and spec.get("clicks"):
            result["clicks"] = evaluate_clicks(spec, result, result["prediction"]["cases"], progress)
        if result["prompted"] and spec.get("interaction_rounds"):
            result["interaction"] = evaluate_interactions(spec, result, result["prediction"]["cases"], progress)
        result["status"] = "ok"
    except BaseException as e:  # noqa: B902 - reported to the benchmark, which goes on with the next trainer
        message = e.message if isinstance(e, UserFacingExit) else f"{type(e).__name__}: {e}".strip()
        result = {"status": "failed", "error": message,
                  "traceback": traceback.format_exc()}
        traceback.print_exc()
    result["run_seconds"] = time.time() - start
    with open(result_file, "w") as f:
        json.dump(result, f, indent=2)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
