"""ZAP-2.5DSAM (Guo et al., The Visual Computer 2025), prompt-free, for any nnU-Net patch: zero added parameters.

Data flow for a patch (B, C_in, D, H, W):

    pad each axis to a multiple of ``pool`` (4)
    input channels -> 3 (replicate / pass / fixed 1x1x1 projection)   InputChannelAdapter
    for each orientation (slices along D: H x W; along H: W x D; along W: D x H, rows x columns, as the published
      code builds them; ``plane_layout`` 1 = sam-nnunet 0.1's coronal D x W, for models trained with it):
      groups of 4 consecutive slices, each upsampled x4 and patch-   PseudoSliceEncoder (frozen, no_grad)
        embedded, averaged into a pseudo-slice; the frozen encoder
        blocks and neck run once per pseudo-slice -> (N, 256, gh, gw)
      SAM's mask decoder (IoU head removed; trained, shared by the   PromptFreeMaskDecoder
        three orientations), prompt-free: SAM's dense no-mask
        embedding and its positional encoding of the token grid
        -> (N, k, 4 gh, 4 gw), resized to the slice where the
        encoder grid is not a quarter of it (LiteMedSAM)
      logits of the pseudo-slices upsampled x4 along the slice axis (linear)
    sum over the three orientations, crop back to (D, H, W)
    k = foreground classes: prepend a constant background logit 0 (softmax([0, l]) = sigmoid(l), the paper's
      single-mask output); region-based training: k = regions, no background channel

Encoder passes per patch: (D + H + W) / 4 (after padding), e.g. 34 for nnU-Net's 40x56x40 hippocampus patch.
``forward`` = ``decode(*embed(x))``: the frozen part (``embed``, without autograd) and the trained part (``decode``)
are separate, so the encoder can run once for several decodings (prompts: ``networks/zap25d_prompted.py``).
"""
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window
from torch.utils.checkpoint import checkpoint

from sam_nnunet import nnunet_prediction
from sam_nnunet.blocks.channels import InputChannelAdapter
from sam_nnunet.blocks.padding import crop_to, pad_to_multiple
from sam_nnunet.blocks.plane_prompts import PLANE_LAYOUT, PLANE_LAYOUTS
from sam_nnunet.blocks.pseudo_slices import PseudoSliceEncoder, build_pseudo_slice_encoder
from sam_nnunet.decoders.sam_mask import PromptFreeMaskDecoder, build_sam_prompt_encoder
from sam_nnunet.encoders.litemedsam import LITEMEDSAM
from sam_nnunet.encoders.sam_vit import SAM_VIT_CONFIGS, load_submodule_state
from sam_nnunet.networks.base import SAMNetworkBase
from sam_nnunet.networks.token_grid import TokenGrid


# nnU-Net's predictor (nnUNetv2_predict, the final validation) hands a case to predict_volume whole: every pseudo-slice
# encoded once per mirroring, not once per overlapping 3D tile
nnunet_prediction.install()


class PlaneEmbedding(NamedTuple):
    """The frozen encoder's output for the slices of one orientation of a (padded) batch of patches."""
    embeddings: torch.Tensor       # (B * S / pool, C, gh, gw), sample-major
    image_pe: torch.Tensor         # (1, C, gh, gw): SAM's positional encoding of the token grid
    dense: torch.Tensor            # (1, C, 1, 1): SAM's "no mask" embedding
    batch: int                     # B
    slice_shape: Tuple[int, int]   # (a, b): the slices' size in voxels


