"""3DSAM-adapter's prompt encoder, the "visual sampler": 3D clicks update the image tokens of the last feature map.

For a feature map (B, C, d, h, w) and clicks in it (``"click_aware"``; ``"public"`` below):

    trilinear sampling of the feature map at every click            -> click tokens (B, N, C)
      + a fixed (not learned) code of the click's label (class and positive / negative)
    two blocks, each with its own 10 learnable global queries:
      queries = [global queries | click tokens]
      self-attention of the queries (absent clicks masked out), token-to-image cross-attention, MLP on the global
      queries, image-to-token cross-attention: every image token attends to the global queries and to the click
      tokens (the latter with a fixed bias that decays with the distance to the click) and is updated
    -> the updated feature map (B, C, d, h, w)

Two computations, chosen by ``sampler``:

``"public"``: what the public code (med-air/3DSAM-adapter, ``modeling/prompt_encoder.py``, as ``train.py`` and
``test.py`` call it) computes. A click token is the sampled feature only (no positional encoding, no label); per
block, queries = [global queries | click tokens], queries = norm2(queries + norm1(self-attention(queries))) (the
LayerNorm of the attention output before the residual, as published), MLP on the global queries, then every image
token attends to the 10 global queries only: image = norm4(image + attention(image, global queries)). The block's
token-to-image cross-attention is defined there but never called, so it never trains: it is left out here
(2,900,736 parameters for ViT-B instead of the 3,164,160 the public code counts; DDP, with every parameter expected
to take part, would refuse a parameter without gradient). The positional encodings are not computed. The click
tokens reach the image only through the global queries, and clicks of different labels are indistinguishable (the
public code clicks one foreground class, positives only).

``"click_aware"`` (ours; 3,164,160 parameters for ViT-B, the public code's count), differences to the public code:
  - the block's token-to-image cross-attention exists there but is never called; here it runs (queries gather image
    context before the image tokens read them), so no parameter is dead weight;
  - its random Fourier positional encodings are computed there but unused; here they are added to the attention
    queries and keys of clicks and image tokens (a fixed buffer, as in SAM);
  - it does not encode what a click means; here each click carries a fixed random code of its label (buffer, no
    parameter), so negative clicks and clicks of several classes are told apart (see ``sam_nnunet.prompts.clicks``);
  - there the image tokens attend to the 10 global queries only; here (``image_reads_clicks``, default) also to the
    click tokens, with an attention bias -d^2 / (2 reach^2) for a click d tokens away (``click_reach``, 1.5 tokens):
    a click acts on the image around it from the first iteration. Measured (documentation/prompts.md): trained
    briefly to pick the clicked one of two identical spheres, the public code's attention and the variant without
    the bias both ignore where the click is (equal foreground probability in both spheres); with the bias the
    clicked sphere is selected after 25 iterations;
  - (both modes) it handles one image and all clicks valid; here a batch with a different number of clicks per
    image (label -1 marks absent clicks, masked out of every attention) and images without any click (only the
    global queries remain: the network's automatic mode).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import MLPBlock
from segment_anything.modeling.transformer import Attention
from torch import nn

SAMPLERS = ("public", "click_aware")  # see the module docstring


class MaskedAttention(Attention):
    """SAM's attention layer (same parameters) with an optional mask of the keys each query may attend to."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor = None,
                bias: torch.Tensor = None) -> torch.Tensor:
        """q (B, Nq, C), k and v (B, Nk, C), key_valid (B, Nk) bool or None, bias (B, Nq, Nk) added to the attention
        logits of every head, or None -> (B, Nq, C)."""
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        mask = None if key_valid is None else key_valid[:, None, None, :]
        if bias is not None:
            bias = bias[:, None].to(q.dtype)
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(self._recombine_heads(out))


