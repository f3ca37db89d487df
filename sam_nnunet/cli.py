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


def _cmd_plan_and_preprocess(args) -> None:
    from sam_nnunet.planners.plan_and_preprocess import plan_and_preprocess
    plan_and_preprocess(args.d, planner=args.pl, trainers=args.tr, encoder=args.encoder,
                        gpu_memory_target=args.gpu_memory_target, configurations=args.c, num_processes=args.np,
                        num_processes_fingerprint=args.npfp, verify_dataset_integrity=args.verify_dataset_integrity,
                        clean=args.clean, no_preprocessing=args.no_pp,
                        overwrite_target_spacing=args.overwrite_target_spacing,
                        overwrite_plans_name=args.overwrite_plans_name, verbose=args.verbose)


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

    p = sub.add_parser("plan_and_preprocess",
                       help="nnUNetv2_plan_and_preprocess with a SAM-aware planner: writes nnUNetSAMPlans, sized for "
                            "our trainers (train with -p nnUNetSAMPlans)")
    p.add_argument("-d", nargs="+", type=int, required=True, help="dataset IDs")
    p.add_argument("-pl", default="SAMPlanner", help="planner class: SAMPlanner (default) or one of nnU-Net's")
    p.add_argument("-tr", nargs="+", default=None,
                   help="trainers to size the plans for; the first defines 3d_fullres, each further one gets "
                        "3d_fullres_<Trainer> (default: every sam-nnunet trainer, SAMAdapterTrainer first)")
    p.add_argument("-encoder", default=None,
                   help="encoder to size with (default: nnUNet_SAM_encoder / nnUNet_SAM_checkpoint, else vit_b)")
    p.add_argument("-gpu_memory_target", type=float, default=None,
                   help="GB of tensor memory one training step may use (default 8, as nnU-Net)")
    p.add_argument("-c", nargs="+", default=["3d_fullres"], help="configurations to preprocess (default 3d_fullres)")
    p.add_argument("-np", nargs="+", type=int, default=None,
                   help="preprocessing processes, one number or one per configuration (nnU-Net's defaults)")
    p.add_argument("-npfp", type=int, default=8, help="fingerprint extraction processes (default 8)")
    p.add_argument("--verify_dataset_integrity", action="store_true")
    p.add_argument("--clean", action="store_true", help="extract the fingerprint again even if one exists")
    p.add_argument("--no_pp", action="store_true", help="fingerprint and plan only")
    p.add_argument("-overwrite_target_spacing", nargs=3, type=float, default=None,
                   help="target spacing of 3d_fullres instead of nnU-Net's (e.g. 1 1 1 as in the SAM papers)")
    p.add_argument("-overwrite_plans_name", default=None, help="plans name (default nnUNetSAMPlans)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_cmd_plan_and_preprocess)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
