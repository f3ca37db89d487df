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

import torch
from torch import nn

from sam_nnunet.prompts.clicks import sample_clicks_from_target


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
    """
    train_positive_clicks: int = 10
    train_min_positive_clicks: Optional[int] = None
    distinct_clicks: bool = False
    train_random_clicks: int = 20
    prompt_free_probability: float = 0.2
    val_positive_clicks: int = 10
    val_random_clicks: int = 0

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
        """The prompts of a batch as the network's keyword arguments (clicks here; subclasses add boxes)."""
        point_coords, point_labels = self.sample_clicks(target, training)
        return {"point_coords": point_coords, "point_labels": point_labels}

    def simulate_interaction(self, batch: dict, prompts: dict) -> Tuple[dict, dict]:
        """Training batch and prompts after simulated correction rounds (none here; see ZAP25DSAMTrainer_prompted)."""
        return batch, prompts

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
        return (f"training clicks per patch: {positives} positive per class present + {self.train_random_clicks} "
                f"anywhere; {self.prompt_free_probability:.0%} of patches without clicks; validation: "
                f"{self.val_positive_clicks} positive per class")

    def initialize(self):
        super().initialize()
        self.print_to_log_file(f"{self.__class__.__name__}: {self.click_protocol()}")