class CachedEmbeddings:
    """What ``ZAP25DNetwork.embed`` computes for a batch of patches, kept apart from the network: the frozen
    encoder's output per orientation, so that training can run the trained decoder alone (the embedding cache,
    ``sam_nnunet.trainers.embedding_cache``). The network takes it in place of the patch tensor: nnU-Net's
    ``train_step`` moves ``batch['data']`` with ``.to(device)`` and calls ``network(data)``, both of which work on it.

    embeddings: {axis: (B * S / pool, C, gh, gw)} sample-major, as ``PlaneEmbedding.embeddings``;
    slice_shapes: {axis: (a, b)}; spatial: the patch size before the network's padding.
    """

    def __init__(self, embeddings: Dict[int, torch.Tensor], slice_shapes: Dict[int, Tuple[int, int]],
                 spatial: Tuple[int, ...], batch: int) -> None:
        self.embeddings = embeddings
        self.slice_shapes = slice_shapes
        self.spatial = tuple(spatial)
        self.batch = batch

    def to(self, device=None, dtype=None, non_blocking: bool = False) -> "CachedEmbeddings":
        return CachedEmbeddings({a: e.to(device=device, dtype=dtype, non_blocking=non_blocking)
                                 for a, e in self.embeddings.items()}, self.slice_shapes, self.spatial, self.batch)

    @property
    def shape(self) -> Tuple[int, ...]:
        # nnU-Net and torch code that asks a batch for its shape get (B, ?, *patch)
        return (self.batch, 0, *self.spatial)

    @classmethod
    def of(cls, planes: Dict[int, "PlaneEmbedding"], spatial: Tuple[int, ...]) -> "CachedEmbeddings":
        first = next(iter(planes.values()))
        return cls({a: p.embeddings for a, p in planes.items()}, {a: p.slice_shape for a, p in planes.items()},
                   spatial, first.batch)

    @staticmethod
    def concatenate(items: Sequence["CachedEmbeddings"]) -> "CachedEmbeddings":
        first = items[0]
        if any(i.spatial != first.spatial or i.slice_shapes != first.slice_shapes for i in items):
            raise ValueError("cached embeddings of different patch sizes cannot form one batch")
        return CachedEmbeddings({a: torch.cat([i.embeddings[a] for i in items]) for a in first.embeddings},
                                first.slice_shapes, first.spatial, sum(i.batch for i in items))

    def sample(self, i: int) -> "CachedEmbeddings":
        """The embeddings of sample i of the batch."""
        return CachedEmbeddings({a: e.unflatten(0, (self.batch, -1))[i] for a, e in self.embeddings.items()},
                                self.slice_shapes, self.spatial, 1)


def fixed_colour_projection(adapter: InputChannelAdapter) -> None:
    """Set a multi-channel input projection to a fixed false-colour mapping and freeze it.

    ZAP's encoder runs without gradients, so a projection in front of it could not learn; instead of the channel
    mean (which would merge all modalities into one grey image) every input channel keeps its own colour: channel i
    goes to colour i mod 3, averaged with the other channels of that colour; with two channels the third colour is
    their mean.
    """
    if adapter.proj is None:
        return
    c = adapter.in_channels
    weight = torch.zeros(3, c)
    for i in range(c):
        weight[i % 3, i] = 1.0
    if c == 2:
        weight[2] = 0.5
    weight = weight / weight.sum(1, keepdim=True)
    with torch.no_grad():
        adapter.proj.weight.copy_(weight.view(3, c, 1, 1, 1))
        adapter.proj.bias.zero_()
    adapter.requires_grad_(False)


