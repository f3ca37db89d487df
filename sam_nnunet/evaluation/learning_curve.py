"""``sam-nnunet learning-curve``: accuracy against the number of training cases, every trainer on the same
wall-clock budget, through nnU-Net's own command line; resumable across sessions.

For each (training-set size, seed) a raw nnU-Net dataset holding exactly those training cases is written (links to
the source's files) and planned with ``nnUNetv2_plan_and_preprocess``: nnU-Net configures itself on the cases it is
given, as for a user with that many annotations. Each trainer then runs ``nnUNetv2_train D 3d_fullres all -tr T``
with ``nnUNet_SAM_time_budget_seconds`` (trainers.budget), the test images are predicted with ``nnUNetv2_predict``
(prompted trainers also with ``sam-nnunet predict-prompted --simulate-clicks N``) and scored with
``sam-nnunet evaluate``. Each training gives two readings (trainers.budget): the budget counted from the first
iteration (set-up, e.g. the embedding-cache build, timed beside it) and counted with the set-up.

Test set: a folder with imagesTs + labelsTs, or by default ``num_test`` cases drawn with ``test_seed`` from the
source's labelled cases; those are then left out of every dataset written. Training subsets are nested: one seeded
order of the remaining cases per seed, the first n cases for size n.

Everything nnU-Net writes lives under ``work_dir`` (its own nnUNet_raw / _preprocessed / _results). The results JSON
is rewritten atomically after every run (the file it replaces kept as ``.bak``) and a run already in it is not
redone, so a long curve is completed across sessions by running the same command again; the Markdown table and the
chart beside the JSON follow each rewrite. Before any work: trainer and encoder names are resolved, and an
unreadable results JSON stops the command (evaluation.results_file).
"""
import datetime
import json
import os
import random
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from sam_nnunet import settings
from sam_nnunet.commands import run_command
from sam_nnunet.evaluation.curve_outputs import markdown_table, write_chart, write_outputs  # noqa: F401 (API)
from sam_nnunet.evaluation.machine import describe_machine, machine_line
from sam_nnunet.evaluation.plans_rows import (DEFAULT_PLANS, check_spacing, display_suffix, held_out, key_suffix,
                                              parse_row, planning_arguments, plans_identifier, row_plans)
from sam_nnunet.evaluation.prompted import paper_tiles
from sam_nnunet.evaluation.results_file import read_results, write_results
from sam_nnunet.evaluation.trainer_names import resolve_budget_trainer, resolve_encoder
from sam_nnunet.metrics.evaluate import evaluate
from sam_nnunet.nnunet_env import required_environment
from sam_nnunet.trainers.budget import RECORD_FILE
from sam_nnunet.trainers.checkpoints import atomic_write
from sam_nnunet.trainers.prompted import PromptedTrainerMixin
from sam_nnunet.trainers.registry import find_trainer_class

BASELINE = "nnUNetTrainerShortRun"  # nnUNetTrainer + the budget (trainers.short_run); shown as nnUNetTrainer
DEFAULT_TRAINERS = (BASELINE, "ZAP25DSAMTrainer:litemedsam", "ZAP25DSAMTrainer_prompted:litemedsam")
OVERRIDE_PLANS = "LearningCurvePlans"
FIRST_DATASET_ID = 600


