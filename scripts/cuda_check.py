#!/usr/bin/env python
"""CUDA check of nnU-Net's trainer and every sam-nnunet trainer, on a planned and preprocessed dataset.

For each trainer, in a fresh process (its memory peak and torch.compile state are its own):

1. builds the trainer through nnU-Net's API (``recursive_find_trainer_class_by_name``, the preprocessed plans, the
   device) with nnUNetv2_train's torch settings (cuDNN benchmark, one CPU thread) and nnU-Net's defaults: autocast
   (fp16) with a GradScaler, torch.compile unless the trainer or nnUNet_compile turns it off;
2. trains one epoch of ``--iterations`` iterations (+ ``--val-iterations`` validation iterations) with nnU-Net's
   ``run_training`` (data augmentation, checkpoint), and checks: every loss finite, frozen parameters bit-identical
   to what they were after initialisation, trainable parameters changed and finite. Reports the time per training
   step after ``--warmup`` steps (the first ones include torch.compile and cuDNN autotuning), peak GPU memory
   (``torch.cuda.max_memory_allocated`` over the training), the AMP loss scale, compile graphs and graph breaks;
3. predicts one validation case with ``nnUNetPredictor`` from the model folder the training wrote (the
   nnUNetv2_predict path: the network rebuilt from the folder's plans.json), twice, and times the second call;
4. for sam-nnunet networks: compares the measured peak with SAMPlanner's estimate
   (``sam_nnunet.trainers.training_memory``, fp32, traced on fake tensors) and with the same network trained
   directly on the device (two steps of ``training_memory.training_step``, fp32 and autocast).

A trainer whose run fails with torch.compile is run again with nnUNet_compile=f, and both results are reported.

Usage (nnUNet_raw and nnUNet_preprocessed set; the dataset planned with ``nnUNetv2_plan_and_preprocess -c 3d_fullres``)::

    python scripts/cuda_check.py -d 4                                       # nnUNetTrainer + every SAM trainer
    python scripts/cuda_check.py -d 4 -tr SAMAdapterTrainer --checkpoint sam_vit_b_01ec64.pth
    python scripts/cuda_check.py -d 4 --allow-random-init --encoder ZAP25DSAMTrainer=litemedsam   # no checkpoints

Models and predictions go to ``-o`` (default ``cuda_check``), never to the user's nnUNet_results; the report is
``cuda_check.json`` and ``cuda_check.md`` there. Exit status 1 if any check failed.
"""
import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from typing import Dict, List, Optional

FAILED = "FAILED"


# ---------------------------------------------------------------------------------------------------------------
# the child: one trainer
# ---------------------------------------------------------------------------------------------------------------
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(device) -> Optional[int]:
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _compile_stats() -> Dict:
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    breaks = counters.get("graph_break", {})
    return {"unique_graphs": int(counters.get("stats", {}).get("unique_graphs", 0)),
            "graph_breaks": int(sum(breaks.values())),
            "graph_break_reasons": [str(k)[:200] for k, _ in sorted(breaks.items(), key=lambda kv: -kv[1])[:3]]}


