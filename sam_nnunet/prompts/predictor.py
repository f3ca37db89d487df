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
                 without a prompt return zero logits);
      "centred"  a single tile centred on the bounding box of all clicks; the rest is background (3DSAM-adapter's
                 test protocol: one patch around the clicks).
    Zero logits mean background (softmax argmax picks class 0; sigmoid 0.5 is not above the threshold) and leave
    the blended prediction of neighbouring tiles unchanged up to a positive factor.
"""
import itertools
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.utilities.helpers import dummy_context
from torch._dynamo import OptimizedModule

from sam_nnunet.nnunet_checkpoint import SafeCheckpointPredictor

TILE_MODES = ("all", "clicked", "centred")


class PromptedPredictor(SafeCheckpointPredictor):
    """``nnUNetPredictor`` for networks that take clicks (``network(x, point_coords, point_labels)``).

    Arguments: ``tiles`` (see the module docstring) and those of ``nnUNetPredictor``.
    """

    def __init__(self, tiles: str = "all", **kwargs) -> None:
        super().__init__(**kwargs)
        if tiles not in TILE_MODES:
            raise ValueError(f"tiles must be one of {', '.join(TILE_MODES)}, not {tiles!r}")
        self.tiles = tiles
        self._case_clicks: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # in the volume being predicted
        self._tile_slicers = None

    # ---- the network -------------------------------------------------------------------------------------------
    @property
    def plain_network(self):
        return self.network._orig_mod if isinstance(self.network, OptimizedModule) else self.network

    def check_network_takes_clicks(self) -> None:
        if not getattr(self.plain_network, "takes_clicks", False):
            raise ValueError(
                f"the model was trained with {self.trainer_name}, whose network {type(self.plain_network).__name__} "
                f"takes no clicks. Predict it with nnUNetv2_predict, or train a prompted trainer "
                f"(SAMAdapterTrainer_prompted, ZAP25DSAMTrainer_prompted) for click prompts")

    # ---- a case -------------------------------------------------------------------------------------------------
    def predict_logits_with_clicks(self, data: torch.Tensor, point_coords: np.ndarray,
                                   point_labels: np.ndarray) -> torch.Tensor:
        """data (C, *S): a preprocessed case; point_coords (N, 3) positions in it; point_labels (N,) (see
        ``sam_nnunet.prompts.clicks``). Returns logits (num_heads, *S) as ``predict_logits_from_preprocessed_data``
        (averaged over the folds)."""
        coords = torch.as_tensor(np.asarray(point_coords, dtype=np.float32).reshape(-1, 3))
        labels = torch.as_tensor(np.asarray(point_labels, dtype=np.int64).reshape(-1))
        if coords.shape[0] != labels.shape[0]:
            raise ValueError(f"{coords.shape[0]} click positions but {labels.shape[0]} click labels")
        self._case_clicks = (coords, labels)
        try:
            return self.predict_logits_from_preprocessed_data(data)
        finally:
            self._case_clicks = None

    @torch.inference_mode()
    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> torch.Tensor:
        coords, labels = self._case_clicks if self._case_clicks is not None else (
            torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
        # pad to the patch size here (as nnU-Net would, centred, with zeros), so the clicks can be shifted with it
        patch = self.configuration_manager.patch_size
        shape = input_image.shape[1:]
        below = [max(0, p - s) // 2 for p, s in zip(patch, shape)]
        above = [max(0, p - s) - b for p, s, b in zip(patch, shape, below)]
        padded = F.pad(input_image, [v for b, a in zip(reversed(below), reversed(above)) for v in (b, a)])
        outer = self._case_clicks
        self._case_clicks = (coords + torch.tensor(below, dtype=coords.dtype), labels)
        try:
            if self.tiles == "centred":
                logits = self._predict_centred_tile(padded)
            else:
                logits = super().predict_sliding_window_return_logits(padded)
        finally:
            self._case_clicks = outer
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
    def _clicks_in(self, start, size) -> Tuple[torch.Tensor, torch.Tensor]:
        coords, labels = self._case_clicks if self._case_clicks is not None else (
            torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
        local = coords - torch.as_tensor(start, dtype=coords.dtype)
        inside = ((local >= -0.5) & (local < torch.as_tensor(size, dtype=coords.dtype) - 0.5)).all(dim=1)
        return local[inside], labels[inside]

    @torch.inference_mode()
    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[2:])
        if self._tile_slicers is None:  # not from the sliding window: no position, no clicks
            coords, labels = self._clicks_in([0] * len(size), [0] * len(size))
        else:
            tile = next(self._tile_slicers)
            coords, labels = self._clicks_in([s.start for s in tile[1:]], size)
            if self.tiles == "clicked" and labels.numel() == 0:
                return x.new_zeros((x.shape[0], self.label_manager.num_segmentation_heads, *size))
        return self.mirror_and_predict(x, coords, labels)

    @torch.inference_mode()
    def mirror_and_predict(self, x: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x (1, C, *P) and its clicks (n, 3), (n,) -> logits (1, K, *P), averaged over nnU-Net's mirrorings (the
        clicks mirrored with the tile)."""
        # pad the clicks to a multiple of 8 with empty slots (label -1): few distinct shapes for torch.compile
        pad = -labels.shape[0] % 8
        coords = torch.cat([coords, coords.new_zeros(pad, 3)])
        labels = torch.cat([labels, labels.new_full((pad,), -1)])
        point_coords = coords[None].to(x.device, torch.float32)
        point_labels = labels[None].to(x.device)
        prediction = self.network(x, point_coords, point_labels)
        mirror_axes = self.allowed_mirroring_axes if self.use_mirroring else None
        if mirror_axes is not None:
            axes = [m + 2 for m in mirror_axes]
            combinations = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
            for combination in combinations:
                mirrored = point_coords.clone()
                for axis in combination:
                    mirrored[..., axis - 2] = x.shape[axis] - 1 - mirrored[..., axis - 2]
                prediction += torch.flip(self.network(torch.flip(x, combination), mirrored, point_labels),
                                         combination)
            prediction /= len(combinations) + 1
        return prediction

    @torch.inference_mode()
    def _predict_centred_tile(self, data: torch.Tensor) -> torch.Tensor:
        """One tile centred on the clicks' bounding box; zero logits elsewhere (data already at least a patch)."""
        self.network = self.network.to(self.device)
        self.network.eval()
        logits = torch.zeros((self.label_manager.num_segmentation_heads, *data.shape[1:]), dtype=torch.float32)
        coords, labels = self._case_clicks
        if labels.numel() == 0:
            return logits
        patch = torch.tensor(self.configuration_manager.patch_size)
        centre = (coords.min(0).values + coords.max(0).values) / 2
        start = torch.round(centre - (patch - 1) / 2).long()
        start = torch.minimum(torch.clamp(start, min=0), torch.tensor(data.shape[1:]) - patch).tolist()
        tile = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, patch.tolist()))
        local, local_labels = self._clicks_in(start, patch.tolist())
        with torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            x = data[tile][None].to(self.device)
            logits[tile] = self.mirror_and_predict(x, local, local_labels)[0].float().cpu()
        return logits