@dataclass
class CurveSettings:
    source: str                           # an MSD task folder, or an nnU-Net dataset id / name (in $nnUNet_raw)
    output: str = "documentation/learning_curve/learning_curve.json"
    work_dir: str = "learning_curve_work"
    test_folder: Optional[str] = None     # holds imagesTs + labelsTs (nnU-Net naming); default: held out
    num_test: Optional[int] = None        # held out (default 40); with test_folder: left out of training, not scored
    test_seed: int = 0
    sizes: List[str] = field(default_factory=lambda: ["10", "25", "all"])
    trainers: List[str] = field(default_factory=lambda: list(DEFAULT_TRAINERS))  # TRAINER[@PLANS][:ENCODER]
    target_spacing: Optional[List[float]] = None  # every row's plans at this 3d_fullres spacing (plans_rows)
    budget_seconds: float = 1200.0
    seeds: List[int] = field(default_factory=lambda: [0])
    clicks: List[int] = field(default_factory=lambda: [0, 1, 3])  # prompted trainers; 0 = automatic
    configuration: str = "3d_fullres"
    configuration_override: Optional[Dict] = None  # entries of the configuration (e.g. batch_size) -> own plans
    device: str = "cpu"
    disable_tta: bool = False
    cache_copies: Optional[int] = None    # nnUNet_SAM_cache_copies for the ZAP trainers (default: theirs)
    cache_build_first: bool = False       # nnUNet_SAM_cache_build_first: the cache's build outside the budget
    checkpoint: Optional[str] = None      # nnUNet_SAM_checkpoint for the SAM trainers
    allow_random_init: bool = False
    tolerance: float = 5.0
    click_tiles: Optional[str] = None     # default: each prompted trainer's paper protocol
    processes: int = 2
    prediction_processes: int = 1         # nnUNetv2_predict -npp/-nps; 0 = its sequential predictor (no workers)

    def check(self) -> "CurveSettings":
        if not self.sizes or not self.trainers or not self.seeds:
            raise ValueError("give at least one size, trainer and seed")
        for n in self.sizes:
            if n != "all" and (not str(n).isdigit() or int(n) < 1):
                raise ValueError(f"size {n!r}: a number of training cases >= 1, or 'all'")
        if self.prediction_processes < 0:
            raise ValueError("--prediction-processes must be 0 (no worker processes) or more")
        if self.budget_seconds <= 0:
            raise ValueError("--budget must be positive (seconds)")
        if any(c < 0 for c in self.clicks) or not self.clicks:
            raise ValueError("--clicks takes click counts >= 0 (0 = automatic)")
        if self.test_folder is None and self.num_test is None:
            self.num_test = 40
        if self.num_test is not None and self.num_test < 1:
            raise ValueError("--num-test must be at least 1")
        self.target_spacing = check_spacing(self.target_spacing)
        for spec in self.trainers:
            parse_row(spec)
        self.clicks = sorted(set(self.clicks))
        return self


# ---- cases and datasets --------------------------------------------------------------------------------------------
def _labelled_cases(folder: str, ending: str) -> List[str]:
    labels = os.path.join(folder, "labelsTr")
    return sorted(f[:-len(ending)] for f in os.listdir(labels) if f.endswith(ending) and not f.startswith("."))


def resolve_source(s: CurveSettings, env: Dict[str, str], log: str) -> str:
    """The source's nnU-Net raw folder: an MSD task folder converted once into the work folder, else the dataset
    ``s.source`` in the caller's nnUNet_raw."""
    if os.path.isfile(os.path.join(s.source, "dataset.json")) and re.match(r"Task\d+_", os.path.basename(
            os.path.normpath(s.source))):
        task = os.path.basename(os.path.normpath(s.source))
        number, name = task[4:].split("_", 1)
        target = os.path.join(env["nnUNet_raw"], f"Dataset{int(number):03d}_{name}")
        if not os.path.isfile(os.path.join(target, "dataset.json")):
            run_command(["nnUNetv2_convert_MSD_dataset", "-i", os.path.abspath(s.source), "-np", s.processes], env, log)
        return target
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise ValueError(f"{s.source!r} is not an MSD task folder (TaskXX_Name with dataset.json), and nnUNet_raw is "
                         f"not set to look it up as an nnU-Net dataset")
    wanted = f"Dataset{int(s.source):03d}_" if str(s.source).isdigit() else str(s.source)
    found = sorted(d for d in os.listdir(raw) if d == wanted or (wanted.endswith("_") and d.startswith(wanted)))
    if len(found) != 1:
        raise ValueError(f"no single nnU-Net dataset {s.source!r} in {raw} (found: {found or 'none'})")
    return os.path.join(raw, found[0])


