"""Demo data and the end-to-end demo (``sam-nnunet demo``): the stock nnU-Net commands, run on our trainer.

A user without data gets a small synthetic dataset generated here (two adjacent structures in noisy volumes, shaped
like the MSD hippocampus task); a user with Medical Segmentation Decathlon data points the demo at a Task folder.
"""
import json
import os
from typing import Dict, List, Optional

import numpy as np

from sam_nnunet.commands import run_command
from sam_nnunet.encoders.litemedsam import LITEMEDSAM
from sam_nnunet.encoders.registry import ENCODERS
from sam_nnunet.nnunet_env import required_environment
from sam_nnunet.synthetic import synthetic_case, write_image
from sam_nnunet.trainers.registry import get_trainer_class

DEMO_DATASET_ID = 990
DEMO_DATASET_NAME = "SAMDemo"
# 6 x 25 iterations: enough for the tiny random encoder of the default trainer to segment the synthetic structures
# (2 x 10 gave Dice 0.33 / 0.0; after 5 x 25 nnU-Net's pseudo Dice was 0.87 / 0.79), a few minutes on 2 CPU cores
DEMO_TRAINER = "SAMAdapterTrainer"
DEMO_EPOCHS = 6
DEMO_ITERATIONS = 25
DEMO_CACHE_COPIES = 2  # ZAP on LiteMedSAM: augmented copies per case in the embedding cache


