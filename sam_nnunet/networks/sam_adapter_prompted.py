"""3DSAM-adapter with its prompt encoder: 3D clicks steer the segmentation (Gong et al., MedIA 2024).

Data flow for a patch (B, C_in, D, H, W) and clicks (point_coords (B, N, 3), point_labels (B, N); see
``sam_nnunet.prompts.clicks``):

    SAMAdapterNetwork's encoder -> four neck feature maps (B, 256, D/4, H/4, W/4)
    the last map (after the final block) passes the visual sampler:   VisualSamplerPromptEncoder3d
      features sampled at the clicks + 10 global queries per block
      update every image token
    multi-layer aggregation decoder over the four maps (+ raw image) -> logits (B, num_classes, D, H, W)

Called without clicks (nnU-Net's own validation and ``nnUNetv2_predict`` call ``network(x)``), or with N = 0, the
visual sampler still runs with its global queries only: the automatic mode, which the prompted trainer also trains
(a share of the patches get no click).

Boxes and the previous mask (issue 17; ``click_aware`` sampler only), the visual sampler's equivalent of SAM's box
and mask prompts, with no added parameter:
  - a box is 9 sampled points, its 8 corner voxels and its centre (``prompts.boxes.box_points``), each carrying a
    fixed code of its class and role (corner / centre) instead of a click label code;
  - the previous prediction (mask logits of the k outputs, relative to the background logit) becomes per-class
    probabilities, averaged onto the last feature map's grid, and each class's probability times that class's
    positive click code is added to the feature map before the sampler: where the last round saw class c, the
    tokens carry what a click of class c carries.
Both codes are non-persistent buffers drawn from a fixed seed: the state dict is that of the clicks-only network, so
models trained before boxes existed load and predict unchanged (without boxes or mask the forward is the same).
"""
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from sam_nnunet.blocks.background import prepend_background_logit
from sam_nnunet.blocks.padding import crop_to, pad_to_multiple
from sam_nnunet.blocks.visual_sampler import VisualSamplerPromptEncoder3d
from sam_nnunet.encoders.sam_vit import SAM_VIT_CONFIGS
from sam_nnunet.networks.sam_adapter import SAMAdapterNetwork
from sam_nnunet.prompts.boxes import box_points
from sam_nnunet.prompts.clicks import no_clicks, normalise_coords, num_label_codes

BOX_CODE_SEED = 1017  # the box and mask codes are re-drawn from it at every build (not saved)


class EncodedPatch(NamedTuple):
    """What ``encoded`` computes for a patch: the padded patch and the necks' feature maps, decoded again with other
    prompts without running the encoder (interaction rounds, the interactive session)."""
    features: List[torch.Tensor]
    image: torch.Tensor
    spatial: Sequence[int]


