"""``sam-nnunet``: the package's own commands. Training and prediction are nnU-Net's commands (nnUNetv2_train,
nnUNetv2_predict, ...) with ``-tr <our trainer>``; these commands cover what nnU-Net has no command for."""
import argparse
import json
import os
import sys
from typing import List, Optional

from sam_nnunet.errors import UserFacingExit
from sam_nnunet.nnunet_env import export_lines, required_environment


def _cmd_env(args) -> None:
    print(export_lines(required_environment(args.data_dir)))


def _cmd_info(args) -> None:
    from sam_nnunet.encoders.checkpoint import CheckpointError
    from sam_nnunet.info import describe, parameter_counts

    if args.trainer is None:
        if args.json:
            raise UserFacingExit("--json needs --trainer and --encoder")
        print(describe())
        return
    if args.encoder is None:
        raise UserFacingExit("--trainer needs --encoder (e.g. --encoder vit_b)")
    try:
        counts = parameter_counts(args.trainer, args.encoder, args.inputs, args.outputs)
    except (CheckpointError, ValueError) as e:
        raise UserFacingExit(str(e)) from None
    if args.json:
        print(json.dumps(counts, indent=2))
    else:
        for k, v in counts.items():
            print(f"{k:>10}: {v:,}" if isinstance(v, int) else f"{k:>10}: {v}")


def _cmd_make_demo_dataset(args) -> None:
    from sam_nnunet.demo import make_synthetic_dataset
    print(make_synthetic_dataset(args.output, args.dataset_id, args.num_train, args.num_test, args.seed))


def _cmd_interaction(args) -> None:
    import torch

    from sam_nnunet.evaluation.interaction import evaluate_interaction

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserFacingExit("-device cuda but no CUDA device is available; use -device cpu")
    try:
        result = evaluate_interaction(args.m, args.f, args.prompts, args.rounds, args.clicks, args.target_dice,
                                      args.seed, args.zero_shot, args.tiles, args.cases, torch.device(args.device),
                                      args.chk, not args.tta, args.o, args.label, args.merge, args.test_folder,
                                      args.initial_segmentation, args.click_guarantee)
    except (ValueError, FileNotFoundError) as e:
        raise UserFacingExit(str(e)) from None
    from sam_nnunet.evaluation.interaction_report import adherence_table
    from sam_nnunet.evaluation.report import interaction_table, write_interaction_chart

    table = interaction_table(result) + adherence_table(result)
    stem = os.path.splitext(args.o)[0]
    with open(stem + ".md", "w") as f:
        f.write(table)
    chart = write_interaction_chart(result, stem + ".png")
    print(table)
    print(f"Written: {args.o}, {stem}.md, {chart}")


def _cmd_demo(args) -> None:
    from sam_nnunet.demo import run_demo
    lengths = {k: v for k, v in (("epochs", args.epochs), ("iterations", args.iterations)) if v is not None}
    run_demo(args.work_dir, msd_task=args.msd, trainer=args.trainer, seed=None if args.seed < 0 else args.seed,
             tiny_encoder=args.tiny_encoder, **lengths)


def _cmd_predict_prompted(args) -> None:
    import torch

    from sam_nnunet.inference.predict import predict_prompted
    from sam_nnunet.inference.prompt_file import PromptFileError

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserFacingExit("-device cuda but no CUDA device is available; use -device cpu")
    try:
        summary = predict_prompted(args.i, args.o, args.m, args.f, prompts_file=args.prompts,
                                   simulate=args.simulate_clicks, reference_folder=args.reference, tiles=args.tiles,
                                   seed=args.seed, device=torch.device(args.device), checkpoint_name=args.chk,
                                   step_size=args.step_size, disable_tta=args.disable_tta,
                                   save_probabilities=args.save_probabilities, num_processes=args.npp,
                                   merge=args.merge, initial_segmentation=args.initial_segmentation,
                                   click_guarantee=args.click_guarantee)
    except (PromptFileError, ValueError, FileNotFoundError) as e:
        raise UserFacingExit(str(e)) from None
    print(f"Predictions and the clicks used (clicks.json): {args.o}")
    if summary is not None:
        print("Dice against the reference: " + ", ".join(
            f"{k}: {v['Dice']:.4f}" for k, v in summary["mean"].items()) +
              f" (foreground mean {summary['foreground_mean']['Dice']:.4f}); {args.o}/summary.json")


