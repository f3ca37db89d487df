"""nnU-Net's predictor, with clicks: every sliding-window tile receives the clicks that fall inside it.

Everything else is nnU-Net's ``nnUNetPredictor``: model folder loading (its checkpoints read with
``weights_only=True``, see ``sam_nnunet.nnunet_checkpoint``), fold ensembling, Gaussian blending of the tiles,
export. What changes:
  - ``predict_logits_with_clicks(data, point_coords, point_labels)``: the case's clicks, in the preprocessed volume;
  - each tile gets the clicks inside it, shifted to tile coordinates; mirroring (test-time augmentation) mirrors
    the clicks with the tile;
  - which tiles are predicted (``tiles``):
      "all"      every tile; tiles without a click are segmented automatically (no clicks);
      "clicked"  only tiles holding a click; the others are background (ZAP-2.5DSAM's test protocol: windows
                 without a prompt return zero logits) or, in a refinement round, the previous mask (issue 35: an
                 initial segmentation stays where no prompt reaches);
      "centred"  a single tile centred on the bounding box of all clicks; the rest is background (3DSAM-adapter's
                 test protocol: one patch around the clicks).
    Zero logits mean background (softmax argmax picks class 0; sigmoid 0.5 is not above the threshold) and leave
    the blended prediction of neighbouring tiles unchanged up to a positive factor.
  - boxes and the previous mask (networks with ``takes_boxes``): a tile gets the boxes that overlap it, clipped to
    it (a tile holding part of a box counts as prompted for "clicked"), and its part of the mask prompt; both are
    mirrored with the tile;
  - ``embedding_cache`` (a dict, off by default): the frozen encoder's output of every tile, mirroring and fold is
    kept, so that predicting the same image again with other prompts (an interactive session,
    ``sam_nnunet.inference.session``) runs the decoder only (networks with ``encoded``: ZAP25DPromptedNetwork).
"""
import itertools
from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from sam_nnunet.nnunet_checkpoint import SafeCheckpointPredictor
from sam_nnunet.nnunet_prediction import inference_autocast, unwrapped
from sam_nnunet.prompts.corrections import mask_prompt

TILE_MODES = ("all", "clicked", "centred")


class TilePrompts(NamedTuple):
    """The prompts of a case or a tile, in its voxel coordinates (``sam_nnunet.prompts.clicks`` / ``.boxes``)."""
    coords: torch.Tensor                 # (N, 3)
    labels: torch.Tensor                 # (N,)
    boxes: Optional[torch.Tensor]        # (M, 2, 3) first and last voxel, or None
    box_labels: Optional[torch.Tensor]   # (M,)
    mask: Optional[torch.Tensor]         # (k, *S) previous mask logits, or None

    @property
    def empty(self) -> bool:
        return self.labels.numel() == 0 and (self.box_labels is None or self.box_labels.numel() == 0)


NO_PROMPTS = TilePrompts(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), None, None, None)


