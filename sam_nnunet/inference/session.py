"""An interactive segmentation session in the shape nnInteractive's users know: set an image, add clicks and boxes
(positive or negative clicks; boxes are positive), get the current mask, undo, reset.

    session = InteractiveSession.from_model_folder(".../ZAP25DSAMTrainer_prompted__nnUNetPlans__3d_fullres", (0,))
    session.set_image_file("case_0000.nii.gz")           # or set_image(array, properties) as nnU-Net's reader gives
    mask = session.add_box([10, 20, 5], [18, 31, 9], "Anterior")     # array indices (the reader's axes)
    mask = session.add_click([14, 25, 7], "Anterior", positive=False)
    mask = session.undo()

Every interaction is a refinement round: the model is run with all prompts so far and the previous prediction as its
mask prompt, and the new prediction replaces the previous one where its change is connected to the new prompt
(``merge="progressive"``, FocalClick's progressive merge; ``merge="none"``: everywhere;
``sam_nnunet.inference.predict.refine_case_prompts``). The image goes through nnU-Net's preprocessing once, and
the frozen encoder's output of every tile (and mirroring) is kept in the predictor's embedding cache, so an
interaction runs only the decoder (ZAP25DPromptedNetwork).
"""
import copy
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from sam_nnunet.inference.geometry import (ClickOutsideError, check_box, file_index_to_array, world_box_to_file_index,
                                           world_to_file_index)
from sam_nnunet.inference.initial_segmentation import check_initial_segmentation, initial_logits
from sam_nnunet.inference.predict import CasePrompts, load_prompted_predictor, predict_case_prompts, \
    refine_case_prompts
from sam_nnunet.inference.predictor import PromptedPredictor
from sam_nnunet.inference.prompt_file import Box, Click, PromptFileError, box_label, class_channels, \
    click_point_label
from sam_nnunet.inference.session_inputs import SessionError, class_label, convention, position
from sam_nnunet.prompts.corrections import MERGES

COORDINATES = ("array", "voxel", "world")