def choose_test_set(s: CurveSettings, source: str, ending: str, work: str) -> Tuple[str, List[str], List[str]]:
    """(folder with imagesTs + labelsTs, test cases, cases left for training)."""
    cases = _labelled_cases(source, ending)
    if s.test_folder:
        folder = os.path.abspath(s.test_folder)
        for sub in ("imagesTs", "labelsTs"):
            if not os.path.isdir(os.path.join(folder, sub)):
                raise ValueError(f"the test folder {folder} has no {sub}/ (nnU-Net naming: CASE_0000{ending}, "
                                 f"CASE{ending})")
        test = sorted(f[:-len(ending)] for f in os.listdir(os.path.join(folder, "labelsTs")) if f.endswith(ending))
        _check_test_pairs(folder, test, ending)
        # --num-test beside it: the held-out cases stay out of training, so the runs are those of the command
        # without --test-folder, scored on this folder
        pool = [c for c in cases if c not in set(held_out(cases, s.num_test, s.test_seed))] \
            if s.num_test is not None else cases
        both = sorted(set(test) & set(pool))
        if both:
            raise ValueError(f"test cases are also training cases of {source}: {both[:5]}")
        return folder, test, pool
    test = held_out(cases, s.num_test, s.test_seed)
    folder = os.path.join(work, f"test_seed{s.test_seed}_n{s.num_test}")
    channels = _channels(source)
    for case in test:
        _link(os.path.join(source, "labelsTr", case + ending), os.path.join(folder, "labelsTs", case + ending))
        for c in range(channels):
            name = f"{case}_{c:04d}{ending}"
            _link(os.path.join(source, "imagesTr", name), os.path.join(folder, "imagesTs", name))
    return folder, test, [c for c in cases if c not in set(test)]


def _check_test_pairs(folder: str, labelled: List[str], ending: str) -> None:
    """Every test image has its label and every label its image: a test set that shrinks without a word measures
    other cases than the user chose."""
    images = {f[:-len(ending)].rsplit("_", 1)[0] for f in os.listdir(os.path.join(folder, "imagesTs"))
              if f.endswith(ending) and re.search(r"_\d{4}$", f[:-len(ending)])}
    for missing, have, lack in ((sorted(images - set(labelled)), "imagesTs", "labelsTs"),
                                (sorted(set(labelled) - images), "labelsTs", "imagesTs")):
        if missing:
            shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
            raise ValueError(f"the test folder {folder}: {lack}/ lacks {len(missing)} case(s) that {have}/ holds: "
                             f"{shown}; add them (CASE{ending} / CASE_0000{ending}), or remove them from {have}/")


def _channels(raw: str) -> int:
    with open(os.path.join(raw, "dataset.json")) as f:
        meta = json.load(f)
    return len(meta.get("channel_names", meta.get("modality", {"0": None})))