def _cmd_plan_and_preprocess(args) -> None:
    from sam_nnunet.planners.plan_and_preprocess import plan_and_preprocess
    plan_and_preprocess(args.d, planner=args.pl, trainers=args.tr, encoder=args.encoder,
                        gpu_memory_target=args.gpu_memory_target, configurations=args.c, num_processes=args.np,
                        num_processes_fingerprint=args.npfp, verify_dataset_integrity=args.verify_dataset_integrity,
                        clean=args.clean, no_preprocessing=args.no_pp,
                        overwrite_target_spacing=args.overwrite_target_spacing,
                        overwrite_plans_name=args.overwrite_plans_name, verbose=args.verbose)


def _cmd_evaluate(args) -> None:
    from sam_nnunet.metrics.evaluate import evaluate
    try:
        summary = evaluate(args.ref, args.pred, args.output, args.labels, args.tolerance, args.dataset_json,
                           args.plans, args.num_processes, args.chill)
    except ValueError as e:
        raise UserFacingExit(str(e)) from None
    out = args.output or f"{args.pred.rstrip('/')}/summary.json"
    fg = summary["foreground_mean"]
    print(f"{summary['evaluation']['num_cases']} cases; foreground mean Dice {fg['Dice']:.4f}, "
          f"NSD@{args.tolerance:g}mm {fg['NSD']:.4f}, HD95 {fg['HD95']:.2f} mm")
    print(f"Written: {out} and {out[:-len('.json')]}.csv")


def _cmd_benchmark(args) -> None:
    from sam_nnunet.evaluation.benchmark import BenchmarkSettings, failure_lines, parse_per_trainer, run_benchmark
    try:
        s = BenchmarkSettings(
            dataset=args.dataset, trainers=args.trainers, output_dir=args.output, configuration=args.configuration,
            plans=args.plans, target_spacing=args.target_spacing, fold=args.fold, epochs=args.epochs,
            iterations=args.iterations,
            val_iterations=args.val_iterations, batch_size=args.batch_size, val_cases=args.val_cases,
            mirroring=not args.no_mirroring, device=args.device, threads=args.threads, tolerance=args.tolerance,
            encoders=parse_per_trainer(args.encoder, "--encoder"),
            checkpoints=parse_per_trainer(args.checkpoint, "--checkpoint"),
            allow_random_init=args.allow_random_init, click_tiles=args.click_tiles,
            interaction_rounds=args.interaction_rounds,
            **({} if args.clicks is None else {"clicks": args.clicks}))
        result = run_benchmark(s, doc=args.update_doc)
    except ValueError as e:
        raise UserFacingExit(str(e)) from None
    with open(f"{s.output_dir}/benchmark.md") as f:
        print(f.read())
    failed = [r["trainer"] for r in result["runs"] if r.get("status") != "ok"]
    print(f"Written to {s.output_dir}: benchmark.md, benchmark.json, " + ", ".join(
        f"{c}.png" for c in ("accuracy", "parameters", "memory", "time")))
    if failed:
        print(failure_lines(result["runs"]), file=sys.stderr)
        raise UserFacingExit(f"{', '.join(failed)} failed (the cause above); logs under {s.output_dir}/runs/")


def _cmd_learning_curve(args) -> None:
    from sam_nnunet.evaluation.learning_curve import DEFAULT_TRAINERS, CurveSettings, run_curve
    try:
        override = json.loads(args.configuration_override) if args.configuration_override else None
        if override is not None and not isinstance(override, dict):
            raise ValueError("--configuration-override takes a JSON object, e.g. '{\"batch_size\": 1}'")
        s = CurveSettings(
            source=args.source, output=args.output, work_dir=args.work_dir, test_folder=args.test_folder,
            num_test=args.num_test, test_seed=args.test_seed, sizes=args.sizes,
            trainers=args.trainers or list(DEFAULT_TRAINERS), target_spacing=args.target_spacing,
            budget_seconds=args.budget, seeds=args.seeds, clicks=args.clicks, configuration=args.configuration,
            configuration_override=override, device=args.device, disable_tta=args.disable_tta,
            cache_copies=args.cache_copies, cache_build_first=args.cache_build_first, checkpoint=args.checkpoint,
            allow_random_init=args.allow_random_init,
            tolerance=args.tolerance, click_tiles=args.click_tiles, processes=args.processes,
            prediction_processes=args.prediction_processes)
        result = run_curve(s)
    except ValueError as e:
        raise UserFacingExit(str(e)) from None
    base = args.output[:-len(".json")] if args.output.endswith(".json") else args.output
    print(f"{len(result['runs'])} runs in {args.output}; table {base}.md, chart {base}.png")
    if result["failures"]:
        raise UserFacingExit(f"{len(result['failures'])} run(s) failed (listed in {args.output}); run the same "
                             f"command again to retry them")


