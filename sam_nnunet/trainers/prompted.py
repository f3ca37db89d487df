"""Click-prompted training on nnU-Net's loop: clicks are drawn from the target in ``train_step`` /
``validation_step`` (torch, outside the network's ``forward``, so torch.compile sees tensors only) and passed to
the network together with the patch.

nnU-Net's own steps call ``self.network(data)``. Rather than re-writing them (autocast, gradient scaling, clipping,
online Dice stay nnU-Net's), the network is bound to the batch's clicks for the duration of one step.
nnU-Net's final validation (``validation/summary.json``) and ``nnUNetv2_predict`` call the network without clicks:
they measure the automatic mode. Prompted prediction: ``sam-nnunet predict-prompted``.
"""
from contextlib import contextmanager
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from sam_nnunet.prompts.boxes import sample_boxes_from_target
from sam_nnunet.prompts.clicks import NO_CLICK, sample_clicks_from_target
from sam_nnunet.prompts.corrections import correction_click, mask_prompt, region_correction_click
from sam_nnunet.prompts.imperfect import imperfect_start


class ClickBoundNetwork(nn.Module):
    """``network(x)`` -> ``network(x, point_coords, point_labels, **more)`` with fixed prompts (same parameters;
    ``more``: boxes, box_labels, mask_prompt for networks that take them)."""

    def __init__(self, network: nn.Module, point_coords: torch.Tensor, point_labels: torch.Tensor, **more) -> None:
        super().__init__()
        self.network = network
        self.point_coords = point_coords
        self.point_labels = point_labels
        self.more = more

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x, self.point_coords, self.point_labels, **self.more)


