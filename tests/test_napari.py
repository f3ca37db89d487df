"""The napari plugin in a real viewer (napari's make_napari_viewer, a virtual display from pytest-xvfb): a tiny
ZAP25DSAMTrainer_prompted model folder written here (nothing trained), an image with an anisotropic spacing, a
flipped axis and an origin; automatic, a positive and a negative click, a box, undo, reset, a labels layer as the
initial segmentation, save and auto-save. The labels layer and the saved file must equal what InteractiveSession
gives for the same prompts at the same array indices, the saved file must carry the image's geometry, and errors
must arrive as notifications."""
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json, maybe_mkdir_p, save_json

pytestmark = pytest.mark.napari
napari = pytest.importorskip("napari", reason="the napari plugin's tests need pip install -e '.[napari]' "
                                              "(scripts/setup.sh installs it)")

if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):  # Qt would abort the whole worker
    pytest.skip("no display: pytest-xvfb starts one when Xvfb is installed (apt-get install xvfb; scripts/setup.sh "
                "does as root)", allow_module_level=True)

from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO  # noqa: E402

from sam_nnunet.inference.session import InteractiveSession  # noqa: E402
from sam_nnunet.napari_plugin import widget as widget_module  # noqa: E402
from sam_nnunet.napari_plugin.widget import SessionWidget, box_from_vertices  # noqa: E402
from sam_nnunet.networks.zap25d import ZAP25DNetwork  # noqa: E402
from sam_nnunet.networks.zap25d_prompted import ZAP25DPromptedNetwork  # noqa: E402

WAIT_MS = 60_000


def _model_folder(root, dataset, trainer, net, network_class):
    """A model folder as nnU-Net's trainer writes it: plans naming the network (patch 16^3: a few tiles), the
    dataset.json, fold_0's final checkpoint."""
    plans = load_json(os.path.join(dataset["preprocessed"], "nnUNetPlans.json"))
    configuration = plans["configurations"]["3d_fullres"]
    configuration["patch_size"] = [16, 16, 16]
    configuration["architecture"] = {"network_class_name": network_class,
                                     "arch_kwargs": {"encoder": "vit_test", "window_size": 4},
                                     "_kw_requires_import": []}
    folder = os.path.join(str(root), f"{trainer}__nnUNetPlans__3d_fullres")
    maybe_mkdir_p(os.path.join(folder, "fold_0"))
    save_json(plans, os.path.join(folder, "plans.json"))
    save_json(load_json(os.path.join(dataset["preprocessed"], "dataset.json")), os.path.join(folder, "dataset.json"))
    torch.save({"network_weights": net.state_dict(), "trainer_name": trainer,
                "init_args": {"configuration": "3d_fullres", "fold": 0}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    return folder


@pytest.fixture(scope="module")
def model_folder(synthetic_dataset, tmp_path_factory):
    torch.manual_seed(0)
    net = ZAP25DPromptedNetwork(1, 3, "vit_test", window_size=4)
    with torch.no_grad():  # random prompt embeddings that move the masks: clicks and boxes change the labels
        for p in net.prompt_encoder.parameters():
            p.normal_()
    return _model_folder(tmp_path_factory.mktemp("results"), synthetic_dataset, "ZAP25DSAMTrainer_prompted", net,
                         "sam_nnunet.networks.zap25d_prompted.ZAP25DPromptedNetwork")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """(x, y, z) = (20, 24, 18) voxels: array (z, y, x) = (18, 24, 20); anisotropic spacing, x flipped, an origin."""
    rng = np.random.default_rng(0)
    array = rng.normal(size=(18, 24, 20)).astype(np.float32)
    array[6:12, 8:16, 5:14] += 3  # a bright block for the model to see
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9, 1.1, 1.3))
    image.SetOrigin((12.0, -7.0, 3.5))
    image.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    path = str(tmp_path_factory.mktemp("images") / "case_0000.nii.gz")
    sitk.WriteImage(image, path)
    return path


@pytest.fixture
def notifications(monkeypatch):
    shown = []
    monkeypatch.setattr(widget_module, "show_error", shown.append)
    return shown


def _widget(make_napari_viewer, qtbot, model_folder, image_file):
    viewer = make_napari_viewer()
    widget = SessionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.open_image(image_file)  # before a model: nnU-Net's reader for .nii.gz, then the model's
    widget.model_edit.setText(model_folder)
    widget.folds_edit.setText("0")
    widget.load_button.click()
    _wait(qtbot, widget)
    return viewer, widget


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def _reference(model_folder, image_file):
    """The session API on its own, as a Python user would drive it (the widget's defaults: no mirroring)."""
    session = InteractiveSession.from_model_folder(model_folder, (0,), disable_tta=True)
    image, properties = SimpleITKIO().read_images([image_file])
    session.set_image(image, properties, image_file)
    return session