def _cmd_msd_submission(args) -> None:
    from sam_nnunet.evaluation.msd import make_submission
    try:
        done = make_submission(args.input, args.dataset, args.output, args.zip, args.task_name, args.allow_missing)
    except ValueError as e:
        raise UserFacingExit(str(e)) from None
    print(f"{done['task']}: {len(done['cases'])} predictions in {done['folder']}" +
          (f"; {len(done['missing'])} test cases MISSING" if done["missing"] else ""))
    if done["zip"]:
        print(f"Submission archive: {done['zip']}")


def _add_env(sub) -> None:
    p = sub.add_parser("env", help="print the exports nnU-Net needs to find our trainers: eval \"$(sam-nnunet env)\"")
    p.add_argument("--data-dir", default=None,
                   help="also export nnUNet_raw / nnUNet_preprocessed / nnUNet_results under this folder")
    p.set_defaults(func=_cmd_env)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="list trainers and encoders, or the parameter counts of one trainer")
    p.add_argument("--trainer", default=None)
    p.add_argument("--encoder", default=None)
    p.add_argument("--inputs", type=int, default=1, help="input channels (default 1)")
    p.add_argument("--outputs", type=int, default=2, help="output channels = nnU-Net segmentation heads (default 2)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)


def _add_make_demo_dataset(sub) -> None:
    p = sub.add_parser("make-demo-dataset", help="write a small synthetic nnU-Net raw dataset")
    p.add_argument("-o", "--output", required=True, help="nnUNet_raw folder to write into")
    p.add_argument("--dataset-id", type=int, default=990)
    p.add_argument("--num-train", type=int, default=12)
    p.add_argument("--num-test", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make_demo_dataset)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="end to end through the stock nnU-Net CLI: data, plan, train, predict, evaluate")
    p.add_argument("--work-dir", default="demo_output")
    p.add_argument("--msd", default=None, help="a Medical Segmentation Decathlon Task folder (default: synthetic)")
    p.add_argument("--trainer", default="SAMAdapterTrainer",
                   help="default SAMAdapterTrainer (tiny random encoder); ZAP25DSAMTrainer trains on LiteMedSAM's weights")
    p.add_argument("--tiny-encoder", action="store_true",
                   help="a tiny random-weight encoder instead of LiteMedSAM's weights (a smoke run of the pipeline)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's, 6)")
    p.add_argument("--iterations", type=int, default=None, help="training iterations per epoch (default: 25)")
    p.add_argument("--seed", type=int, default=0, help="nnUNet_SAM_seed of the training (-1: unseeded)")
    p.set_defaults(func=_cmd_demo)