class RandomFourierPositions3d(nn.Module):
    """Positional encoding of 3D points in [0, 1]^3 by random Fourier features (SAM's PositionEmbeddingRandom, in
    3D). The Gaussian matrix is a buffer: saved with the network, never trained.

    Arguments:
      dim: output width (even).
      scale: standard deviation of the random frequencies.
    """

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"RandomFourierPositions3d needs an even width, got {dim}")
        self.register_buffer("gaussian", scale * torch.randn(3, dim // 2))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (..., 3) in [0, 1] -> (..., dim)."""
        projected = 2 * torch.pi * ((2 * coords - 1).to(self.gaussian.dtype) @ self.gaussian)
        return torch.cat([projected.sin(), projected.cos()], dim=-1)

    def centres(self, size: Tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """Centres of the tokens of a (d, h, w) grid in [0, 1]^3 -> (d * h * w, 3)."""
        axes = [(torch.arange(s, device=device, dtype=self.gaussian.dtype) + 0.5) / s for s in size]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)

    def grid(self, size: Tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """Encoding of the centres of a (d, h, w) grid of tokens -> (d * h * w, dim)."""
        return self.forward(self.centres(size, device))


class VisualSamplerBlock(nn.Module):
    """One block of the visual sampler (see the module docstring).

    Arguments:
      dim: token width.
      num_heads: attention heads.
      mlp_dim: hidden width of the MLP on the global queries.
      num_global_queries: learnable queries of this block (10 in 3DSAM-adapter).
      attention_downsample_rate: internal width reduction of the two cross-attentions (2, as in SAM).
      image_reads_clicks: the image tokens attend to the click tokens too, not only to the global queries.
      public: compute the public code's block instead (see the module docstring), without its unused
        token-to-image cross-attention.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, num_global_queries: int = 10,
                 attention_downsample_rate: int = 2, image_reads_clicks: bool = True, public: bool = False) -> None:
        super().__init__()
        self.image_reads_clicks = image_reads_clicks
        self.public = public
        self.global_queries = nn.Parameter(0.1 * torch.randn(1, num_global_queries, dim))
        self.self_attn = MaskedAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        if not public:  # the public code defines it but never calls it: parameters without gradients (DDP refuses them)
            self.cross_attn_token_to_image = MaskedAttention(dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = MaskedAttention(dim, num_heads, attention_downsample_rate)
        self.norm4 = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, clicks: torch.Tensor, click_pe: torch.Tensor,
                click_valid: torch.Tensor, click_bias: torch.Tensor = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """image (B, T, C), image_pe (1, T, C), clicks and click_pe (B, N, C), click_valid (B, N) bool,
        click_bias (B, T, N): fixed logits added to the image tokens' attention to the clicks (or None)
        -> updated image (B, T, C) and click tokens (B, N, C)."""
        if self.public:
            return self._forward_public(image, clicks, click_valid)
        b, g = image.shape[0], self.global_queries.shape[1]
        queries = torch.cat([self.global_queries.expand(b, -1, -1), clicks], dim=1)
        query_pe = torch.cat([torch.zeros_like(queries[:, :g]), click_pe], dim=1)
        valid = torch.cat([click_valid.new_ones(b, g), click_valid], dim=1)

        q = queries + query_pe
        queries = self.norm1(queries + self.self_attn(q, q, queries, valid))
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, image + image_pe, image))
        global_queries, clicks = queries[:, :g], queries[:, g:]
        global_queries = self.norm3(global_queries + self.mlp(global_queries))
        # every image token reads the global queries, which carry what the clicks said, and (image_reads_clicks) the
        # click tokens themselves, keyed by their positions: a click then acts most where it is
        if self.image_reads_clicks:
            keys = torch.cat([global_queries, clicks + click_pe], dim=1)
            values = torch.cat([global_queries, clicks], dim=1)
            bias = None
            if click_bias is not None:
                bias = torch.cat([click_bias.new_zeros(*click_bias.shape[:2], g), click_bias], dim=2)
            attended = self.cross_attn_image_to_token(image + image_pe, keys, values, valid, bias)
        else:
            attended = self.cross_attn_image_to_token(image + image_pe, global_queries, global_queries)
        image = self.norm4(image + attended)
        return image, clicks

    def _forward_public(self, image: torch.Tensor, clicks: torch.Tensor,
                        click_valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The public code's TwoWayAttentionBlock.forward, batched: no positional encodings, norm1 on the attention
        output before the residual, no token-to-image attention, the image reads the global queries only."""
        b, g = image.shape[0], self.global_queries.shape[1]
        queries = torch.cat([self.global_queries.expand(b, -1, -1), clicks], dim=1)
        valid = torch.cat([click_valid.new_ones(b, g), click_valid], dim=1)
        queries = self.norm2(queries + self.norm1(self.self_attn(queries, queries, queries, valid)))
        global_queries, clicks = queries[:, :g], queries[:, g:]
        global_queries = self.norm3(global_queries + self.mlp(global_queries))
        image = self.norm4(image + self.cross_attn_image_to_token(image, global_queries, global_queries))
        return image, clicks


class VisualSamplerPromptEncoder3d(nn.Module):
    """3DSAM-adapter's visual sampler prompt encoder (see the module docstring).

    Arguments:
      dim: width of the feature map and tokens (256 for SAM's neck width).
      num_label_codes: number of click labels (2 per output channel: positive, negative).
      depth: number of blocks (2).
      num_heads: attention heads (8).
      mlp_dim: hidden width of the MLPs (2048).
      num_global_queries: learnable queries per block (10).
      image_reads_clicks: image tokens attend to the global queries and the click tokens (True), or to the global
        queries only (False, as the public code).
      click_reach: with image_reads_clicks, the image tokens' attention logits to a click get a fixed
        -d^2 / (2 click_reach^2), d the distance in tokens: a click speaks to the tokens around it from the start
        (None: no such bias).
      sampler: ``"click_aware"`` (ours) or ``"public"`` (the public code's computation; image_reads_clicks and
        click_reach do not apply, no buffers).
    """

    def __init__(self, dim: int, num_label_codes: int, depth: int = 2, num_heads: int = 8, mlp_dim: int = 2048,
                 num_global_queries: int = 10, image_reads_clicks: bool = True,
                 click_reach: Optional[float] = 1.5, sampler: str = "click_aware") -> None:
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"visual sampler {sampler!r} unknown; choose one of {', '.join(SAMPLERS)}")
        self.sampler = sampler
        self.num_label_codes = num_label_codes
        public = sampler == "public"
        self.click_reach = click_reach if image_reads_clicks and not public else None
        if not public:
            self.positions = RandomFourierPositions3d(dim)
            # fixed random codes, of the scale of the layer-normalised features they are added to
            self.register_buffer("label_codes", torch.randn(num_label_codes, dim))
        self.blocks = nn.ModuleList(
            VisualSamplerBlock(dim, num_heads, mlp_dim, num_global_queries, image_reads_clicks=image_reads_clicks,
                               public=public)
            for _ in range(depth))

    def click_codes(self, point_labels: torch.Tensor) -> torch.Tensor:
        """The fixed code of each click's label (B, N, C); absent clicks (-1) get label 0's, masked out later."""
        return self.label_codes[point_labels.clamp(min=0)]

    def forward(self, features: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                point_codes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """features (B, C, d, h, w); point_coords (B, N, 3): click positions normalised to [0, 1] along (d, h, w)
        (0 and 1 are the outer faces of the first and last voxel); point_labels (B, N) long, -1 for no click.
        N may be 0. point_codes (B, N, C): the fixed codes added to the click tokens (click_aware; default: the code
        of each click's label; a box's points bring codes of their own). Returns the updated features."""
        b, c, d, h, w = features.shape
        n = point_coords.shape[1]
        coords = point_coords.to(features.dtype)
        # grid_sample wants (x, y, z) = (w, h, d) in [-1, 1]; align_corners=False matches the voxel-face convention
        grid = (2 * coords - 1).flip(-1).reshape(b, 1, 1, n, 3)
        sampled = F.grid_sample(features, grid, mode="bilinear", align_corners=False)  # (B, C, 1, 1, N)
        valid = point_labels >= 0
        clicks = sampled.reshape(b, c, n).transpose(1, 2)
        image = features.flatten(2).transpose(1, 2)  # (B, T, C)
        if self.sampler == "public":  # a click is the feature where it is, nothing more
            for block in self.blocks:
                image, clicks = block(image, None, clicks, None, valid)
            return image.transpose(1, 2).reshape(b, c, d, h, w)
        if point_codes is None:
            point_codes = self.click_codes(point_labels)
        clicks = clicks + point_codes.to(features.dtype)
        click_pe = self.positions(coords).to(features.dtype)
        image_pe = self.positions.grid((d, h, w), features.device).to(features.dtype).unsqueeze(0)
        bias = None
        if self.click_reach is not None:
            grid = torch.tensor((d, h, w), device=features.device, dtype=features.dtype)
            centres = self.positions.centres((d, h, w), features.device).to(features.dtype) * grid  # (T, 3), tokens
            distance2 = ((centres[None, :, None] - (coords * grid)[:, None]) ** 2).sum(-1)  # (B, T, N)
            bias = -distance2 / (2 * self.click_reach ** 2)
        for block in self.blocks:
            image, clicks = block(image, image_pe, clicks, click_pe, valid, bias)
        return image.transpose(1, 2).reshape(b, c, d, h, w)
