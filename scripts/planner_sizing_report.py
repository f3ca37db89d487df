"""What SAMPlanner plans for each trainer on two datasets and several memory targets, as a Markdown table for
documentation/planner.md.

    PYTHONPATH=. python scripts/planner_sizing_report.py --hippocampus-id 4 [--ct] [--encoders vit_b vit_l]
        [--trainers SAMAdapterTrainer SAM3DMedTrainer] [--targets 8 24 80]

Each trainer is planned with each of --encoders that it adapts (e.g. --trainers ZAP25DSAMTrainer
SAM2_3dMedTrainer --encoders vit_b litemedsam sam2.1_hiera_t).

--hippocampus-id: a planned dataset (its fingerprint must exist; e.g. after `sam-nnunet plan_and_preprocess -d 4
--no_pp`). --ct: also an abdominal-CT-like dataset whose fingerprint is written here (80 cases, 512x512 in-plane at
0.78 mm, 1.5 mm slices, 300 mm long; no image data is needed for planning beyond one tiny readable file per case).
Plans are written under a temporary nnUNet_preprocessed for the CT case and with -overwrite_plans_name
nnUNetSAMPlans_report for the given dataset, so nothing a user made is overwritten.
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np


def write_ct_like_dataset(root: str, dataset_id: int = 997, cases: int = 80, seed: int = 0) -> int:
    """nnU-Net raw + preprocessed folders holding only dataset.json, tiny images and a CT-like fingerprint."""
    import SimpleITK as sitk

    name = f"Dataset{dataset_id:03d}_CTLike"
    raw, pre = os.path.join(root, "raw", name), os.path.join(root, "pre", name)
    for d in (os.path.join(raw, "imagesTr"), os.path.join(raw, "labelsTr"), pre):
        os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    spacings, shapes = [], []
    for i in range(cases):
        in_plane = float(rng.uniform(0.68, 0.9))
        spacing = [1.5, in_plane, in_plane]
        shape = [int(rng.uniform(250, 350) / 1.5), int(512 * 0.78 / in_plane * 0.8), int(512 * 0.78 / in_plane * 0.8)]
        spacings.append(spacing)
        shapes.append(shape)
        image = sitk.GetImageFromArray(np.zeros((2, 2, 2), np.float32))
        image.SetSpacing(spacing[::-1])
        sitk.WriteImage(image, os.path.join(raw, "imagesTr", f"ct_{i:03d}_0000.nii.gz"))
        sitk.WriteImage(sitk.Cast(image, sitk.sitkUInt8), os.path.join(raw, "labelsTr", f"ct_{i:03d}.nii.gz"))
    with open(os.path.join(raw, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "tumour": 2},
                   "numTraining": cases, "file_ending": ".nii.gz"}, f)
    fingerprint = {
        "spacings": spacings, "shapes_after_crop": shapes, "median_relative_size_after_cropping": 1.0,
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 3000.0, "mean": 60.0, "median": 62.0, "min": -1000.0, "percentile_00_5": -60.0,
            "percentile_99_5": 250.0, "std": 50.0}}}
    with open(os.path.join(pre, "dataset_fingerprint.json"), "w") as f:
        json.dump(fingerprint, f)
    return dataset_id


def plan_rows(dataset_id: int, label: str, trainers, encoders, targets):
    from sam_nnunet.planners import SAMPlanner
    from sam_nnunet.planners.sam_planner import planned_method

    rows = []
    for trainer in trainers:
        for encoder in encoders:
            if planned_method(trainer, encoder).encoder != encoder:
                continue  # not an encoder of this trainer's family
            for target in targets:
                start = time.time()
                planner = SAMPlanner(dataset_id, gpu_memory_target_in_gb=target, plans_name="nnUNetSAMPlans_report",
                                     trainers=[trainer], encoder=encoder)
                plans = planner.plan_experiment()
                seconds = time.time() - start
                for name in ("3d_fullres", "3d_lowres"):
                    cfg = plans["configurations"].get(name)
                    if cfg is None:
                        continue
                    rec = cfg["sam_planner"]
                    stride = planner.methods[0].grid(cfg["architecture"]["arch_kwargs"]).stride
                    rows.append(f"| {label} | {trainer} | {encoder} | {target:g} | {name} | "
                                f"{' x '.join(f'{s:.2f}' for s in cfg['spacing'])} | {'x'.join(map(str, stride))} | "
                                f"{'x'.join(map(str, cfg['patch_size']))} | {cfg['batch_size']} | "
                                f"{rec['estimated_memory_gb']:.2f} | {rec['batch_size_limited_by'].split(' (')[0]} | "
                                f"{seconds:.0f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hippocampus-id", type=int, default=None)
    parser.add_argument("--ct", action="store_true")
    parser.add_argument("--trainers", nargs="+", default=["SAMAdapterTrainer", "SAM3DMedTrainer"])
    parser.add_argument("--encoders", nargs="+", default=["vit_b"])
    parser.add_argument("--targets", nargs="+", type=float, default=[8, 24, 80])
    args = parser.parse_args()

    rows = ["| dataset | trainer | encoder | target (GB) | configuration | spacing (mm) | token (voxels) | patch | "
            "batch | estimate (GB) | batch limited by | planning time (s) |", "|" + "---|" * 12]
    if args.hippocampus_id is not None:
        rows += plan_rows(args.hippocampus_id, "MSD hippocampus", args.trainers, args.encoders, args.targets)
    if args.ct:
        root = tempfile.mkdtemp(prefix="ct_like_")
        # nnU-Net reads its folders from the environment at use time
        os.environ.update(nnUNet_raw=os.path.join(root, "raw"), nnUNet_preprocessed=os.path.join(root, "pre"))
        rows += plan_rows(write_ct_like_dataset(root), "CT-like", args.trainers, args.encoders, args.targets)
    print("\n".join(rows))
    print(f"\nload average: {os.getloadavg()} (planning times depend on it; plans do not)")


if __name__ == "__main__":
    main()
