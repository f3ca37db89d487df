"""The dock widget: an image (opened with nnU-Net's readers, geometry kept, or any image layer), a prompted model
folder and folds, "Automatic" or an existing labels layer as the initial segmentation, then positive / negative
clicks (a Points layer) and 3D boxes (a Shapes layer), each one ``InteractiveSession`` round that updates ONE labels
layer (one value per class); undo, reset, save as NIfTI with the image's geometry, optional auto-save.

Axes: the layers hold the image as nnU-Net's reader returns it (SimpleITK: z, y, x) with the reader's spacing as
their scale, so a point's or a shape's *layer data coordinates* are the session's array indices, unchanged.
Every model call runs in a napari thread worker, one at a time in the order asked (a click made while the model
runs waits its turn); errors become napari notifications and take back the prompt that caused them.
"""
import os
from collections import deque
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                            QLineEdit, QProgressBar, QPushButton, QRadioButton, QSpinBox, QVBoxLayout, QWidget)

from sam_nnunet.errors import UserFacingExit
from sam_nnunet.inference.session import InteractiveSession

METADATA = "sam_nnunet"  # an image layer's metadata: {"files": [...]} of an image opened here
LABELS_NAME, POINTS_NAME, BOXES_NAME = "sam-nnunet segmentation", "sam-nnunet clicks", "sam-nnunet boxes"
POSITIVE_COLOR, NEGATIVE_COLOR = "lime", "magenta"
CHECKPOINT = "checkpoint_final.pth"
NIFTI = (".nii.gz", ".nii")


def file_ending(path: str) -> str:
    name = os.path.basename(path)
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


def read_image(files: Sequence[str], reader_class=None) -> Tuple[np.ndarray, dict, type]:
    """(image (C, *S), properties, reader class) of one file per channel, with ``reader_class`` (the model's) or the
    nnU-Net reader for the file ending."""
    files = list(files)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"no such image file: {', '.join(missing)}")
    if reader_class is None:
        reader_class = determine_reader_writer_from_file_ending(file_ending(files[0]), files[0], verbose=False)
    image, properties = reader_class().read_images(files)
    if image.ndim != 4:
        raise ValueError(f"{files[0]} is not a 3D image (nnU-Net's reader gave an array of shape {image.shape})")
    return image, properties, reader_class


def model_folds(folder: str) -> List[str]:
    """The folds of a model folder that hold a final checkpoint ("0".."4", "all")."""
    if not os.path.isdir(folder):
        return []
    return sorted(name[len("fold_"):] for name in os.listdir(folder)
                  if name.startswith("fold_") and os.path.isfile(os.path.join(folder, name, CHECKPOINT)))