def _link(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not os.path.lexists(dst):
        os.symlink(os.path.realpath(src), dst)


def training_subsets(pool: Sequence[str], sizes: Sequence[str], seed: int) -> Dict[int, List[str]]:
    """{n: cases}: nested subsets, the first n cases of one order of ``pool`` drawn with ``seed``."""
    order = sorted(pool)
    random.Random(seed).shuffle(order)
    subsets = {}
    for size in sizes:
        n = len(order) if size == "all" else int(size)
        if n > len(order):
            raise ValueError(f"size {n}: only {len(order)} cases are left for training")
        subsets[n] = sorted(order[:n])
    return subsets


def prepare_dataset(s: CurveSettings, source: str, cases: List[str], n: int, seed: int, env: Dict[str, str],
                    work: str, log: str, preset: str = DEFAULT_PLANS) -> Tuple[str, str]:
    """(dataset name, plans name) of the raw dataset holding exactly ``cases``, planned (with ``preset``'s planner,
    at ``s.target_spacing``) and preprocessed (once per plans)."""
    registry_file = os.path.join(work, "datasets.json")
    registry = read_results(registry_file) or {}
    key = f"n{n}_seed{seed}"
    entry = registry.get(key)
    if entry is not None and entry["cases"] != cases:
        raise ValueError(f"{work} holds another dataset {key} (other cases); use another --work-dir")
    if entry is None:
        used = {int(d[7:10]) for d in os.listdir(env["nnUNet_raw"]) if re.match(r"Dataset\d{3}_", d)}
        used |= {e["id"] for e in registry.values()}
        dataset_id = next(i for i in range(FIRST_DATASET_ID, 1000) if i not in used)
        entry = {"id": dataset_id, "name": f"Dataset{dataset_id:03d}_LC{n}s{seed}", "cases": cases}
        registry[key] = entry
        write_results(registry_file, registry)
    base = plans_identifier(preset, s.target_spacing)
    name = entry["name"]
    plans = (OVERRIDE_PLANS if base == DEFAULT_PLANS else f"{base}_{OVERRIDE_PLANS}") if s.configuration_override \
        else base
    preprocessed = os.path.join(env["nnUNet_preprocessed"], name)
    done_marker = os.path.join(preprocessed, f"learning_curve_{plans}.done")
    if os.path.isfile(done_marker):
        return name, plans
    with open(os.path.join(source, "dataset.json")) as f:
        meta = json.load(f)
    ending, raw = meta["file_ending"], os.path.join(env["nnUNet_raw"], name)
    for case in cases:
        _link(os.path.join(source, "labelsTr", case + ending), os.path.join(raw, "labelsTr", case + ending))
        for c in range(_channels(source)):
            _link(os.path.join(source, "imagesTr", f"{case}_{c:04d}{ending}"),
                  os.path.join(raw, "imagesTr", f"{case}_{c:04d}{ending}"))
    meta.update({"numTraining": len(cases), "name": name})
    for key in ("training", "test"):  # MSD's case lists name every case of the task
        meta.pop(key, None)
    _atomic_json(os.path.join(raw, "dataset.json"), meta)
    # nnUNet_n_proc_DA=0 (in-process augmentation) is for nnUNetv2_train: nnU-Net's planner passes the variable to
    # torch.set_num_threads, which refuses 0
    plan_env = {k: v for k, v in env.items() if not (k == "nnUNet_n_proc_DA" and v.strip() == "0")}
    run_command(["nnUNetv2_plan_and_preprocess", "-d", entry["id"], "-c", s.configuration, "-np", s.processes, "-npfp",
                 s.processes, "--verify_dataset_integrity", *planning_arguments(preset, s.target_spacing)], plan_env,
                log)
    if s.configuration_override:  # a copy of nnU-Net's plans, edited as a user would, preprocessed again
        with open(os.path.join(preprocessed, base + ".json")) as f:
            plan = json.load(f)
        plan["plans_name"] = plans
        plan["configurations"][s.configuration].update(
            {**s.configuration_override, "data_identifier": f"{plans}_{s.configuration}"})
        _atomic_json(os.path.join(preprocessed, plans + ".json"), plan)
        run_command(["nnUNetv2_preprocess", "-d", entry["id"], "-plans_name", plans, "-c", s.configuration, "-np",
                     s.processes], plan_env, log)
    open(done_marker, "w").close()
    return name, plans


# ---- one run -------------------------------------------------------------------------------------------------------
def trainer_spec(spec: str) -> Tuple[str, Optional[str]]:
    row = parse_row(spec)  # TRAINER[@PLANS][:ENCODER]: the plans are row_plans(spec)
    return row.trainer, row.encoder


def display_name(trainer: str) -> str:
    return "nnUNetTrainer" if trainer == BASELINE else trainer


def is_prompted(trainer: str) -> bool:
    cls = find_trainer_class(trainer)
    return cls is not None and issubclass(cls, PromptedTrainerMixin)


def cache_variant(s: CurveSettings, trainer: str) -> str:
    """'' for a SAM trainer's own embedding cache (and for nnUNetTrainer, which has none), else what was asked
    (``cache1-first``): another training, with its own key, run folder and nnUNet_results."""
    if trainer == BASELINE or (s.cache_copies is None and not s.cache_build_first):
        return ""
    return f"cache{'default' if s.cache_copies is None else s.cache_copies}{'-first' if s.cache_build_first else ''}"


def run_key(trainer: str, encoder: Optional[str], n: int, seed: int, clicks: int, budget: float,
            variant: str = "") -> str:
    return f"{trainer}|{encoder or '-'}|n{n}|seed{seed}|clicks{clicks}|budget{budget:g}" + \
        (f"|{variant}" if variant else "")


def train(s: CurveSettings, trainer: str, encoder: Optional[str], dataset: str, plans: str, env: Dict[str, str],
          log: str, seed: Optional[int] = None) -> Dict:
    """nnUNetv2_train ... all with the budget (once: a finished training, checkpoint and budget record, is kept);
    ``seed`` (the curve's, which also drew the training cases) seeds the training (nnUNet_SAM_seed)."""
    model = os.path.join(env["nnUNet_results"], dataset, f"{trainer}__{plans}__{s.configuration}")
    fold = os.path.join(model, "fold_all")
    record_file = os.path.join(fold, RECORD_FILE)
    record = _load(record_file)
    done = record is not None and record.get("budget_seconds") == s.budget_seconds and \
        os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))
    train_env = dict(env, **{settings.TIME_BUDGET_SECONDS: repr(float(s.budget_seconds))})
    for var in (settings.NUM_EPOCHS, settings.ITERATIONS_PER_EPOCH, settings.ENCODER, settings.CHECKPOINT):
        train_env.pop(var, None)  # the budget is the only limit; the encoder is the run's
    if encoder:
        train_env[settings.ENCODER] = encoder
    if seed is not None:
        train_env[settings.SEED] = str(seed)
    if s.checkpoint and trainer != BASELINE:
        train_env[settings.CHECKPOINT] = os.path.abspath(s.checkpoint)
    if s.allow_random_init:
        train_env[settings.ALLOW_RANDOM_INIT] = "1"
    if s.cache_copies is not None:
        train_env[settings.CACHE_COPIES] = str(s.cache_copies)
    if s.cache_build_first:
        train_env[settings.CACHE_BUILD_FIRST] = "1"
    wall, load = None, os.getloadavg()
    if not done:
        wall = run_command(["nnUNetv2_train", dataset.split("_")[0][7:], s.configuration, "all", "-tr", trainer,
                            "-p", plans, "-device", s.device], train_env, log)
        record = _load(record_file)
        if record is None:
            raise RuntimeError(f"{trainer} wrote no {RECORD_FILE}: was it trained with the time budget? See {log}")
    # at the end too: its 15-minute figure covers most of a 20-minute budget (the start's only what ran before)
    load_after = list(os.getloadavg()) if not done else None
    with open(os.path.join(model, "plans.json")) as f:
        arch = json.load(f)["configurations"][s.configuration]["architecture"]
    return {"model": model, "record": record, "wall_seconds": wall, "load_average": list(load),
            "load_average_after": load_after,
            "encoder": arch.get("arch_kwargs", {}).get("encoder") if trainer != BASELINE else None}