class InteractiveSession:
    """Interactive segmentation of one image at a time with a prompted model (``PromptedPredictor``).

    Arguments:
      predictor: a PromptedPredictor with the trained model (``from_model_folder`` builds one).
      world_convention: "LPS" (ITK) or "RAS" (nibabel, Slicer) for world coordinates (any case; checked here and
        whenever it is set).
      merge: "progressive" (an interaction changes the mask only where the change is connected to it) or "none".
      click_guarantee: None (default) or a radius in voxels: after every interaction each click so far holds its
        class within it -- a post-hoc rule (``prompts.guarantee``), not the network's doing.
    """

    def __init__(self, predictor: PromptedPredictor, world_convention: str = "LPS",
                 merge: str = "progressive", click_guarantee: Optional[float] = None) -> None:
        predictor.check_network_takes_clicks()
        if merge not in MERGES:
            raise SessionError(f"merge must be one of {', '.join(MERGES)}, not {merge!r}")
        self.predictor = predictor
        self.world_convention = world_convention  # checked by the property, before any image is set
        self.merge = merge
        if click_guarantee is not None and not click_guarantee >= 0:
            raise SessionError(f"click_guarantee is None or a radius in voxels >= 0, not {click_guarantee!r}")
        self.click_guarantee = click_guarantee
        lm = predictor.label_manager
        self._channels = class_channels(predictor.dataset_json["labels"], lm.has_regions)
        self._data: Optional[torch.Tensor] = None
        self._properties: Optional[dict] = None
        self._image_file: Optional[str] = None
        self._shape: Optional[Tuple[int, ...]] = None
        self._history: List[Tuple[CasePrompts, torch.Tensor, np.ndarray]] = []  # after each interaction

    @classmethod
    def from_model_folder(cls, model_folder: str, folds: Sequence[Union[int, str]] = (0,),
                          device: Optional[torch.device] = None, tiles: str = "clicked", disable_tta: bool = False,
                          checkpoint_name: str = "checkpoint_final.pth",
                          merge: str = "progressive", world_convention: str = "LPS") -> "InteractiveSession":
        """``tiles``: "clicked" (default: only tiles holding a prompt are predicted, as ZAP-2.5DSAM tests), "all",
        "centred" (see PromptedPredictor)."""
        world_convention = convention(world_convention)  # before the model loads
        return cls(load_prompted_predictor(model_folder, folds, device or torch.device("cpu"), tiles,
                                           disable_tta=disable_tta, checkpoint_name=checkpoint_name), merge=merge,
                   world_convention=world_convention)

    @property
    def world_convention(self) -> str:
        return self._world_convention

    @world_convention.setter
    def world_convention(self, value: str) -> None:
        self._world_convention = convention(value)

    # ---- the image ----------------------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, properties: dict, image_file: Optional[str] = None) -> None:
        """image (C, *S) (or (*S), one channel) as nnU-Net's reader returns it, with the reader's ``properties``
        (``spacing``, ...); ``image_file``: its file, needed for world coordinates. Clears the interactions."""
        pm, cm = self.predictor.plans_manager, self.predictor.configuration_manager
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4:
            raise SessionError(f"set_image takes an image (C, X, Y, Z) or (X, Y, Z), not one of shape {image.shape}")
        if "spacing" not in properties:
            raise SessionError("set_image needs the reader's properties with the image's 'spacing' (nnU-Net's "
                               "reader returns them: image, properties = reader.read_images([file]))")
        properties = copy.deepcopy(properties)
        preprocessor = cm.preprocessor_class(verbose=False)
        data, _, properties = preprocessor.run_case_npy(image, None, properties, pm, cm, self.predictor.dataset_json)
        self._data = torch.from_numpy(np.ascontiguousarray(data))
        self._properties = properties
        self._image_file = image_file
        self._shape = tuple(image.shape[1:])
        self.predictor.embedding_cache = {}  # a new image: the encoder runs again, once per tile
        self._history = []

    def set_image_file(self, files: Union[str, Sequence[str]]) -> None:
        """Read the image file(s) (one per channel, nnU-Net's order) with the model's reader, then ``set_image``."""
        files = [files] if isinstance(files, str) else list(files)
        image, properties = self.predictor.plans_manager.image_reader_writer_class().read_images(files)
        self.set_image(image, properties, files[0])

    # ---- interactions -------------------------------------------------------------------------------------------
    def add_click(self, point: Sequence[float], label: Union[int, str], positive: bool = True,
                  coordinates: str = "array") -> np.ndarray:
        """A click (``coordinates``: "array" = index in the image as set_image took it; "voxel" = the file's (i, j, k);
        "world" = mm) of class ``label`` (a name of the model's dataset.json or, label-based, its value); negative:
        "not this class". Returns the new mask."""
        self._need_image()
        where = f"click {point!r}"
        point = position(point, where)
        if not isinstance(positive, bool):
            raise SessionError(f"{where}: positive must be True or False, not {positive!r}")
        try:
            value = click_point_label(Click(point, class_label(label, where), positive), self._channels,
                                      self.predictor.label_manager.has_regions, where)
        except PromptFileError as e:
            raise SessionError(str(e)) from None
        p = self._to_array(np.asarray(point, dtype=np.float64)[None], coordinates)[0]
        shape = np.asarray(self._shape, dtype=np.float64)
        if not np.all(np.isfinite(p)) or np.any(p < -0.5) or np.any(p >= shape - 0.5):
            raise SessionError(f"{where} ({coordinates} coordinates; array index {np.round(p, 2).tolist()}) lies "
                               f"outside the image (array shape {list(self._shape)})")
        return self._interact(self.interactions.add(points=p[None], labels=[value], at_round=len(self._history)))

    def add_box(self, first: Sequence[float], last: Sequence[float], label: Union[int, str], positive: bool = True,
                coordinates: str = "array") -> np.ndarray:
        """A box from its first to its last voxel (inclusive; world: two opposite corners in mm) around class
        ``label``. Boxes are positive: SAM's prompt encoder has no negative box (correct with negative clicks).
        Returns the new mask."""
        self._need_image()
        where = f"box {first!r}, {last!r}"
        first, last = position(first, where + " (first corner)"), position(last, where + " (last corner)")
        if not positive:
            raise SessionError(f"{where}: a box says \"class c is in here\"; SAM's prompt encoder has no negative "
                               f"box. Correct with negative clicks (add_click(..., positive=False))")
        try:
            value = box_label(Box(first, last, class_label(label, where)), self._channels,
                              self.predictor.label_manager.has_regions, where)
        except PromptFileError as e:
            raise SessionError(str(e)) from None
        if coordinates == "world":
            corners = file_index_to_array(world_box_to_file_index(first, last, self._need_file(),
                                                                  self.world_convention),
                                          self.predictor.plans_manager.image_reader_writer_class.__name__)
        else:
            corners = self._to_array(np.array([first, last], dtype=np.float64), coordinates)
        names = ("k", "j", "i") if coordinates == "voxel" else ("axis 0", "axis 1", "axis 2")
        try:
            corners = check_box(corners, self._shape, ordered=coordinates != "world", axis_names=names)
        except ClickOutsideError as e:
            raise SessionError(f"{where} ({coordinates} coordinates): {e}") from None
        return self._interact(self.interactions.add(boxes=corners[None], box_labels=[value],
                                                    at_round=len(self._history)))

    def automatic(self) -> np.ndarray:
        """The model's automatic segmentation (no prompt, every tile whatever ``tiles`` says) as the current one: an
        interaction (undo takes it back) that the next interactions refine. Returns the new mask."""
        self._need_image()
        p = self.predictor
        tiles, p.tiles = p.tiles, "all"  # "clicked" / "centred" predict nothing without a prompt
        try:
            logits = predict_case_prompts(p, self._data, CasePrompts.of(), self._properties).cpu()
        finally:
            p.tiles = tiles
        return self._push(CasePrompts.of(), logits)

    def set_initial_segmentation(self, segmentation: np.ndarray, properties: Optional[dict] = None) -> np.ndarray:
        """A segmentation (*S) of the image as set_image took it, valued with the model's labels (nnUNetv2_predict's
        output, a saved or a hand-drawn one), as the current one: an interaction (undo takes it back) that the next
        interactions refine; its logits (+-10 per output) are their mask prompt. ``properties``: its reader's
        properties, to check spacing and orientation against the image's too
        (``initial_segmentation.check_initial_segmentation``). Returns it, unchanged."""
        self._need_image()
        p = self.predictor
        segmentation = check_initial_segmentation(segmentation, self._shape, p.label_manager,
                                                  p.dataset_json["labels"], properties=properties,
                                                  image_properties=self._properties, error=SessionError)
        logits = initial_logits(segmentation, self._properties, self._data.shape[1:], p.plans_manager,
                                p.configuration_manager, p.label_manager)
        self._history.append((CasePrompts.of(), logits, np.array(segmentation, copy=True)))
        return self._history[-1][2]

    def set_initial_segmentation_file(self, path: str) -> np.ndarray:
        """``set_initial_segmentation`` of a label file (nnUNetv2_predict's output), read with the model's reader;
        its spacing, orientation and origin are checked against the image's."""
        self._need_image()
        segmentation, properties = self.predictor.plans_manager.image_reader_writer_class().read_seg(path)
        return self.set_initial_segmentation(segmentation, properties)

    def get_mask(self) -> np.ndarray:
        """The current segmentation (*S), in the image as set_image took it (background before any interaction)."""
        self._need_image()
        if not self._history:
            return np.zeros(self._shape, dtype=np.uint8)
        return self._history[-1][2]

    def undo(self) -> np.ndarray:
        """Take the last interaction back (its prediction too). Returns the mask before it."""
        self._need_image()
        if not self._history:
            raise SessionError("nothing to undo: no interaction since set_image or reset")
        self._history.pop()
        return self.get_mask()

    def reset(self) -> None:
        """Forget every interaction (the image, and the encoder's output for it, stay)."""
        self._need_image()
        self._history = []

    @property
    def logits(self) -> Optional[torch.Tensor]:
        """The current prediction's logits (num_heads, *preprocessed shape), None before any interaction."""
        return self._history[-1][1] if self._history else None

    @property
    def interactions(self) -> CasePrompts:
        """The prompts so far (array indices), each with the round (interaction) it was added in."""
        return self._history[-1][0] if self._history else CasePrompts.of()

    # ---- internals ----------------------------------------------------------------------------------------------
    def _need_image(self) -> None:
        if self._data is None:
            raise SessionError("no image in this session yet: call set_image(image, properties) or "
                               "set_image_file(path) first")

    def _need_file(self) -> str:
        if self._image_file is None:
            raise SessionError("world coordinates need the image's header: use set_image_file(path), or "
                               "set_image(..., image_file=path)")
        return self._image_file

    def _to_array(self, points: np.ndarray, coordinates: str) -> np.ndarray:
        if coordinates not in COORDINATES:
            raise SessionError(f"coordinates must be one of {', '.join(COORDINATES)}, not {coordinates!r}")
        if coordinates == "array":
            return points
        reader = self.predictor.plans_manager.image_reader_writer_class.__name__
        if coordinates == "world":
            points = world_to_file_index(points, self._need_file(), self.world_convention)
        try:
            return file_index_to_array(points, reader)
        except ValueError as e:
            raise SessionError(str(e)) from None

    def _interact(self, prompts: CasePrompts) -> np.ndarray:
        p = self.predictor
        # the previous prediction refines only where the network takes a mask prompt (not the adapter's _public)
        refines = getattr(p.plain_network, "takes_boxes", False)
        previous = self._history[-1][1] if self._history and refines else None
        try:
            logits = refine_case_prompts(p, self._data, prompts, self._properties, previous, self.merge,
                                         self.click_guarantee).cpu()
        except ClickOutsideError as e:
            raise SessionError(str(e)) from None
        return self._push(prompts, logits)

    def _push(self, prompts: CasePrompts, logits: torch.Tensor) -> np.ndarray:
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        p = self.predictor
        segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, p.plans_manager, p.configuration_manager, p.label_manager, self._properties,
            return_probabilities=False)
        self._history.append((prompts, logits, np.asarray(segmentation)))
        return self._history[-1][2]