def test_widget_segments_corrects_undoes_and_saves_as_the_session_does(make_napari_viewer, qtbot, model_folder,
                                                                        image_file, tmp_path, notifications):
    viewer, widget = _widget(make_napari_viewer, qtbot, model_folder, image_file)
    reference = _reference(model_folder, image_file)
    assert [widget.class_combo.itemText(i) for i in range(widget.class_combo.count())] == ["anterior", "posterior"]
    image = widget.image_layer
    assert image.data.shape == (18, 24, 20)
    np.testing.assert_allclose(image.scale, (1.3, 1.1, 0.9))  # the reader's spacing, in the array's axes
    for layer in (widget.labels_layer, widget.points_layer, widget.shapes_layer):
        np.testing.assert_allclose(layer.scale, image.scale)
    labels = widget.labels_layer

    widget.automatic_button.click()
    _wait(qtbot, widget)
    np.testing.assert_array_equal(labels.data, reference.automatic())

    # a click with napari's Points layer: its data coordinates are the session's array index, axis for axis
    widget.class_combo.setCurrentText("anterior")
    widget.points_layer.add([9.0, 12.0, 10.0])
    _wait(qtbot, widget)
    np.testing.assert_allclose(widget.session.interactions.points[-1], [9.0, 12.0, 10.0])
    positive = reference.add_click([9, 12, 10], "anterior")
    np.testing.assert_array_equal(labels.data, positive)

    widget.negative_radio.setChecked(True)
    widget.points_layer.add([8.0, 10.0, 7.0])
    _wait(qtbot, widget)
    np.testing.assert_array_equal(labels.data, reference.add_click([8, 10, 7], "anterior", positive=False))
    assert widget.session.interactions.labels.tolist() == reference.interactions.labels.tolist()

    # a rectangle drawn on slice 9 spans the slices 9 +- depth
    widget.class_combo.setCurrentText("posterior")
    widget.depth_spin.setValue(2)
    widget.shapes_layer.add_rectangles(np.array([[9, 4, 3], [9, 4, 15], [9, 16, 15], [9, 16, 3]], dtype=float))
    _wait(qtbot, widget)
    boxed = reference.add_box([7, 4, 3], [11, 16, 15], "posterior")
    np.testing.assert_array_equal(widget.session.interactions.boxes, [[[7, 4, 3], [11, 16, 15]]])
    np.testing.assert_array_equal(labels.data, boxed)
    assert (labels.data != positive).any()  # the interactions changed the segmentation

    # undo: the box, then the negative click, each with its prompt on its layer
    widget.undo_button.click()
    _wait(qtbot, widget)
    negative = reference.undo()
    np.testing.assert_array_equal(labels.data, negative)
    assert len(widget.shapes_layer.data) == 0 and len(widget.points_layer.data) == 2
    widget.undo_button.click()
    _wait(qtbot, widget)
    np.testing.assert_array_equal(labels.data, reference.undo())
    np.testing.assert_allclose(widget.points_layer.data, [[9, 12, 10]])

    # save: the labels as NIfTI with the image's spacing, origin and direction
    out = str(tmp_path / "out" / "case_seg.nii.gz")
    widget.save_edit.setText(out)
    widget.save_button.click()
    saved, original = sitk.ReadImage(out), sitk.ReadImage(image_file)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(saved), positive)
    for attribute in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(saved, attribute)(), getattr(original, attribute)(), atol=1e-6)

    # auto-save: the next click is written without asking
    widget.autosave_check.setChecked(True)
    widget.positive_radio.setChecked(True)
    widget.points_layer.add([10.0, 11.0, 9.0])
    _wait(qtbot, widget)
    clicked = reference.add_click([10, 11, 9], "posterior")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(out)), clicked)

    # a click outside the image: a notification, the point taken back, the session unchanged
    widget.points_layer.add([30.0, 11.0, 9.0])
    _wait(qtbot, widget)
    assert len(notifications) == 1 and "lies outside the image (array shape [18, 24, 20])" in notifications[0]
    assert len(widget.points_layer.data) == 2 and len(widget.session.interactions.labels) == 2

    # reset: no prompt, an empty segmentation
    widget.reset_button.click()
    _wait(qtbot, widget)
    assert (labels.data == 0).all() and len(widget.points_layer.data) == 0
    assert len(widget.session.interactions.labels) == 0


def test_a_labels_layer_as_initial_segmentation_then_refined(make_napari_viewer, qtbot, model_folder, image_file,
                                                             notifications):
    viewer, widget = _widget(make_napari_viewer, qtbot, model_folder, image_file)
    reference = _reference(model_folder, image_file)
    assert [widget.initial_combo.itemText(i) for i in range(widget.initial_combo.count())] == []  # not its own
    drawn = np.zeros((18, 24, 20), np.uint8)
    drawn[6:12, 8:16, 5:10] = 1
    drawn[6:12, 8:16, 10:14] = 2
    viewer.add_labels(drawn, name="drawn", scale=widget.image_layer.scale)
    widget.initial_combo.setCurrentText("drawn")
    widget.initial_button.click()
    _wait(qtbot, widget)
    np.testing.assert_array_equal(widget.labels_layer.data, drawn)
    widget.class_combo.setCurrentText("posterior")
    widget.points_layer.add([9.0, 12.0, 12.0])
    _wait(qtbot, widget)
    reference.set_initial_segmentation(drawn)
    np.testing.assert_array_equal(widget.labels_layer.data, reference.add_click([9, 12, 12], "posterior"))
    assert not notifications

    bad = drawn.copy()
    bad[0, 0, 0] = 7
    viewer.add_labels(bad, name="bad")
    widget.use_initial(viewer.layers["bad"])
    _wait(qtbot, widget)
    assert "values [7] that are no label of this model" in notifications[-1]


