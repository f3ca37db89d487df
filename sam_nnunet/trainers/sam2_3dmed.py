"""SAM2_3dMedTrainer: SAM2-3dMed (Yang, Xu, Tian, arXiv 2510.08967), prompt-free, on nnU-Net's plans."""
import os
from typing import Dict, List

import numpy as np
import torch

from sam_nnunet.encoders.sam2_hiera import require_sam2
from sam_nnunet.errors import UserFacingExit
from sam_nnunet.losses.sam2_3dmed import SAM2_3dMedLoss
from sam_nnunet.trainers.base import SAMTrainerBase


class SAM2_3dMedTrainer(SAMTrainerBase):
    """SAM 2 over the slices in both directions, with slice relative position prediction and boundary detection.

    Loss: nnU-Net's Dice+CE (Dice+BCE for regions) + ``srpp_loss_weight`` * MSE of the slice-pair relative positions
    + ``bd_loss_weight`` * class-balanced BCE of the boundary branch. The paper gives neither weight; ours make each
    auxiliary term a fraction of the segmentation loss at the start (Dice+CE ~0.9, BD ~0.7, SRPP ~0.3). Recipe
    (the paper gives none): MedSAM2's SAM 2 fine-tuning (AdamW, lr 5e-5, decay to 1/10), weight decay 0.01.
    """
    network_class = "sam_nnunet.networks.sam2_3dmed.SAM2_3dMedNetwork"
    network_kwargs = {"upsample": 4, "max_image_size": 1024}
    encoder_families = ("sam2",)
    default_encoder = "sam2.1_hiera_t"
    checkpoint_example = "sam2.1_hiera_tiny.pt"
    sam_initial_lr = 5e-5
    sam_weight_decay = 0.01
    lr_end_factor = 0.1
    cuda_autocast_memory_factor = 0.45  # H100, default hippocampus plans: 35.9 GiB under autocast, estimate 78.8 GiB
    srpp_loss_weight = 0.1
    bd_loss_weight = 0.5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        try:
            require_sam2()  # before anything is built or written
        except ImportError as e:
            raise UserFacingExit(str(e)) from None
        super().__init__(plans, configuration, fold, dataset_json, device)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        try:  # nnUNetv2_predict builds the network through here
            require_sam2()
        except ImportError as e:
            raise UserFacingExit(str(e)) from None
        return super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                  num_output_channels, enable_deep_supervision)

    @classmethod
    def label_kwargs(cls, has_regions: bool) -> Dict:
        # region-based training decides the outputs (one sigmoid map per region, no background channel)
        return {"regions": bool(has_regions)}

    def _build_loss(self):
        self.print_to_log_file(f"Loss: segmentation + {self.srpp_loss_weight} * SRPP + {self.bd_loss_weight} * BD")
        return SAM2_3dMedLoss(super()._build_loss(), self.label_manager.has_regions, self.label_manager.ignore_label,
                              srpp_weight=self.srpp_loss_weight, bd_weight=self.bd_loss_weight)

    def _do_i_compile(self) -> bool:
        # opt-in: the forward pass is a Python loop over 2 x D slice steps (SAM 2's memory bank is a dict of frames);
        # torch.compile traces it (tested) but unrolls every step into one graph, so compiling takes long and grows
        # with the patch depth. nnUNet_compile=1 compiles anyway.
        explicit = os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t")
        return explicit and super()._do_i_compile()

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        result.update({f"loss_{k}": v.cpu().numpy() for k, v in self.loss.last_terms.items()})
        return result

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        terms = {k[len("loss_"):]: np.mean([o[k] for o in train_outputs]) for k in train_outputs[0]
                 if k.startswith("loss_")}
        self.print_to_log_file("train loss terms: " + ", ".join(f"{k} {v:.4f}" for k, v in terms.items()))


class SAM2_3dMedTrainer_noAux(SAM2_3dMedTrainer):
    """Ablation: bidirectional SAM 2 alone (SRPP and BD losses off; the BD branch still feeds the fusion)."""
    srpp_loss_weight = 0.0
    bd_loss_weight = 0.0
