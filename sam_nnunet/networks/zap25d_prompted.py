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

Multi-class: SAM segments one object per prompt set, so each mask output gets its own pass over the decoder with the
clicks read for it (``sam_nnunet.blocks.plane_prompts``): label-based, a click on class j is positive for output j and
negative for every other class (mutually exclusive classes); region-based, a click speaks only about its own region.
With one foreground class this is the paper's model exactly. Decoder cost with clicks: (k + 1) passes per
pseudo-slice (k outputs + the prompt-free pass for samples without clicks); the frozen encoder, which dominates, runs
once.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch

from sam_nnunet.blocks.plane_prompts import SAM_NOT_A_POINT, project_clicks, sam_point_labels
from sam_nnunet.networks.zap25d import PlaneEmbedding, ZAP25DNetwork

# sparse tokens (B * k, N + 1, C), which of them are present (B * k, N + 1), has a click (B,)
PlanePrompt = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class ZAP25DPromptedNetwork(ZAP25DNetwork):
    """ZAP25DNetwork that also takes 3D clicks: ``forward(x, point_coords, point_labels)``. Same parameters, same
    trainable set (SAM's prompt encoder stays frozen, as in the paper). Without clicks (nnU-Net's own validation and
    ``nnUNetv2_predict`` call ``network(x)``), or for a sample whose clicks are all empty, it is ZAP25DNetwork.

    Arguments: those of ``ZAP25DNetwork``.
    """

    takes_clicks = True  # forward(x, point_coords, point_labels); sam_nnunet.prompts.PromptedPredictor checks it

    def parameter_notes(self) -> Dict:
        return {**super().parameter_notes(),
                "prompt_encoder": "SAM's, frozen: 3D clicks projected onto each plane, one decoder pass per mask "
                                  "output with that output's clicks",
                "prompts": "3D clicks (optional): point_coords (B, N, 3) voxels, point_labels (B, N) = "
                           "2 * channel + negative, -1 = none"}

    def plane_prompts(self, point_coords: torch.Tensor, point_labels: torch.Tensor,
                      spatial: Sequence[int]) -> Dict[int, PlanePrompt]:
        """SAM sparse tokens of the clicks for each orientation {axis: (tokens (B * k, N + 1, C), present
        (B * k, N + 1), has_click (B,))} for a patch of size ``spatial`` (D, H, W) (the network's input, before its
        padding). ``present`` is False for the slots that say nothing to an output (SAM label -1), True for SAM's
        own padding point at the end."""
        # the network pads each axis at its far end to a multiple of ``pool``: voxel coordinates are unchanged, the
        # slices (and the relative positions of the clicks in them) cover the padded size
        spatial = tuple(-(-s // self.pool) * self.pool for s in spatial)
        k = self.decoder.num_masks
        labels = sam_point_labels(point_labels, k, int(self.background_channel), exclusive=self.background_channel)
        labels = labels.flatten(0, 1)  # (B * k, N)
        has_click = (point_labels >= 0).any(1)
        present = torch.cat([labels != SAM_NOT_A_POINT, labels.new_ones(labels.shape[0], 1, dtype=torch.bool)], 1)
        frame = self.prompt_encoder.input_image_size
        prompts = {}
        with torch.no_grad():  # frozen prompt encoder, fixed clicks: nothing to learn
            for axis in (2, 3, 4):
                points = project_clicks(point_coords.float(), spatial, axis, frame, self.plane_layout)  # (B, N, 2)
                points = points.repeat_interleave(k, dim=0)
                sparse, _ = self.prompt_encoder(points=(points, labels), boxes=None, masks=None)
                prompts[axis] = (sparse, present, has_click)
        return prompts

    def _decode(self, plane: PlaneEmbedding, prompt: Optional[PlanePrompt] = None) -> torch.Tensor:
        free = self._run_decoder(plane.embeddings, plane.image_pe, plane.dense)  # (B * G, k, h, w)
        if prompt is None:
            return free
        sparse, present, has_click = prompt
        b, k = plane.batch, self.decoder.num_masks
        g = plane.embeddings.shape[0] // b  # pseudo-slices per sample
        # every pseudo-slice once per mask output j, with the tokens of j: (B, G, k) flattened
        repeated = plane.embeddings.unflatten(0, (b, g)).unsqueeze(2).expand(-1, -1, k, -1, -1, -1).flatten(0, 2)
        tokens = sparse.unflatten(0, (b, k)).unsqueeze(1).expand(-1, g, -1, -1, -1).flatten(0, 2)
        present = present.unflatten(0, (b, k)).unsqueeze(1).expand(-1, g, -1, -1).flatten(0, 2)
        masks = self._run_decoder(repeated, plane.image_pe, plane.dense, tokens, present)  # (B * G * k, k, h, w)
        # pass j gives output j
        prompted = masks.unflatten(0, (b, g, k)).diagonal(dim1=2, dim2=3).movedim(-1, 2).flatten(0, 1)
        select = has_click.repeat_interleave(g).view(-1, 1, 1, 1)
        return torch.where(select, prompted, free)

    def forward(self, x: torch.Tensor, point_coords: Optional[torch.Tensor] = None,
                point_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, C_in, D, H, W); point_coords (B, N, 3) voxel coordinates in x along (D, H, W); point_labels (B, N)
        long (see ``sam_nnunet.prompts.clicks``). Without clicks: automatic mode. -> logits (B, num_classes, D, H, W)
        """
        planes, spatial = self.embed(x)  # x: a patch, or its CachedEmbeddings
        if point_coords is None or point_coords.shape[1] == 0:
            return self.decode(planes, spatial)
        return self.decode(planes, spatial, self.plane_prompts(point_coords, point_labels, spatial))
