"""``sam-nnunet benchmark``: every trainer on the same plans, fold and budget; parameters, time, memory, accuracy.

Each trainer runs in a fresh process (:mod:`sam_nnunet.evaluation.benchmark_worker`), one after the other, so
that its memory peak and timings are its own. Models go to ``<output>/nnUNet_results`` (never the user's
nnUNet_results), predictions and logs beside them. The budget (epochs, iterations, batch size) is applied the
same way to every trainer, nnUNetTrainer included: as nnU-Net's own trainer attributes / plans entry, in the
benchmark's process, without touching nnU-Net's files or the user's plans.
"""
import datetime
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from sam_nnunet import settings
from sam_nnunet.commands import CommandFailed, run_command
from sam_nnunet.encoders.pretrained import adapts
from sam_nnunet.encoders.registry import ENCODERS
from sam_nnunet.evaluation.machine import describe_machine
from sam_nnunet.evaluation.plans_rows import PLANNERS, check_spacing, parse_row, planning_arguments, plans_identifier
from sam_nnunet.evaluation.report import check_document, markdown_table, update_document, write_charts
from sam_nnunet.evaluation.results_file import read_results, write_results
from sam_nnunet.evaluation.trainer_names import resolve_encoder, resolve_trainer
from sam_nnunet.nnunet_env import required_environment
from sam_nnunet.trainers.registry import find_trainer_class

DEFAULT_CLICKS = (1, 3, 10)
DEFAULT_INTERACTION_ROUNDS = 3