def check_model_folder(folder: str, folds: Sequence[str]) -> None:
    """A message the user can act on before nnU-Net's loading fails with a bare KeyError / FileNotFoundError."""
    if not folder or not os.path.isdir(folder):
        raise ValueError(f"model folder {folder!r} does not exist: choose a trained model's folder, e.g. "
                         f"$nnUNet_results/Dataset004_Hippocampus/ZAP25DSAMTrainer_prompted__nnUNetPlans__3d_fullres")
    for name in ("plans.json", "dataset.json"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise ValueError(f"{folder} has no {name}: it is not an nnU-Net model folder (choose the folder "
                             f"Trainer__Plans__configuration that holds fold_0, fold_1, ...)")
    if not folds:
        raise ValueError("no fold chosen: enter one or more folds, e.g. '0' or '0 1 2 3 4'")
    missing = [f for f in folds if not os.path.isfile(os.path.join(folder, f"fold_{f}", CHECKPOINT))]
    if missing:
        have = model_folds(folder)
        raise ValueError(f"fold {', '.join(missing)} of {folder} has no {CHECKPOINT} (training not finished?); "
                         f"folds with one: {', '.join(have) if have else 'none'}")


def box_from_vertices(vertices: np.ndarray, shape: Sequence[int], depth: int) -> Tuple[List[int], List[int]]:
    """A napari shape's vertices (layer data coordinates = array indices) -> the 3D box's first and last voxel. A
    rectangle drawn on a slice is flat along the slice axis: there the box spans the slice +- ``depth``."""
    vertices = np.asarray(vertices, dtype=np.float64)
    low, high = np.rint(vertices.min(0)).astype(int), np.rint(vertices.max(0)).astype(int)
    flat = high == low
    low[flat] -= depth
    high[flat] += depth
    limit = np.asarray(shape) - 1
    return np.clip(low, 0, limit).tolist(), np.clip(high, 0, limit).tolist()


def layer_geometry(layer: Image) -> dict:
    """Reader-like properties of an image layer not opened here: its scale as spacing (array axes), its translate as
    origin, no rotation (SimpleITK's layout, for saving with SimpleITKIO)."""
    scale = [float(v) for v in layer.scale[-3:]]
    origin = [float(v) for v in layer.translate[-3:]]
    return {"spacing": scale, "sitk_stuff": {"spacing": tuple(scale[::-1]), "origin": tuple(origin[::-1]),
                                             "direction": tuple(np.eye(3).ravel().tolist())}}


def _caught(call: Callable):
    """(True, result) or (False, the exception): the widget shows it as one notification (a worker's own error
    signal would add napari's second one with a traceback)."""
    try:
        return True, call()
    except (Exception, UserFacingExit) as e:  # noqa: BLE001 -- every failure is shown to the user
        return False, e


def _path_row(form: QFormLayout, label: str, edit: QLineEdit, browse_dialog: Callable) -> None:
    """A form row of a path field and its "Browse..." button."""
    browse = QPushButton("Browse...")
    browse.clicked.connect(browse_dialog)
    row = QHBoxLayout()
    row.addWidget(edit, 1)
    row.addWidget(browse)
    form.addRow(label, row)


class SessionWidget(QWidget):
    """The dock widget (npe2 command ``sam-nnunet.interactive_segmentation``)."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session: Optional[InteractiveSession] = None
        self.model_folder: Optional[str] = None
        self.image_layer: Optional[Image] = None  # the image the session holds
        self.labels_layer: Optional[Labels] = None
        self.points_layer: Optional[Points] = None
        self.shapes_layer: Optional[Shapes] = None
        self._properties: Optional[dict] = None  # the reader's, for saving with the image's geometry
        self._writer = None
        self._jobs: deque = deque()
        self._worker = None
        self._prompts: List[Optional[Tuple[str, np.ndarray]]] = []  # per session interaction: its layer item
        self._seen = {"points": 0, "shapes": 0}  # layer items already handed to the session
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_layer_lists)
        self.viewer.layers.events.removed.connect(self._refresh_layer_lists)
        self._refresh_layer_lists()

    # ---- the controls -------------------------------------------------------------------------------------------
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        box = QGroupBox("Image")
        row = QHBoxLayout(box)
        self.image_combo = QComboBox()
        self.image_combo.activated.connect(lambda _: self._image_chosen())
        self.open_button = QPushButton("Open image...")
        self.open_button.clicked.connect(self._open_dialog)
        row.addWidget(self.image_combo, 1)
        row.addWidget(self.open_button)
        layout.addWidget(box)

        box = QGroupBox("Model (a prompted trainer's folder)")
        form = QFormLayout(box)
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText(".../ZAP25DSAMTrainer_prompted__nnUNetPlans__3d_fullres")
        self.model_edit.editingFinished.connect(self._fill_folds)
        _path_row(form, "folder", self.model_edit, self._model_dialog)
        self.folds_edit = QLineEdit()
        self.folds_edit.setPlaceholderText("0 1 2 3 4")
        form.addRow("folds", self.folds_edit)
        self.mirroring_check = QCheckBox("test-time mirroring (slower)")
        form.addRow(self.mirroring_check)
        self.load_button = QPushButton("Load model")
        self.load_button.clicked.connect(lambda: self.load_model())
        form.addRow(self.load_button)
        layout.addWidget(box)

        box = QGroupBox("Segment")
        form = QFormLayout(box)
        self.class_combo = QComboBox()
        form.addRow("class", self.class_combo)
        row = QHBoxLayout()
        self.positive_radio = QRadioButton("positive")
        self.negative_radio = QRadioButton("negative")
        self.positive_radio.setChecked(True)
        self.positive_radio.toggled.connect(lambda _: self._point_colour())
        row.addWidget(self.positive_radio)
        row.addWidget(self.negative_radio)
        form.addRow("clicks", row)
        self.depth_spin = QSpinBox()
        self.depth_spin.setRange(0, 512)
        self.depth_spin.setValue(5)
        self.depth_spin.setToolTip("a rectangle drawn on a slice spans this many slices before and after it")
        form.addRow("box depth +-", self.depth_spin)
        self.automatic_button = QPushButton("Automatic")
        self.automatic_button.clicked.connect(lambda: self.automatic())
        form.addRow(self.automatic_button)
        row = QHBoxLayout()
        self.initial_combo = QComboBox()
        self.initial_button = QPushButton("Use as initial")
        self.initial_button.clicked.connect(lambda: self.use_initial())
        row.addWidget(self.initial_combo, 1)
        row.addWidget(self.initial_button)
        form.addRow("labels layer", row)
        row = QHBoxLayout()
        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(lambda: self.undo())
        self.reset_button = QPushButton("Reset")
        self.reset_button.clicked.connect(lambda: self.reset())
        row.addWidget(self.undo_button)
        row.addWidget(self.reset_button)
        form.addRow(row)
        layout.addWidget(box)

        box = QGroupBox("Save (NIfTI, the image's spacing, origin and direction)")
        form = QFormLayout(box)
        self.save_edit = QLineEdit()
        self.save_edit.setPlaceholderText("segmentation.nii.gz")
        _path_row(form, "file", self.save_edit, self._save_dialog)
        self.autosave_check = QCheckBox("auto-save after every change")
        self.save_button = QPushButton("Save")
        self.save_button.clicked.connect(lambda: self.save())
        form.addRow(self.autosave_check)
        form.addRow(self.save_button)
        layout.addWidget(box)

        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # indeterminate: the busy indicator
        self.progress.setVisible(False)
        self.status = QLabel("load a prompted model and choose an image")
        self.status.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def _refresh_layer_lists(self, event=None) -> None:
        for combo, kind in ((self.image_combo, Image), (self.initial_combo, Labels)):
            current = combo.currentText()
            names = [layer.name for layer in self.viewer.layers if isinstance(layer, kind)
                     and layer.name != LABELS_NAME]  # not our own output (not yet assigned while inserted)
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)

    def _open_dialog(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Open image (one file per channel, nnU-Net's order)")
        if files:
            self.open_image(files)

    def _model_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Trained model folder (Trainer__Plans__configuration)")
        if folder:
            self.model_edit.setText(folder)
            self._fill_folds()

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save segmentation", self.save_edit.text(), "NIfTI (*.nii.gz)")
        if path:
            self.save_edit.setText(path)

    def _fill_folds(self) -> None:
        if not self.folds_edit.text().strip():
            self.folds_edit.setText(" ".join(model_folds(self.model_edit.text().strip())))

    # ---- the busy queue -----------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._worker is not None or bool(self._jobs)

    def _submit(self, what: str, call: Callable, done: Callable, prompt=None) -> None:
        """Run ``call`` in a thread worker after the jobs before it, then ``done(result)`` on the GUI thread.
        ``prompt``: the layer item that asked for it, taken back if the call fails."""
        self._jobs.append((what, call, done, prompt))
        self._next()

    def _next(self) -> None:
        if self._worker is not None:
            return
        if not self._jobs:
            self.progress.setVisible(False)
            return
        what, call, done, prompt = self._jobs.popleft()
        self.progress.setVisible(True)
        self.status.setText(f"running: {what}")
        worker = create_worker(_caught, call)
        worker.returned.connect(lambda result: self._returned(what, done, prompt, result))
        worker.finished.connect(self._finished)
        self._worker = worker
        worker.start()

    def _returned(self, what: str, done: Callable, prompt, result) -> None:
        ok, result = result
        if not ok:
            self._errored(what, prompt, result)
            return
        try:
            done(result)
            self.status.setText(f"done: {what}" + (f" ({len(self._prompts)} interactions)" if self.session else ""))
        except Exception as e:  # noqa: BLE001 -- shown, never only in the console
            self._errored(what, None, e)

    def _errored(self, what: str, prompt, error: Exception) -> None:
        message = f"{what}: {error}" if isinstance(error, (ValueError, OSError, RuntimeError, UserFacingExit)) \
            else f"{what}: {type(error).__name__}: {error}"
        self.status.setText(f"failed: {message}")
        show_error(message)
        if prompt is not None:
            self._remove_prompt(prompt)

    def _finished(self) -> None:
        self._worker = None
        self._next()

    # ---- model and image ----------------------------------------------------------------------------------------
    def load_model(self, folder: Optional[str] = None, folds: Optional[Sequence] = None) -> None:
        folder = folder or self.model_edit.text().strip()
        if not folder:
            show_error("choose a model folder first (Browse...): a prompted trainer's Trainer__Plans__configuration")
            return
        folder = os.path.abspath(os.path.expanduser(folder))
        self.model_edit.setText(folder)
        if folds is not None:
            self.folds_edit.setText(" ".join(str(f) for f in folds))
        self._fill_folds()
        chosen = self.folds_edit.text().replace(",", " ").split()
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        mirroring = self.mirroring_check.isChecked()

        def call():
            check_model_folder(folder, chosen)
            return InteractiveSession.from_model_folder(
                folder, [f if f == "all" else int(f) for f in chosen], device, disable_tta=not mirroring)

        def done(session):
            self.session, self.model_folder = session, folder
            self.class_combo.clear()
            labels = session.predictor.dataset_json["labels"]
            self.class_combo.addItems([name for name in labels if name != "background"])
            if self.image_combo.currentText():
                self._image_chosen()

        self._submit(f"load model {os.path.basename(folder)} (folds {' '.join(chosen)})", call, done)

    def open_image(self, files) -> Image:
        """Read an image (one file per channel) with the model's reader (without a model: nnU-Net's for the file
        ending) and show its first channel as an image layer with the reader's spacing; the session takes it."""
        files = [files] if isinstance(files, str) else list(files)
        reader = self.session.predictor.plans_manager.image_reader_writer_class if self.session else None
        try:
            image, properties, _ = read_image(files, reader)
        except Exception as e:  # noqa: BLE001 -- a notification the user can act on
            show_error(f"open image: {e}")
            raise
        layer = self.viewer.add_image(image[0], name=os.path.basename(files[0]), scale=properties["spacing"],
                                      metadata={METADATA: {"files": files}})
        self.image_combo.setCurrentText(layer.name)
        self._image_chosen()
        return layer

    def _image_chosen(self) -> None:
        name = self.image_combo.currentText()
        if not name or self.session is None:
            return
        layer = self.viewer.layers[name]
        session = self.session
        files = layer.metadata.get(METADATA, {}).get("files")

        def call():
            reader = session.predictor.plans_manager.image_reader_writer_class
            if files:  # the model's reader, as the model was trained (its axes and spacing)
                image, properties, writer = read_image(files, reader)
            else:
                data = np.asarray(layer.data, dtype=np.float32)
                if data.ndim != 3 or layer.rgb:
                    raise ValueError(f"layer {name!r} is not a 3D single-channel image (shape {data.shape}); open "
                                     f"the image file(s) with 'Open image...' instead")
                image, properties, writer = data[None], layer_geometry(layer), None
            session.set_image(image, properties, files[0] if files else None)
            return image, properties, writer

        def done(result):
            image, properties, writer = result
            if files and tuple(layer.data.shape) != image.shape[1:]:  # opened before the model, by another reader
                layer.data, layer.scale = image[0], properties["spacing"]
            self.image_layer, self._properties, self._writer = layer, properties, writer or SimpleITKIO
            self._new_prompt_layers()

        self._submit(f"set image {name}", call, done)

    def _new_prompt_layers(self) -> None:
        """A fresh labels, points and shapes layer on the image's grid (scale, translate): their data coordinates are
        the image's array indices."""
        for layer in (self.labels_layer, self.points_layer, self.shapes_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        image = self.image_layer
        grid = {"scale": image.scale, "translate": image.translate}
        self.labels_layer = self.viewer.add_labels(np.zeros(image.data.shape[-3:], np.uint8), name=LABELS_NAME,
                                                   opacity=0.5, **grid)
        self.shapes_layer = self.viewer.add_shapes(ndim=3, name=BOXES_NAME, edge_color="yellow", face_color=[0] * 4,
                                                   edge_width=0.5, **grid)
        self.points_layer = self.viewer.add_points(ndim=3, name=POINTS_NAME, size=2, **grid)
        self._point_colour()
        self._prompts, self._seen = [], {"points": 0, "shapes": 0}
        self.points_layer.events.data.connect(self._points_changed)
        self.shapes_layer.events.data.connect(self._shapes_changed)
        self.viewer.layers.selection.active = self.points_layer

    def _point_colour(self) -> None:
        if self.points_layer is not None:
            self.points_layer.selected_data = set()  # the colour is for the next click, not the selected ones
            self.points_layer.current_face_color = POSITIVE_COLOR if self.positive_radio.isChecked() \
                else NEGATIVE_COLOR

    # ---- interactions -------------------------------------------------------------------------------------------
    def _ready(self) -> bool:
        if self.session is None or self.image_layer is None:
            show_error("load a prompted model and choose an image first")
            return False
        return True

    def _points_changed(self, event) -> None:
        layer = self.points_layer
        if getattr(event, "action", None) != "added":
            self._seen["points"] = min(self._seen["points"], len(layer.data))  # removed by hand: not the session's
            return
        for position in np.array(layer.data[self._seen["points"]:], dtype=np.float64):
            self.add_click(position, positive=self.positive_radio.isChecked())
        self._seen["points"] = len(layer.data)

    def _shapes_changed(self, event) -> None:
        layer = self.shapes_layer
        if getattr(event, "action", None) != "added":
            self._seen["shapes"] = min(self._seen["shapes"], len(layer.data))
            return
        for vertices in layer.data[self._seen["shapes"]:]:
            self.add_box(np.array(vertices, dtype=np.float64))
        self._seen["shapes"] = len(layer.data)

    def add_click(self, position, positive: bool = True) -> None:
        """One round with a click at ``position`` (points layer data coordinates = array index) of the selected
        class; the points layer's point at that position is its prompt (undo removes it)."""
        if not self._ready():
            return
        session, label = self.session, self.class_combo.currentText()
        position = np.asarray(position, dtype=np.float64)
        kind = "positive" if positive else "negative"
        self._submit(f"{kind} click {np.round(position, 1).tolist()} ({label})",
                     lambda: session.add_click(position, label, positive),
                     lambda mask: self._interacted(mask, ("points", position)), ("points", position))

    def add_box(self, vertices: np.ndarray) -> None:
        """One round with the 3D box of a shape's ``vertices`` (shapes layer data coordinates) of the selected
        class."""
        if not self._ready():
            return
        session, label = self.session, self.class_combo.currentText()
        first, last = box_from_vertices(vertices, self.labels_layer.data.shape, self.depth_spin.value())
        self._submit(f"box {first}..{last} ({label})", lambda: session.add_box(first, last, label),
                     lambda mask: self._interacted(mask, ("shapes", vertices)), ("shapes", vertices))

    def automatic(self) -> None:
        """The model's automatic segmentation as the initial one (undo takes it back)."""
        if self._ready():
            session = self.session
            self._submit("automatic segmentation", session.automatic, lambda mask: self._interacted(mask, None))

    def use_initial(self, layer: Optional[Labels] = None) -> None:
        """A labels layer (values: the model's labels) as the initial segmentation (undo takes it back)."""
        if not self._ready():
            return
        name = layer.name if layer is not None else self.initial_combo.currentText()
        if not name:
            show_error("no labels layer to start from: open or draw one first")
            return
        data, session = np.asarray(self.viewer.layers[name].data).copy(), self.session
        self._submit(f"initial segmentation from {name}", lambda: session.set_initial_segmentation(data),
                     lambda mask: self._interacted(mask, None))

    def undo(self) -> None:
        """Take the last interaction back (its click or box too)."""
        if not self._ready():
            return

        def done(mask):
            prompt = self._prompts.pop()
            if prompt is not None:
                self._remove_prompt(prompt)
            self._show(mask)

        self._submit("undo", self.session.undo, done)

    def reset(self) -> None:
        """Forget every interaction: no prompt, an empty segmentation (the image stays encoded)."""
        if not self._ready():
            return
        session = self.session

        def done(_):
            self._prompts = []
            for layer in (self.points_layer, self.shapes_layer):
                layer.selected_data = set(range(len(layer.data)))
                layer.remove_selected()
            self._seen = {"points": 0, "shapes": 0}
            self._show(session.get_mask())

        self._submit("reset", session.reset, done)

    def _interacted(self, mask: np.ndarray, prompt) -> None:
        self._prompts.append(prompt)
        self._show(mask)

    def _show(self, mask: np.ndarray) -> None:
        self.labels_layer.data = np.asarray(mask)
        if self.autosave_check.isChecked():
            self.save()

    def _remove_prompt(self, prompt) -> None:
        """Remove a prompt's item (the last one with its coordinates) from its layer."""
        kind, value = prompt
        layer = self.points_layer if kind == "points" else self.shapes_layer
        items = [np.asarray(v, dtype=np.float64) for v in layer.data]
        matches = [i for i, v in enumerate(items) if v.shape == value.shape and np.allclose(v, value)]
        if matches:
            layer.selected_data = {matches[-1]}
            layer.remove_selected()
            self._seen[kind] = min(self._seen[kind], len(layer.data))

    # ---- saving -------------------------------------------------------------------------------------------------
    def save(self, path: Optional[str] = None) -> Optional[str]:
        """Write the labels layer as NIfTI with the image's spacing, origin and direction (the reader's own writer
        and properties). Returns the path, None where it could not (a notification says why)."""
        path = os.path.abspath(os.path.expanduser(path or self.save_edit.text().strip())) \
            if (path or self.save_edit.text().strip()) else ""
        try:
            if self.labels_layer is None or self._properties is None:
                raise ValueError("nothing to save yet: load a model and choose an image")
            if not path:
                raise ValueError("no file to save to: enter one under Save (e.g. case_seg.nii.gz)")
            if not path.endswith(NIFTI):
                raise ValueError(f"{path}: the segmentation is saved as NIfTI, name it .nii.gz or .nii")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._writer().write_seg(np.asarray(self.labels_layer.data), path, self._properties)
        except Exception as e:  # noqa: BLE001 -- a notification, not a console traceback
            show_error(f"save: {e}")
            return None
        self.save_edit.setText(path)
        show_info(f"saved {path}")
        return path
