"""ZAP-2.5DSAM and SAM2-3dMed at an explicit in-plane scale: the slices enter the frozen encoder upsampled x2 or x4.

The scale sets the token density: ZAP's paper upsamples 128-voxel ViT-B slices x4 to 512 pixels, one 16-pixel token
per 4 voxels; LiteMedSAM's TinyViT has 4-pixel tokens, so x4 gives one token per voxel (16x the paper's density) and
x2 one per 2 x 2 voxels. ZAP25DSAMTrainer plans x4 for SAM ViT and x2 for LiteMedSAM (``encoder_kwargs``; cost and
Dice of both in documentation/zap25dsam.md); these variants fix one scale whatever the encoder. SAM2-3dMed's frames
shrink the same way at x2 (a 40x56 hippocampus slice: 128x128 pixels instead of 224x224, memory attention over 8x8
tokens instead of 14x14), and its stride-4 masks are upsampled x2 back onto the voxel grid (cost in
documentation/benchmarks.md). Everything else is the trainer's (plans, recipe, embedding cache: the scale is part of
its key). Plan with the base trainer: the smaller scale needs less memory.

``_rawinput`` variants feed the frozen encoder nnU-Net's values as they are, without the input contract
(``encoders.contract``): LiteMedSAM's input before the contract, kept to measure what the contract changes
(documentation/zap25dsam.md, "Input contract") and to train comparably with models of that time.
"""
from sam_nnunet.trainers.sam2_3dmed import SAM2_3dMedTrainer
from sam_nnunet.trainers.zap25d import ZAP25DSAMTrainer
from sam_nnunet.trainers.zap25d_prompted import ZAP25DSAMTrainer_prompted


class ZAP25DSAMTrainer_upsample2(ZAP25DSAMTrainer):
    network_kwargs = {**ZAP25DSAMTrainer.network_kwargs, "upsample": 2}


class ZAP25DSAMTrainer_prompted_upsample2(ZAP25DSAMTrainer_prompted):
    network_kwargs = {**ZAP25DSAMTrainer_prompted.network_kwargs, "upsample": 2}


class ZAP25DSAMTrainer_upsample4(ZAP25DSAMTrainer):
    network_kwargs = {**ZAP25DSAMTrainer.network_kwargs, "upsample": 4}


class ZAP25DSAMTrainer_prompted_upsample4(ZAP25DSAMTrainer_prompted):
    network_kwargs = {**ZAP25DSAMTrainer_prompted.network_kwargs, "upsample": 4}


class SAM2_3dMedTrainer_upsample2(SAM2_3dMedTrainer):
    network_kwargs = {**SAM2_3dMedTrainer.network_kwargs, "upsample": 2}


class ZAP25DSAMTrainer_rawinput(ZAP25DSAMTrainer):
    network_kwargs = {**ZAP25DSAMTrainer.network_kwargs, "input_window": None}


class ZAP25DSAMTrainer_prompted_rawinput(ZAP25DSAMTrainer_prompted):
    network_kwargs = {**ZAP25DSAMTrainer_prompted.network_kwargs, "input_window": None}


__all__ = ["ZAP25DSAMTrainer_upsample2", "ZAP25DSAMTrainer_prompted_upsample2", "ZAP25DSAMTrainer_upsample4",
           "ZAP25DSAMTrainer_prompted_upsample4", "SAM2_3dMedTrainer_upsample2", "ZAP25DSAMTrainer_rawinput",
           "ZAP25DSAMTrainer_prompted_rawinput"]