def make_synthetic_dataset(nnunet_raw: str, dataset_id: int = DEMO_DATASET_ID, num_train: int = 12,
                           num_test: int = 3, seed: int = 0) -> str:
    """Write an nnU-Net raw dataset (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json); returns its folder."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    folder = os.path.join(nnunet_raw, f"Dataset{dataset_id:03d}_{DEMO_DATASET_NAME}")
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num_train + num_test):
        image, label = synthetic_case(rng)
        split = "Tr" if i < num_train else "Ts"
        name = f"demo_{i:03d}"
        write_image(image, os.path.join(folder, f"images{split}", f"{name}_0000.nii.gz"), (1.0, 1.0, 1.0))
        write_image(label, os.path.join(folder, f"labels{split}", f"{name}.nii.gz"), (1.0, 1.0, 1.0))
    generate_dataset_json(folder, {0: "MRI"}, {"background": 0, "anterior": 1, "posterior": 2}, num_train,
                          ".nii.gz", dataset_name=f"Dataset{dataset_id:03d}_{DEMO_DATASET_NAME}",
                          description="synthetic demo data of sam-nnunet (two adjacent structures in noise)")
    return folder


def make_msd_subset(msd_task_dir: str, out_parent: str, num_train: int, num_test: int) -> str:
    """A Decathlon Task folder with the first ``num_train`` training cases, plus ``num_test`` further labelled
    training cases placed in imagesTs (their labels in labelsTs), as links. Converts with
    ``nnUNetv2_convert_MSD_dataset`` like the full task; the held-out labels allow evaluating predictions."""
    with open(os.path.join(msd_task_dir, "dataset.json")) as f:
        meta = json.load(f)
    cases = sorted(os.path.basename(t["image"]) for t in meta["training"])
    if len(cases) < num_train + num_test:
        raise ValueError(f"{msd_task_dir} has {len(cases)} training cases, fewer than {num_train + num_test}")
    out = os.path.join(out_parent, os.path.basename(os.path.normpath(msd_task_dir)))
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    train, test = cases[:num_train], cases[num_train:num_train + num_test]
    for name in train:
        for sub in ("imagesTr", "labelsTr"):
            os.symlink(os.path.join(os.path.abspath(msd_task_dir), sub, name), os.path.join(out, sub, name))
    for name in test:
        os.symlink(os.path.join(os.path.abspath(msd_task_dir), "imagesTr", name), os.path.join(out, "imagesTs", name))
        os.symlink(os.path.join(os.path.abspath(msd_task_dir), "labelsTr", name), os.path.join(out, "labelsTs", name))
    meta["training"] = [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in train]
    meta["numTraining"] = len(train)
    meta["test"] = [f"./imagesTs/{n}" for n in test]
    meta["numTest"] = len(test)
    with open(os.path.join(out, "dataset.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return out


def run_demo(work_dir: str, msd_task: Optional[str] = None, trainer: str = DEMO_TRAINER,
             epochs: int = DEMO_EPOCHS, iterations: int = DEMO_ITERATIONS, fold: int = 0, seed: Optional[int] = 0,
             tiny_encoder: bool = False) -> str:
    """Generate (or convert) a dataset, plan and preprocess, train one fold, predict the test images, evaluate.

    Every step is the stock nnU-Net command line. The encoder: nnUNet_SAM_checkpoint when the user set one; else
    LiteMedSAM's real weights (installed with sam-nnunet) for a trainer that takes them (ZAP25DSAMTrainer); else,
    or with ``tiny_encoder``, the tiny random-weight encoder of the trainer's family (``vit_test``,
    ``sam2_test``) with nnUNet_SAM_allow_random_init=1 (said so). ``seed`` (nnUNet_SAM_seed) makes the run repeat.
    Returns the folder of predictions.
    """
    env = dict(os.environ)
    env.update(required_environment(work_dir))
    env.setdefault("nnUNet_def_n_proc", str(min(4, os.cpu_count() or 1)))
    env.setdefault("nnUNet_n_proc_DA", str(min(4, os.cpu_count() or 1)))
    env.setdefault("nnUNet_SAM_num_epochs", str(epochs))
    env.setdefault("nnUNet_SAM_iterations_per_epoch", str(iterations))
    if seed is not None:
        env.setdefault("nnUNet_SAM_seed", str(seed))
    families = _encoder_families(trainer)
    if not env.get("nnUNet_SAM_checkpoint") and not env.get("nnUNet_SAM_encoder"):
        if LITEMEDSAM.name in families and not tiny_encoder:
            env["nnUNet_SAM_encoder"] = LITEMEDSAM.name
            env.setdefault("nnUNet_SAM_cache_copies", str(DEMO_CACHE_COPIES))
            print(f"The demo trains {trainer} on LiteMedSAM's pretrained weights (installed with sam-nnunet; "
                  f"--tiny-encoder: a tiny random-weight encoder instead).")
        else:
            test_encoder = _test_encoder(families)
            env["nnUNet_SAM_encoder"] = test_encoder
            env.setdefault("nnUNet_SAM_allow_random_init", "1")
            print(f"The demo trains the tiny random-weight encoder '{test_encoder}' (a smoke run of the pipeline, "
                  "not a foundation model). Export nnUNet_SAM_checkpoint=/path/to/sam_vit_b_01ec64.pth to run it "
                  "with real SAM weights.")
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key], exist_ok=True)
    if os.path.isdir(work_dir) and os.listdir(env["nnUNet_results"]):
        raise SystemExit(f"sam-nnunet demo: {work_dir} holds results of an earlier demo; remove it or pass "
                         f"another --work-dir")

    device = "cuda" if _cuda_available() else "cpu"
    if msd_task:
        run_command(["nnUNetv2_convert_MSD_dataset", "-i", msd_task], env)
        task_id = int(os.path.basename(os.path.normpath(msd_task)).split("_")[0][4:])
        dataset = [d for d in os.listdir(env["nnUNet_raw"]) if d.startswith(f"Dataset{task_id:03d}_")][0]
    else:
        print(f"Generating a synthetic dataset in {env['nnUNet_raw']}", flush=True)
        dataset = os.path.basename(make_synthetic_dataset(env["nnUNet_raw"]))
    dataset_id = dataset[len("Dataset"):len("Dataset") + 3]
    raw = os.path.join(env["nnUNet_raw"], dataset)
    predictions = os.path.join(work_dir, "predictions")

    run_command(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", "3d_fullres", "-np", "2",
                 "--verify_dataset_integrity"], env)
    # seeded: the training's augmentation in its own process, where the seed reaches it (nnU-Net's workers draw
    # unseeded); only there: nnU-Net's planner takes nnUNet_n_proc_DA as its torch thread count
    train_env = dict(env, nnUNet_n_proc_DA="0") if seed is not None else env
    run_command(["nnUNetv2_train", dataset_id, "3d_fullres", str(fold), "-tr", trainer, "-device", device], train_env)
    run_command(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", predictions, "-d", dataset_id,
                 "-c", "3d_fullres", "-tr", trainer, "-f", str(fold), "-device", device, "-npp", "1", "-nps", "1"], env)
    labels_ts = os.path.join(raw, "labelsTs")
    if os.path.isdir(labels_ts) and os.listdir(labels_ts):
        run_command(["nnUNetv2_evaluate_folder", labels_ts, predictions, "-djfile",
                     os.path.join(predictions, "dataset.json"), "-pfile", os.path.join(predictions, "plans.json")], env)
        with open(os.path.join(predictions, "summary.json")) as f:
            summary = json.load(f)
        print("\nDice on the held-out test cases: " + ", ".join(
            f"label {k}: {v['Dice']:.3f}" for k, v in summary["mean"].items()))
    print(f"\nPredictions: {predictions}\nModel: {env['nnUNet_results']}/{dataset}/{trainer}__nnUNetPlans__3d_fullres")
    return predictions


def _encoder_families(trainer: str) -> tuple:
    try:
        return tuple(get_trainer_class(trainer).encoder_families)
    except ValueError:  # not one of ours (e.g. nnU-Net's own trainer): no encoder is used
        return ("sam_vit",)


def _test_encoder(families: tuple) -> str:
    """The tiny random-weight encoder of a trainer's encoder family (vit_test for SAM ViT, sam2_test for SAM 2)."""
    return next(n for n, spec in ENCODERS.items() if spec.family in families and n.endswith("_test"))


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()