@dataclass
class BenchmarkSettings:
    """What every trainer of one benchmark shares."""
    dataset: str                          # name or id; resolved to DatasetXXX_Name
    trainers: List[str]                   # TRAINER[@PLANS] (plans_rows): nnUNetTrainer@nnUNetResEncUNetMPlans
    output_dir: str = "sam_nnunet_benchmark"
    configuration: str = "3d_fullres"
    plans: str = "nnUNetPlans"            # of the rows that name none
    target_spacing: Optional[List[float]] = None  # every row's preset planned at this spacing (plans_rows)
    fold: int = 0
    epochs: int = 1
    iterations: int = 50                  # training iterations per epoch
    val_iterations: Optional[int] = None  # nnU-Net's pseudo-Dice iterations per epoch; default iterations / 5
    batch_size: Optional[int] = None      # default: the plans'
    val_cases: Optional[int] = None       # default: all validation cases of the fold
    mirroring: bool = True
    device: Optional[str] = None          # default: cuda when available
    threads: Optional[int] = None         # torch CPU threads; default: all cores, as nnUNetv2_train on the CPU
    tolerance: float = 5.0
    encoders: Dict[str, str] = field(default_factory=dict)     # trainer -> encoder name (nnUNet_SAM_encoder)
    checkpoints: Dict[str, str] = field(default_factory=dict)  # trainer -> checkpoint (nnUNet_SAM_checkpoint)
    allow_random_init: bool = False
    # prompted trainers (PromptedTrainerMixin): the validation cases again with N simulated clicks per class, for
    # each N here (the papers' 1 / 3 / 10); empty: automatic only. Tiles: each trainer's paper protocol by default
    clicks: List[int] = field(default_factory=lambda: list(DEFAULT_CLICKS))
    click_tiles: Optional[str] = None
    # prompted trainers whose network takes boxes: the interaction protocol (sam-nnunet interaction) on the same
    # cases, box / clicks / box+clicks then this many correction rounds, and the pretrained weights' box as the
    # zero-shot row where the encoder has them; 0: not evaluated
    interaction_rounds: int = DEFAULT_INTERACTION_ROUNDS

    def resolve(self) -> "BenchmarkSettings":
        import torch
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

        if not self.trainers:
            raise ValueError("name at least one trainer (-tr nnUNetTrainer SAMAdapterTrainer ...)")
        self.resolve_names()  # first: a misspelt -tr is the one line, whatever else is wrong
        self.target_spacing = check_spacing(self.target_spacing)
        if self.target_spacing and self.plans not in PLANNERS:
            raise ValueError(f"--target-spacing plans nnU-Net's presets ({', '.join(PLANNERS)}); -p {self.plans} is "
                             f"not one of them")
        for name, value in (("--epochs", self.epochs), ("--iterations", self.iterations)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
        if any(n < 1 for n in self.clicks):
            raise ValueError("--clicks takes click counts of at least 1 (the automatic mode is always evaluated)")
        self.clicks = sorted(set(self.clicks))
        if self.interaction_rounds < 0:
            raise ValueError("--interaction-rounds must be 0 (not evaluated) or more")
        if self.click_tiles not in (None, "all", "clicked", "centred"):
            raise ValueError(f"--click-tiles must be all, clicked or centred, not {self.click_tiles!r}")
        try:
            self.dataset = maybe_convert_to_dataset_name(self.dataset)
        except RuntimeError as e:
            raise ValueError(f"{e}. Convert and plan the dataset first (nnUNetv2_plan_and_preprocess -d ID "
                             f"-c {self.configuration}).") from None
        self.val_iterations = self.val_iterations or max(1, round(self.iterations / 5))
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.threads = self.threads or os.cpu_count() or 1
        unknown = set(self.encoders) | set(self.checkpoints)
        unknown -= set(self.trainers) | {parse_row(t).trainer for t in self.trainers} | {"*"}
        if unknown:
            raise ValueError(f"--encoder / --checkpoint name trainers that are not benchmarked: {sorted(unknown)}")
        return self

    def resolve_names(self) -> None:
        """Every trainer and encoder name, before a worker starts: a typo is one line with the close matches."""
        rows = [parse_row(t, encoder_allowed=False) for t in self.trainers]
        if len({r.label for r in rows}) != len(rows):
            raise ValueError(f"-tr names a row twice: {' '.join(self.trainers)}")
        classes = {r.trainer: resolve_trainer(r.trainer, "-tr") for r in rows}
        for trainer, encoder in self.encoders.items():
            if trainer not in classes and trainer != "*":
                continue  # refused below: an --encoder for a trainer that is not benchmarked
            if trainer == "*":  # for every trainer that adapts its family: only the name itself must exist
                if encoder not in ENCODERS:
                    resolve_encoder("every trainer", None, encoder)
            else:
                resolve_encoder(trainer, classes[trainer], encoder)


def row_plans(s: BenchmarkSettings, row: str) -> str:
    """The plans a row trains on: its own preset or ``-p``, under the target spacing's name when one is given."""
    preset = parse_row(row).plans or s.plans
    return plans_identifier(preset, s.target_spacing) if s.target_spacing else preset


def check_inputs(s: BenchmarkSettings) -> None:
    """Clear messages for what the benchmark needs before it starts anything. The plans a row names with
    ``@PLANS``, and every preset at ``--target-spacing``, are planned and preprocessed here when missing (nnU-Net's
    planner of that preset, nnUNetv2_plan_and_preprocess); the default plans must exist, as before."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    log = os.path.join(os.path.abspath(s.output_dir), "planning.log")
    for row in s.trainers:
        plans = row_plans(s, row)
        plans_file = os.path.join(nnUNet_preprocessed, s.dataset, plans + ".json")
        preset = parse_row(row).plans or s.plans
        if not os.path.isfile(plans_file) and (parse_row(row).plans or s.target_spacing):
            # nnUNet_n_proc_DA=0 is for training: nnU-Net's planner hands it to torch.set_num_threads, which refuses 0
            env = {k: v for k, v in os.environ.items() if not (k == "nnUNet_n_proc_DA" and v.strip() == "0")}
            try:
                # as many processes as the benchmark's threads (nnU-Net's defaults, 8 and 4, swamp a small machine)
                run_command(["nnUNetv2_plan_and_preprocess", "-d", s.dataset.split("_")[0][7:], "-c",
                             s.configuration, "-np", s.threads or 1, "-npfp", s.threads or 1,
                             *planning_arguments(preset, s.target_spacing)], env, log)
            except CommandFailed as e:
                raise ValueError(f"planning {plans} for {row} failed (log: {log}): {e}") from None
        if not os.path.isfile(plans_file):
            raise ValueError(f"{plans_file} does not exist: run nnUNetv2_plan_and_preprocess -d {s.dataset} "
                             f"-c {s.configuration} first")
        with open(plans_file) as f:
            configurations = json.load(f)["configurations"]
        if s.configuration not in configurations:
            raise ValueError(f"the plans {plans} have no configuration {s.configuration!r} "
                             f"(they have: {', '.join(configurations)})")
    images = os.path.join(nnUNet_raw, s.dataset, "imagesTr")
    if not os.path.isdir(images):
        raise ValueError(f"{images} does not exist: the benchmark predicts the validation cases from the raw images")


def encoder_for(s: BenchmarkSettings, trainer: str) -> Dict[str, Optional[str]]:
    """The encoder and checkpoint a trainer runs with. ``Trainer=NAME`` names its own; an encoder given for all
    (``--encoder vit_b``) goes to the trainers that adapt its family, and the others (SAM 2's) keep their default
    encoder, so one name serves a run over every trainer."""
    row, trainer = trainer, parse_row(trainer).trainer  # a row on other plans: its own entry, else its trainer's
    encoder = s.encoders.get(row, s.encoders.get(trainer))
    if encoder is None and s.encoders.get("*") is not None and _adapts(trainer, s.encoders["*"]):
        encoder = s.encoders["*"]
    return {"encoder": encoder,
            "checkpoint": s.checkpoints.get(row, s.checkpoints.get(trainer, s.checkpoints.get("*")))}


def _adapts(trainer: str, encoder: str) -> bool:
    """Whether a sam-nnunet trainer adapts this encoder's family (True for a trainer or encoder we do not know: the
    run says what is wrong)."""
    cls = find_trainer_class(trainer)
    if cls is None or encoder not in ENCODERS:
        return True
    return adapts(cls.encoder_families, encoder)


def worker_environment(s: BenchmarkSettings, trainer: str, results_dir: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(required_environment())  # nnUNet_extTrainer lists our trainers
    env["nnUNet_results"] = results_dir
    for var in (settings.NUM_EPOCHS, settings.ITERATIONS_PER_EPOCH, settings.TIME_BUDGET_SECONDS):
        env.pop(var, None)  # the benchmark sets the budget itself
    choice = encoder_for(s, trainer)
    if choice["encoder"]:
        env[settings.ENCODER] = choice["encoder"]
    if choice["checkpoint"]:
        env[settings.CHECKPOINT] = os.path.abspath(choice["checkpoint"])
    if s.allow_random_init:
        env[settings.ALLOW_RANDOM_INIT] = "1"
    return env


def _read_progress(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            lines = f.read().strip().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def run_one(s: BenchmarkSettings, trainer: str, index: int, show_progress: bool = True) -> dict:
    """Train, predict and evaluate one trainer in its own process; returns its result (status ok / failed)."""
    from tqdm import tqdm

    out = os.path.abspath(s.output_dir)
    run_dir = os.path.join(out, "runs", trainer)  # the row: TRAINER or TRAINER@PLANS
    results_dir = os.path.join(out, "nnUNet_results")
    plans = row_plans(s, trainer)
    model_dir = os.path.join(results_dir, s.dataset, f"{parse_row(trainer).trainer}__{plans}__{s.configuration}")
    for stale in (run_dir, model_dir):  # a benchmark never mixes with an earlier one's files
        shutil.rmtree(stale, ignore_errors=True)
    os.makedirs(run_dir)
    spec = {**{k: v for k, v in asdict(s).items() if k not in ("trainers", "encoders", "checkpoints")},
            "trainer": parse_row(trainer).trainer, "plans": plans, "predictions": os.path.join(run_dir, "predictions"),
            "click_predictions": os.path.join(run_dir, "clicks")}
    files = {name: os.path.join(run_dir, name) for name in ("spec.json", "result.json", "progress.jsonl", "log.txt")}
    with open(files["spec.json"], "w") as f:
        json.dump(spec, f, indent=2)

    cmd = [sys.executable, "-m", "sam_nnunet.evaluation.benchmark_worker", files["spec.json"],
           files["result.json"], files["progress.jsonl"]]
    bar = tqdm(total=1, desc=f"[{index + 1}/{len(s.trainers)}] {trainer} starting", unit="step", leave=True,
               disable=not show_progress, dynamic_ncols=True, mininterval=1.0)
    start, shown = time.time(), {}

    def show_progress_state() -> None:
        state = _read_progress(files["progress.jsonl"])
        if state and state != shown:  # redraw on change only (a log file is not a terminal)
            if not shown or state["stage"] != shown["stage"]:
                bar.set_description_str(f"[{index + 1}/{len(s.trainers)}] {trainer} {state['stage']}", refresh=False)
                bar.reset(total=max(1, state["total"]))
            shown.clear()
            shown.update(state)
            bar.n = state["done"]
            bar.refresh()

    returncode = 0
    try:
        run_command(cmd, worker_environment(s, trainer, results_dir), files["log.txt"], show_progress_state)
    except CommandFailed as e:
        returncode = e.returncode
    finally:
        bar.close()
    if os.path.isfile(files["result.json"]):
        with open(files["result.json"]) as f:
            result = json.load(f)
    else:
        result = {"status": "failed", "error": f"the worker ended with status {returncode} before writing "
                                              f"a result (out of memory?)"}
    if result.get("status") != "ok":
        with open(files["log.txt"]) as f:
            tail = f.read()[-3000:]
        result["log_tail"] = tail
        result["error"] = _user_error(result.get("error", ""), tail)
    requested = encoder_for(s, trainer)
    # the encoder the network reports (SAM networks do); a trainer without one (nnUNetTrainer) shows none
    result.update({"trainer": trainer, "log": files["log.txt"], "wall_seconds": time.time() - start,
                   "encoder": (result.get("pretrained") or {}).get("encoder"), "requested": requested})
    return result


def _user_error(error: str, log_tail: str) -> str:
    # a sam-nnunet message (UserFacingExit) is the most useful line of a failed run
    for line in log_tail.splitlines():
        if line.startswith("sam-nnunet: "):
            return line
    return error.splitlines()[0] if error else "failed (see the log)"


def command_line(s: BenchmarkSettings, doc: Optional[str] = None) -> str:
    """The ``sam-nnunet benchmark`` command that reproduces these settings (shown with the results)."""
    args = ["-d", s.dataset, "-tr", *s.trainers, "-c", s.configuration, "-p", s.plans, "-f", str(s.fold),
            "--epochs", str(s.epochs), "--iterations", str(s.iterations), "--val-iterations", str(s.val_iterations)]
    for flag, per_trainer in (("--encoder", s.encoders), ("--checkpoint", s.checkpoints)):
        if per_trainer:
            args += [flag, *[v if k == "*" else f"{k}={v}" for k, v in per_trainer.items()]]
    if s.target_spacing:
        args += ["--target-spacing", *[f"{v:g}" for v in s.target_spacing]]
    for flag, value in (("--batch-size", s.batch_size), ("--val-cases", s.val_cases), ("--device", s.device),
                        ("--threads", s.threads), ("--tolerance", s.tolerance), ("-o", s.output_dir),
                        ("--update-doc", doc)):
        if value is not None:
            args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    args += ["--allow-random-init"] * s.allow_random_init + ["--no-mirroring"] * (not s.mirroring)
    if list(s.clicks) != list(DEFAULT_CLICKS):
        args += ["--clicks", *map(str, s.clicks)]
    if s.click_tiles:
        args += ["--click-tiles", s.click_tiles]
    if s.interaction_rounds != DEFAULT_INTERACTION_ROUNDS:
        args += ["--interaction-rounds", str(s.interaction_rounds)]
    return "sam-nnunet benchmark " + " ".join(shlex.quote(a) for a in args)


def run_benchmark(s: BenchmarkSettings, doc: Optional[str] = None, show_progress: bool = True) -> dict:
    """Run every trainer, write benchmark.json, benchmark.md and the charts into ``s.output_dir``; with ``doc``
    also replace the generated block of that Markdown file. Returns the result dict."""
    s.resolve()
    if doc:
        check_document(doc)
    json_path = os.path.join(s.output_dir, "benchmark.json")
    read_results(json_path)  # a damaged earlier result stops here: its .bak is only made from a readable one
    os.makedirs(s.output_dir, exist_ok=True)
    check_inputs(s)
    runs = [run_one(s, trainer, i, show_progress) for i, trainer in enumerate(s.trainers)]
    result = {"settings": asdict(s), "machine": describe_machine(),
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": command_line(s, doc),
              "runs": runs}
    write_results(json_path, result)  # atomically; the previous benchmark.json stays as benchmark.json.bak
    table = markdown_table(result)
    with open(os.path.join(s.output_dir, "benchmark.md"), "w") as f:
        f.write(table + "\n")
    charts = write_charts(result, s.output_dir) if any(r.get("status") == "ok" for r in runs) else []
    if doc:
        update_document(doc, table, charts, json_path)
    return result


def failure_lines(runs: List[dict], tail_lines: int = 15) -> str:
    """What failed and why, for the command's own output: each failed trainer's cause and the end of its worker's
    output (the log holds the rest)."""
    lines = []
    for r in runs:
        if r.get("status") == "ok":
            continue
        lines.append(f"{r['trainer']} failed: {r.get('error') or 'no result'} (log: {r.get('log')})")
        tail = [t for t in (r.get("log_tail") or "").splitlines() if t.strip()][-tail_lines:]
        lines += [f"  | {t}" for t in tail]
    return "\n".join(lines)


def parse_per_trainer(values: Optional[List[str]], what: str) -> Dict[str, str]:
    """``NAME`` (for every trainer) or ``Trainer=NAME`` (for one)."""
    parsed = {}
    for v in values or []:
        trainer, sep, name = v.partition("=")
        if not sep:
            trainer, name = "*", v
        if not name:
            raise ValueError(f"{what} {v!r}: give NAME or Trainer=NAME")
        if trainer in parsed:
            raise ValueError(f"{what}: {parsed[trainer]!r} and {name!r} both for "
                             f"{'every trainer' if trainer == '*' else trainer}; give one NAME, or Trainer=NAME each")
        parsed[trainer] = name
    return parsed