def _add_predict_prompted(sub) -> None:
    p = sub.add_parser("predict-prompted", help="nnU-Net prediction with 3D click prompts (a prompt file, or clicks "
                                                "simulated from reference labels) for *_prompted trainers")
    p.add_argument("--input", "-i", dest="i", required=True,
                   help="folder of images, nnU-Net naming (CASE_0000.nii.gz, ...)")
    p.add_argument("--output", "-o", dest="o", required=True, help="output folder")
    p.add_argument("--model", "-m", dest="m", required=True,
                   help="model folder (.../DatasetXXX/Trainer__Plans__Configuration)")
    p.add_argument("--folds", "-f", dest="f", nargs="+", default=["0"], help="folds to ensemble (default 0)")
    p.add_argument("--prompts", default=None, help="prompt file (JSON; see documentation/prompts.md)")
    p.add_argument("--simulate-clicks", type=int, default=None, metavar="N",
                   help="instead of a prompt file: N positive clicks per class drawn from the --reference labels")
    p.add_argument("--reference", default=None, help="folder of reference labels (CASE.nii.gz): source of simulated "
                                                      "clicks, and the predictions are evaluated against it")
    p.add_argument("--tiles", default="all", choices=("all", "clicked", "centred"),
                   help="all: every sliding-window tile, tiles without clicks segmented automatically; clicked: only "
                        "tiles with a click (ZAP-2.5DSAM's protocol); centred: one tile centred on the clicks "
                        "(3DSAM-adapter's protocol)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated clicks")
    p.add_argument("--device", "-device", dest="device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--checkpoint-name", "-chk", dest="chk", default="checkpoint_final.pth")
    p.add_argument("--step-size", "-step_size", dest="step_size", type=float, default=0.5)
    p.add_argument("--disable-tta", "--disable_tta", dest="disable_tta", action="store_true")
    p.add_argument("--save-probabilities", "--save_probabilities", dest="save_probabilities", action="store_true")
    p.add_argument("--num-processes", "-npp", dest="npp", type=int, default=2, help="processes for evaluation")
    p.add_argument("--merge", default="progressive", choices=("progressive", "none"),
                   help="rounds of a prompt file: progressive (default) changes the previous round's mask only where "
                        "the change is connected to the round's prompts; none: the new prediction everywhere")
    p.add_argument("--initial-segmentation", default=None, metavar="FOLDER",
                   help="label files (CASE.nii.gz, e.g. nnUNetv2_predict's output) as round 0: the prompts correct "
                        "them (documentation/interaction/interaction.md)")
    p.add_argument("--click-guarantee", type=float, default=None, metavar="R",
                   help="post-hoc rule: every click holds its class within R voxels (default: off)")
    p.set_defaults(func=_cmd_predict_prompted)


def _add_interaction(sub) -> None:
    p = sub.add_parser("interaction", help="interactive segmentation protocol on a fold of a prompted model: Dice after "
                                           "a box / clicks and 1..N simulated correction rounds (interaction.json)")
    p.add_argument("--model", "-m", dest="m", required=True,
                   help="model folder of ZAP25DSAMTrainer_prompted (its plans and dataset)")
    p.add_argument("--fold", "-f", dest="f", default="0", help="fold: its checkpoint and validation cases (default 0)")
    p.add_argument("--output", "-o", dest="o", default="interaction.json",
                   help="JSON to write; rows of other trainers in it are kept")
    p.add_argument("--prompts", nargs="+", default=["box", "clicks", "box+clicks"],
                   choices=("box", "clicks", "box+clicks", "initial+clicks", "automatic+clicks"),
                   help="first prompts (default: box clicks box+clicks); initial+clicks: from --initial-segmentation, "
                        "automatic+clicks: from the model's automatic segmentation, then a click per class and round")
    p.add_argument("--rounds", type=int, default=5, help="correction rounds after the first prompt (default 5)")
    p.add_argument("--clicks", type=int, default=1, help="first clicks per class for 'clicks' (default 1)")
    p.add_argument("--target-dice", type=float, default=0.9, help="for the rounds needed to reach it")
    p.add_argument("--zero-shot", action="store_true",
                   help="the pretrained weights (nnUNet_SAM_checkpoint, or LiteMedSAM's packaged ones) instead of "
                        "the trained checkpoint: the baseline row")
    p.add_argument("--merge", default="progressive", choices=("progressive", "none"),
                   help="progressive (default): a correction changes the previous mask only where the change is "
                        "connected to its click (FocalClick); none: the new prediction everywhere")
    p.add_argument("--label", default=None,
                   help="the rows' trainer name (default: the model's, +zero-shot, +no-merge with --merge none)")
    p.add_argument("--cases", nargs="+", default=None, help="preprocessed cases (default: the fold's validation)")
    p.add_argument("--test-folder", default=None, metavar="DIR",
                   help="score DIR/imagesTs against DIR/labelsTs (nnU-Net naming) instead of the fold")
    p.add_argument("--initial-segmentation", default=None, metavar="FOLDER",
                   help="label files CASE.nii.gz (e.g. nnUNetv2_predict's output): the start of initial+clicks")
    p.add_argument("--click-guarantee", type=float, default=None, metavar="R",
                   help="post-hoc rule: every click holds its class within R voxels (rows +guarantee)")
    p.add_argument("--tiles", default=None, choices=("all", "clicked", "centred"),
                   help="default: the trainer's paper protocol (ZAP: clicked)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tta", action="store_true", help="nnU-Net's mirroring (off by default: 8x the cost)")
    p.add_argument("--device", "-device", dest="device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--checkpoint-name", "-chk", dest="chk", default="checkpoint_final.pth")
    p.set_defaults(func=_cmd_interaction)


