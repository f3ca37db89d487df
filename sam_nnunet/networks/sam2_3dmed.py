"""SAM2-3dMed (Yang, Xu, Tian, arXiv 2510.08967) for any nnU-Net patch: SAM 2 over the slices of the patch in both
directions, with Slice Relative Position Prediction (SRPP, training only) and Boundary Detection (BD).

Data flow for a patch (B, C_in, D, H, W); the slices along D (nnU-Net's first spatial axis, the out-of-plane one
of anisotropic data) are the frames:

    input channels -> 3 (replicate / pass / 1x1x1 projection)          InputChannelAdapter
    every slice -> square frame: x4 bilinear (at most 1024), zero pad   slices_to_frames
      to a multiple of 32
    SAM 2's frozen Hiera + FPN neck per frame (batched, no_grad)        SAM2Base.image_encoder
    mask decoder's conv_s0 / conv_s1 on the stride-4/8 features         (trained, as in SAM2Base.forward_image)
    memory propagation first -> last slice and last -> first slice,    propagate
      one object per class (or region) with a learned object prompt
      added to SAM 2's no-prompt query; each pass gives mask logits
      (token 0) and boundary logits (token 1) at stride 4
    average of the two passes' logits: every slice's prediction combines the context before and after it
    frames -> slices (crop; exact voxel grid at scale 4)                frames_to_slices
    BD-fusion: segmentation logits + g([segmentation, boundary])       BoundaryFusion3d
    logits: softmax labels -> [0 (background), object logits...];     (B, num_classes, D, H, W)
            regions -> object logits
    training only: SRPP over the slices' memory-conditioned features   SliceRelativePositionHead

In training mode ``forward`` returns a dict (``logits``, ``boundary``, ``slice_positions``) for the composite loss;
in eval mode (nnU-Net validation and prediction) only the logits, and the SRPP head is not run.
"""
from typing import Dict, Optional, Sequence, Union

import torch
from torch import nn

from sam_nnunet.blocks.background import prepend_background_logit
from sam_nnunet.blocks.frames import HIERA_STRIDE, frame_geometry, frames_to_slices, slices_to_frames
from sam_nnunet.blocks.sam2_propagation import propagate
from sam_nnunet.decoders.boundary_fusion import BoundaryFusion3d
from sam_nnunet.decoders.slice_position import SliceRelativePositionHead
from sam_nnunet.encoders.checkpoint import load_submodule_state
from sam_nnunet.encoders.sam2_hiera import SAM2_CONFIGS, build_sam2
from sam_nnunet.networks.base import SAMNetworkBase
from sam_nnunet.networks.token_grid import TokenGrid


