"""SAM 2's memory propagation over the slices of a patch, in one direction, without prompts.

The slices are the frames of a video. Each step is SAM 2's own tracking step (``SAM2Base.track_step``), assembled
from the official methods so that the segmentation logits stay differentiable and prompt-free:

    frame t's image features
      -> SAM2Base._prepare_memory_conditioned_features   memory attention over the memory bank: the first frame of
                                                         the pass (conditioning frame, no memory: + no_mem_embed) and
                                                         the 6 previous frames (spatial memories + temporal
                                                         encodings), plus object pointers of up to 16 previous frames
      -> mask decoder (SAM 2's no-prompt query)          mask token 0: segmentation logits; mask token 1: boundary
                                                         logits (the BD branch); stride 4
      -> object pointer from token 0                     SAM 2's occlusion handling (no_obj_ptr) where the slice's
                                                         mask is empty
      -> SAM2Base._encode_new_memory                      memory encoder on the frame features and the predicted mask
                                                         (SAM 2's sigmoid scale/bias) -> the memory of frame t

Two things differ from SAM 2's video tracking, both so that training through the sequence is well posed:
SAM 2 gates the mask with its object-score head (a hard, non-differentiable choice that would cut the gradient of
whole slices, and needs its own loss); here an object is "present" in a slice exactly when its predicted mask has a
positive logit, the axiom SAM 2 itself applies to mask inputs. And the single-mask output is always used (no IoU
based choice among multimask outputs), since no prompt makes the output ambiguous.

Objects (one per class or region) run as batch entries, as SAM 2 runs several tracked objects.
"""
from typing import List, NamedTuple, Sequence

import torch
import torch.nn.functional as F


class PropagationOutput(NamedTuple):
    segmentation: torch.Tensor   # (N, D, 4G, 4G) mask logits, frames in slice order
    boundary: torch.Tensor       # (N, D, 4G, 4G) boundary logits
    pooled: torch.Tensor         # (N, D, C) memory-conditioned features averaged over the frame


def propagate(sam2, features: torch.Tensor, pos: torch.Tensor, high_res: Sequence[torch.Tensor],
              sparse: torch.Tensor, dense: torch.Tensor, image_pe: torch.Tensor, num_objects: int,
              reverse: bool) -> PropagationOutput:
    """Track ``num_objects`` objects through the D frames of each of B patches, from the first frame to the last
    (``reverse=False``) or from the last to the first.

    Arguments:
      sam2: the official ``SAM2Base``.
      features: (B, D, C, G, G) stride-16 image features of every frame.
      pos: (G*G, 1, C) their position encoding (the same for every frame).
      high_res: stride-4 and stride-8 features after the mask decoder's conv_s0 / conv_s1, (B, D, c, h, w) each.
      sparse: (N, P, C) prompt tokens per object, N = B * num_objects (batch-major: b * num_objects + k).
      dense: (N or 1, C, G, G) dense prompt embedding.
      image_pe: (1, C, G, G) position encoding of the prompt encoder for the mask decoder.
    """
    B, D, C, G, _ = features.shape
    N = B * num_objects
    size = G * 16
    memory = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    pos = pos.expand(-1, N, -1)
    order = range(D - 1, -1, -1) if reverse else range(D)
    segmentation: List[torch.Tensor] = [None] * D
    boundary: List[torch.Tensor] = [None] * D
    pooled: List[torch.Tensor] = [None] * D
    for step, t in enumerate(order):
        frame = features[:, t].repeat_interleave(num_objects, dim=0)               # (N, C, G, G)
        frame = frame.flatten(2).permute(2, 0, 1)                                  # (G*G, N, C)
        frame_high_res = [h[:, t].repeat_interleave(num_objects, dim=0) for h in high_res]
        conditioned = sam2._prepare_memory_conditioned_features(
            frame_idx=t, is_init_cond_frame=step == 0, current_vision_feats=[frame],
            current_vision_pos_embeds=[pos], feat_sizes=[(G, G)], output_dict=memory, num_frames=D,
            track_in_reverse=reverse)                                              # (N, C, G, G)
        masks, _, tokens, _ = sam2.sam_mask_decoder.predict_masks(
            image_embeddings=conditioned, image_pe=image_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, repeat_image=False, high_res_features=frame_high_res)
        seg, bnd = masks[:, 0:1], masks[:, 1:2]                                    # (N, 1, 4G, 4G)

        present = (seg.detach().flatten(1).amax(dim=1, keepdim=True) > 0).to(torch.float32)  # (N, 1)
        obj_ptr = sam2.obj_ptr_proj(tokens[:, 0])
        if sam2.fixed_no_obj_ptr:
            obj_ptr = present * obj_ptr
        obj_ptr = obj_ptr + (1 - present) * sam2.no_obj_ptr
        mask_for_memory = F.interpolate(seg.float(), size=(size, size), mode="bilinear", align_corners=False)
        maskmem_features, maskmem_pos_enc = sam2._encode_new_memory(
            current_vision_feats=[frame], feat_sizes=[(G, G)], pred_masks_high_res=mask_for_memory,
            object_score_logits=20.0 * present - 10.0, is_mask_from_pts=False)
        bank = memory["cond_frame_outputs" if step == 0 else "non_cond_frame_outputs"]
        bank[t] = {"maskmem_features": maskmem_features, "maskmem_pos_enc": maskmem_pos_enc, "obj_ptr": obj_ptr}

        segmentation[t], boundary[t] = seg[:, 0], bnd[:, 0]
        pooled[t] = conditioned.mean(dim=(2, 3))
    return PropagationOutput(torch.stack(segmentation, 1), torch.stack(boundary, 1), torch.stack(pooled, 1))
