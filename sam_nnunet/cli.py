"""``sam-nnunet``: the package's own commands. Training and prediction are nnU-Net's commands (nnUNetv2_train,
nnUNetv2_predict, ...) with ``-tr <our trainer>``; these commands cover what nnU-Net has no command for."""
import argparse
import json
import sys
from typing import List, Optional

from sam_nnunet.errors import UserFacingExit


def _cmd_env(args) -> None:
    from sam_nnunet.nnunet_env import export_lines, required_environment
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


def _cmd_demo(args) -> None:
    from sam_nnunet.demo import run_demo
    run_demo(args.work_dir, msd_task=args.msd, trainer=args.trainer, epochs=args.epochs, iterations=args.iterations)


def _cmd_predict_prompted(args) -> None:
    import torch

    from sam_nnunet.prompts.predict import predict_prompted
    from sam_nnunet.prompts.prompt_file import PromptFileError

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserFacingExit("-device cuda but no CUDA device is available; use -device cpu")
    try:
        summary = predict_prompted(args.i, args.o, args.m, args.f, prompts_file=args.prompts,
                                   simulate=args.simulate_clicks, reference_folder=args.reference, tiles=args.tiles,
                                   seed=args.seed, device=torch.device(args.device), checkpoint_name=args.chk,
                                   step_size=args.step_size, disable_tta=args.disable_tta,
                                   save_probabilities=args.save_probabilities, num_processes=args.npp)
    except (PromptFileError, ValueError, FileNotFoundError) as e:
        raise UserFacingExit(str(e)) from None
    print(f"Predictions and the clicks used (clicks.json): {args.o}")
    if summary is not None:
        print("Dice against the reference: " + ", ".join(
            f"{k}: {v['Dice']:.4f}" for k, v in summary["mean"].items()) +
              f" (foreground mean {summary['foreground_mean']['Dice']:.4f}); {args.o}/summary.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam-nnunet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("env", help="print the exports nnU-Net needs to find our trainers: eval \"$(sam-nnunet env)\"")
    p.add_argument("--data-dir", default=None,
                   help="also export nnUNet_raw / nnUNet_preprocessed / nnUNet_results under this folder")
    p.set_defaults(func=_cmd_env)

    p = sub.add_parser("info", help="list trainers and encoders, or the parameter counts of one trainer")
    p.add_argument("--trainer", default=None)
    p.add_argument("--encoder", default=None)
    p.add_argument("--inputs", type=int, default=1, help="input channels (default 1)")
    p.add_argument("--outputs", type=int, default=2, help="output channels = nnU-Net segmentation heads (default 2)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("make-demo-dataset", help="write a small synthetic nnU-Net raw dataset")
    p.add_argument("-o", "--output", required=True, help="nnUNet_raw folder to write into")
    p.add_argument("--dataset-id", type=int, default=990)
    p.add_argument("--num-train", type=int, default=12)
    p.add_argument("--num-test", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make_demo_dataset)

    p = sub.add_parser("demo", help="end to end through the stock nnU-Net CLI: data, plan, train, predict, evaluate")
    p.add_argument("--work-dir", default="demo_output")
    p.add_argument("--msd", default=None, help="a Medical Segmentation Decathlon Task folder (default: synthetic)")
    p.add_argument("--trainer", default="SAMAdapterTrainer")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--iterations", type=int, default=10, help="training iterations per epoch")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("predict-prompted", help="nnU-Net prediction with 3D click prompts (a prompt file, or clicks "
                                                "simulated from reference labels) for *_prompted trainers")
    p.add_argument("-i", required=True, help="folder of images, nnU-Net naming (CASE_0000.nii.gz, ...)")
    p.add_argument("-o", required=True, help="output folder")
    p.add_argument("-m", required=True, help="model folder (.../DatasetXXX/Trainer__Plans__Configuration)")
    p.add_argument("-f", nargs="+", default=["0"], help="folds to ensemble (default 0)")
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
    p.add_argument("-device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("-chk", default="checkpoint_final.pth")
    p.add_argument("-step_size", type=float, default=0.5)
    p.add_argument("--disable_tta", action="store_true")
    p.add_argument("--save_probabilities", action="store_true")
    p.add_argument("-npp", type=int, default=2, help="processes for evaluation")
    p.set_defaults(func=_cmd_predict_prompted)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
