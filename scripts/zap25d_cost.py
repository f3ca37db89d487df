"""What ZAP25DSAMTrainer with LiteMedSAM costs on this machine, beside nnU-Net's default network.

    PYTHONPATH=. .venv/bin/python scripts/zap25d_cost.py --threads 2 --json zap_cost.json
    # optional: --plans .../Dataset004_Hippocampus/nnUNetPlans.json (baseline network and patch from the plans)
    #           --msd .../Task04_Hippocampus (sliding-window tiles per case from the image sizes)

Measures, with random data (costs do not depend on content):
  - the LiteMedSAM encoder per pseudo-slice (4 slices patch-embedded, averaged, TinyViT + neck) for the slice sizes of
    the patch and at LiteMedSAM's native 256x256, per encoder batch size, plus FLOPs (torch's FlopCounterMode);
  - encoder passes per patch;
  - one training iteration of the network (forward, nnU-Net's Dice+CE, backward, AdamW step) per batch size, and
    the peak resident memory so far (batch sizes run in increasing order);
  - one prediction tile (eval forward, batch 1), x8 with nnU-Net's mirroring;
  - with --plans, the same for nnU-Net's planned U-Net (with deep supervision, as nnUNetTrainer trains it).
The load average before and after is recorded: timings taken while other processes use the cores are not the
machine's speed.
"""
import argparse
import json
import os
import resource
import statistics
import time

import sys

import torch
import torch.nn.functional as F


def _progress(name: str, value) -> None:
    # each section as soon as it is measured (the whole run takes long on a busy CPU)
    print(f"{name}: {json.dumps(value)}", file=sys.stderr, flush=True)


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


def _loss():
    """nnU-Net's default loss (Dice + CE, as nnUNetTrainer builds it)."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    return DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)


def encoder_costs(encoder, patch, batches, repeats):
    from torch.utils.flop_counter import FlopCounterMode

    sizes = {"native 256x256": (64, 64)}
    for axis, name in enumerate(("slices along axis 0", "slices along axis 1", "slices along axis 2")):
        a, b = [s for i, s in enumerate(patch) if i != axis]
        sizes[f"{name}: {a}x{b} voxels"] = (a, b)
    rows = []
    for label, (a, b) in sizes.items():
        gh, gw = encoder.grid(a, b)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            encoder(torch.randn(1, 4, 3, a, b))
        row = {"slices": label, "image": f"{gh * encoder.stride}x{gw * encoder.stride}",
               "gflop_per_pseudo_slice": round(counter.get_total_flops() / 1e9, 1)}
        for n in batches:
            groups = torch.randn(n, 4, 3, a, b)
            with torch.no_grad():
                encoder(groups)  # first call: allocator warm-up
                row[f"s_per_pseudo_slice_batch{n}"] = round(_timed(lambda: encoder(groups), repeats) / n, 3)
        rows.append(row)
    return rows


def network_costs(net, patch, classes, batches, repeats, deep_supervision=False):
    loss_fn = _loss()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-5)
    rows = []
    for n in batches:
        x = torch.randn(n, 1, *patch)
        target = torch.randint(0, classes, (n, 1, *patch))

        def step():
            optimizer.zero_grad(set_to_none=True)
            out = net(x)
            if deep_supervision:  # every head against the label at its scale, as nnU-Net's wrapper does
                loss = sum(loss_fn(o, F.interpolate(target.float(), size=o.shape[2:], mode="nearest").long())
                           for o in out)
            else:
                loss = loss_fn(out, target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 12)
            optimizer.step()

        net.train()
        step()
        rows.append({"batch": n, "s_per_iteration": round(_timed(step, repeats), 2),
                     "peak_rss_gb_so_far": round(_peak_rss_gb(), 2)})
    net.eval()
    if hasattr(net, "decoder") and hasattr(net.decoder, "deep_supervision"):
        net.decoder.deep_supervision = False
    x = torch.randn(1, 1, *patch)
    with torch.inference_mode():
        net(x)
        tile = _timed(lambda: net(x), repeats)
    return rows, {"s_per_tile": round(tile, 2), "s_per_tile_with_8x_mirroring": round(8 * tile, 2)}


def tiles_per_case(msd_dir, patch):
    import nibabel as nib
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    counts = []
    for name in sorted(os.listdir(os.path.join(msd_dir, "imagesTr"))):
        if not name.endswith(".nii.gz") or name.startswith("."):
            continue
        shape = nib.load(os.path.join(msd_dir, "imagesTr", name)).shape[:3][::-1]  # nnU-Net's (z, y, x) order
        size = [max(s, p) for s, p in zip(shape, patch)]
        steps = compute_steps_for_sliding_window(size, patch, 0.5)
        counts.append(len(steps[0]) * len(steps[1]) * len(steps[2]))
    return {"cases": len(counts), "mean_tiles": round(statistics.mean(counts), 2),
            "tiles_histogram": {str(k): counts.count(k) for k in sorted(set(counts))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[40, 56, 40], help="default: nnU-Net's hippocampus")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--encoder-batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--plans", default=None, help="nnUNetPlans.json: also measure nnU-Net's 3d_fullres U-Net")
    parser.add_argument("--baseline-batch-sizes", type=int, nargs="+", default=[1, 2, 4, 9])
    parser.add_argument("--msd", default=None, help="MSD Task folder: sliding-window tiles per case")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from sam_nnunet.encoders.checkpoint import read_state_dict
    from sam_nnunet.encoders.litemedsam import packaged_checkpoint
    from sam_nnunet.networks.zap25d import ZAP25DNetwork

    patch = list(args.patch)
    result = {"machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__,
                          "load_average_before": [round(v, 2) for v in os.getloadavg()]},
              "patch": patch}
    if args.plans:
        with open(args.plans) as f:
            plans = json.load(f)
        patch = plans["configurations"]["3d_fullres"]["patch_size"]
        result["patch"] = patch
    path = packaged_checkpoint()
    net = ZAP25DNetwork(1, args.classes, "litemedsam")
    net.load_pretrained(read_state_dict(path), path)
    padded = [s + (-s) % net.pool for s in patch]
    result["encoder_passes_per_patch"] = sum(padded) // net.pool
    result["encoder"] = encoder_costs(net.encoder, padded, args.encoder_batches, args.repeats)
    _progress("encoder", result["encoder"])
    result["zap_litemedsam_training"], result["zap_litemedsam_prediction"] = network_costs(
        net, patch, args.classes, args.batch_sizes, args.repeats)
    _progress("zap", [result["zap_litemedsam_training"], result["zap_litemedsam_prediction"]])
    del net
    if args.plans:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        arch = plans["configurations"]["3d_fullres"]["architecture"]
        unet = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                      1, args.classes, deep_supervision=True)
        result["nnunet_training"], result["nnunet_prediction"] = network_costs(
            unet, patch, args.classes, args.baseline_batch_sizes, args.repeats, deep_supervision=True)
        _progress("nnunet", [result["nnunet_training"], result["nnunet_prediction"]])
    if args.msd:
        result["sliding_window"] = tiles_per_case(args.msd, patch)
    result["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
