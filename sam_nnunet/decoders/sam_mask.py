"""SAM's own mask decoder without its IoU head (the only trained part of ZAP-2.5DSAM), prompt-free or with SAM's
sparse prompt tokens.

The builders take any config with SAM's decoder sizes (``SAMViTConfig``, ``LiteMedSAMConfig``): ``out_chans``,
``decoder_mlp_dim``, ``decoder_num_heads``, ``iou_head_hidden_dim``, ``mask_in_chans``, ``img_size``, ``patch_size``.
"""
import math
from typing import Dict, Iterable, Optional

import torch
from torch import nn

from sam_nnunet.encoders.sam_vit import load_submodule_state


def build_sam_prompt_encoder(cfg) -> nn.Module:
    """The official ``PromptEncoder`` of a SAM-family model (random weights; shapes equal the checkpoint's)."""
    from segment_anything.modeling import PromptEncoder

    grid = cfg.img_size // cfg.patch_size
    return PromptEncoder(embed_dim=cfg.out_chans, image_embedding_size=(grid, grid),
                         input_image_size=(cfg.img_size, cfg.img_size), mask_in_chans=cfg.mask_in_chans)


def build_sam_mask_decoder(cfg) -> nn.Module:
    """The official ``MaskDecoder`` of a SAM-family model (4 mask tokens, IoU head; random weights)."""
    from segment_anything.modeling import MaskDecoder, TwoWayTransformer

    return MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=cfg.out_chans, mlp_dim=cfg.decoder_mlp_dim,
                                      num_heads=cfg.decoder_num_heads),
        transformer_dim=cfg.out_chans, iou_head_depth=3, iou_head_hidden_dim=cfg.iou_head_hidden_dim)


def _attention(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """SAM's ``Attention`` (its own projections) with keys where ``key_mask`` (B, N_k) is False left out: their
    weight is exactly 0, as if the tokens were not in the set. Without a mask: SAM's module itself."""
    if key_mask is None:
        return attn(q=q, k=k, v=v)
    q = attn._separate_heads(attn.q_proj(q), attn.num_heads)
    k = attn._separate_heads(attn.k_proj(k), attn.num_heads)
    v = attn._separate_heads(attn.v_proj(v), attn.num_heads)
    bias = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~key_mask, float("-inf"))
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias[:, None, None, :], dim=-1)
    return attn.out_proj(attn._recombine_heads(weights @ v))


