"""ZAP-2.5DSAM with its point prompts (Guo et al., The Visual Computer 2025): 3D clicks projected onto each plane
through SAM's frozen prompt encoder, still zero added parameters.

Data flow for a patch (B, C_in, D, H, W) and clicks (point_coords (B, N, 3), point_labels (B, N); see
``sam_nnunet.prompts.clicks``), on top of ZAP25DNetwork's:

    for each orientation:
      every click projected onto the slices (its coordinate along     project_clicks
        the slice axis dropped), relative position kept
      for every mask output j (foreground class or region): the       sam_point_labels
        clicks read as SAM labels (positive / negative / not a point)
      SAM's frozen prompt encoder (official PromptEncoder, no_grad):   -> sparse tokens (B, k, N + 1, C)
        positional encoding + point-type embedding; SAM's padding
        point (label -1) appended as SAM does for point prompts;
        slots that hold no click for output j (empty, or a region
        click about another region) are left out of the decoder's
        attention, so a prediction does not depend on how many
        empty slots a batch has (SAM's decoder has no padding mask)
      SAM's mask decoder on every pseudo-slice once per mask output j, -> mask logits of output j
        the tokens of j appended to the output tokens (the same 2D
        points on every pseudo-slice of the orientation)
    samples without any click: ZAP25DNetwork's prompt-free decoding (ZAP's "no points": no sparse token)

Boxes and the previous mask (issue 17; documentation/prompts.md, "Boxes, refinement and sessions"), through the same
frozen prompt encoder, still zero added parameters:

    a 3D box (B, M, 2, 3): on each orientation the 2D box of its      project_boxes, pseudo_slices_crossed
      in-plane extent, SAM's two corner tokens, present only on the
      pseudo-slices it crosses and only for its own output; where a
      box is present SAM's padding point is left out (SAM pads
      points only when no box is given)
    the previous prediction (B, k, D, H, W) mask logits: per          plane_mask_prompt, mask_downscaling
      orientation the mean over each pseudo-slice's slices, divided
      by the 3 planes (one plane's share of the summed logits, the
      scale of SAM's own mask input), resized to 4x the token grid
      and embedded by SAM's mask_downscaling: the dense prompt of
      output j's pass in place of SAM's no-mask embedding
    a sample with a box but no click is prompted; a mask alone is not (it refines the prompts it comes with)

Multi-class: SAM segments one object per prompt set, so each mask output gets its own pass over the decoder with the
clicks read for it (``sam_nnunet.blocks.plane_prompts``): label-based, a click on class j is positive for output j and
negative for every other class (mutually exclusive classes); region-based, a click speaks only about its own region.
With one foreground class this is the paper's model exactly. Decoder cost with clicks: k passes per pseudo-slice, one
more for a sample without clicks or boxes (its prompt-free pass); the frozen encoder runs once.
"""
from typing import Dict, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import is_fake

from sam_nnunet.blocks.plane_prompts import (SAM_NOT_A_POINT, boxes_for_outputs, click_pseudo_slices,
                                             plane_mask_prompt, project_boxes, project_clicks, pseudo_slices_crossed,
                                             sam_point_labels)
from sam_nnunet.networks.zap25d import CachedEmbeddings, PlaneEmbedding, ZAP25DNetwork

MASK_PROMPT_CLAMP = 20.0  # SAM's mask input is a low-resolution logit map; keep saturated previous logits in range


class PlanePrompt(NamedTuple):
    """The prompts of one orientation, SAM-encoded."""
    sparse: torch.Tensor            # (B * k, T, C): click tokens, SAM's padding point, 2 corner tokens per box
    present: torch.Tensor           # (B, k, G, T) bool: which tokens take part in output j's pass on pseudo-slice g
    has_prompt: torch.Tensor        # (B,) bool: a click or a box; the others are decoded prompt-free
    mask: Optional[torch.Tensor]    # (B, G, k, a, b): the previous mask logits per pseudo-slice, or None


