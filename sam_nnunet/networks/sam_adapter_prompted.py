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
"""
from typing import Dict, Optional

import torch

from sam_nnunet.blocks.padding import crop_to, pad_to_multiple
from sam_nnunet.blocks.visual_sampler import VisualSamplerPromptEncoder3d
from sam_nnunet.encoders.sam_vit import SAM_VIT_CONFIGS
from sam_nnunet.networks.sam_adapter import SAMAdapterNetwork
from sam_nnunet.prompts.clicks import no_clicks, normalise_coords, num_label_codes


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
                 deep_supervision: bool = False) -> None:
        super().__init__(input_channels, num_classes, encoder, max_window, depth_positions, deep_supervision)
        cfg = SAM_VIT_CONFIGS[encoder]
        self.num_classes = num_classes
        # the sizes of SAM's two-way transformer (width = neck width, heads and MLP of SAM's mask decoder)
        self.prompt_encoder = VisualSamplerPromptEncoder3d(
            cfg.out_chans, num_label_codes(num_classes), depth=2, num_heads=cfg.decoder_num_heads,
            mlp_dim=cfg.decoder_mlp_dim, num_global_queries=num_global_queries, image_reads_clicks=image_reads_clicks,
            click_reach=click_reach, sampler=visual_sampler)

    def parameter_notes(self) -> Dict:
        return {"prompt_encoder": sum(p.numel() for p in self.prompt_encoder.parameters()),
                "prompts": "3D clicks (optional): point_coords (B, N, 3) voxels, point_labels (B, N) = "
                           "2 * channel + negative, -1 = none"}

    def forward(self, x: torch.Tensor, point_coords: Optional[torch.Tensor] = None,
                point_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, C_in, D, H, W); point_coords (B, N, 3) voxel coordinates in x along (D, H, W); point_labels (B, N)
        long (see ``sam_nnunet.prompts.clicks``). Without clicks: automatic mode. -> logits (B, num_classes, D, H, W)
        """
        image, spatial = pad_to_multiple(x, (self.stride,) * 3)
        if point_coords is None:
            point_coords, point_labels = no_clicks(x.shape[0], x.device)
        features = self.encode(image)
        # the padding is at the far end of each axis: voxel coordinates are unchanged, normalised to the padded size
        features[-1] = self.prompt_encoder(features[-1], normalise_coords(point_coords, tuple(image.shape[2:])),
                                           point_labels)
        logits = self.decoder(features, image, image.shape[2:])
        return crop_to(logits, spatial)