def two_way_transformer(transformer: nn.Module, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                        tokens: torch.Tensor, token_mask: Optional[torch.Tensor] = None):
    """SAM's ``TwoWayTransformer.forward`` with tokens left out where ``token_mask`` (N, T) is False: they are no
    key of the tokens' self-attention nor of the image-to-token attention, so no other token and no image position
    sees them (their own outputs are computed and never used). Without a mask: SAM's module itself.

    Empty click slots must not change a prediction: SAM has no key padding mask, so every padding token it is given
    takes part in the attention (SAM's own single "not a point" token after the clicks is not an empty slot: keep it).
    """
    if token_mask is None:
        return transformer(image_embedding, image_pe, tokens)
    keys = image_embedding.flatten(2).transpose(1, 2)  # (N, hw, C)
    key_pe = image_pe.flatten(2).transpose(1, 2)
    queries = tokens
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = _attention(layer.self_attn, queries, queries, queries, token_mask)
        else:
            q = queries + tokens
            queries = queries + _attention(layer.self_attn, q, q, queries, token_mask)
        queries = layer.norm1(queries)
        q, k = queries + tokens, keys + key_pe
        queries = layer.norm2(queries + layer.cross_attn_token_to_image(q=q, k=k, v=keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + tokens
        keys = layer.norm4(keys + _attention(layer.cross_attn_image_to_token, k, q, queries, token_mask))
    q, k = queries + tokens, keys + key_pe
    queries = transformer.norm_final_attn(queries + transformer.final_attn_token_to_image(q=q, k=k, v=keys))
    return queries, keys


class PromptFreeMaskDecoder(nn.Module):
    """SAM's mask decoder without its IoU head: ``num_masks`` mask logits per image embedding, without prompts
    (ZAP25DNetwork) or with SAM's sparse prompt tokens appended to the output tokens, as SAM's own decoder takes them
    (ZAP25DPromptedNetwork).

    Output i is SAM's mask token i through hypernetwork MLP i. SAM has four of each, so up to four outputs add no
    parameter; unused MLPs are dropped (the paper keeps one). All four mask tokens and the IoU token stay in the token
    set, so the two-way transformer sees SAM's own tokens. Outputs beyond four get an added token and MLP each
    (``extra_*``), initialised from SAM's token / MLP ``i mod 4`` when the pretrained weights are loaded; with
    ``token_source`` every output starts from SAM's token / MLP of that index instead.

    Arguments:
      cfg: decoder sizes (see the module docstring).
      num_masks: number of mask logits per image (>= 1).
      token_source: None, or the index of the pretrained mask token every output starts from (0: the single-mask
        output MedSAM / LiteMedSAM trained; their tokens 1-3 are SAM's natural-image multi-mask tokens).
    """

    def __init__(self, cfg, num_masks: int, token_source: Optional[int] = None) -> None:
        super().__init__()
        if num_masks < 1:
            raise ValueError("PromptFreeMaskDecoder needs at least one output mask")
        from segment_anything.modeling.mask_decoder import MLP

        sam = build_sam_mask_decoder(cfg)
        if token_source is not None and not 0 <= token_source < min(num_masks, sam.num_mask_tokens):
            raise ValueError(f"token_source {token_source}: one of the outputs' tokens "
                             f"0..{min(num_masks, sam.num_mask_tokens) - 1}")
        self.token_source = token_source
        del sam.iou_prediction_head
        sam.output_hypernetworks_mlps = nn.ModuleList(list(sam.output_hypernetworks_mlps)[:num_masks])
        self.sam = sam
        self.num_masks = num_masks
        dim = cfg.out_chans
        extra = max(0, num_masks - sam.num_mask_tokens)
        self.extra_mask_tokens = nn.Parameter(torch.zeros(extra, dim))
        self.extra_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(extra))

    def load_pretrained(self, state_dict: Dict[str, torch.Tensor], path: str = "the checkpoint") -> None:
        kept = len(self.sam.output_hypernetworks_mlps)
        dropped: Iterable[str] = ["iou_prediction_head."] + [
            f"output_hypernetworks_mlps.{i}." for i in range(kept, self.sam.num_mask_tokens)]
        load_submodule_state(self.sam, state_dict, "mask_decoder.", ignore_prefixes=dropped, path=path)
        source = self.token_source
        mlps = self.sam.output_hypernetworks_mlps
        with torch.no_grad():
            if source is not None:
                for i in range(kept):
                    if i != source:
                        self.sam.mask_tokens.weight[i].copy_(self.sam.mask_tokens.weight[source])
                        mlps[i].load_state_dict(mlps[source].state_dict())
            for j, mlp in enumerate(self.extra_hypernetworks_mlps):
                src = j % self.sam.num_mask_tokens if source is None else source
                self.extra_mask_tokens[j].copy_(self.sam.mask_tokens.weight[src])
                mlp.load_state_dict(mlps[src].state_dict())

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense_embedding: torch.Tensor,
                sparse_embeddings: Optional[torch.Tensor] = None,
                sparse_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """image_embeddings (N, C, h, w), image_pe (1, C, h, w), dense_embedding (1, C, 1, 1), optionally SAM's sparse
        prompt embeddings (N, n, C) (``PromptEncoder`` output: point tokens) and which of them are present (N, n) bool
        (absent ones are left out of the attention: ``two_way_transformer``) -> mask logits (N, num_masks, 4h, 4w)."""
        sam = self.sam
        n, c, h, w = image_embeddings.shape
        # SAM's output tokens, then (as SAM's predict_masks) the prompt tokens; none: the prompt-free decoder
        tokens = torch.cat([sam.iou_token.weight, sam.mask_tokens.weight, self.extra_mask_tokens], dim=0)
        tokens = tokens.unsqueeze(0).expand(n, -1, -1)
        token_mask = None
        if sparse_embeddings is not None:
            if sparse_mask is not None:
                token_mask = torch.cat([sparse_mask.new_ones(n, tokens.shape[1]), sparse_mask], dim=1)
            tokens = torch.cat([tokens, sparse_embeddings.to(tokens.dtype)], dim=1)
        hs, src = two_way_transformer(sam.transformer, image_embeddings + dense_embedding,
                                      image_pe.expand(n, -1, -1, -1), tokens, token_mask)
        mask_tokens_out = hs[:, 1:1 + self.num_masks]
        upscaled = sam.output_upscaling(src.transpose(1, 2).reshape(n, c, h, w))  # (N, C/8, 4h, 4w)
        mlps = list(sam.output_hypernetworks_mlps) + list(self.extra_hypernetworks_mlps)
        hyper = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(mlps)], dim=1)  # (N, k, C/8)
        return (hyper @ upscaled.flatten(2)).view(n, self.num_masks, *upscaled.shape[2:])
