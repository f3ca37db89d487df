"""Render the napari plugin on a real hippocampus case, headless, for documentation/napari.md.

    .venv/bin/python scripts/napari_screenshot.py [--msd ../shared/data/Task04_Hippocampus]
        [--model .../ZAP25DSAMTrainer_prompted__nnUNetPlans__3d_fullres] [--out documentation/napari_plugin.png]

The widget is opened through the npe2 manifest, as napari's Plugins menu opens it, and driven as a user does: load
the model, open the image, draw a box around the anterior hippocampus on one slice (box depth: the slices it
spans) and, with a trained model, one around the posterior one. The boxes come from the case's reference label.

Without ``--model`` the model is ZAP25DSAMTrainer_prompted with LiteMedSAM's real weights and no training
(zero-shot: the frozen encoder, prompt encoder and mask decoder as published; Dice 0.465 with one box in
prompts.md), in a model folder written from nnU-Net's plans of the task: no training is needed to run this.
Without a display it starts Xvfb (apt-get install xvfb).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER = "ZAP25DSAMTrainer_prompted"


def start_display() -> "subprocess.Popen | None":
    """Xvfb on a free display number (-displayfd) unless there is a display."""
    if os.environ.get("DISPLAY"):
        return None
    if shutil.which("Xvfb") is None:
        sys.exit("no display and no Xvfb: apt-get install xvfb (scripts/setup.sh does as root)")
    read, write = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                              pass_fds=(write,), stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as f:
        os.environ["DISPLAY"] = ":" + f.readline().strip()
    return server


def run(cmd, env) -> None:
    done = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def zero_shot_model(msd: str, work: str) -> str:
    """A ZAP25DSAMTrainer_prompted model folder with LiteMedSAM's published weights: nnU-Net's plans of a few cases
    of the task (fingerprint and plan only), the architecture the trainer writes into them, fold 0's checkpoint."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json, maybe_mkdir_p, save_json

    from sam_nnunet.demo import make_msd_subset
    from sam_nnunet.encoders.contract import window_from_plans
    from sam_nnunet.encoders.pretrained import choose_encoder
    from sam_nnunet.networks.zap25d_prompted import ZAP25DPromptedNetwork
    from sam_nnunet.nnunet_env import required_environment
    from sam_nnunet.trainers.zap25d_prompted import ZAP25DSAMTrainer_prompted as Trainer

    env = {**os.environ, **required_environment(os.path.join(work, "nnunet")), "nnUNet_SAM_encoder": "litemedsam"}
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key], exist_ok=True)
    task = make_msd_subset(msd, os.path.join(work, "msd"), num_train=10, num_test=1)
    bin_dir = os.path.dirname(sys.executable)
    run([os.path.join(bin_dir, "nnUNetv2_convert_MSD_dataset"), "-i", task, "-np", 2], env)
    run([os.path.join(bin_dir, "nnUNetv2_extract_fingerprint"), "-d", 4, "-np", 2], env)
    run([os.path.join(bin_dir, "nnUNetv2_plan_experiment"), "-d", 4], env)
    preprocessed = os.path.join(env["nnUNet_preprocessed"], "Dataset004_Hippocampus")
    plans = load_json(os.path.join(preprocessed, "nnUNetPlans.json"))
    kwargs = {**Trainer.encoder_kwargs("litemedsam"), **Trainer.network_kwargs, **Trainer.label_kwargs(False),
              "input_window": window_from_plans(plans, "3d_fullres").to_kwargs()}  # LiteMedSAM's input contract
    plans["configurations"]["3d_fullres"]["architecture"] = {
        "network_class_name": Trainer.network_class, "arch_kwargs": {"encoder": "litemedsam", **kwargs},
        "_kw_requires_import": []}
    folder = os.path.join(env["nnUNet_results"], "Dataset004_Hippocampus", f"{TRAINER}__nnUNetPlans__3d_fullres")
    maybe_mkdir_p(os.path.join(folder, "fold_0"))
    save_json(plans, os.path.join(folder, "plans.json"))
    save_json(load_json(os.path.join(preprocessed, "dataset.json")), os.path.join(folder, "dataset.json"))
    os.environ.update(env)  # the widget's predictor finds the trainer through nnUNet_extTrainer
    choice = choose_encoder(TRAINER, Trainer.encoder_families)
    net = ZAP25DPromptedNetwork(1, 3, **{"encoder": "litemedsam", **kwargs})
    net.load_pretrained(choice.state_dict, choice.checkpoint)
    torch.save({"network_weights": net.state_dict(), "trainer_name": TRAINER,
                "init_args": {"configuration": "3d_fullres", "fold": 0},
                "inference_allowed_mirroring_axes": (0, 1, 2)}, os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    image = os.path.join(env["nnUNet_raw"], "Dataset004_Hippocampus", "imagesTs")
    return folder, os.path.join(image, sorted(os.listdir(image))[0])


def boxes(label: np.ndarray):
    """The slice (axis 0) showing most of both structures, and on it each structure's rectangle (its in-slice
    bounding box) with the box depth that spans its slices: MedSAM's and LiteMedSAM's prompt, a box per structure."""
    both = [(np.count_nonzero(label[z] == 1) * np.count_nonzero(label[z] == 2), z) for z in range(label.shape[0])]
    z = max(both)[1]
    out = []
    for c in (1, 2):
        ys, xs = np.nonzero(label[z] == c)
        zs = np.nonzero((label == c).any(axis=(1, 2)))[0]
        rectangle = np.array([[z, ys.min(), xs.min()], [z, ys.min(), xs.max()], [z, ys.max(), xs.max()],
                              [z, ys.max(), xs.min()]], dtype=float)
        out.append((c, rectangle, int(max(z - zs.min(), zs.max() - z))))
    return z, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--msd", default=os.path.join(REPO, "..", "shared", "data", "Task04_Hippocampus"))
    parser.add_argument("--model", help="a trained ZAP25DSAMTrainer_prompted model folder (default: zero-shot "
                                        "LiteMedSAM, see above)")
    parser.add_argument("--image", help="the case to show (default: a case of --msd)")
    parser.add_argument("--label", help="its reference label, for the prompts (default: the case's in --msd)")
    parser.add_argument("--out", default=os.path.join(REPO, "documentation", "napari_plugin.png"))
    args = parser.parse_args()
    server = start_display()
    work = tempfile.mkdtemp(prefix="sam_nnunet_screenshot_")
    try:
        shoot(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if server is not None:
            server.terminate()


def shoot(args, work: str) -> None:
    import napari
    import SimpleITK as sitk
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from sam_nnunet.nnunet_env import required_environment

    os.environ.update(required_environment())
    zero_shot = not args.model
    if args.model:
        folder, image = args.model, args.image
        if not image:
            sys.exit("--model needs --image (and --label)")
    else:
        folder, image = zero_shot_model(os.path.abspath(args.msd), work)
    case = os.path.basename(image)[:-len("_0000.nii.gz")]
    label_file = args.label or os.path.join(os.path.abspath(args.msd), "labelsTr", case + ".nii.gz")
    label = sitk.GetArrayFromImage(sitk.ReadImage(label_file))  # the reader's axes (z, y, x), as the widget's layers

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 880)
    _, widget = viewer.window.add_plugin_dock_widget("sam-nnunet", "Interactive segmentation")

    def wait():
        while widget.busy:
            QApplication.processEvents()
            time.sleep(0.05)
        QApplication.processEvents()

    started = time.time()
    widget.load_model(folder, folds=[0])
    wait()
    widget.open_image(image)
    wait()
    if widget.session is None or widget.labels_layer is None:
        sys.exit(f"the widget did not get ready: {widget.status.text()}")
    z, rectangles = boxes(label)
    names = {c: widget.class_combo.itemText(c - 1) for c in (1, 2)}  # dataset.json's order: Anterior, Posterior
    # one box: zero-shot LiteMedSAM segments from a box, but not from a box plus its own previous mask as the
    # next rounds give it (documentation/napari.md); a trained model takes every round
    for c, rectangle, depth in rectangles[:1 if zero_shot else 2]:
        widget.class_combo.setCurrentText(names[c])
        widget.depth_spin.setValue(depth)
        widget.shapes_layer.add_rectangles(rectangle)
        wait()
    print(f"model, image and the boxes: {time.time() - started:.0f} s")
    mask = widget.labels_layer.data
    for c in (1, 2):
        dice = 2 * np.count_nonzero((mask == c) & (label == c)) / max(1, np.count_nonzero(mask == c) +
                                                                       np.count_nonzero(label == c))
        print(f"class {c}: Dice {dice:.3f} against the reference (this case)")
    viewer.dims.set_point(0, z * widget.image_layer.scale[0])
    viewer.layers.selection.active = widget.shapes_layer
    viewer.reset_view()
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.hide()  # e.g. napari's PyQt5 deprecation notice, over the canvas
    QApplication.processEvents()
    picture = Image.fromarray(viewer.screenshot(canvas_only=False, flash=False))
    picture = picture.convert("RGB").quantize(colors=128)  # a small PNG for the repository
    picture.save(args.out, optimize=True)
    print(f"{args.out}: {picture.size[0]}x{picture.size[1]}, {os.path.getsize(args.out) // 1024} KB")
    viewer.close()


if __name__ == "__main__":
    main()