def training_setup_of(trainer):
    """SAMPlanner's description of the trainer's training step (sam_nnunet networks only)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    from sam_nnunet.trainers.training_memory import TrainingSetup

    cm = trainer.configuration_manager
    if not cm.network_arch_class_name.startswith("sam_nnunet."):
        return None  # nnU-Net's U-Net names classes to import in its kwargs; the estimator builds ours only
    ds = trainer._get_deep_supervision_scales() if trainer.enable_deep_supervision else None
    return TrainingSetup(cm.network_arch_class_name, dict(cm.network_arch_init_kwargs),
                         determine_num_input_channels(trainer.plans_manager, cm, trainer.dataset_json),
                         trainer.dataset_json["labels"], trainer.dataset_json.get("regions_class_order"),
                         bool(cm.batch_dice), [list(map(float, s)) for s in ds] if ds is not None else None)


def measure_setup(setup, patch_size, batch_size: int, device, amp: bool, steps: int = 2) -> int:
    """Peak tensor memory of ``steps`` training steps of ``setup``'s network trained directly on ``device``
    (parameters, batch, optimiser state included), above what was allocated before."""
    import torch

    from sam_nnunet.trainers.training_memory import training_step

    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    network = setup.build_network().to(device)
    network.train()
    loss = setup.build_loss()
    optimizer = setup.build_optimizer(network)
    data, target = setup.make_batch(patch_size, batch_size)
    data = data.to(device)
    target = [t.to(device) for t in target] if isinstance(target, list) else target.to(device)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    for _ in range(steps):
        if not amp:
            training_step(network, optimizer, loss, data, target)
            continue
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda"):
            value = loss(network(data), target)
        scaler.scale(value).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        scaler.step(optimizer)
        scaler.update()
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del network, optimizer, data, target, loss
    gc.collect()
    torch.cuda.empty_cache()
    return int(peak)


def train_and_check(spec: dict, result: dict) -> None:
    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from torch._dynamo import OptimizedModule

    from sam_nnunet.evaluation.benchmark_worker import configure_torch, parameter_counts
    from sam_nnunet.nnunet_prediction import unwrapped

    device = torch.device(spec["device"])
    configure_torch(device, os.cpu_count() or 1)  # as nnUNetv2_train
    trainer_class = recursive_find_trainer_class_by_name(spec["trainer"])
    preprocessed = join(nnUNet_preprocessed, spec["dataset"])
    plans = load_json(join(preprocessed, spec["plans"] + ".json"))
    plans["continue_training"] = False
    dataset_json = load_json(join(preprocessed, "dataset.json"))
    result["stage"] = "build"
    trainer = trainer_class(plans=plans, configuration=spec["configuration"], fold=spec["fold"],
                            dataset_json=dataset_json, device=device)
    trainer.num_epochs = 1
    trainer.num_iterations_per_epoch = spec["iterations"]
    trainer.num_val_iterations_per_epoch = spec["val_iterations"]
    result["stage"] = "initialize"
    start = time.perf_counter()
    trainer.initialize()
    result["initialize_seconds"] = round(time.perf_counter() - start, 2)
    network = unwrapped(trainer.network)
    result["network"] = f"{type(network).__module__}.{type(network).__name__}"
    result["parameters"] = parameter_counts(trainer.network)
    result["encoder"] = (getattr(network, "pretrained_info", None) or {}).get("encoder")
    result["pretrained_checkpoint"] = (getattr(network, "pretrained_info", None) or {}).get("checkpoint")
    result["compiled"] = isinstance(trainer.network, OptimizedModule)
    result["amp"] = trainer.grad_scaler is not None
    result["batch_size"] = int(trainer.batch_size)
    result["patch_size"] = [int(p) for p in trainer.configuration_manager.patch_size]
    frozen = {n: p.detach().cpu().clone() for n, p in network.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().cpu().clone() for n, p in network.named_parameters() if p.requires_grad}

    losses, seconds = [], []
    original_step = trainer.train_step

    def timed_step(batch):
        _sync(device)
        t = time.perf_counter()
        out = original_step(batch)
        _sync(device)
        seconds.append(time.perf_counter() - t)
        losses.append(float(np.asarray(out["loss"])))
        return out

    trainer.train_step = timed_step
    result["stage"] = "train"
    _reset_peak(device)
    start = time.perf_counter()
    trainer.run_training()
    result["train_seconds"] = round(time.perf_counter() - start, 2)
    result["peak_allocated_bytes"] = _peak(device)
    if device.type == "cuda":
        result["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
    timed = seconds[spec["warmup"]:] or seconds
    result["step_seconds"] = [round(s, 4) for s in seconds]
    result["first_step_seconds"] = round(seconds[0], 3)
    result["seconds_per_iteration"] = float(np.median(timed))
    result["losses"] = [round(x, 5) for x in losses]
    result["loss_scale"] = float(trainer.grad_scaler.get_scale()) if trainer.grad_scaler is not None else None
    result["compile_stats"] = _compile_stats() if result["compiled"] else {}

    params = dict(network.named_parameters())
    changed_frozen = [n for n, v in frozen.items() if not torch.equal(v, params[n].detach().cpu())]
    unchanged_trainable = [n for n, v in trainable.items() if torch.equal(v, params[n].detach().cpu())]
    nonfinite = [n for n, p in params.items() if not torch.isfinite(p.detach()).all()]
    checks = {
        "losses_finite": bool(np.all(np.isfinite(losses))) and len(losses) == spec["iterations"],
        "frozen_bit_identical": not changed_frozen,
        "trainable_updated": len(unchanged_trainable) < len(trainable),
        "parameters_finite": not nonfinite,
    }
    result["checks"] = checks
    result["frozen_parameters_changed"] = changed_frozen[:10]
    result["trainable_tensors_unchanged"] = f"{len(unchanged_trainable)} of {len(trainable)}"
    result["nonfinite_parameters"] = nonfinite[:10]
    result["model_folder"] = trainer.output_folder_base
    result["validation_keys"] = list(trainer.do_split()[1])
    try:
        result["setup"] = training_setup_of(trainer)
    except Exception as e:  # noqa: BLE001 - reported, the other checks go on
        result["setup"], result["estimate_error"] = None, f"{type(e).__name__}: {e}"
    del trainer, network, params, frozen, trainable
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def predict_one(spec: dict, result: dict) -> None:
    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.paths import nnUNet_raw

    from sam_nnunet.nnunet_checkpoint import SafeCheckpointPredictor

    result["stage"] = "predict"
    device = torch.device(spec["device"])
    predictor = SafeCheckpointPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                        perform_everything_on_device=device.type == "cuda", device=device,
                                        verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(result["model_folder"], use_folds=(spec["fold"],),
                                                   checkpoint_name="checkpoint_final.pth")
    dataset_json = predictor.dataset_json
    key = result["validation_keys"][0]
    channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {"0": None})))
    files = [join(nnUNet_raw, spec["dataset"], "imagesTr", f"{key}_{c:04d}{dataset_json['file_ending']}")
             for c in range(channels)]
    image, properties = predictor.plans_manager.image_reader_writer_class().read_images(files)
    times = []
    for _ in range(2):  # the first call includes cuDNN autotuning
        _sync(device)
        t = time.perf_counter()
        segmentation = predictor.predict_single_npy_array(image, properties, None, None, False)
        _sync(device)
        times.append(time.perf_counter() - t)
    labels = {int(v) for v in dataset_json["labels"].values() if isinstance(v, int)}
    found = sorted(int(v) for v in np.unique(segmentation))
    result["prediction"] = {"case": key, "seconds": round(times[1], 4), "first_seconds": round(times[0], 4),
                            "shape_ok": tuple(segmentation.shape) == tuple(image.shape[1:]), "labels": found}
    result["checks"]["prediction_ok"] = result["prediction"]["shape_ok"] and set(found) <= labels
    del predictor
    gc.collect()


def compare_with_estimate(spec: dict, result: dict) -> None:
    import torch

    from sam_nnunet.trainers.training_memory import TrainingMemoryEstimator, TrainingSetup

    setup = result.pop("setup", None)
    if setup is None:
        return
    result["stage"] = "memory estimate"
    device = torch.device(spec["device"])
    patch, batch = result["patch_size"], result["batch_size"]
    memory = {}
    try:
        memory["estimate_fp32_bytes"] = TrainingMemoryEstimator(setup)(patch, batch).peak_bytes
    except Exception as e:  # noqa: BLE001
        memory["estimate_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    if device.type == "cuda" and spec["memory_check"]:
        for amp in (False, True):
            name = "direct_amp_bytes" if amp else "direct_fp32_bytes"
            try:
                memory[name] = measure_setup(TrainingSetup(**vars(setup)), patch, batch, device, amp)
            except Exception as e:  # noqa: BLE001
                memory[name + "_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    result["memory"] = memory


def child_main(spec_file: str, result_file: str) -> int:
    with open(spec_file) as f:
        spec = json.load(f)
    result = {"trainer": spec["trainer"], "compile_env": os.environ.get("nnUNet_compile"), "checks": {}}
    try:
        train_and_check(spec, result)
        predict_one(spec, result)
        compare_with_estimate(spec, result)
        result["status"] = "ok" if all(result["checks"].values()) else FAILED
    except BaseException as e:  # noqa: B902 - written to the report; the parent goes on with the next trainer
        result["status"] = FAILED
        result["error"] = f"{type(e).__name__}: {e}".strip()[:2000]
        result["traceback"] = traceback.format_exc()[-6000:]
        traceback.print_exc()
    result.pop("setup", None)
    with open(result_file, "w") as f:
        json.dump(result, f, indent=2)
    return 0 if result["status"] == "ok" else 1


# ---------------------------------------------------------------------------------------------------------------
# the parent: every trainer, the report
# ---------------------------------------------------------------------------------------------------------------
def default_trainers() -> List[str]:
    import sam_nnunet.trainers as trainers

    return ["nnUNetTrainer"] + [n for n in trainers.__all__ if n != "SAMTrainerBase"]


def child_environment(args, trainer: str, results_dir: str, compile_off: bool) -> Dict[str, str]:
    from sam_nnunet import settings
    from sam_nnunet.evaluation.benchmark import parse_per_trainer
    from sam_nnunet.nnunet_env import required_environment

    env = dict(os.environ)
    env.update(required_environment())
    env["nnUNet_results"] = results_dir
    env["PYTHONUNBUFFERED"] = "1"
    for var in (settings.NUM_EPOCHS, settings.ITERATIONS_PER_EPOCH):
        env.pop(var, None)
    for var, values in ((settings.ENCODER, args.encoder), (settings.CHECKPOINT, args.checkpoint)):
        chosen = parse_per_trainer(values, var)
        value = chosen.get(trainer, chosen.get("*"))
        if value:
            env[var] = os.path.abspath(value) if var == settings.CHECKPOINT else value
    if args.allow_random_init:
        env[settings.ALLOW_RANDOM_INIT] = "1"
    if compile_off:
        env["nnUNet_compile"] = "f"
    return env


def run_child(args, trainer: str, compile_off: bool) -> dict:
    out = os.path.abspath(args.output)
    tag = f"{trainer}{'_nocompile' if compile_off else ''}"
    run_dir = os.path.join(out, "runs", tag)
    os.makedirs(run_dir, exist_ok=True)
    spec = {"trainer": trainer, "dataset": args.dataset, "configuration": args.configuration, "plans": args.plans,
            "fold": args.fold, "device": args.device, "iterations": args.iterations,
            "val_iterations": args.val_iterations, "warmup": args.warmup, "memory_check": not args.no_memory_check}
    spec_file, result_file, log_file = (os.path.join(run_dir, n) for n in ("spec.json", "result.json", "log.txt"))
    with open(spec_file, "w") as f:
        json.dump(spec, f, indent=2)
    if os.path.exists(result_file):
        os.remove(result_file)
    results_dir = os.path.join(out, "nnUNet_results_nocompile" if compile_off else "nnUNet_results")
    start = time.time()
    with open(log_file, "w") as log:
        # a session of its own: on a timeout the data-augmentation workers go with it
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", spec_file, result_file],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=child_environment(args, trainer, results_dir, compile_off))
        try:
            proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log.write(f"\ncuda_check: stopped after --timeout {args.timeout} s\n")
    if os.path.isfile(result_file):
        with open(result_file) as f:
            result = json.load(f)
    else:
        with open(log_file) as f:
            tail = f.read()[-4000:]
        result = {"trainer": trainer, "status": FAILED, "checks": {},
                  "error": f"the check process ended with status {proc.returncode} before writing a result"
                           + (f" (stopped after --timeout {args.timeout} s)" if proc.returncode == -signal.SIGKILL
                              else ""),
                  "traceback": tail}
    result.update({"wall_seconds": round(time.time() - start, 1), "log": log_file,
                   "compile_off_requested": compile_off})
    return result


def _mb(value: Optional[float]) -> str:
    return f"{value / 2 ** 20:,.0f}" if value else "–"


def markdown_report(report: dict) -> str:
    lines = ["| trainer | encoder | status | compile | AMP | s / iteration | first step (s) | peak allocated (MiB) | "
             "estimate fp32 (MiB) | direct fp32 / AMP (MiB) | predict 1 case (s) | trainable / total params |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        memory = r.get("memory", {})
        failed = [k for k, v in r.get("checks", {}).items() if not v]
        status = "ok" if r["status"] == "ok" else f"{FAILED} ({r.get('stage', '?')}: " \
                                                  f"{', '.join(failed) or r.get('error', '')[:120]})"
        counts = r.get("parameters")
        lines.append(" | ".join([
            f"| {r['trainer']}", str(r.get("encoder") or "–"), status,
            "off (nnUNet_compile=f)" if r.get("compile_off_requested") else ("yes" if r.get("compiled") else "no"),
            "fp16 autocast + GradScaler" if r.get("amp") else "no",
            f"{r['seconds_per_iteration']:.4f}" if "seconds_per_iteration" in r else "–",
            f"{r['first_step_seconds']:.1f}" if "first_step_seconds" in r else "–",
            _mb(r.get("peak_allocated_bytes")),
            "n/a" if "estimate_error" in memory else _mb(memory.get("estimate_fp32_bytes")),
            f"{_mb(memory.get('direct_fp32_bytes'))} / {_mb(memory.get('direct_amp_bytes'))}" if memory else "–",
            f"{r['prediction']['seconds']:.3f}" if "prediction" in r else "–",
            f"{counts['trainable'] / 1e6:.2f}M / {counts['total'] / 1e6:.2f}M |" if counts else "– |"]))
    m = report["settings"]
    lines += ["", f"{m['iterations']} training iterations (+{m['val_iterations']} validation) per trainer, time per "
              f"iteration = median of the steps after the first {m['warmup']} (forward, loss, backward, optimiser "
              f"step; CUDA synchronised); device {report['device']}; torch {report['torch']}."]
    return "\n".join(lines)


def write_report(report: dict, output: str) -> str:
    with open(os.path.join(output, "cuda_check.json"), "w") as f:
        json.dump(report, f, indent=2)
    table = markdown_report(report)
    with open(os.path.join(output, "cuda_check.md"), "w") as f:
        f.write(table + "\n")
    return table


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", help="dataset name or id (planned and preprocessed)")
    p.add_argument("-tr", "--trainers", nargs="+", default=None,
                   help="default: nnUNetTrainer and every trainer in sam_nnunet.trainers.__all__")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-p", "--plans", default="nnUNetPlans")
    p.add_argument("-f", "--fold", type=int, default=0)
    p.add_argument("--iterations", type=int, default=20, help="training iterations (default 20)")
    p.add_argument("--val-iterations", type=int, default=2, help="validation iterations (default 2)")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the timing (default 3)")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--encoder", nargs="+", default=None, metavar="[TRAINER=]NAME",
                   help="nnUNet_SAM_encoder for every trainer (NAME) or one (Trainer=NAME)")
    p.add_argument("--checkpoint", nargs="+", default=None, metavar="[TRAINER=]PATH")
    p.add_argument("--allow-random-init", action="store_true",
                   help="SAM trainers without a checkpoint start from random weights (a check, not a model)")
    p.add_argument("--no-compile-fallback", action="store_true",
                   help="do not rerun a failed trainer with nnUNet_compile=f")
    p.add_argument("--no-memory-check", action="store_true",
                   help="skip training the bare network directly on the device for the estimate comparison")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds one trainer's check may take (default: no limit)")
    p.add_argument("-o", "--output", default="cuda_check")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(*args.child)
    if not args.dataset:
        p.error("-d/--dataset is required")

    import torch
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device")
    args.dataset = maybe_convert_to_dataset_name(args.dataset)
    trainers = args.trainers or default_trainers()
    report = {"settings": {k: v for k, v in vars(args).items() if k != "child"}, "trainers": trainers,
              "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "runs": []}
    os.makedirs(args.output, exist_ok=True)
    for trainer in trainers:
        result = run_child(args, trainer, compile_off=False)
        report["runs"].append(result)
        print(f"{trainer}: {result['status']} ({result['wall_seconds']} s)"
              + (f" - {result.get('error', '')[:300]}" if result["status"] != "ok" else ""), flush=True)
        compile_possible = os.environ.get("nnUNet_compile", "").lower() not in ("f", "false", "0")
        if result["status"] != "ok" and result.get("compiled", True) and compile_possible and \
                args.device.startswith("cuda") and not args.no_compile_fallback:
            retry = run_child(args, trainer, compile_off=True)
            report["runs"].append(retry)
            print(f"{trainer} with nnUNet_compile=f: {retry['status']} ({retry['wall_seconds']} s)", flush=True)
        table = write_report(report, args.output)  # after every trainer: a stopped run keeps what it measured
    print(table)
    for r in report["runs"]:
        if r["status"] != "ok":
            print(f"\n==== {r['trainer']} (nnUNet_compile={'f' if r['compile_off_requested'] else 'default'}): "
                  f"{r.get('error', '')}\n{r.get('traceback', '')[-3000:]}")
    return 0 if all(r["status"] == "ok" for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