class PromptedTrainerMixin:
    """Mixed into a SAMTrainerBase subclass whose network takes ``(x, point_coords, point_labels)``.

    Click protocol (class attributes, per patch; see ``sample_clicks_from_target``):
      train_positive_clicks / train_min_positive_clicks: positive clicks per class present (a fixed number, or
        uniform in [min, max] when min is set);
      distinct_clicks: the positive clicks of a class are distinct voxels, in training and validation (else drawn
        with replacement);
      train_random_clicks: clicks anywhere in the patch, labelled by the target;
      prompt_free_probability: share of training patches without any click (trains the automatic mode);
      val_positive_clicks / val_random_clicks: the clicks of nnU-Net's per-epoch validation (pseudo Dice).

    Boxes and refinement (networks with ``takes_boxes``; MedSAM's boxes, SAM's and nnInteractive's interaction
    rounds; 0 = clicks only):
      train_box_probability: share of the prompted patches that also get one box per class present (its bounding
        box, each face moved out by 0..box_jitter voxels); of those, train_box_clicks_probability keep their clicks
        (box + clicks), the others are box-only;
      refine_probability / max_refine_rounds: share of the training steps that simulate r ~ U{1..max} correction
        rounds first (no gradient; the encoder run once, ``network.encoded``): each round predicts with the prompts
        so far and the previous round's mask, and adds a click at the centre of the largest error region; the step
        then trains on the last round's prompts and mask;
      rounds_reuse_encoding: the step itself trains from that encoding (a frozen encoder: the same values), else it
        runs the encoder again on the patch (an encoder that trains).
      imperfect_mask_probability: share of those refinement steps whose first round starts, instead of from the
        network's own prediction, from an imperfect mask of each prompted patch (its label eroded / dilated / shifted,
        or another patch's; ``prompts.imperfect``) given as the previous mask, with one correction click per class at
        its largest error in place of the patch's first prompts (the "initial+clicks" use: correcting nnU-Net's or
        anyone's segmentation); the remaining rounds as above. Prompt-free patches stay prompt-free.
    """
    train_positive_clicks: int = 10
    train_min_positive_clicks: Optional[int] = None
    distinct_clicks: bool = False
    train_random_clicks: int = 20
    prompt_free_probability: float = 0.2
    val_positive_clicks: int = 10
    val_random_clicks: int = 0
    train_box_probability: float = 0.0
    train_box_clicks_probability: float = 0.5
    box_jitter: int = 2  # voxels; MedSAM shifts each side by up to 20 of 1024 pixels (~2%)

    @classmethod
    def training_clicks(cls) -> Tuple[int, int]:
        return int(cls.train_positive_clicks), int(cls.train_random_clicks)
    refine_probability: float = 0.0
    max_refine_rounds: int = 3
    rounds_reuse_encoding: bool = False
    imperfect_mask_probability: float = 0.0

    def sample_clicks(self, target: torch.Tensor, training: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        if isinstance(target, list):  # deep supervision: full resolution first
            target = target[0]
        target = target.to(self.device, non_blocking=True)
        lm = self.label_manager
        if training:
            return sample_clicks_from_target(
                target, lm.num_segmentation_heads, lm.has_regions, self.train_positive_clicks,
                self.train_random_clicks, self.prompt_free_probability, lm.ignore_label,
                self.train_min_positive_clicks, distinct_positives=self.distinct_clicks)
        return sample_clicks_from_target(target, lm.num_segmentation_heads, lm.has_regions, self.val_positive_clicks,
                                         self.val_random_clicks, 0.0, lm.ignore_label,
                                         distinct_positives=self.distinct_clicks)

    def sample_prompts(self, target: torch.Tensor, training: bool) -> dict:
        """The prompts of a batch as the network's keyword arguments: clicks, and in training boxes
        (``train_box_probability``)."""
        point_coords, point_labels = self.sample_clicks(target, training)
        prompts = {"point_coords": point_coords, "point_labels": point_labels}
        if not training or self.train_box_probability <= 0:
            return prompts
        target = (target[0] if isinstance(target, list) else target).to(self.device, non_blocking=True)
        lm = self.label_manager
        boxes, box_labels = sample_boxes_from_target(target, lm.num_segmentation_heads, lm.has_regions,
                                                     self.box_jitter, self.train_box_probability, lm.ignore_label)
        clicked = (point_labels >= 0).any(1)
        box_labels[~clicked] = NO_CLICK  # prompt-free patches stay prompt-free
        boxed = (box_labels >= 0).any(1)
        box_only = boxed & (torch.rand(boxed.shape, device=boxed.device) >= self.train_box_clicks_probability)
        point_labels = point_labels.clone()
        point_labels[box_only] = NO_CLICK
        return {**prompts, "point_labels": point_labels, "boxes": boxes, "box_labels": box_labels}

    def simulate_interaction(self, batch: dict, prompts: dict) -> Tuple[dict, dict]:
        """Training batch and prompts after r simulated correction rounds (``refine_probability``)."""
        if self.max_refine_rounds < 1 or float(torch.rand(())) >= self.refine_probability:
            return batch, prompts
        rounds = int(torch.randint(1, self.max_refine_rounds + 1, ()))
        net = self.sam_network
        target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
        target = target.cpu().numpy()
        has_regions = self.label_manager.has_regions
        active = (prompts["point_labels"] >= 0).any(1)
        if "box_labels" in prompts:
            active = active | (prompts["box_labels"] >= 0).any(1)
        if float(torch.rand(())) < self.imperfect_mask_probability:
            prompts = self._imperfect_start(prompts, target, active)
            rounds -= 1  # the imperfect mask and its corrections are the first round
        with torch.no_grad():
            data = batch["data"].to(self.device, non_blocking=True)
            encoded = net.encoded(data)  # the encoder once for every round
            for _ in range(rounds):
                logits = net(encoded, **prompts)
                prompts = {**prompts, **self._with_corrections(prompts, logits, target, active),
                           "mask_prompt": mask_prompt(logits, has_regions, dim=1).detach()}
        return ({**batch, "data": encoded} if self.rounds_reuse_encoding else batch), prompts

    def _imperfect_start(self, prompts: dict, target: np.ndarray, active: torch.Tensor) -> dict:
        """The prompts of a batch whose prompted patches start from an imperfect mask with its correction clicks
        (their first prompts, clicks and boxes, dropped); the prompt-free ones keep no prompt."""
        lm = self.label_manager
        seed = int(torch.randint(0, 2 ** 31 - 1, ()))  # torch's seed drives the draw: one source of randomness
        mask, coords, labels = imperfect_start(target, lm.num_segmentation_heads, lm.has_regions,
                                               active.cpu().numpy(), np.random.default_rng(seed), lm.ignore_label)
        device = prompts["point_coords"].device
        out = {**prompts, "point_coords": torch.from_numpy(coords).to(device),
               "point_labels": torch.from_numpy(labels).to(device),
               "mask_prompt": torch.from_numpy(mask).to(device)}
        if "box_labels" in prompts:
            out["box_labels"] = torch.full_like(prompts["box_labels"], NO_CLICK)
        return out

    def _with_corrections(self, prompts: dict, logits: torch.Tensor, target: np.ndarray, active: torch.Tensor
                          ) -> dict:
        """The click lists with one more slot: each prompted sample's correction click (empty where it is right)."""
        lm = self.label_manager
        coords = prompts["point_coords"].new_zeros(logits.shape[0], 1, 3)
        labels = prompts["point_labels"].new_full((logits.shape[0], 1), NO_CLICK)
        for b in np.flatnonzero(active.cpu().numpy()):
            if lm.has_regions:
                ignore = target[b, -1] > 0 if lm.ignore_label is not None else None
                outputs = logits.shape[1]
                click = region_correction_click((logits[b] > 0).cpu().numpy(), target[b, :outputs] > 0, ignore)
            else:
                ignore = target[b, 0] == lm.ignore_label if lm.ignore_label is not None else None
                click = correction_click(logits[b].argmax(0).cpu().numpy(), target[b, 0], [], False, ignore)
            if click is not None:
                coords[b, 0] = torch.as_tensor(click[0], dtype=coords.dtype)
                labels[b, 0] = click[1]
        return {"point_coords": torch.cat([prompts["point_coords"], coords], 1),
                "point_labels": torch.cat([prompts["point_labels"], labels], 1)}

    @contextmanager
    def clicks_bound(self, point_coords: torch.Tensor, point_labels: torch.Tensor, **more):
        network = self.network
        self.network = ClickBoundNetwork(network, point_coords, point_labels, **more)
        try:
            yield
        finally:
            self.network = network

    def train_step(self, batch: dict) -> dict:
        batch, prompts = self.simulate_interaction(batch, self.sample_prompts(batch["target"], training=True))
        with self.clicks_bound(**prompts):
            return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        with self.clicks_bound(*self.sample_clicks(batch["target"], training=False)):
            return super().validation_step(batch)

    def click_protocol(self) -> str:
        if self.train_min_positive_clicks is not None:
            positives = f"{self.train_min_positive_clicks}-{self.train_positive_clicks} (uniform)"
        else:
            positives = str(self.train_positive_clicks)
        if self.distinct_clicks:
            positives += " distinct"
        protocol = (f"training clicks per patch: {positives} positive per class present + {self.train_random_clicks} "
                    f"anywhere; {self.prompt_free_probability:.0%} of patches without clicks; validation: "
                    f"{self.val_positive_clicks} positive per class")
        if self.train_box_probability > 0:
            protocol += (f"; boxes (jitter 0-{self.box_jitter} voxels) on {self.train_box_probability:.0%} of the "
                         f"prompted patches ({self.train_box_clicks_probability:.0%} of them with their clicks)")
        if self.refine_probability > 0:
            protocol += (f"; {self.refine_probability:.0%} of the steps after 1-{self.max_refine_rounds} simulated "
                         f"correction rounds with the previous mask")
            if self.imperfect_mask_probability > 0:
                protocol += (f", {self.imperfect_mask_probability:.0%} of them starting from an imperfect mask "
                             f"(eroded / dilated / shifted label, a neighbour's) with a click per class")
        return protocol

    def initialize(self):
        super().initialize()
        if (self.train_box_probability > 0 or self.refine_probability > 0 or
                self.imperfect_mask_probability > 0) and \
                not getattr(self.sam_network, "takes_boxes", False):
            raise ValueError(f"{type(self).__name__} trains with boxes or refinement rounds, but its network "
                             f"{type(self.sam_network).__name__} takes neither; set train_box_probability and "
                             f"refine_probability to 0")
        self.print_to_log_file(f"{self.__class__.__name__}: {self.click_protocol()}")
