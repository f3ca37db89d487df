"""ZAP25DSAMTrainer_prompted: ZAP-2.5DSAM with its point prompts through SAM's frozen prompt encoder, plus boxes and
simulated correction rounds with the previous mask (issue 17)."""
from typing import Tuple

import numpy as np
import torch

from sam_nnunet.prompts.boxes import sample_boxes_from_target
from sam_nnunet.prompts.clicks import NO_CLICK
from sam_nnunet.prompts.corrections import correction_click, region_correction_click
from sam_nnunet.trainers.prompted import PromptedTrainerMixin
from sam_nnunet.trainers.zap25d import ZAP25DSAMTrainer


class ZAP25DSAMTrainer_prompted(PromptedTrainerMixin, ZAP25DSAMTrainer):
    """ZAP-2.5DSAM with 3D click prompts (SAM's frozen prompt encoder, per plane); also segments without clicks.

    Clicks per training patch as the paper's code: k ~ U{1, 2, 3} distinct positive clicks per class present, no
    other click; here 20% of the patches get no click so the automatic mode is trained too (the paper clicks every
    crop with foreground). Validation (pseudo Dice): 3 clicks per class, as the paper. Zero added parameters, the
    trainable set of ZAP25DSAMTrainer; recipe otherwise ZAP25DSAMTrainer's.

    Boxes and refinement (not in the paper; MedSAM's boxes, SAM's and nnInteractive's interaction rounds):
      train_box_probability: share of the prompted patches that also get one box per class present (its bounding
        box, each face moved out by 0..box_jitter voxels); of those, train_box_clicks_probability keep their clicks
        (box + clicks), the others are box-only;
      refine_probability / max_refine_rounds: share of the training steps that simulate r ~ U{1..max} correction
        rounds first (no gradient, the frozen encoder run once): each round predicts with the prompts so far and the
        previous round's mask, and adds a click at the centre of the largest error region; the step then trains on
        the last round's prompts and mask.
    """
    network_class = "sam_nnunet.networks.zap25d_prompted.ZAP25DPromptedNetwork"
    train_positive_clicks = 3
    train_min_positive_clicks = 1
    distinct_clicks = True
    train_random_clicks = 0
    prompt_free_probability = 0.2
    val_positive_clicks = 3
    val_random_clicks = 0
    paper_click_tiles = "clicked"  # the paper predicts only sliding windows holding a click (prompts.predictor)
    train_box_probability = 0.5
    train_box_clicks_probability = 0.5
    box_jitter = 2  # voxels; MedSAM shifts each side by up to 20 of 1024 pixels (~2%)
    refine_probability = 0.5
    max_refine_rounds = 3

    def sample_prompts(self, target, training: bool) -> dict:
        prompts = super().sample_prompts(target, training)
        if not training or self.train_box_probability <= 0:
            return prompts
        target = (target[0] if isinstance(target, list) else target).to(self.device, non_blocking=True)
        lm = self.label_manager
        boxes, box_labels = sample_boxes_from_target(target, lm.num_segmentation_heads, lm.has_regions,
                                                     self.box_jitter, self.train_box_probability, lm.ignore_label)
        point_labels = prompts["point_labels"]
        clicked = (point_labels >= 0).any(1)
        box_labels[~clicked] = NO_CLICK  # prompt-free patches stay prompt-free
        boxed = (box_labels >= 0).any(1)
        box_only = boxed & (torch.rand(boxed.shape, device=boxed.device) >= self.train_box_clicks_probability)
        point_labels = point_labels.clone()
        point_labels[box_only] = NO_CLICK
        return {**prompts, "point_labels": point_labels, "boxes": boxes, "box_labels": box_labels}

    def simulate_interaction(self, batch: dict, prompts: dict) -> Tuple[dict, dict]:
        if self.max_refine_rounds < 1 or float(torch.rand(())) >= self.refine_probability:
            return batch, prompts
        rounds = int(torch.randint(1, self.max_refine_rounds + 1, ()))
        net = self.sam_network
        target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
        target = target.cpu().numpy()
        lm = self.label_manager
        first = 0 if lm.has_regions else 1
        active = (prompts["point_labels"] >= 0).any(1)
        if "box_labels" in prompts:
            active = active | (prompts["box_labels"] >= 0).any(1)
        with torch.no_grad():
            data = batch["data"].to(self.device, non_blocking=True)
            cached = net.encoded(data)  # the frozen encoder once for every round
            for _ in range(rounds):
                logits = net(cached, **prompts)
                prompts = {**prompts, **self._with_corrections(prompts, logits, target, active),
                           "mask_prompt": logits[:, first:].detach()}
        return {**batch, "data": cached}, prompts

    def _with_corrections(self, prompts: dict, logits: torch.Tensor, target: np.ndarray, active: torch.Tensor
                          ) -> dict:
        """The click lists with one more slot: each prompted sample's correction click (empty where it is right)."""
        lm = self.label_manager
        coords = prompts["point_coords"].new_zeros(logits.shape[0], 1, 3)
        labels = prompts["point_labels"].new_full((logits.shape[0], 1), NO_CLICK)
        for b in np.flatnonzero(active.cpu().numpy()):
            if lm.has_regions:
                ignore = target[b, -1] > 0 if lm.ignore_label is not None else None
                click = region_correction_click((logits[b] > 0).cpu().numpy(), target[b, :logits.shape[1]] > 0,
                                                ignore)
            else:
                ignore = target[b, 0] == lm.ignore_label if lm.ignore_label is not None else None
                click = correction_click(logits[b].argmax(0).cpu().numpy(), target[b, 0], [], False, ignore)
            if click is not None:
                coords[b, 0] = torch.as_tensor(click[0], dtype=coords.dtype)
                labels[b, 0] = click[1]
        return {"point_coords": torch.cat([prompts["point_coords"], coords], 1),
                "point_labels": torch.cat([prompts["point_labels"], labels], 1)}

    def click_protocol(self) -> str:
        return (f"{super().click_protocol()}; boxes (jitter 0-{self.box_jitter} voxels) on "
                f"{self.train_box_probability:.0%} of the prompted patches ({self.train_box_clicks_probability:.0%} "
                f"of them with their clicks); {self.refine_probability:.0%} of the steps after 1-"
                f"{self.max_refine_rounds} simulated correction rounds with the previous mask")