def predict_and_score(s: CurveSettings, trainer: str, trained: Dict, dataset: str, plans: str, test_folder: str,
                      clicks: int, checkpoint: str, out: str, env: Dict[str, str], log: str) -> Dict:
    """Predict the test images with one checkpoint (automatic, or N simulated clicks) and score them."""
    images, labels = os.path.join(test_folder, "imagesTs"), os.path.join(test_folder, "labelsTs")
    tta = ["--disable_tta"] if s.disable_tta else []
    start = time.time()
    if clicks == 0:
        run_command(["nnUNetv2_predict", "-i", images, "-o", out, "-d", dataset.split("_")[0][7:], "-c",
                     s.configuration, "-p", plans, "-tr", trainer, "-f", "all", "-chk", checkpoint, "-device", s.device,
                     "-npp", s.prediction_processes, "-nps", s.prediction_processes, *tta], env, log)
    else:
        run_command(["sam-nnunet", "predict-prompted", "-i", images, "-o", out, "-m", trained["model"], "-f", "all",
                     "--simulate-clicks", clicks, "--reference", labels, "--tiles",
                     s.click_tiles or paper_tiles(trainer), "-device", s.device, "-chk", checkpoint, "-npp", 1, *tta],
                    env, log)
    predict_seconds = time.time() - start
    # what `sam-nnunet evaluate -ref LABELS -pred OUT -djfile ... -pfile ...` does, in this process (the command's
    # start-up would cost as much as the scoring)
    summary = evaluate(labels, out, os.path.join(out, "summary.json"), None, s.tolerance,
                       os.path.join(trained["model"], "dataset.json"), os.path.join(trained["model"], "plans.json"))
    summary = json.loads(json.dumps(summary, default=str))  # label keys as in summary.json
    per_label = {str(k): v for k, v in summary["mean"].items() if str(k) not in ("0", "background")}
    return {"dice": {k: v["Dice"] for k, v in per_label.items()}, "nsd": {k: v["NSD"] for k, v in per_label.items()},
            "hd95": {k: v["HD95"] for k, v in per_label.items()},
            "foreground_dice": summary["foreground_mean"]["Dice"], "predict_seconds": round(predict_seconds, 1),
            "predictions": out}


