"""The constant background logit of label-based outputs, one rule for every method.

SAM predicts one mask per object. For nnU-Net's label-based (softmax) training a method predicts one mask logit per
foreground label and puts a background channel of constant logit 0 before them: softmax([0, l]) = sigmoid(l) for a
single label, SAM's own reading of a mask logit. Region-based training (one sigmoid per region) has no background
channel.
"""
import torch


def prepend_background_logit(mask_logits: torch.Tensor) -> torch.Tensor:
    """(B, k, ...) mask logits -> (B, 1 + k, ...) logits whose channel 0 (background) is the constant 0."""
    return torch.cat([torch.zeros_like(mask_logits[:, :1]), mask_logits], dim=1)
