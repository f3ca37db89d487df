"""nnU-Net's own network plus a frozen SAM-family encoder beside it (nnSAM, Li et al. 2023, in 3D).

Data flow for a patch x (B, C_in, D, H, W):

    the U-Net of the plans (PlainConvUNet, ResidualEncoderUNet, ...), built by nnU-Net's get_network_from_plans
    from the plans' own class and arguments, unchanged:
      stem (ResEnc) -> stage 0 -> stage 1 -> ... -> decoder (deep supervision as nnU-Net's)
    at each fusion stage k, after the stage's convolutions, for each fusion axis a:
      x -> input channels to RGB in the encoder's value range        InputChannelAdapter (input contract)
        -> thick slices along a, one per voxel of stage k             mean over the stage's stride along a
           (B * n_a, 3, r, c)
        -> frozen encoder on a token grid the size of stage k         PseudoSliceEncoder(grid=stage in-plane size):
           in-plane: the slice resized to grid x token stride           LiteMedSAM 4 px / token, SAM ViT 16
           (LiteMedSAM at a stride-8 stage: half the native
           resolution)                                               -> (B * n_a, C_sam, r_k, c_k), no autograd
        -> back to a volume (B, C_sam, *stage k size)
        -> zero-initialised 1x1x1 convolution C_sam -> C_k             (weight and bias 0)
      added to the stage's output, which goes on to the skip connection and the next stage

The projections start at zero, so the untrained network's outputs (every deep-supervision level) equal those of
nnU-Net's network with the same weights: training starts from nnU-Net and moves away only where the encoder's
features lower the loss. The encoder sees the patch the U-Net sees (augmented, in training): no cache, no warping of
features. It runs once per (stage, axis) on ``n_a`` small images per sample, never at the encoder's full canvas.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from sam_nnunet.blocks.pseudo_slices import PseudoSliceEncoder, build_pseudo_slice_encoder
from sam_nnunet.encoders.litemedsam import LITEMEDSAM
from sam_nnunet.encoders.sam_vit import SAM_VIT_CONFIGS
from sam_nnunet.networks.base import SAMNetworkBase
from sam_nnunet.networks.zap25d import fixed_colour_projection


def encoder_channels(encoder: str) -> int:
    """Channels of the encoder's image embedding (its neck's output)."""
    if encoder == LITEMEDSAM.name:
        return LITEMEDSAM.out_chans
    if encoder in SAM_VIT_CONFIGS:
        return SAM_VIT_CONFIGS[encoder].out_chans
    raise ValueError(f"SAMFusionNetwork runs on LiteMedSAM ({LITEMEDSAM.name}) or a SAM ViT "
                     f"({', '.join(SAM_VIT_CONFIGS)}); got {encoder!r}")


def cumulative_strides(strides: Sequence) -> List[List[int]]:
    """Per stage, the total downsampling (per axis) of its output relative to the input (nnU-Net's ``strides``: an
    int or one int per axis for each stage)."""
    total, out = [1, 1, 1], []
    for s in strides:
        s = [int(s)] * 3 if isinstance(s, (int, float)) else [int(v) for v in s]
        total = [t * v for t, v in zip(total, s)]
        out.append(list(total))
    return out


def default_fusion_stage(strides: Sequence, target: int = 8, axis: int = 0) -> int:
    """The stage the encoder's features join by default: the first whose in-plane stride (the two axes other than
    the slice ``axis``) reaches ``target`` (8: a LiteMedSAM token then covers 2 x 2 voxels of a slice), else the
    deepest stage."""
    total = cumulative_strides(strides)
    for i, s in enumerate(total):
        if min(v for a, v in enumerate(s) if a != axis) >= target:
            return i
    return len(total) - 1


class SAMFusionNetwork(SAMNetworkBase):
    """nnU-Net's network of the plans with a frozen SAM-family encoder's slice embeddings added at some stages.

    Arguments:
      input_channels, num_classes: nnU-Net's.
      unet_class: dotted class name of nnU-Net's network (the plans' ``network_class_name`` before fusion); the rest
        of the keyword arguments (``unet_kwargs``) are its arguments, classes already imported (the plans list them in
        ``_kw_requires_import``, as nnU-Net's own plans do).
      encoder: ``litemedsam`` (default) or a SAM ViT size (``vit_b``, ``vit_l``, ``vit_h``, ``vit_test``).
      fusion_stages: U-Net encoder stages (0 = full resolution) whose outputs receive the encoder's features.
      fusion_axes: spatial axes (0, 1, 2 of D, H, W) along which the patch is cut into slices; one encoder pass and
        one projection per (stage, axis).
      input_window: per input channel the nnU-Net value range mapped to [0, 1] before the encoder's own
        normalisation (``encoders.contract``; written by the trainer from the plans).
      window_size: attention window of SAM ViT's windowed blocks (unused by LiteMedSAM).
      encoder_batch: slices per encoder call (memory; no effect on the result).
      deep_supervision: nnU-Net's flag, handed to its network.
    """

    supports_deep_supervision = True

    def __init__(self, input_channels: int, num_classes: int, unet_class: str, encoder: str = LITEMEDSAM.name,
                 fusion_stages: Sequence[int] = (2,), fusion_axes: Sequence[int] = (0,),
                 input_window: Optional[Sequence[Sequence[float]]] = None, window_size: int = 14,
                 encoder_batch: int = 64, deep_supervision: bool = False, **unet_kwargs) -> None:
        super().__init__(encoder, deep_supervision)
        sam_channels = encoder_channels(encoder)
        # nnU-Net's network exactly as nnU-Net builds it (its own weight initialisation included)
        self.unet = get_network_from_plans(unet_class, dict(unet_kwargs), [], input_channels, num_classes,
                                           allow_init=True, deep_supervision=deep_supervision)
        stages = getattr(self.unet.encoder, "stages", None)
        widths = getattr(self.unet.encoder, "output_channels", None)
        if stages is None or widths is None:
            raise ValueError(f"SAMFusionNetwork needs a U-Net whose encoder has stages (PlainConvUNet, "
                             f"ResidualEncoderUNet); {unet_class} has none")
        n_stages = len(stages)
        self.fusion_stages = sorted({int(s) % n_stages for s in fusion_stages})
        self.fusion_axes = sorted({int(a) for a in fusion_axes})
        if not self.fusion_stages or not self.fusion_axes or not set(self.fusion_axes) <= {0, 1, 2}:
            raise ValueError(f"SAMFusionNetwork needs at least one stage and axes among 0, 1, 2; got stages "
                             f"{list(fusion_stages)}, axes {list(fusion_axes)}")
        self.encoder_batch = encoder_batch

        self.channels = self.encoder_input(input_channels, input_window)
        fixed_colour_projection(self.channels)  # no gradient reaches it through the frozen encoder
        self.encoder: PseudoSliceEncoder = build_pseudo_slice_encoder(encoder, window_size, upsample=1)
        self.projections = nn.ModuleDict()
        for stage in self.fusion_stages:
            for axis in self.fusion_axes:
                proj = nn.Conv3d(sam_channels, widths[stage], kernel_size=1)
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)
                self.projections[f"{stage}_{axis}"] = proj

    # ---- what nnU-Net asks of its networks ----------------------------------------------------------------------
    @property
    def decoder(self) -> nn.Module:
        """nnU-Net's decoder (the trainer switches deep supervision on ``network.decoder``)."""
        return self.unet.decoder

    def compute_conv_feature_map_size(self, input_size):
        return self.unet.compute_conv_feature_map_size(input_size)

    # ---- pretrained part ---------------------------------------------------------------------------------------
    def pretrained_modules(self) -> Dict[str, nn.Module]:
        return {"encoder": self.encoder}

    def load_pretrained(self, state_dict: Dict[str, torch.Tensor], path: str = "the checkpoint") -> None:
        self.encoder.load_pretrained(state_dict, path)

    def parameter_notes(self) -> Dict:
        return {"fusion": f"{self.encoder_name} slice embeddings added at U-Net stages {self.fusion_stages} "
                          f"(slices along axes {self.fusion_axes}) through zero-initialised 1x1x1 convolutions",
                "added_by_fusion": sum(p.numel() for p in self.projections.parameters())}

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen (LiteMedSAM's BatchNorm statistics never change)
        return self

    # ---- forward ---------------------------------------------------------------------------------------------
    def slice_features(self, image: torch.Tensor, size: Sequence[int], axis: int) -> torch.Tensor:
        """The frozen encoder's embeddings of the patch ``image`` (B, 3, D, H, W; the encoder's input range) cut
        into ``size[axis]`` thick slices along ``axis``, on a token grid of the other two sides of ``size``:
        (B, C_sam, *size)."""
        target = list(image.shape[2:])
        target[axis] = int(size[axis])
        thick = F.adaptive_avg_pool3d(image, target) if target != list(image.shape[2:]) else image
        stack = thick.movedim(2 + axis, 1)  # (B, n, 3, r, c): the other axes in their order
        b, n = stack.shape[:2]
        grid = tuple(int(size[i]) for i in range(3) if i != axis)
        slices = stack.flatten(0, 1).unsqueeze(1)  # (B * n, 1, 3, r, c): groups of one slice
        with torch.no_grad():
            embeddings = torch.cat([self.encoder(g, grid=grid) for g in slices.split(self.encoder_batch)])
        return embeddings.unflatten(0, (b, n)).movedim(2, 1).movedim(2, 2 + axis)  # (B, C, *size)

    def forward(self, x: torch.Tensor):
        encoder = self.unet.encoder
        h = encoder.stem(x) if getattr(encoder, "stem", None) is not None else x
        image = None
        skips = []
        for i, stage in enumerate(encoder.stages):
            h = stage(h)
            if i in self.fusion_stages:
                if image is None:
                    with torch.no_grad():
                        image = self.channels(x)
                for axis in self.fusion_axes:
                    features = self.slice_features(image, h.shape[2:], axis).to(h.dtype)
                    h = h + self.projections[f"{i}_{axis}"](features)
            skips.append(h)
        return self.unet.decoder(skips)