SAME_READING_FRACTION = 0.01  # with-set-up checkpoint this close to the final one (in iterations): not re-predicted


def same_reading(iterations: int, with_setup: Dict) -> bool:
    """Whether the set-up-counted reading is scored with the final checkpoint's predictions: the whole training
    fitted into the budget counted with its set-up, both clocks ran out in the same iteration, or the set-up cost
    at most 1 % of the iterations (a few seconds of a 20-minute budget: predicting the test set again, ~15 min per
    click count for a prompted ZAP on 2 cores, would measure one iteration's noise, not the set-up's cost)."""
    if with_setup.get("checkpoint") == "checkpoint_final.pth":
        return True
    reached = with_setup.get("iterations")
    return reached is not None and reached > 0 and iterations - reached <= SAME_READING_FRACTION * iterations


def run_training_and_readings(s: CurveSettings, spec: str, n: int, seed: int, cases: List[str], dataset: str,
                              plans: str, test_folder: str, todo: List[int], env: Dict[str, str],
                              work: str) -> List[Dict]:
    """One training and its entries: one per click count in ``todo``."""
    trainer, encoder = trainer_spec(spec)
    variant, preset = cache_variant(s, trainer), row_plans(spec)
    plans_tag = key_suffix(preset, s.target_spacing)[1:]
    name = f"{trainer}{'@' + plans_tag if plans_tag else ''}{'_' + encoder if encoder else ''}_n{n}_seed{seed}" \
           f"{'_' + variant if variant else ''}"
    run_dir = os.path.join(work, "runs", name)
    log = os.path.join(run_dir, "log.txt")
    if variant:  # nnU-Net names a model folder by trainer and plans only: another cache setting trains elsewhere
        env = dict(env, nnUNet_results=f"{env['nnUNet_results']}_{variant}")
        os.makedirs(env["nnUNet_results"], exist_ok=True)
    trained = train(s, trainer, encoder, dataset, plans, env, log, seed)
    record = trained["record"]
    with_setup = record.get("with_setup") or {}
    entries = []
    for clicks in todo:
        final = predict_and_score(s, trainer, trained, dataset, plans, test_folder, clicks, "checkpoint_final.pth",
                                  os.path.join(run_dir, f"clicks{clicks}_final"), env, log)
        if same_reading(record["iterations"], with_setup):
            second = final
        elif with_setup.get("checkpoint"):
            second = predict_and_score(s, trainer, trained, dataset, plans, test_folder, clicks,
                                       with_setup["checkpoint"], os.path.join(run_dir, f"clicks{clicks}_with_setup"),
                                       env, log)
        else:
            second = None
        entries.append({
            "key": run_key(trainer, encoder, n, seed, clicks, s.budget_seconds, variant) +
                   key_suffix(preset, s.target_spacing),
            "cache": variant or None, "plans_preset": preset, "target_spacing": s.target_spacing,
            "trainer": display_name(trainer) + display_suffix(preset), "nnunet_trainer": trainer,
            "encoder": trained["encoder"] or encoder,
            "n_train": n, "seed": seed, "budget_seconds": s.budget_seconds, "clicks": clicks,
            "iterations": record["iterations"], "stopped_by_budget": record.get("stopped_by_budget"),
            "dice": final["dice"], "nsd": final["nsd"], "hd95": final["hd95"],
            "foreground_dice": final["foreground_dice"],
            "wall_seconds": trained["wall_seconds"], "training_seconds": record.get("seconds"),
            "setup_seconds": record.get("setup_seconds"), "cache_build_seconds": record.get("loader_setup_seconds"),
            "with_setup": None if second is None else {
                "iterations": with_setup.get("iterations"), "checkpoint": with_setup.get("checkpoint"),
                "scored": "checkpoint_final.pth" if second is final else with_setup.get("checkpoint"),
                "dice": second["dice"], "nsd": second["nsd"], "hd95": second["hd95"],
                "foreground_dice": second["foreground_dice"]},
            "predict_seconds": final["predict_seconds"], "load_average": trained["load_average"],
            "load_average_after_training": trained["load_average_after"],
            "dataset": dataset, "plans": plans, "training_cases": cases, "log": log,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
    return entries


# ---- the curve -----------------------------------------------------------------------------------------------------
def run_curve(s: CurveSettings) -> Dict:
    """Run every (trainer, size, seed) not yet in ``s.output``; returns the results (also written beside it)."""
    s.check()
    for spec in s.trainers:  # before anything is planned or preprocessed
        trainer, encoder = trainer_spec(spec)
        cls = resolve_budget_trainer(trainer)
        if encoder:
            resolve_encoder(trainer, cls, encoder)
    previous = read_results(s.output)  # an unreadable results file stops here, not after the first run
    read_results(os.path.join(os.path.abspath(s.work_dir), "datasets.json"))
    work = os.path.abspath(s.work_dir)
    # the runs' settings are the tool's, not stray ones of the caller; the memory check's skip changes no result
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_SAM_") or k == settings.SKIP_MEMORY_CHECK}
    env.update(required_environment(os.path.join(work, "nnunet")))
    env.setdefault("nnUNet_def_n_proc", str(s.processes))
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key], exist_ok=True)
    log = os.path.join(work, "prepare.log")
    source = resolve_source(s, env, log)
    with open(os.path.join(source, "dataset.json")) as f:
        ending = json.load(f)["file_ending"]
    test_folder, test_cases, pool = choose_test_set(s, source, ending, work)

    result = previous or {"runs": []}
    if result.get("test_cases") not in (None, test_cases):
        raise ValueError(f"{s.output} holds runs on another test set; give another --output")
    if result["runs"] and (result.get("settings") or {}).get("target_spacing") != s.target_spacing:
        raise ValueError(f"{s.output} holds runs planned at another target spacing "
                         f"({(result.get('settings') or {}).get('target_spacing') or 'the plans own'}); give "
                         f"another --output")
    machine = describe_machine()
    if result["runs"] and result.get("machine") and hardware(result["machine"]) != hardware(machine):
        raise ValueError(f"{s.output} holds runs measured on {machine_line(result['machine'])}, this is "
                         f"{machine_line(machine)}: the same budget in seconds is other compute on other hardware, "
                         f"so the runs would not be comparable; give another --output for this machine")
    result.update({"description": "sam-nnunet learning-curve: test-set accuracy against training cases, equal "
                                  "wall-clock budget per run (documentation/learning_curve.md)",
                   "source": os.path.abspath(source), "test_folder": test_folder, "test_cases": test_cases,
                   "test_selection": ("folder" if s.test_folder else f"held out: {s.num_test} cases, seed "
                                                                     f"{s.test_seed}") +
                   (f" ({s.num_test} cases, seed {s.test_seed}, left out of training)"
                    if s.test_folder and s.num_test is not None else ""),
                   "settings": asdict(s), "machine": machine, "load_average": list(os.getloadavg()),
                   "command": command_line(s), "failures": []})
    result["commit"] = result["machine"]["versions"].get("sam-nnunet commit")
    done = {r["key"] for r in result["runs"]}
    for seed in s.seeds:
        subsets = training_subsets(pool, s.sizes, seed)
        for n, cases in subsets.items():
            for spec in s.trainers:
                trainer, encoder = trainer_spec(spec)
                counts = s.clicks if is_prompted(trainer) else [0]
                todo = [c for c in counts if run_key(trainer, encoder, n, seed, c, s.budget_seconds,
                                                     cache_variant(s, trainer)) +
                        key_suffix(row_plans(spec), s.target_spacing) not in done]
                if not todo:
                    continue
                print(f"learning-curve: {display_name(trainer)}{display_suffix(row_plans(spec))} {encoder or ''} "
                      f"n={n} seed={seed} clicks={todo}", flush=True)
                try:
                    dataset, plans = prepare_dataset(s, source, cases, n, seed, env, work, log, row_plans(spec))
                    entries = run_training_and_readings(s, spec, n, seed, cases, dataset, plans, test_folder, todo,
                                                        env, work)
                    for e in entries:  # with each run: what it ran on (a file holds one machine's runs)
                        e.update(machine=f"{machine['cpu']}, {machine['usable_cores']} cores",
                                 commit=machine["versions"].get("sam-nnunet commit"))
                except (RuntimeError, ValueError) as e:
                    result["failures"].append({"trainer": spec, "n_train": n, "seed": seed, "error": str(e)[:3000]})
                    print(f"learning-curve: FAILED: {e}", file=sys.stderr, flush=True)
                    write_outputs(result, s.output)
                    continue
                result["runs"].extend(entries)
                done.update(e["key"] for e in entries)
                write_outputs(result, s.output)
    write_outputs(result, s.output)
    return result