def test_model_folder_messages(make_napari_viewer, qtbot, synthetic_dataset, tmp_path, notifications):
    viewer = make_napari_viewer()
    widget = SessionWidget(viewer)
    widget.load_button.click()
    assert "choose a model folder first" in notifications[-1]
    widget.load_model(str(tmp_path / "nowhere"), folds=[0])
    _wait(qtbot, widget)
    assert "does not exist: choose a trained model's folder" in notifications[-1]
    torch.manual_seed(0)
    automatic_only = _model_folder(tmp_path, synthetic_dataset, "ZAP25DSAMTrainer",
                                   ZAP25DNetwork(1, 3, "vit_test", window_size=4),
                                   "sam_nnunet.networks.zap25d.ZAP25DNetwork")
    widget.load_model(automatic_only, folds=[3])
    _wait(qtbot, widget)
    assert "fold 3 of" in notifications[-1] and "folds with one: 0" in notifications[-1]
    widget.load_model(automatic_only, folds=[0])
    _wait(qtbot, widget)
    assert "takes no clicks" in notifications[-1] and "train a prompted trainer" in notifications[-1]
    assert widget.session is None
    widget.automatic()  # nothing loaded: says what to do
    assert "load a prompted model and choose an image first" in notifications[-1]


def test_box_from_a_rectangle_and_from_3d_vertices():
    flat = np.array([[4, 2.4, 3.0], [4, 2.4, 9.6], [4, 7.0, 9.6], [4, 7.0, 3.0]])
    assert box_from_vertices(flat, (10, 12, 14), 3) == ([1, 2, 3], [7, 7, 10])
    assert box_from_vertices(flat, (6, 12, 14), 3) == ([1, 2, 3], [5, 7, 10])  # clipped to the image
    solid = np.array([[1, 2, 3], [5, 6, 7]])
    assert box_from_vertices(solid, (10, 12, 14), 3) == ([1, 2, 3], [5, 6, 7])


def test_npe2_manifest_validates_and_names_the_widget():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("sam-nnunet")  # the installed entry point and package data
    (widget,) = manifest.contributions.widgets
    (command,) = [c for c in manifest.contributions.commands if c.id == widget.command]
    assert command.python_name == "sam_nnunet.napari_plugin.widget:SessionWidget"
    assert widget.display_name == "Interactive segmentation"


def test_an_image_layer_of_its_own_and_test_time_mirroring(make_napari_viewer, qtbot, model_folder, tmp_path,
                                                           notifications):
    """An image layer not opened by the widget: its array axes are the session's, its scale the spacing; saved
    with that spacing and its translate as origin. Mirroring on: the session's predictor mirrors as the reference's."""
    viewer = make_napari_viewer()
    widget = SessionWidget(viewer)
    array = np.random.default_rng(1).normal(size=(12, 18, 14)).astype(np.float32)
    array[3:9, 5:12, 4:10] += 3
    viewer.add_image(array, name="plain", scale=(1.2, 1.0, 0.8), translate=(5.0, -2.0, 1.0))
    widget.image_combo.setCurrentText("plain")
    widget.mirroring_check.setChecked(True)
    widget.load_model(model_folder, folds=[0])
    _wait(qtbot, widget)
    assert widget.session.predictor.use_mirroring and widget.image_layer is viewer.layers["plain"]
    widget.class_combo.setCurrentText("posterior")
    widget.points_layer.add([6.0, 8.0, 7.0])
    _wait(qtbot, widget)
    reference = InteractiveSession.from_model_folder(model_folder, (0,), disable_tta=False)
    reference.set_image(array[None], {"spacing": [1.2, 1.0, 0.8]})
    np.testing.assert_array_equal(widget.labels_layer.data, reference.add_click([6, 8, 7], "posterior"))
    out = widget.save(str(tmp_path / "plain.nii.gz"))
    saved = sitk.ReadImage(out)
    np.testing.assert_allclose(saved.GetSpacing(), (0.8, 1.0, 1.2))
    np.testing.assert_allclose(saved.GetOrigin(), (1.0, -2.0, 5.0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(saved), widget.labels_layer.data)
    assert widget.save(str(tmp_path / "plain.png")) is None and "name it .nii.gz or .nii" in notifications[-1]