def _add_plan_and_preprocess(sub) -> None:
    p = sub.add_parser("plan_and_preprocess",
                       help="nnUNetv2_plan_and_preprocess with a SAM-aware planner: writes nnUNetSAMPlans, sized for "
                            "our trainers (train with -p nnUNetSAMPlans)")
    p.add_argument("--datasets", "-d", dest="d", nargs="+", type=int, required=True, help="dataset IDs")
    p.add_argument("--planner", "-pl", dest="pl", default="SAMPlanner",
                   help="planner class: SAMPlanner (default) or one of nnU-Net's")
    p.add_argument("--trainers", "-tr", dest="tr", nargs="+", default=None,
                   help="trainers to size the plans for; the first defines 3d_fullres, each further one gets "
                        "3d_fullres_<Trainer> (default: every sam-nnunet trainer, SAMAdapterTrainer first)")
    p.add_argument("--encoder", "-encoder", dest="encoder", nargs="+", default=None,
                   help="encoder(s) to size with; each trainer takes the first one it adapts (default: "
                        "nnUNet_SAM_encoder / nnUNet_SAM_checkpoint, else the trainer's default: vit_b, SAM 2: "
                        "sam2.1_hiera_t)")
    p.add_argument("--gpu-memory-target", "-gpu_memory_target", dest="gpu_memory_target", type=float, default=None,
                   help="GB of tensor memory one training step may use (default 8, as nnU-Net)")
    p.add_argument("--configurations", "-c", dest="c", nargs="+", default=["3d_fullres"],
                   help="configurations to preprocess (default 3d_fullres)")
    p.add_argument("--num-processes", "-np", dest="np", nargs="+", type=int, default=None,
                   help="preprocessing processes, one number or one per configuration (nnU-Net's defaults)")
    p.add_argument("--num-processes-fingerprint", "-npfp", dest="npfp", type=int, default=8,
                   help="fingerprint extraction processes (default 8)")
    p.add_argument("--verify-dataset-integrity", "--verify_dataset_integrity", dest="verify_dataset_integrity",
                   action="store_true")
    p.add_argument("--clean", action="store_true", help="extract the fingerprint again even if one exists")
    p.add_argument("--no-preprocessing", "--no_pp", dest="no_pp", action="store_true", help="fingerprint and plan only")
    p.add_argument("--overwrite-target-spacing", "-overwrite_target_spacing", dest="overwrite_target_spacing",
                   nargs=3, type=float, default=None,
                   help="target spacing of 3d_fullres instead of nnU-Net's (e.g. 1 1 1 as in the SAM papers)")
    p.add_argument("--overwrite-plans-name", "-overwrite_plans_name", dest="overwrite_plans_name", default=None,
                   help="plans name (default nnUNetSAMPlans)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_cmd_plan_and_preprocess)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="Dice (nnU-Net's), NSD and HD95 per case and label: summary.json + CSV")
    p.add_argument("--reference", "-ref", dest="ref", required=True, help="folder of reference segmentations")
    p.add_argument("--prediction", "-pred", dest="pred", required=True, help="folder of predictions (same file names)")
    p.add_argument("-o", "--output", default=None, help="summary .json (default PRED/summary.json); the CSV "
                                                        "goes beside it")
    p.add_argument("-l", "--labels", nargs="+", default=None,
                   help="labels to evaluate (1 2 3; a region as 1,2,3). Default: from dataset.json (its regions "
                        "for region-based datasets)")
    p.add_argument("--tolerance", type=float, default=5.0, help="NSD tolerance in mm (default 5)")
    p.add_argument("-djfile", "--dataset-json", default=None,
                   help="dataset.json (default: PRED/dataset.json as nnUNetv2_predict writes it, else REF/../)")
    p.add_argument("-pfile", "--plans", default=None, help="plans.json (default: beside the dataset.json)")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--chill", action="store_true", help="evaluate only the cases that have a prediction")
    p.set_defaults(func=_cmd_evaluate)


def _add_benchmark(sub) -> None:
    p = sub.add_parser("benchmark", help="compare trainers on the same plans, fold and budget: parameters, time, "
                                         "memory, Dice/NSD/HD95 (Markdown, JSON, charts)")
    p.add_argument("-d", "--dataset", required=True, help="dataset name or id (planned and preprocessed)")
    p.add_argument("-tr", "--trainers", nargs="+", required=True,
                   help="trainer names known to nnU-Net (nnUNetTrainer, SAMAdapterTrainer, ...); TRAINER@PLANS "
                        "trains on a preset's plans, e.g. nnUNetTrainer@nnUNetResEncUNetMPlans")
    p.add_argument("--encoder", nargs="+", default=None,
                   help="encoder for the SAM trainers: NAME for all that adapt its family (the others keep their "
                        "default, e.g. SAM 2's), or Trainer=NAME per trainer")
    p.add_argument("--checkpoint", nargs="+", default=None,
                   help="pretrained checkpoint: PATH for all SAM trainers, or Trainer=PATH per trainer")
    p.add_argument("--allow-random-init", action="store_true",
                   help="let SAM trainers start without pretrained weights (smoke tests; said in the table)")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans of the rows that name none (-tr T@PLANS)")
    p.add_argument("--target-spacing", nargs=3, type=float, default=None, metavar=("Z", "Y", "X"),
                   help="every row's preset planned at this 3d_fullres spacing (mm) as <plans>_<spacing>, when missing")
    p.add_argument("-f", "--fold", type=int, default=0)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--iterations", type=int, default=50, help="training iterations per epoch (default 50)")
    p.add_argument("--val-iterations", type=int, default=None,
                   help="nnU-Net's validation iterations per epoch (default: iterations / 5)")
    p.add_argument("--batch-size", type=int, default=None, help="override the plans' batch size for every trainer")
    p.add_argument("--val-cases", type=int, default=None,
                   help="predict and evaluate only the first N validation cases of the fold (default: all)")
    p.add_argument("--no-mirroring", action="store_true", help="predict without test-time mirroring")
    p.add_argument("--clicks", nargs="*", type=int, default=None, metavar="N",
                   help="prompted trainers: also predict the validation cases with N simulated clicks per class, "
                        "for each N (default 1 3 10); --clicks alone: automatic only")
    p.add_argument("--click-tiles", choices=("all", "clicked", "centred"), default=None,
                   help="tiles predicted with clicks (default: each prompted trainer's paper protocol)")
    p.add_argument("--interaction-rounds", type=int, default=3, metavar="R",
                   help="prompted trainers taking boxes: box / clicks / box+clicks then R correction rounds on the "
                        "same cases, and the pretrained weights' box as a zero-shot row (default 3; 0: not run)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--tolerance", type=float, default=5.0, help="NSD tolerance in mm (default 5)")
    p.add_argument("-o", "--output", default="sam_nnunet_benchmark", help="output folder")
    p.add_argument("--update-doc", default=None, metavar="MARKDOWN",
                   help="also replace the generated block of this file (documentation/benchmarks.md)")
    p.set_defaults(func=_cmd_benchmark)


def _add_learning_curve(sub) -> None:
    p = sub.add_parser("learning-curve", help="test-set Dice against the number of training cases, every trainer on "
                                              "the same wall-clock budget through nnU-Net's CLI; resumable")
    p.add_argument("source", help="an MSD task folder (TaskXX_Name, converted with nnUNetv2_convert_MSD_dataset) "
                                  "or an nnU-Net dataset id / name in $nnUNet_raw")
    p.add_argument("--test-folder", default=None, help="folder with imagesTs + labelsTs (nnU-Net naming) to score "
                                                       "on; default: --num-test cases held out from the source")
    p.add_argument("--num-test", type=int, default=None, help="held-out test cases (default 40); with --test-folder: "
                   "cases left out of training (the same draw), so that the folder scores the same runs")
    p.add_argument("--target-spacing", nargs=3, type=float, default=None, metavar=("Z", "Y", "X"),
                   help="plan every row at this 3d_fullres spacing in mm (nnU-Net's -overwrite_target_spacing; plans "
                        "named <plans>_<spacing>), e.g. 2 2 2 for the left atrium on a CPU")
    p.add_argument("--test-seed", type=int, default=0, help="seed of the held-out test cases (default 0)")
    p.add_argument("--sizes", nargs="+", default=["10", "25", "all"], help="training-set sizes (default 10 25 all)")
    p.add_argument("--trainers", nargs="+", default=None, metavar="TRAINER[@PLANS][:ENCODER]",
                   help="default: nnUNetTrainerShortRun (nnUNetTrainer with the budget) "
                        "ZAP25DSAMTrainer:litemedsam ZAP25DSAMTrainer_prompted:litemedsam; @PLANS: another preset, "
                        "e.g. nnUNetTrainerShortRun@nnUNetResEncUNetMPlans (ResEnc M, planned when needed)")
    p.add_argument("--budget", type=float, default=1200.0, help="seconds of training per run (default 1200)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the training subsets (default 0)")
    p.add_argument("--clicks", nargs="+", type=int, default=[0, 1, 3],
                   help="prompted trainers: simulated clicks per class, 0 = automatic (default 0 1 3)")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("--configuration-override", default=None, metavar="JSON",
                   help="entries replacing the configuration's in a copy of nnU-Net's plans, e.g. "
                        "'{\"batch_size\": 2}' (plans LearningCurvePlans, preprocessed again)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--disable-tta", action="store_true", help="predict without test-time mirroring")
    p.add_argument("--cache-copies", type=int, default=None, help="nnUNet_SAM_cache_copies for the ZAP trainers")
    p.add_argument("--cache-build-first", action="store_true",
                   help="ZAP trainers: build the embedding cache before the budget starts "
                        "(nnUNet_SAM_cache_build_first; the build is timed as set-up, the set-up-counted reading "
                        "includes it) instead of encoding "
                        "each copy when first drawn, inside the budget")
    p.add_argument("--checkpoint", default=None, help="nnUNet_SAM_checkpoint for the SAM trainers")
    p.add_argument("--allow-random-init", action="store_true", help="smoke tests: SAM encoders without weights")
    p.add_argument("--tolerance", type=float, default=5.0, help="NSD tolerance in mm (default 5)")
    p.add_argument("--click-tiles", choices=("all", "clicked", "centred"), default=None,
                   help="tiles predicted with clicks (default: each prompted trainer's paper protocol)")
    p.add_argument("--processes", type=int, default=2, help="nnU-Net preprocessing processes (default 2)")
    p.add_argument("--prediction-processes", type=int, default=1,
                   help="nnUNetv2_predict's -npp and -nps (default 1); 0: its sequential predictor, no worker "
                        "processes to start (small test sets)")
    p.add_argument("--work-dir", default="learning_curve_work",
                   help="nnU-Net folders, models, predictions and logs of the runs (default learning_curve_work)")
    p.add_argument("-o", "--output", default="documentation/learning_curve/learning_curve.json",
                   help="results JSON; the .md table and .png chart go beside it")
    p.set_defaults(func=_cmd_learning_curve)


def _add_msd_submission(sub) -> None:
    p = sub.add_parser("msd-submission", help="check test-set predictions and lay them out as a Medical "
                                              "Segmentation Decathlon submission (TaskXX_Name/<case>.nii.gz, zip)")
    p.add_argument("-i", "--input", required=True, help="folder of predictions of the task's imagesTs "
                                                       "(nnUNetv2_predict / nnUNetv2_apply_postprocessing output)")
    p.add_argument("-d", "--dataset", required=True, help="nnU-Net dataset name or id (converted from the task)")
    p.add_argument("-o", "--output", default="msd_submission", help="folder holding one folder per task")
    p.add_argument("--zip", default=None, metavar="ZIP", help="also write this archive of every task folder")
    p.add_argument("--task-name", default=None, help="task folder name (default: Dataset004_X -> Task04_X)")
    p.add_argument("--allow-missing", action="store_true", help="do not require a prediction for every test image")
    p.set_defaults(func=_cmd_msd_submission)


# one function per command: each adds its subparser and its handler (``set_defaults(func=...)``)
COMMANDS = (_add_env, _add_info, _add_make_demo_dataset, _add_demo, _add_predict_prompted, _add_interaction,
            _add_plan_and_preprocess, _add_evaluate, _add_benchmark, _add_learning_curve, _add_msd_submission)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam-nnunet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    # the model folders these commands load name our trainers: nnU-Net finds them as nnUNetv2_* do after
    # `eval "$(sam-nnunet env)"`, without asking the user to export it first
    os.environ.update(required_environment())
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