class ZAP25DNetwork(SAMNetworkBase):
    """Tri-planar 2.5D ZAP-2.5DSAM network, built from nnU-Net plans (``architecture.arch_kwargs``).

    Arguments:
      input_channels: nnU-Net's input channels (any number).
      num_classes: nnU-Net's segmentation heads.
      encoder: SAM ViT size (``vit_b``, ``vit_l``, ``vit_h``, ``vit_test``) or ``litemedsam``.
      upsample: in-plane upsampling of every slice (4 in the paper; capped at the encoder's training size).
      pool: slices averaged into one pseudo-slice; also the upsampling of the logits along the slice axis.
      window_size: attention window of SAM ViT's non-global blocks (16 in the paper); unused by LiteMedSAM.
      background_channel: True for label-based training (a constant background logit precedes the
        ``num_classes - 1`` mask outputs), False for region-based training (``num_classes`` mask outputs).
      encoder_batch: pseudo-slices per encoder call, and per recomputed decoder segment (memory / speed; no effect
        on the result).
      checkpoint_decoder: in training, keep only the decoder's inputs and recompute its activations in the backward
        pass, ``encoder_batch`` pseudo-slices at a time (the same gradients; ~1.6 GB less memory per 40x56x40
        sample with LiteMedSAM, for a second decoder forward, which is small beside the encoder).
      plane_layout: orientation of each plane's images (``blocks.plane_prompts.PLANE_LAYOUTS``): 2 = the published
        code's (coronal W x D); 1 = sam-nnunet 0.1's (coronal D x W), only to run models trained with it.
      input_window: per input channel the nnU-Net value range mapped to [0, 1] before the encoder's own
        normalisation (``encoders.contract``; the trainer writes it from the plans); None: values as they are (the
        public code's SAM ViT input, and models trained before the contract).
      mask_token_source: every output's mask token and hypernetwork MLP start from SAM's token / MLP of this index
        (0: the single-mask output that MedSAM and LiteMedSAM trained, always box-prompted); None: output i from
        SAM's token i (SAM's multi-mask tokens beyond 0, which those models never trained).
      canvas: LiteMedSAM only: every slice resized to the encoder's 256 x 256 canvas (its official placement)
        instead of ``upsample`` (``blocks.pseudo_slices``).
      deep_supervision: must be False: the network has a single full-resolution head (nnU-Net passes the flag).
    """

    # the frozen encoder is most of a prediction's cost; bfloat16 against float32 on 40 held-out hippocampus cases:
    # zap25dsam.md, "Prediction on the CPU: channels-last and bfloat16"
    cpu_bf16_prediction = True

    @classmethod
    def token_grid(cls, arch_kwargs: Dict) -> TokenGrid:
        # every axis is the slice axis of one orientation: it is cut into pseudo-slices of `pool` slices (padded to a
        # multiple: a length of 4k+1 pays a whole encoder pass for one slice) and, in the other two orientations,
        # lies in-plane, where a token is pool voxels too (SAM ViT: x4 upsampling, 16-pixel patches; LiteMedSAM: one
        # voxel). Not imposed: the windows of the frozen encoder (SAM ViT: 16 tokens = 64 voxels; TinyViT: 7 / 14
        # tokens), which pad the in-plane token grid in the windowed blocks' attention only; forcing 64-voxel lengths
        # would pad small images far more. The memory trace runs that padding like any other operation.
        pool = int(arch_kwargs.get("pool", 4))
        return TokenGrid(stride=(pool,) * 3, min_tokens=4)

    def __init__(self, input_channels: int, num_classes: int, encoder: str = "vit_b", upsample: float = 4,
                 pool: int = 4, window_size: int = 16, background_channel: bool = True, encoder_batch: int = 8,
                 checkpoint_decoder: bool = True, plane_layout: int = PLANE_LAYOUT,
                 input_window: Optional[Sequence[Sequence[float]]] = None, canvas: bool = False,
                 mask_token_source: Optional[int] = None, deep_supervision: bool = False) -> None:
        super().__init__(encoder, deep_supervision)
        if plane_layout not in PLANE_LAYOUTS:
            raise ValueError(f"ZAP25DNetwork: unknown plane_layout {plane_layout!r}; known: {sorted(PLANE_LAYOUTS)}")
        num_masks = num_classes - 1 if background_channel else num_classes
        if num_masks < 1:
            raise ValueError(f"ZAP25DNetwork needs at least one foreground output; got {num_classes} classes with "
                             f"background_channel={background_channel}")
        cfg = LITEMEDSAM if encoder == LITEMEDSAM.name else SAM_VIT_CONFIGS.get(encoder)
        self.pool = pool
        self.background_channel = background_channel
        self.encoder_batch = encoder_batch
        self.checkpoint_decoder = checkpoint_decoder
        self.plane_layout = plane_layout

        self.channels = self.encoder_input(input_channels, input_window)
        fixed_colour_projection(self.channels)
        self.encoder: PseudoSliceEncoder = build_pseudo_slice_encoder(encoder, window_size, upsample, canvas)
        self.prompt_encoder = build_sam_prompt_encoder(cfg)
        self.prompt_encoder.requires_grad_(False)
        self.decoder = PromptFreeMaskDecoder(cfg, num_masks, mask_token_source)

    def pretrained_modules(self) -> Dict[str, nn.Module]:
        return {"encoder": self.encoder, "prompt_encoder": self.prompt_encoder, "decoder.sam": self.decoder.sam}

    def load_pretrained(self, state_dict: Dict[str, torch.Tensor], path: str = "the checkpoint") -> None:
        self.encoder.load_pretrained(state_dict, path)
        load_submodule_state(self.prompt_encoder, state_dict, "prompt_encoder.", path=path)
        self.decoder.load_pretrained(state_dict, path)

    def parameter_notes(self) -> Dict:
        k = self.decoder.num_masks
        extra = len(self.decoder.extra_hypernetworks_mlps)
        notes = {
            "mask_outputs": k,
            "background": "constant logit 0 (softmax = sigmoid of the mask logit)" if self.background_channel
            else "none (region-based: one mask output per region)",
            "outputs_from_sam_mask_tokens": k - extra,
            "added_by_outputs_beyond_4": sum(p.numel() for p in self.decoder.extra_hypernetworks_mlps.parameters())
            + self.decoder.extra_mask_tokens.numel(),
            "encoder_passes_per_patch": f"(D + H + W) / {self.pool} pseudo-slices (axes padded to multiples of "
                                        f"{self.pool})",
        }
        if self.channels.proj is not None:
            notes["input_projection"] = (f"{self.channels.in_channels} channels -> RGB by a fixed false-colour "
                                         f"1x1x1 projection (frozen: the encoder runs without gradients)")
        return notes

    def get_extra_state(self):
        # the layout travels with the weights: a model is only right in the orientation it was trained in
        return {**super().get_extra_state(), "plane_layout": self.plane_layout}

    def set_extra_state(self, state) -> None:
        if isinstance(state, dict):
            state = dict(state)
            # nnU-Net checkpoints of sam-nnunet 0.1 record no layout: they were trained with layout 1
            self.plane_layout = state.pop("plane_layout", 1)
        super().set_extra_state(state)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen encoder (with BatchNorm for LiteMedSAM) always as at inference
        return self

    def embed(self, x: Union[torch.Tensor, CachedEmbeddings]) -> Tuple[Dict[int, PlaneEmbedding], Tuple[int, ...]]:
        """The frozen part, without autograd: x (B, C_in, D, H, W) -> ({axis: PlaneEmbedding of the slices along
        that axis (2, 3, 4) of the padded patch}, spatial size of x). ``CachedEmbeddings`` (the encoder's output
        computed earlier) skip the encoder."""
        if isinstance(x, CachedEmbeddings):
            dtype = self.decoder.sam.mask_tokens.weight.dtype  # the cache stores half precision
            return {axis: self._plane(e.to(dtype), x.batch, x.slice_shapes[axis])
                    for axis, e in x.embeddings.items()}, x.spatial
        padded, spatial = pad_to_multiple(x, (self.pool,) * 3)
        image = self.channels(padded)
        return {axis: self._embed_plane(image, axis) for axis in (2, 3, 4)}, spatial

    def _plane_order(self, axis: int) -> Tuple[int, int, int, int, int]:
        """Permutation of (B, C, D, H, W) to (B, slice axis, C, rows, columns) of the slices along ``axis``."""
        rows, cols = PLANE_LAYOUTS[self.plane_layout][axis]
        return 0, axis, 1, rows, cols

    def _embed_plane(self, image: torch.Tensor, axis: int) -> PlaneEmbedding:
        stack = image.permute(self._plane_order(axis))  # (B, S, 3, a, b)
        b, s, c, height, width = stack.shape
        groups = stack.reshape(b * s // self.pool, self.pool, c, height, width)
        with torch.no_grad():  # ZAP's memory advantage: no activations of the frozen encoder are kept
            embeddings = torch.cat([self.encoder(g) for g in groups.split(self.encoder_batch)])
        return self._plane(embeddings, b, (height, width))

    def _plane(self, embeddings: torch.Tensor, batch: int, slice_shape: Tuple[int, int]) -> PlaneEmbedding:
        with torch.no_grad():
            grid = tuple(embeddings.shape[-2:])
            image_pe = self.prompt_encoder.pe_layer(grid).unsqueeze(0).to(embeddings.dtype)
            dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).to(embeddings.dtype)
        return PlaneEmbedding(embeddings, image_pe, dense, batch, tuple(slice_shape))

    def decode(self, planes: Dict[int, PlaneEmbedding], spatial: Tuple[int, ...],
               prompts: Optional[Dict[int, object]] = None) -> torch.Tensor:
        """The trained part: the ``embed`` output -> logits (B, num_classes, *spatial); ``prompts``: {axis: prompt of
        that orientation}, for subclasses that take prompts."""
        prompts = prompts or {}
        logits = sum(self._plane_logits(plane, axis, prompts.get(axis)) for axis, plane in planes.items())
        logits = crop_to(logits, spatial)
        if self.background_channel:
            logits = torch.cat([torch.zeros_like(logits[:, :1]), logits], dim=1)
        return logits

    def _decode(self, plane: PlaneEmbedding, prompt=None) -> torch.Tensor:
        """Prompt-free mask logits (N, k, 4 gh, 4 gw) of the N pseudo-slices of one orientation (``prompt``: the
        prompts of that orientation, for subclasses that take them; none here)."""
        if prompt is not None:
            raise ValueError(f"{type(self).__name__} takes no prompts")
        return self._run_decoder(plane.embeddings, plane.image_pe, plane.dense)

    def _run_decoder(self, embeddings: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor,
                     sparse: Optional[torch.Tensor] = None, sparse_mask: Optional[torch.Tensor] = None
                     ) -> torch.Tensor:
        """The decoder over N embeddings (with their sparse prompt tokens (N, n, C) and which are present (N, n)), its
        activations recomputed in the backward pass ``encoder_batch`` embeddings at a time when training
        (``checkpoint_decoder``)."""
        if not (self.checkpoint_decoder and torch.is_grad_enabled()):
            return self.decoder(embeddings, image_pe, dense, sparse, sparse_mask)
        chunks = embeddings.split(self.encoder_batch)
        none = [None] * len(chunks)
        tokens = sparse.split(self.encoder_batch) if sparse is not None else none
        masks = sparse_mask.split(self.encoder_batch) if sparse_mask is not None else none
        return torch.cat([checkpoint(self.decoder, chunk, image_pe, dense, t, m, use_reentrant=False)
                          for chunk, t, m in zip(chunks, tokens, masks)])

    def _plane_logits(self, plane: PlaneEmbedding, axis: int, prompt=None) -> torch.Tensor:
        """Mask logits (B, k, D, H, W) of one orientation (slices along ``axis``) of the padded patch."""
        return self._plane_volume(self._plane_masks(plane, prompt), plane.batch, axis)

    def _plane_masks(self, plane: PlaneEmbedding, prompt=None) -> torch.Tensor:
        """Mask logits (N, k, a, b) of the N pseudo-slices of one orientation, at the slice resolution."""
        height, width = plane.slice_shape
        masks = self._decode(plane, prompt)  # (N, k, 4 gh, 4 gw)
        if tuple(masks.shape[-2:]) != (height, width):
            shrink = masks.shape[-2] >= height and masks.shape[-1] >= width
            # area: the mean of the finer logits (LiteMedSAM's masks are 4x the slice resolution)
            masks = F.interpolate(masks, size=(height, width), mode="area" if shrink else "bilinear")
        return masks

    def _plane_volume(self, masks: torch.Tensor, batch: int, axis: int) -> torch.Tensor:
        """Pseudo-slice masks (B * S / pool, k, a, b) of one orientation -> logits (B, k, D, H, W)."""
        masks = masks.unflatten(0, (batch, -1))  # (B, S / pool, k, a, b): the order of _plane_order
        order = self._plane_order(axis)
        masks = masks.permute([order.index(i) for i in range(5)])  # (B, k, D / pool, H, W) for axis 2, etc.
        return F.interpolate(masks, size=tuple(masks.shape[i] * (self.pool if i == axis else 1) for i in (2, 3, 4)),
                             mode="trilinear", align_corners=False)

    @torch.no_grad()
    def predict_volume(self, x: torch.Tensor, patch_size: Sequence[int], tile_step_size: float = 0.5,
                       use_gaussian: bool = True) -> torch.Tensor:
        """Logits (1, num_classes, D, H, W) of a whole case x (1, C_in, D, H, W), every pseudo-slice encoded once.

        nnU-Net's 3D sliding window encodes a pseudo-slice once per overlapping tile; here each orientation is
        predicted on its own: each of its pseudo-slices is encoded once, whole, at the patch's scale, and SAM's
        decoder runs on the tokens of each in-plane window of the patch's size (the grid it was trained on: SAM's
        positional encoding is relative to the token grid), windows placed with nnU-Net's steps and blended with its
        Gaussian. A slice with more than 4 windows' worth of tokens is encoded window by window. A case no larger
        than the patch in-plane is one window, and the result equals ``forward`` of the case. Pseudo-slices are
        encoded and decoded ``encoder_batch`` at a time (bounded memory); only the upsampling along the slice axis
        joins them."""
        if x.ndim != 5 or x.shape[0] != 1:
            raise ValueError(f"predict_volume takes one case (1, C, D, H, W), got {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        if any(s < p for s, p in zip(spatial, patch_size)):
            raise ValueError(f"pad the case {spatial} to at least the patch size {tuple(patch_size)} first")
        padded, _ = pad_to_multiple(x, (self.pool,) * 3)
        logits = 0
        for axis in (2, 3, 4):
            logits = logits + self._predict_orientation(padded, axis, patch_size, tile_step_size, use_gaussian)
        logits = crop_to(logits, spatial)
        if self.background_channel:
            logits = torch.cat([torch.zeros_like(logits[:, :1]), logits], dim=1)
        return logits

    def _predict_orientation(self, padded: torch.Tensor, axis: int, patch_size: Sequence[int],
                             tile_step_size: float, use_gaussian: bool) -> torch.Tensor:
        """This orientation's logits (1, k, *padded spatial) of the whole (padded) case, from in-plane windows of
        the patch's size (padded to ``pool`` as in training)."""
        rows, cols = PLANE_LAYOUTS[self.plane_layout][axis]
        window = tuple(-(-patch_size[d - 2] // self.pool) * self.pool for d in (rows, cols))
        pitch = self._whole_slice_pitch(window, (padded.shape[rows], padded.shape[cols]))
        case = padded
        if pitch is not None:  # whole slices: padded to whole tokens
            pads = [0] * 6
            pads[2 * (4 - rows) + 1] = -padded.shape[rows] % pitch[0]
            pads[2 * (4 - cols) + 1] = -padded.shape[cols] % pitch[1]
            case = F.pad(padded, pads) if any(pads) else padded
        size = (case.shape[rows], case.shape[cols])
        steps = compute_steps_for_sliding_window(size, window, tile_step_size)
        if pitch is not None:  # windows on whole tokens (nnU-Net's steps, moved by less than a token)
            steps = [sorted({min(round(s / p) * p, n - w) for s in st}) for st, p, n, w in zip(steps, pitch, size,
                                                                                              window)]
        starts = [(r0, c0) for r0 in steps[0] for c0 in steps[1]]
        weight = compute_gaussian(window, sigma_scale=1. / 8, value_scaling_factor=10, dtype=torch.float32,
                                  device=padded.device) if use_gaussian else torch.ones(window, device=padded.device)
        shape = [1] * 5
        shape[rows], shape[cols] = window
        weight = weight.reshape(shape)
        windows = []
        for r0, c0 in starts:
            where = [slice(None)] * 5
            where[rows], where[cols] = slice(r0, r0 + window[0]), slice(c0, c0 + window[1])
            windows.append(tuple(where))
        if pitch is None:
            parts = [self._window_logits(case[where], axis) for where in windows]
        else:
            parts = self._whole_slice_logits(case, axis, window, pitch, starts)
        total = parts[0].new_zeros((1, parts[0].shape[1], *case.shape[2:]))
        weights = torch.zeros([case.shape[i] if i in (rows, cols) else 1 for i in range(5)], device=padded.device)
        for where, part in zip(windows, parts):
            total[where] += part * weight
            weights[where] += weight[0, 0]
        return crop_to(total / weights, padded.shape[2:])

    def _whole_slice_pitch(self, window: Tuple[int, int], size: Tuple[int, int]) -> Optional[Tuple[int, int]]:
        """Voxels per token (rows, columns) when the whole slices of this orientation are encoded at once at the
        window's scale, or None (window by window): the window's grid must tile whole voxels, and a slice may hold at
        most 4 windows' worth of tokens (SAM ViT's global attention grows with the square of the tokens)."""
        grid = self.encoder.grid(*window)
        pitch = tuple(w / g for w, g in zip(window, grid))
        if any(p != int(p) for p in pitch) or tuple(size) == tuple(window):
            return None  # one window: the window path is the whole slice already
        pitch = tuple(int(p) for p in pitch)
        tokens = [-(-n // p) for n, p in zip(size, pitch)]
        if tokens[0] * tokens[1] > 4 * grid[0] * grid[1]:
            return None
        return pitch

    def _whole_slice_logits(self, case: torch.Tensor, axis: int, window: Tuple[int, int], pitch: Tuple[int, int],
                            starts) -> list:
        """Each pseudo-slice encoded once, whole, at the window's scale; SAM's decoder on each window's tokens (the
        grid it was trained on); per window the logits (1, k, *window region of ``case``)."""
        stack = self.channels(case).permute(self._plane_order(axis))  # (1, S, 3, R, C)
        _, s, c, height, width = stack.shape
        groups = stack.reshape(s // self.pool, self.pool, c, height, width)
        grid = (height // pitch[0], width // pitch[1])
        gh, gw = self.encoder.grid(*window)
        masks = [[] for _ in starts]
        for g in groups.split(self.encoder_batch):
            embeddings = self.encoder(g, grid=grid)
            for i, (r0, c0) in enumerate(starts):
                crop = embeddings[..., r0 // pitch[0]:r0 // pitch[0] + gh, c0 // pitch[1]:c0 // pitch[1] + gw]
                masks[i].append(self._plane_masks(self._plane(crop.contiguous(), 1, window)))
        return [self._plane_volume(torch.cat(m), 1, axis) for m in masks]  # (1, k, ...), the window in-plane

    def _window_logits(self, sub: torch.Tensor, axis: int) -> torch.Tensor:
        """This orientation's logits of a sub-volume (1, C, D', H', W'): all its slices along ``axis``, one window
        in-plane; as ``forward`` computes them for a patch of that size (padded, then cropped back)."""
        padded, spatial = pad_to_multiple(sub, (self.pool,) * 3)
        stack = self.channels(padded).permute(self._plane_order(axis))  # (1, S, 3, a, b)
        _, s, c, height, width = stack.shape
        groups = stack.reshape(s // self.pool, self.pool, c, height, width)
        masks = torch.cat([self._plane_masks(self._plane(self.encoder(g), 1, (height, width)))
                           for g in groups.split(self.encoder_batch)])
        return crop_to(self._plane_volume(masks, 1, axis), spatial)

    def forward(self, x: Union[torch.Tensor, CachedEmbeddings]) -> torch.Tensor:
        return self.decode(*self.embed(x))