class SAM2_3dMedNetwork(SAMNetworkBase):
    """SAM2-3dMed network, built from nnU-Net plans (``architecture.arch_kwargs``).

    Arguments:
      input_channels: nnU-Net's input channels (any number).
      num_classes: nnU-Net's segmentation heads.
      encoder: SAM 2 model (``sam2_hiera_t`` ... ``sam2.1_hiera_l``, ``sam2_test``).
      regions: nnU-Net region-based training (sigmoid outputs, one object per region); otherwise softmax labels with
        one object per foreground label and a constant background logit.
      upsample: in-plane scale of slices before SAM 2 (4: SAM 2's stride-4 masks land on the voxel grid).
      max_image_size: largest frame side; a slice that would exceed it is scaled less.
      deep_supervision: must be False (one full-resolution head; nnU-Net passes the flag).
    """

    frames_per_encoder_call = 64   # bounds the frozen encoder's activation memory, not a hyper-parameter

    @classmethod
    def token_grid(cls, arch_kwargs: Dict) -> TokenGrid:
        # slices along D are SAM 2's frames, any number of them (propagated one by one); at least 8, so that a pass
        # fills SAM 2's memory bank (the conditioning frame and 6 previous ones). In-plane a slice is upsampled (x4)
        # and zero-padded to a square frame whose side is a multiple of Hiera's stride 32: waste-free slices are
        # square with a side that is a multiple of 32 / upsample voxels (8). Not imposed: Hiera's windows at strides
        # 16 and 32 (14 and 7 tokens: 224 pixels), which pad only those stages' windowed attention.
        side = max(1, round(HIERA_STRIDE / float(arch_kwargs.get("upsample", 4))))
        return TokenGrid(stride=(1, side, side), min_tokens=(8, 4, 4), square=(1, 2))

    def __init__(self, input_channels: int, num_classes: int, encoder: str = "sam2.1_hiera_t", regions: bool = False,
                 upsample: float = 4.0, max_image_size: int = 1024,
                 input_window: Optional[Sequence[Sequence[float]]] = None, deep_supervision: bool = False) -> None:
        super().__init__(encoder, deep_supervision)
        if encoder not in SAM2_CONFIGS:
            raise ValueError(f"SAM2_3dMedNetwork adapts SAM 2 ({', '.join(SAM2_CONFIGS)}); got {encoder!r}")
        self.regions = bool(regions)
        self.num_objects = num_classes if self.regions else num_classes - 1
        if self.num_objects < 1:
            raise ValueError(f"{num_classes} output channel(s) leave no foreground class to segment")
        self.upsample = float(upsample)
        self.max_image_size = int(max_image_size)
        width = SAM2_CONFIGS[encoder].d_model

        self.channels = self.encoder_input(input_channels, input_window)
        self.sam2 = build_sam2(encoder)
        # one learned prompt per object, added to SAM 2's no-prompt query: zero, i.e. exactly that query, at the start
        self.object_prompts = nn.Parameter(torch.zeros(self.num_objects, width))
        self.boundary_fusion = BoundaryFusion3d()
        self.slice_position = SliceRelativePositionHead(width)

        # frozen: the image encoder (Hiera + neck) and the prompt encoder (it only supplies the no-prompt query), and
        # the parts no output depends on (IoU and object-score heads, multimask outputs 2 and 3, the mask-input
        # downsampler, the no-memory position encoding unused with directly_add_no_mem_embed);
        # trained: memory attention, memory encoder, mask decoder, memory / object-pointer embeddings, and ours
        self.sam2.requires_grad_(True)
        frozen = [self.sam2.image_encoder, self.sam2.sam_prompt_encoder, self.sam2.mask_downsample,
                  self.sam2.sam_mask_decoder.iou_prediction_head, self.sam2.sam_mask_decoder.pred_obj_score_head,
                  *self.sam2.sam_mask_decoder.output_hypernetworks_mlps[2:]]
        for module in frozen:
            module.requires_grad_(False)
        self.sam2.no_mem_pos_enc.requires_grad_(False)

    def pretrained_modules(self) -> Dict[str, nn.Module]:
        return {"sam2": self.sam2}

    def load_pretrained(self, state_dict: Dict[str, torch.Tensor], path: str = "the checkpoint") -> None:
        # the whole official SAM2Base, strictly: every checkpoint tensor has its place (Hiera interpolates its
        # position embedding to the frame size at run time, so nothing is resized)
        load_submodule_state(self.sam2, state_dict, "", path=path)

    def parameter_notes(self) -> Dict[str, int]:
        """Counts by part, for ``sam-nnunet info --json``."""
        count = lambda m: sum(p.numel() for p in m.parameters())
        return {"image_encoder (frozen)": count(self.sam2.image_encoder),
                "memory_attention": count(self.sam2.memory_attention),
                "memory_encoder": count(self.sam2.memory_encoder),
                "mask_decoder": count(self.sam2.sam_mask_decoder),
                "srpp_head (training only)": count(self.slice_position),
                "bd_fusion": count(self.boundary_fusion)}

    # ---- forward ------------------------------------------------------------------------------------------------
    def _encode_frames(self, frames: torch.Tensor):
        """(N, 3, S, S) frames -> stride-16 features (N, C, G, G), their position encoding (G*G, 1, C), and the mask
        decoder's projections of the stride-4 and stride-8 features."""
        with torch.no_grad():  # frozen: no activations kept for backward
            outs = [self.sam2.image_encoder(chunk) for chunk in frames.split(self.frames_per_encoder_call)]
        fpn = [torch.cat([o["backbone_fpn"][level] for o in outs]) for level in range(3)]
        pos = outs[0]["vision_pos_enc"][-1][:1].flatten(2).permute(2, 0, 1)  # (G*G, 1, C)
        decoder = self.sam2.sam_mask_decoder
        return fpn[2], pos, [decoder.conv_s0(fpn[0]), decoder.conv_s1(fpn[1])]

    def _prompt(self, batch: int, grid: int, device: torch.device):
        """SAM 2's no-prompt query (a padding point, no mask) plus each object's learned prompt."""
        encoder = self.sam2.sam_prompt_encoder
        no_points = (torch.zeros(1, 1, 2, device=device), -torch.ones(1, 1, dtype=torch.int32, device=device))
        sparse, _ = encoder(points=no_points, boxes=None, masks=None)               # (1, 2, C)
        sparse = sparse + self.object_prompts.repeat(batch, 1)[:, None, :]          # (B*K, 2, C)
        dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(-1, -1, grid, grid)
        image_pe = encoder.pe_layer((grid, grid)).unsqueeze(0)
        return sparse, dense, image_pe

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        B, _, D, H, W = x.shape
        K = self.num_objects
        geometry = frame_geometry(H, W, self.upsample, self.max_image_size)
        slices = self.channels(x).permute(0, 2, 1, 3, 4).reshape(B * D, 3, H, W)
        features, pos, high_res = self._encode_frames(slices_to_frames(slices, geometry))
        G = geometry.grid
        features = features.view(B, D, *features.shape[1:])
        high_res = [h.view(B, D, *h.shape[1:]) for h in high_res]
        sparse, dense, image_pe = self._prompt(B, G, x.device)

        passes = [propagate(self.sam2, features, pos, high_res, sparse, dense, image_pe, K, reverse)
                  for reverse in (False, True)]
        # fusion of the two directions: the mean of their logits
        segmentation = 0.5 * (passes[0].segmentation + passes[1].segmentation)      # (B*K, D, 4G, 4G)
        boundary = 0.5 * (passes[0].boundary + passes[1].boundary)
        to_volume = lambda t: frames_to_slices(t.flatten(0, 1)[:, None], geometry).view(B, K, D, H, W)
        segmentation, boundary = to_volume(segmentation), to_volume(boundary)

        fused = self.boundary_fusion(segmentation, boundary)
        logits = fused if self.regions else prepend_background_logit(fused)
        if not self.training:
            return logits
        pooled = 0.5 * (passes[0].pooled + passes[1].pooled)                        # (B*K, D, C)
        slice_features = pooled.view(B, K, D, -1).mean(dim=1)
        return {"logits": logits, "boundary": boundary, "slice_positions": self.slice_position(slice_features)}
