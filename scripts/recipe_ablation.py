"""The recipe ablation of documentation/zap25dsam.md ("Recipe"): ZAP25DSAMTrainer's recipes at the learning curve's
budget, scored on validation cases, never on the test cases the curve reports.

From an MSD task (default ../shared/data/Task04_Hippocampus) it writes, under --work-dir:
  - validation/ (imagesTs + labelsTs): --num-val cases drawn with --val-seed from the cases that are not among the
    learning curve's held-out test cases (--num-test with --test-seed: the same draw as `sam-nnunet learning-curve`);
  - Task<id>_<Name>Recipe/: an MSD task of links holding the remaining cases (neither test nor validation);
then runs `sam-nnunet learning-curve` on that task with --test-folder validation/, one row per recipe, so every run
is resumable and recorded (seed, iterations, machine, load, commit) in the JSON as it finishes.

    .venv/bin/python scripts/recipe_ablation.py                       # the default comparison, 2 seeds, n = 10
    .venv/bin/python scripts/recipe_ablation.py --trainers ZAP25DSAMTrainer_prompted_paper:litemedsam \
        ZAP25DSAMTrainer_prompted_budget:litemedsam --clicks 0 3      # the prompted trainer
Other options are passed on to `sam-nnunet learning-curve` (e.g. --budget, --sizes, --seeds). Run it on a quiet machine.
"""
import argparse
import json
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from sam_nnunet.evaluation.plans_rows import held_out  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _link(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not os.path.lexists(dst):
        os.symlink(os.path.realpath(src), dst)


def split(task: str, num_test: int, test_seed: int, num_val: int, val_seed: int):
    """(test cases, validation cases, the rest) of the MSD task's labelled cases."""
    with open(os.path.join(task, "dataset.json")) as f:
        meta = json.load(f)
    cases = sorted(os.path.basename(t["label"])[:-len(".nii.gz")] for t in meta["training"])
    test = set(held_out(cases, num_test, test_seed))
    rest = [c for c in cases if c not in test]
    val = sorted(random.Random(val_seed).sample(rest, num_val))
    return sorted(test), val, [c for c in rest if c not in set(val)], meta


def write_folders(task: str, work: str, val, train, meta) -> str:
    name = os.path.basename(os.path.normpath(task))
    number, title = name[4:].split("_", 1)
    derived = os.path.join(work, f"Task{900 + int(number) % 100}_{title}Recipe")
    for case in val:
        _link(os.path.join(task, "imagesTr", case + ".nii.gz"), os.path.join(work, "validation", "imagesTs",
                                                                            case + "_0000.nii.gz"))
        _link(os.path.join(task, "labelsTr", case + ".nii.gz"), os.path.join(work, "validation", "labelsTs",
                                                                            case + ".nii.gz"))
    for case in train:
        for sub in ("imagesTr", "labelsTr"):
            _link(os.path.join(task, sub, case + ".nii.gz"), os.path.join(derived, sub, case + ".nii.gz"))
    meta = dict(meta, training=[{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in train],
                numTraining=len(train), test=[], numTest=0)
    with open(os.path.join(derived, "dataset.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return derived


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", nargs="?", default=os.path.join(REPO, "..", "shared", "data", "Task04_Hippocampus"))
    p.add_argument("--num-test", type=int, default=40, help="the learning curve's held-out cases (never used here)")
    p.add_argument("--test-seed", type=int, default=0)
    p.add_argument("--num-val", type=int, default=20)
    p.add_argument("--val-seed", type=int, default=1)
    p.add_argument("--work-dir", default=os.path.join(REPO, "recipe_ablation_work"))
    p.add_argument("-o", "--output", default=os.path.join(REPO, "documentation", "benchmarks", "recipe",
                                                          "recipe_ablation.json"))
    p.add_argument("--trainers", nargs="+", default=["ZAP25DSAMTrainer_paper:litemedsam",
                                                     "ZAP25DSAMTrainer_budget:litemedsam"])
    args, rest = p.parse_known_args(argv)
    test, val, train, meta = split(args.task, args.num_test, args.test_seed, args.num_val, args.val_seed)
    work = os.path.abspath(args.work_dir)
    derived = write_folders(os.path.abspath(args.task), work, val, train, meta)
    print(f"{len(test)} test cases left out, {len(val)} validation cases in {work}/validation, {len(train)} cases "
          f"to draw training sets from in {derived}", flush=True)
    if "--sizes" not in rest:
        rest += ["--sizes", "10"]
    if "--seeds" not in rest:
        rest += ["--seeds", "0", "1"]
    if "--clicks" not in rest:
        rest += ["--clicks", "0"]
    command = [sys.executable, "-m", "sam_nnunet.cli", "learning-curve", derived, "--test-folder",
               os.path.join(work, "validation"), "--trainers", *args.trainers, "--work-dir",
               os.path.join(work, "curve"), "-o", os.path.abspath(args.output), *rest]
    print(" ".join(command), flush=True)
    env = dict(os.environ)
    env.setdefault("nnUNet_def_n_proc", "2")
    sys.exit(subprocess.call(command, cwd=REPO, env=env))


if __name__ == "__main__":
    main()