class ZAP25DPromptedNetwork(ZAP25DNetwork):
    """ZAP25DNetwork that also takes 3D clicks, boxes and the previous mask: ``forward(x, point_coords,
    point_labels, boxes, box_labels, mask_prompt)``. Same parameters, same trainable set (SAM's prompt encoder stays
    frozen, as in the paper). Without prompts (nnU-Net's own validation and ``nnUNetv2_predict`` call
    ``network(x)``), or for a sample whose click and box slots are all empty, it is ZAP25DNetwork.

    Arguments: those of ``ZAP25DNetwork``, and
      click_slice_reach: None (default; the paper, and every model trained before it existed): a click is given to every
        pseudo-slice of each orientation, also to those far from it, where the structure need not be at its
        in-plane position; r >= 0: only to the pseudo-slices within r of its own along each orientation's slice
        axis, so a 3D click speaks to the slices near it in every plane and to no other (``click_pseudo_slices``).
        A model predicts with the reach it was trained with (its plans record it).
    """

    takes_clicks = True  # forward(x, point_coords, point_labels); sam_nnunet.prompts.PromptedPredictor checks it
    takes_boxes = True   # ... boxes, box_labels, mask_prompt

    def __init__(self, *args, click_slice_reach: Optional[int] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        reach = click_slice_reach
        if reach is not None and (isinstance(reach, bool) or int(reach) != reach or reach < 0):
            raise ValueError(f"ZAP25DPromptedNetwork: click_slice_reach is None or a number of pseudo-slices >= 0, not "
                             f"{click_slice_reach!r}")
        self.click_slice_reach = None if click_slice_reach is None else int(click_slice_reach)

    def parameter_notes(self) -> Dict:
        return {**super().parameter_notes(),
                "prompt_encoder": "SAM's, frozen: 3D clicks projected onto each plane, one decoder pass per mask "
                                  "output with that output's clicks; 3D boxes as SAM boxes on the pseudo-slices "
                                  "they cross; the previous mask as SAM's dense mask prompt",
                "prompts": "3D clicks (optional): point_coords (B, N, 3) voxels, point_labels (B, N) = "
                           "2 * channel + negative, -1 = none; boxes (B, M, 2, 3) first / last voxel, box_labels "
                           "(B, M) = 2 * channel; mask_prompt (B, k, D, H, W) previous mask logits"}

    def encoded(self, x: torch.Tensor) -> CachedEmbeddings:
        """The frozen encoder's output for x, to be decoded with other prompts again (``forward`` takes it in place
        of x): the embedding cache of interactive prediction (``sam_nnunet.inference.predictor``)."""
        return CachedEmbeddings.of(*self.embed(x))

    def plane_prompts(self, point_coords: torch.Tensor, point_labels: torch.Tensor, spatial: Sequence[int],
                      boxes: Optional[torch.Tensor] = None, box_labels: Optional[torch.Tensor] = None,
                      mask_prompt: Optional[torch.Tensor] = None) -> Dict[int, PlanePrompt]:
        """SAM-encoded prompts for each orientation {axis: PlanePrompt} for a patch of size ``spatial`` (D, H, W)
        (the network's input, before its padding). ``present`` is False for the slots that say nothing to an output
        (SAM label -1; a box of another output or on a pseudo-slice it does not cross), True for SAM's own padding
        point where no box is present."""
        # the network pads each axis at its far end to a multiple of ``pool``: voxel coordinates are unchanged, the
        # slices (and the relative positions of the prompts in them) cover the padded size
        spatial = tuple(-(-s // self.pool) * self.pool for s in spatial)
        k = self.decoder.num_masks
        first = int(self.background_channel)
        b = point_labels.shape[0]
        labels = sam_point_labels(point_labels, k, first, exclusive=self.background_channel)
        labels = labels.flatten(0, 1)  # (B * k, N)
        has_prompt = (point_labels >= 0).any(1)
        with_boxes = boxes is not None and boxes.shape[1] > 0
        if with_boxes:
            box_for = boxes_for_outputs(box_labels, k, first)  # (B, k, M)
            has_prompt = has_prompt | (box_labels >= 0).any(1)
        if mask_prompt is not None:
            mask = (mask_prompt.float() / 3).clamp(-MASK_PROMPT_CLAMP, MASK_PROMPT_CLAMP)
            pad = [v for s, p in zip(reversed(mask.shape[2:]), reversed(spatial)) for v in (0, p - s)]
            mask = F.pad(mask, pad, value=-MASK_PROMPT_CLAMP)  # the padding is background
        frame = self.prompt_encoder.input_image_size
        prompts = {}
        with torch.no_grad():  # frozen prompt encoder, fixed prompts: nothing to learn
            for axis in (2, 3, 4):
                groups = spatial[axis - 2] // self.pool
                points = project_clicks(point_coords.float(), spatial, axis, frame, self.plane_layout)  # (B, N, 2)
                points = points.repeat_interleave(k, dim=0)
                sparse, _ = self.prompt_encoder(points=(points, labels), boxes=None, masks=None)  # (B * k, N + 1, C)
                present = torch.cat([labels != SAM_NOT_A_POINT, labels.new_ones(b * k, 1, dtype=torch.bool)], 1)
                present = present.unflatten(0, (b, k)).unsqueeze(2).expand(-1, -1, groups, -1)  # (B, k, G, N + 1)
                if self.click_slice_reach is not None:
                    # (B, G, N): the pseudo-slices near each click
                    near = click_pseudo_slices(point_coords, axis, groups, self.pool, self.click_slice_reach)
                    present = torch.cat([present[..., :-1] & near[:, None], present[..., -1:]], -1)
                if with_boxes:
                    m = boxes.shape[1]
                    sam_boxes = project_boxes(boxes.float(), spatial, axis, frame, self.plane_layout)  # (B, M, 4)
                    corners, _ = self.prompt_encoder(points=None, boxes=sam_boxes.flatten(0, 1), masks=None)
                    corners = corners.reshape(b, 1, 2 * m, -1).expand(-1, k, -1, -1).flatten(0, 1)
                    crossed = pseudo_slices_crossed(boxes.float(), axis, groups, self.pool)  # (B, M, G)
                    box_present = box_for[:, :, None, :] & crossed.transpose(1, 2)[:, None]  # (B, k, G, M)
                    # SAM appends its padding point only to prompt sets without a box
                    no_box = ~box_present.any(-1, keepdim=True)
                    present = torch.cat([present[..., :-1], present[..., -1:] & no_box,
                                         box_present.repeat_interleave(2, dim=-1)], -1)
                    sparse = torch.cat([sparse, corners.to(sparse.dtype)], 1)
                plane_mask = None if mask_prompt is None else plane_mask_prompt(mask, axis, self.pool,
                                                                                self.plane_layout)
                prompts[axis] = PlanePrompt(sparse, present, has_prompt, plane_mask)
        return prompts

    def _mask_embedding(self, mask: torch.Tensor, grid: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """(B, G, k, a, b) mask logits -> SAM's dense mask embeddings (B * G * k, C, gh, gw): SAM's mask input is 4x
        its token grid (256 x 256 for 64 x 64 tokens), embedded by the frozen ``mask_downscaling``."""
        flat = mask.flatten(0, 2).unsqueeze(1)  # (B * G * k, 1, a, b), the pass order of _decode
        with torch.no_grad():
            flat = F.interpolate(flat, size=(4 * grid[0], 4 * grid[1]), mode="bilinear", align_corners=False)
            return self.prompt_encoder.mask_downscaling(flat.to(self.prompt_encoder.no_mask_embed.weight.dtype)
                                                        ).to(dtype)

    def _decode(self, plane: PlaneEmbedding, prompt: Optional[PlanePrompt] = None) -> torch.Tensor:
        if prompt is None:
            return self._run_decoder(plane.embeddings, plane.image_pe, plane.dense)  # (B * G, k, h, w)
        b, k = plane.batch, self.decoder.num_masks
        g = plane.embeddings.shape[0] // b  # pseudo-slices per sample
        # every pseudo-slice once per mask output j, with the tokens of j: (B, G, k) flattened
        repeated = plane.embeddings.unflatten(0, (b, g)).unsqueeze(2).expand(-1, -1, k, -1, -1, -1).flatten(0, 2)
        tokens = prompt.sparse.unflatten(0, (b, k)).unsqueeze(1).expand(-1, g, -1, -1, -1).flatten(0, 2)
        present = prompt.present.transpose(1, 2).flatten(0, 2)  # (B * G * k, T)
        if prompt.mask is not None:
            # SAM adds its dense prompt to the image embedding; the decoder adds plane.dense (no mask) itself
            dense = self._mask_embedding(prompt.mask, plane.embeddings.shape[-2:], repeated.dtype)
            repeated = repeated + (dense - plane.dense)
        masks = self._run_decoder(repeated, plane.image_pe, plane.dense, tokens, present)  # (B * G * k, k, h, w)
        # pass j gives output j
        prompted = masks.unflatten(0, (b, g, k)).diagonal(dim1=2, dim2=3).movedim(-1, 2).flatten(0, 1)
        # the prompt-free pass (as dear as one output's) only for the samples without a prompt; torch.compile and
        # SAMPlanner's fake-tensor memory trace run it for all and select: which rows need it is data, and a
        # data-dependent shape would break a graph (and the trace then counts the dearer case)
        free_rows = (~prompt.has_prompt).repeat_interleave(g)  # (B * G,)
        if torch.compiler.is_compiling() or is_fake(free_rows):
            free = self._run_decoder(plane.embeddings, plane.image_pe, plane.dense)
            return torch.where(free_rows.view(-1, 1, 1, 1), free, prompted)
        if not bool(free_rows.any()):
            return prompted
        prompted = prompted.clone()
        prompted[free_rows] = self._run_decoder(plane.embeddings[free_rows], plane.image_pe, plane.dense)
        return prompted

    def forward(self, x: torch.Tensor, point_coords: Optional[torch.Tensor] = None,
                point_labels: Optional[torch.Tensor] = None, boxes: Optional[torch.Tensor] = None,
                box_labels: Optional[torch.Tensor] = None, mask_prompt: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """x (B, C_in, D, H, W) (or its CachedEmbeddings); point_coords (B, N, 3) voxel coordinates in x along
        (D, H, W); point_labels (B, N) long (see ``sam_nnunet.prompts.clicks``); boxes (B, M, 2, 3) first and last
        voxel of each box, box_labels (B, M) (``2 * channel``, -1 empty); mask_prompt (B, k, D, H, W): the previous
        prediction's mask logits of the k mask outputs (the channels after the background one). Without clicks and
        boxes: automatic mode. -> logits (B, num_classes, D, H, W)"""
        planes, spatial = self.embed(x)  # x: a patch, or its CachedEmbeddings
        no_clicks = point_coords is None or point_coords.shape[1] == 0
        no_boxes = boxes is None or boxes.shape[1] == 0
        if no_clicks and no_boxes:
            return self.decode(planes, spatial)
        batch = next(iter(planes.values())).batch
        if point_coords is None:
            point_coords = torch.zeros(batch, 0, 3, device=boxes.device)
            point_labels = torch.zeros(batch, 0, dtype=torch.long, device=boxes.device)
        return self.decode(planes, spatial, self.plane_prompts(point_coords, point_labels, spatial, boxes,
                                                               box_labels, mask_prompt))