class SAMAdapterPromptedNetwork(SAMAdapterNetwork):
    """SAMAdapterNetwork plus 3DSAM-adapter's visual sampler prompt encoder (all of it trained, randomly initialised,
    as in the paper).

    Arguments: those of ``SAMAdapterNetwork``, and
      num_global_queries: learnable queries per block of the visual sampler (10 in the paper).
      image_reads_clicks: image tokens attend to the click tokens as well as to the global queries (see
        ``sam_nnunet.blocks.visual_sampler``); False = the public code's attention to the global queries only.
      click_reach: spatial reach of a click on the image tokens, in tokens (fixed attention bias; None: none).
      visual_sampler: ``"public"`` computes what the public code's prompt encoder computes (image_reads_clicks and
        click_reach then do not apply), ``"click_aware"`` our design (see ``sam_nnunet.blocks.visual_sampler``).
        SAMAdapterTrainer_prompted writes its choice into the plans; the default here is the design that plans
        written before this option existed were trained with, so their model folders rebuild what they trained.
    """

    takes_clicks = True  # forward(x, point_coords, point_labels); sam_nnunet.prompts.PromptedPredictor checks it

    def __init__(self, input_channels: int, num_classes: int, encoder: str = "vit_b", max_window: int = 8,
                 depth_positions: int = 32, num_global_queries: int = 10, image_reads_clicks: bool = True,
                 click_reach: Optional[float] = 1.5, visual_sampler: str = "click_aware",
                 input_window: Optional[Sequence[Sequence[float]]] = None, deep_supervision: bool = False) -> None:
        super().__init__(input_channels, num_classes, encoder, max_window, depth_positions, input_window,
                         deep_supervision)
        cfg = SAM_VIT_CONFIGS[encoder]
        self.num_classes = num_classes
        # the sizes of SAM's two-way transformer (width = neck width, heads and MLP of SAM's mask decoder)
        self.prompt_encoder = VisualSamplerPromptEncoder3d(
            cfg.out_chans, num_label_codes(num_classes), depth=2, num_heads=cfg.decoder_num_heads,
            mlp_dim=cfg.decoder_mlp_dim, num_global_queries=num_global_queries, image_reads_clicks=image_reads_clicks,
            click_reach=click_reach, sampler=visual_sampler)
        # boxes and the previous mask speak through fixed codes, which only the click-aware sampler reads
        self.takes_boxes = visual_sampler == "click_aware"
        if self.takes_boxes:
            generator = torch.Generator().manual_seed(BOX_CODE_SEED)
            self.register_buffer("box_codes", torch.randn(num_label_codes(num_classes), 2, cfg.out_chans,
                                                          generator=generator), persistent=False)

    def parameter_notes(self) -> Dict:
        return {"prompt_encoder": sum(p.numel() for p in self.prompt_encoder.parameters()),
                "prompts": "3D clicks (optional): point_coords (B, N, 3) voxels, point_labels (B, N) = "
                           "2 * channel + negative, -1 = none"}

    def encoded(self, x: torch.Tensor) -> EncodedPatch:
        """The encoder's output for x, to be decoded with other prompts again (``forward`` takes it in place of x)."""
        image, spatial = pad_to_multiple(x, (self.stride,) * 3)
        return EncodedPatch(self.encode(image), image, tuple(spatial))

    def forward(self, x: Union[torch.Tensor, EncodedPatch], point_coords: Optional[torch.Tensor] = None,
                point_labels: Optional[torch.Tensor] = None, boxes: Optional[torch.Tensor] = None,
                box_labels: Optional[torch.Tensor] = None, mask_prompt: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """x (B, C_in, D, H, W) (or its ``encoded``); point_coords (B, N, 3) voxel coordinates in x along (D, H, W);
        point_labels (B, N) long (see ``sam_nnunet.prompts.clicks``); boxes (B, M, 2, 3) first and last voxel,
        box_labels (B, M) (``2 * channel``, -1 empty); mask_prompt (B, k, D, H, W): the previous prediction's logits
        of the mask outputs relative to the background logit (label-based: channels 1.., regions: all). Without
        prompts: automatic mode. -> logits (B, num_classes, D, H, W)"""
        encoded = x if isinstance(x, EncodedPatch) else self.encoded(x)
        image, spatial = encoded.image, encoded.spatial
        features = list(encoded.features)
        batch = image.shape[0]
        if point_coords is None:
            point_coords, point_labels = no_clicks(batch, image.device)
        with_boxes = boxes is not None and boxes.shape[1] > 0
        if (with_boxes or mask_prompt is not None) and not self.takes_boxes:
            raise ValueError("boxes and mask prompts need the click_aware visual sampler (SAMAdapterTrainer_prompted)")
        last = features[-1]
        codes = None
        if with_boxes:
            coords, labels, role = box_points(boxes.to(point_coords.dtype), box_labels)
            codes = torch.cat([self.prompt_encoder.click_codes(point_labels),
                               self.box_codes[labels.clamp(min=0), role.expand_as(labels)]], 1)
            point_coords, point_labels = torch.cat([point_coords, coords], 1), torch.cat([point_labels, labels], 1)
        if mask_prompt is not None:
            last = last + self._mask_codes(mask_prompt, tuple(image.shape[2:]), last)
        # the padding is at the far end of each axis: voxel coordinates are unchanged, normalised to the padded size
        features[-1] = self.prompt_encoder(last, normalise_coords(point_coords, tuple(image.shape[2:])), point_labels,
                                           codes)
        logits = self.decoder(features, image, image.shape[2:])
        return crop_to(logits, spatial)

    def _mask_codes(self, mask_prompt: torch.Tensor, padded: Sequence[int], features: torch.Tensor) -> torch.Tensor:
        """The previous mask on the feature grid: sum over classes of probability x the class's positive click code
        (B, C, d, h, w)."""
        mask = mask_prompt.float()
        if self.num_classes == mask.shape[1]:  # regions: one sigmoid per output
            probabilities = torch.sigmoid(mask)
            channels = torch.arange(mask.shape[1], device=mask.device)
        else:  # labels: softmax with the background logit at 0 (the logits are relative to it)
            probabilities = torch.softmax(prepend_background_logit(mask), 1)[:, 1:]
            channels = torch.arange(1, mask.shape[1] + 1, device=mask.device)
        pad = [v for s, p in zip(reversed(mask.shape[2:]), reversed(padded)) for v in (0, p - s)]
        probabilities = F.adaptive_avg_pool3d(F.pad(probabilities, pad), features.shape[2:])  # padding: background
        codes = self.prompt_encoder.label_codes[2 * channels]  # positive click codes (k, C)
        return torch.einsum("bkdhw,kc->bcdhw", probabilities.to(features.dtype), codes.to(features.dtype))