class PromptedPredictor(SafeCheckpointPredictor):
    """``nnUNetPredictor`` for networks that take clicks (``network(x, point_coords, point_labels)``).

    Arguments: ``tiles`` (see the module docstring) and those of ``nnUNetPredictor``.
    """

    def __init__(self, tiles: str = "all", **kwargs) -> None:
        super().__init__(**kwargs)
        if tiles not in TILE_MODES:
            raise ValueError(f"tiles must be one of {', '.join(TILE_MODES)}, not {tiles!r}")
        self.tiles = tiles
        self._case_clicks: Optional[TilePrompts] = None  # in the volume being predicted
        self._tile_slicers = None
        self.embedding_cache: Optional[dict] = None  # {(fold, tile start, mirroring): CachedEmbeddings}; None: off
        self._fold_index = 0

    # ---- the network -------------------------------------------------------------------------------------------
    @property
    def plain_network(self):
        return unwrapped(self.network)

    def check_network_takes_clicks(self) -> None:
        if not getattr(self.plain_network, "takes_clicks", False):
            raise ValueError(
                f"the model was trained with {self.trainer_name}, whose network {type(self.plain_network).__name__} "
                f"takes no clicks. Predict it with nnUNetv2_predict, or train a prompted trainer "
                f"(SAMAdapterTrainer_prompted, ZAP25DSAMTrainer_prompted) for click prompts")

    def check_network_takes_boxes(self) -> None:
        if not getattr(self.plain_network, "takes_boxes", False):
            raise ValueError(
                f"the model was trained with {self.trainer_name}, whose network {type(self.plain_network).__name__} "
                f"takes clicks but no boxes or previous mask; boxes and refinement rounds need "
                f"ZAP25DSAMTrainer_prompted or SAMAdapterTrainer_prompted (not its _public variant; "
                f"documentation/prompts.md)")

    # ---- a case -------------------------------------------------------------------------------------------------
    def predict_logits_with_clicks(self, data: torch.Tensor, point_coords: np.ndarray, point_labels: np.ndarray,
                                   boxes: Optional[np.ndarray] = None, box_labels: Optional[np.ndarray] = None,
                                   mask_prompt: Optional[torch.Tensor] = None) -> torch.Tensor:
        """data (C, *S): a preprocessed case; point_coords (N, 3) positions in it; point_labels (N,) (see
        ``sam_nnunet.prompts.clicks``); boxes (M, 2, 3) first and last voxel, box_labels (M,)
        (``sam_nnunet.prompts.boxes``); mask_prompt (k, *S): the previous prediction's mask logits
        (``mask_prompt_of``). Returns logits (num_heads, *S) as ``predict_logits_from_preprocessed_data`` (averaged
        over the folds)."""
        coords = torch.as_tensor(np.asarray(point_coords, dtype=np.float32).reshape(-1, 3))
        labels = torch.as_tensor(np.asarray(point_labels, dtype=np.int64).reshape(-1))
        if coords.shape[0] != labels.shape[0]:
            raise ValueError(f"{coords.shape[0]} click positions but {labels.shape[0]} click labels")
        if boxes is not None or mask_prompt is not None:
            self.check_network_takes_boxes()
        if boxes is not None:
            boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 2, 3))
            box_labels = torch.as_tensor(np.asarray(box_labels, dtype=np.int64).reshape(-1))
        if mask_prompt is not None:
            mask_prompt = torch.as_tensor(mask_prompt, dtype=torch.float32)
            if tuple(mask_prompt.shape[1:]) != tuple(data.shape[1:]):
                raise ValueError(f"the mask prompt is {tuple(mask_prompt.shape[1:])}, the case {tuple(data.shape[1:])}")
        self._case_clicks = TilePrompts(coords, labels, boxes, box_labels, mask_prompt)
        self._fold_index = 0
        try:
            return self.predict_logits_from_preprocessed_data(data)
        finally:
            self._case_clicks = None

    def mask_prompt_of(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted logits (num_heads, *S) -> the mask prompt of the next round (k, *S) (``corrections.mask_prompt``:
        label-based, the mask outputs' logits relative to the background logit)."""
        return mask_prompt(logits, self.label_manager.has_regions)

    @torch.inference_mode()
    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> torch.Tensor:
        case = self._case_clicks if self._case_clicks is not None else NO_PROMPTS
        # pad to the patch size here (as nnU-Net would, centred, with zeros), so the prompts can be shifted with it
        patch = self.configuration_manager.patch_size
        shape = input_image.shape[1:]
        below = [max(0, p - s) // 2 for p, s in zip(patch, shape)]
        above = [max(0, p - s) - b for p, s, b in zip(patch, shape, below)]
        pads = [v for b, a in zip(reversed(below), reversed(above)) for v in (b, a)]
        padded = F.pad(input_image, pads)
        outer = self._case_clicks
        shift = torch.tensor(below, dtype=torch.float32)
        self._case_clicks = TilePrompts(
            case.coords + shift, case.labels, None if case.boxes is None else case.boxes + shift, case.box_labels,
            None if case.mask is None else F.pad(case.mask, pads, value=-20.0))  # padding: background
        try:
            with inference_autocast(self.device, self.network):
                if self.tiles == "centred":
                    logits = self._predict_centred_tile(padded)
                else:
                    logits = super().predict_sliding_window_return_logits(padded)
        finally:
            self._case_clicks = outer
            self._fold_index += 1  # nnU-Net predicts the folds one after the other
        return logits[(slice(None),) + tuple(slice(b, b + s) for b, s in zip(below, shape))]

    def _internal_predict_sliding_window_return_logits(self, data: torch.Tensor, slicers, do_on_device: bool = True):
        # nnU-Net predicts the tiles in the order of ``slicers`` (one producer thread, a FIFO queue)
        self._tile_slicers = iter(slicers)
        try:
            logits = super()._internal_predict_sliding_window_return_logits(data, slicers, do_on_device)
            if next(self._tile_slicers, None) is not None:
                raise RuntimeError("tiles and their positions went out of step; this nnU-Net version predicts tiles "
                                   "differently from 2.8.1")
            return logits
        finally:
            self._tile_slicers = None

    # ---- a tile -------------------------------------------------------------------------------------------------
    def _clicks_in(self, start, size) -> TilePrompts:
        """The case's prompts that fall in the tile at ``start`` of ``size``, in tile coordinates: the clicks inside
        it, the boxes overlapping it (clipped to it), its part of the mask prompt."""
        case = self._case_clicks if self._case_clicks is not None else NO_PROMPTS
        origin = torch.as_tensor(start, dtype=torch.float32)
        extent = torch.as_tensor(size, dtype=torch.float32)
        local = case.coords - origin
        inside = ((local >= -0.5) & (local < extent - 0.5)).all(dim=1)
        boxes, box_labels = case.boxes, case.box_labels
        if boxes is not None:
            boxes = boxes - origin
            overlap = ((boxes[:, 1] > -0.5) & (boxes[:, 0] < extent - 0.5)).all(dim=1)
            boxes = torch.stack([boxes[:, 0].maximum(torch.zeros(3)), boxes[:, 1].minimum(extent - 1)], 1)
            boxes, box_labels = boxes[overlap], box_labels[overlap]
        mask = None
        if case.mask is not None:
            mask = case.mask[(slice(None),) + tuple(slice(int(s), int(s) + int(n)) for s, n in zip(start, size))]
        return TilePrompts(local[inside], case.labels[inside], boxes, box_labels, mask)

    @torch.inference_mode()
    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[2:])
        if self._tile_slicers is None:  # not from the sliding window: no position, no clicks
            start, prompts = None, self._clicks_in([0] * len(size), [0] * len(size))._replace(mask=None)
        else:
            tile = next(self._tile_slicers)
            start = tuple(s.start for s in tile[1:])
            prompts = self._clicks_in(start, size)
            if self.tiles == "clicked" and prompts.empty:
                return self._unprompted_tile(x, prompts.mask)
        return self.mirror_and_predict(x, prompts.coords, prompts.labels, prompts, start)

    def _unprompted_tile(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """A tile that "clicked" does not predict: zero logits, or, where a previous mask is given (a refinement
        round, an initial segmentation), logits that give that mask back (label-based: background logit 0 and the
        mask logits, which are relative to it), so a round without a prompt in a tile keeps what was there."""
        logits = x.new_zeros((x.shape[0], self.label_manager.num_segmentation_heads, *x.shape[2:]))
        if mask is not None:
            first = 0 if self.label_manager.has_regions else 1
            logits[:, first:] = mask[None].to(logits.device, logits.dtype)
        return logits

    def _network_input(self, x: torch.Tensor, key):
        """The tile itself, or (``embedding_cache``) the frozen encoder's output for it, computed once per key."""
        net = self.plain_network
        if self.embedding_cache is None or key is None or not hasattr(net, "encoded"):
            return x
        key = (self._fold_index,) + key
        if key not in self.embedding_cache:
            self.embedding_cache[key] = net.encoded(x)
        return self.embedding_cache[key]

    @torch.inference_mode()
    def mirror_and_predict(self, x: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor,
                           more: Optional[TilePrompts] = None, start: Optional[Tuple[int, ...]] = None
                           ) -> torch.Tensor:
        """x (1, C, *P) and its clicks (n, 3), (n,) (``more``: also its boxes and mask prompt) -> logits (1, K, *P),
        averaged over nnU-Net's mirrorings (the prompts mirrored with the tile). ``start``: the tile's position,
        the key of the embedding cache."""
        # pad the clicks to a multiple of 8 with empty slots (label -1): few distinct shapes for torch.compile
        pad = -labels.shape[0] % 8
        coords = torch.cat([coords, coords.new_zeros(pad, 3)])
        labels = torch.cat([labels, labels.new_full((pad,), -1)])
        point_coords = coords[None].to(x.device, torch.float32)
        point_labels = labels[None].to(x.device)
        extra = {}
        if more is not None and more.boxes is not None and more.boxes.shape[0]:
            extra["boxes"], extra["box_labels"] = more.boxes[None].to(x.device), more.box_labels[None].to(x.device)
        if more is not None and more.mask is not None:
            extra["mask_prompt"] = more.mask[None].to(x.device)
        key = None if start is None else (tuple(start), ())
        prediction = self.network(self._network_input(x, key), point_coords, point_labels, **extra)
        mirror_axes = self.allowed_mirroring_axes if self.use_mirroring else None
        if mirror_axes is not None:
            axes = [m + 2 for m in mirror_axes]
            combinations = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
            for combination in combinations:
                mirrored = point_coords.clone()
                flipped = dict(extra)
                for axis in combination:
                    mirrored[..., axis - 2] = x.shape[axis] - 1 - mirrored[..., axis - 2]
                if "boxes" in extra:  # first and last voxel swap places along a mirrored axis
                    b = extra["boxes"].clone()
                    for axis in combination:
                        b[..., axis - 2] = x.shape[axis] - 1 - b[..., axis - 2].flip(-1)
                    flipped["boxes"] = b
                if "mask_prompt" in extra:
                    flipped["mask_prompt"] = torch.flip(extra["mask_prompt"], combination)
                key = None if start is None else (tuple(start), combination)
                flipped_x = self._network_input(torch.flip(x, combination), key)
                prediction += torch.flip(self.network(flipped_x, mirrored, point_labels, **flipped), combination)
            prediction /= len(combinations) + 1
        return prediction

    @torch.inference_mode()
    def _predict_centred_tile(self, data: torch.Tensor) -> torch.Tensor:
        """One tile centred on the clicks' bounding box; zero logits elsewhere (data already at least a patch)."""
        self.network = self.network.to(self.device)
        self.network.eval()
        logits = torch.zeros((self.label_manager.num_segmentation_heads, *data.shape[1:]), dtype=torch.float32)
        case = self._case_clicks
        if case.empty:
            return logits
        patch = torch.tensor(self.configuration_manager.patch_size)
        points = case.coords if case.boxes is None else torch.cat([case.coords, case.boxes.reshape(-1, 3)])
        centre = (points.min(0).values + points.max(0).values) / 2
        start = torch.round(centre - (patch - 1) / 2).long()
        start = torch.minimum(torch.clamp(start, min=0), torch.tensor(data.shape[1:]) - patch).tolist()
        tile = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, patch.tolist()))
        local = self._clicks_in(start, patch.tolist())
        x = data[tile][None].to(self.device)
        logits[tile] = self.mirror_and_predict(x, local.coords, local.labels, local, tuple(start))[0].float().cpu()
        return logits