def hardware(machine: Dict) -> Tuple:
    """What a wall-clock budget buys: the CPU model, its usable cores, the GPU."""
    return machine.get("cpu"), machine.get("usable_cores"), (machine.get("gpu") or {}).get("name")


def command_line(s: CurveSettings) -> str:
    args = [s.source, "--sizes", *s.sizes, "--trainers", *s.trainers, "--budget", f"{s.budget_seconds:g}",
            "--seeds", *map(str, s.seeds), "--clicks", *map(str, s.clicks), "-o", s.output, "--work-dir", s.work_dir]
    args += ["--test-folder", s.test_folder] if s.test_folder else []
    if s.num_test is not None:
        args += ["--num-test", str(s.num_test), "--test-seed", str(s.test_seed)]
    if s.target_spacing:
        args += ["--target-spacing", *[f"{v:g}" for v in s.target_spacing]]
    if s.configuration_override:
        args += ["--configuration-override", json.dumps(s.configuration_override)]
    for flag, value in (("--cache-copies", s.cache_copies), ("--checkpoint", s.checkpoint),
                        ("--click-tiles", s.click_tiles)):
        if value is not None:
            args += [flag, str(value)]
    if s.prediction_processes != 1:
        args += ["--prediction-processes", str(s.prediction_processes)]
    args += ["--device", s.device] + ["--cache-build-first"] * s.cache_build_first
    args += ["--disable-tta"] * s.disable_tta + ["--allow-random-init"] * s.allow_random_init
    return "sam-nnunet learning-curve " + " ".join(shlex.quote(a) for a in args)


# ---- outputs -------------------------------------------------------------------------------------------------------
def _load(path: str) -> Optional[Dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _atomic_json(path: str, data) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        f.write(json.dumps(data, indent=2).encode())
