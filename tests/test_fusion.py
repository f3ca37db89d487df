"""nnUNetTrainerSAMFusion / SAMFusionNetwork: nnU-Net's network (plain and residual-encoder U-Net) with a frozen SAM
encoder's features added through zero-initialised projections. The untrained network is nnU-Net's; gradients reach
the projections only; the trainer keeps nnU-Net's recipe and writes a network nnUNetv2_predict rebuilds without any
SAM checkpoint; end to end through the real command line with the tiny random-weight encoder (vit_test)."""
import copy
import json
import os
import pydoc

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import exclusive, run_cli, write_coarse_plans
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from sam_nnunet.networks.fusion import SAMFusionNetwork, default_fusion_stage
from sam_nnunet.trainers.fusion import NETWORK, nnUNetTrainerSAMFusion

IMPORTS = ["conv_op", "norm_op", "dropout_op", "nonlin"]
COMMON = {"conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 3,
          "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "conv_bias": True,
          "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
          "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
          "nonlin_kwargs": {"inplace": True}, "n_stages": 3, "features_per_stage": [8, 16, 32],
          "n_conv_per_stage_decoder": [1, 1]}
ARCHS = {  # as nnUNetPlans and nnUNetResEncUNetMPlans write them, smaller
    "plain": ("dynamic_network_architectures.architectures.unet.PlainConvUNet",
              {**COMMON, "n_conv_per_stage": [2, 2, 2]}),
    "resenc": ("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
               {**COMMON, "n_blocks_per_stage": [1, 2, 2]}),
}


def _imported(kwargs):
    """The arguments as get_network_from_plans hands them on: the classes ``_kw_requires_import`` names, imported."""
    return {k: (pydoc.locate(v) if k in IMPORTS and v is not None else v) for k, v in kwargs.items()}


def _pair(kind: str, deep_supervision: bool, stages=(1, 2), axes=(0, 2)):
    """A fusion network (tiny encoder, random weights) and nnU-Net's own network with the same U-Net weights."""
    name, kwargs = ARCHS[kind]
    torch.manual_seed(0)
    fusion = SAMFusionNetwork(1, 3, name, encoder="vit_test", fusion_stages=stages, fusion_axes=axes,
                              input_window=[[-3.0, 3.0]], deep_supervision=deep_supervision, **_imported(kwargs))
    unet = get_network_from_plans(name, kwargs, IMPORTS, 1, 3, deep_supervision=deep_supervision)
    unet.load_state_dict(fusion.unet.state_dict())
    return fusion, unet


@pytest.mark.parametrize("kind", sorted(ARCHS))
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_untrained_fusion_network_is_nnunets(kind, deep_supervision):
    fusion, unet = _pair(kind, deep_supervision)
    x = torch.randn(2, 1, 16, 24, 16)
    with torch.no_grad():
        ours, theirs = fusion(x), unet(x)
    if deep_supervision:
        assert [o.shape for o in ours] == [o.shape for o in theirs] and len(ours) == 2
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    else:
        assert torch.equal(ours, theirs)
    # the encoder's features are not zero: only the projections make the sum vanish
    features = fusion.slice_features(fusion.channels(x), (8, 12, 8), 0)
    assert features.shape == (2, 32, 8, 12, 8) and features.abs().sum() > 0


def test_gradients_reach_the_projections_and_training_moves_away_from_nnunet():
    fusion, unet = _pair("plain", True)
    x = torch.randn(2, 1, 16, 24, 16)
    loss = sum(o.square().mean() for o in fusion(x))
    loss.backward()
    for key, proj in fusion.projections.items():
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0, key
    assert all(p.grad is None and not p.requires_grad for p in fusion.encoder.parameters())
    torch.optim.SGD([p for p in fusion.parameters() if p.requires_grad], lr=0.1).step()
    fusion.eval(), unet.eval()
    with torch.no_grad():
        assert not torch.allclose(fusion(x)[0], unet(x)[0])
    assert default_fusion_stage([[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]) == 3
    assert default_fusion_stage([[1, 1, 1], [1, 2, 2], [2, 2, 2]]) == 2  # no stage at 8: the deepest
    # anisotropic plans: the in-plane stride of the slices decides ([1, 8, 8] at stage 3)
    assert default_fusion_stage([[1, 1, 1], [1, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2]]) == 3


def _toy_plans(kind: str) -> dict:
    """nnU-Net plans of a one-channel z-scored dataset whose 3d_fullres network is ``ARCHS[kind]`` (in memory: the
    trainer reads no data before its data loaders start)."""
    name, kwargs = ARCHS[kind]
    resampling = "nnunetv2.preprocessing.resampling.default_resampling.resample_data_or_seg_to_shape"
    return {
        "dataset_name": "Dataset991_FusionToy", "plans_name": "nnUNetPlans", "continue_training": False,
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [20, 28, 20],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"mean": 1.0, "std": 1.0, "percentile_00_5": 0.0,
                                                              "percentile_99_5": 2.0}},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": [16, 24, 16], "median_image_size_in_voxels": [20, 28, 20],
            "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False], "resampling_fn_data": resampling, "resampling_fn_seg": resampling,
            "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
            "resampling_fn_probabilities": resampling, "resampling_fn_probabilities_kwargs": {},
            "architecture": {"network_class_name": name, "arch_kwargs": copy.deepcopy(kwargs),
                             "_kw_requires_import": list(IMPORTS)},
            "batch_dice": False}}}


TOY_DATASET = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 4,
               "file_ending": ".nii.gz"}


@pytest.mark.parametrize("kind", sorted(ARCHS))
def test_trainer_keeps_nnunets_recipe_and_writes_the_network(kind, sam_env):
    sam_env.setenv("nnUNet_SAM_encoder", "vit_test")
    sam_env.setenv("nnUNet_SAM_allow_random_init", "1")
    sam_env.setenv("nnUNet_SAM_num_epochs", "3")
    sam_env.setenv("nnUNet_SAM_iterations_per_epoch", "5")
    plans = _toy_plans(kind)
    # nnU-Net's initialize reads the preprocessed folder's format from its file endings (blosc2), not the data
    data = os.path.join(os.environ["nnUNet_preprocessed"], plans["dataset_name"], "nnUNetPlans_3d_fullres")
    os.makedirs(data, exist_ok=True)
    open(os.path.join(data, "case_000.b2nd"), "a").close()
    trainer = nnUNetTrainerSAMFusion(copy.deepcopy(plans), "3d_fullres", 0, TOY_DATASET, torch.device("cpu"))
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    written = trainer.plans_manager.plans["configurations"]["3d_fullres"]["architecture"]
    assert written["network_class_name"] == NETWORK
    assert written["arch_kwargs"]["unet_class"] == ARCHS[kind][0]
    assert written["arch_kwargs"]["encoder"] == "vit_test" and written["arch_kwargs"]["input_window"]
    # nnU-Net's arguments stay where nnU-Net reads them (strides: the deep-supervision scales)
    assert written["arch_kwargs"]["strides"] == arch["arch_kwargs"]["strides"]
    assert written["arch_kwargs"]["fusion_stages"] == [2]  # the deepest: no stage reaches stride 8
    assert sorted(written["_kw_requires_import"]) == sorted(arch["_kw_requires_import"])
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch) == (3, 5)
    trainer.initialize()
    optimizer, scheduler = trainer.optimizer, trainer.lr_scheduler
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 1e-2
    assert optimizer.defaults["momentum"] == 0.99 and optimizer.defaults["weight_decay"] == 3e-5
    assert type(scheduler).__name__ == "PolyLRScheduler"
    assert trainer.enable_deep_supervision and type(trainer.loss).__name__ == "DeepSupervisionWrapper"
    trainer.set_deep_supervision_enabled(False)
    assert trainer.network.decoder.deep_supervision is False
    # the predictor's build: from the written plans, deep supervision off, the trained weights load strictly
    built = nnUNetTrainerSAMFusion.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, trainer.label_manager.num_segmentation_heads,
        enable_deep_supervision=False)
    built.load_state_dict(trainer.network.state_dict())
    assert type(built.unet).__name__ == ARCHS[kind][0].rsplit(".", 1)[1]


SMALL_PLANS = "FusionTestPlans"


def _small_plans(cli_dataset) -> str:
    """nnU-Net's plans at 2.5 mm (a hippocampus case is ~14 x 20 x 14 voxels), patch 16 x 24 x 16, batch 2, under
    another plans name (as a user would edit plans), preprocessed once per test run."""
    env, raw = cli_dataset["env"], cli_dataset["raw"]
    preprocessed = os.path.join(env["nnUNet_preprocessed"], os.path.basename(raw))
    done = os.path.join(cli_dataset["shared"], SMALL_PLANS + ".done")
    with exclusive(done + ".lock"):
        if not os.path.isfile(done):
            write_coarse_plans(preprocessed, SMALL_PLANS, spacing=(2.5, 2.5, 2.5), patch_size=(16, 24, 16),
                               batch_size=2)
            run_cli(["nnUNetv2_preprocess", "-d", cli_dataset["dataset_id"], "-plans_name", SMALL_PLANS, "-c",
                     "3d_fullres", "-np", 2], env)
            open(done, "w").close()
    return SMALL_PLANS


@pytest.mark.slow
def test_train_and_predict_through_the_nnunet_command_line(cli_dataset, cli_env, tmp_path):
    env, dataset_id, raw = cli_env, cli_dataset["dataset_id"], cli_dataset["raw"]
    plans = _small_plans(cli_dataset)
    trainer = nnUNetTrainerSAMFusion.__name__
    train_env = dict(env, nnUNet_SAM_encoder="vit_test", nnUNet_SAM_allow_random_init="1",
                     nnUNet_SAM_num_epochs="1", nnUNet_SAM_iterations_per_epoch="2", nnUNet_n_proc_DA="0")
    run_cli(["nnUNetv2_train", dataset_id, "3d_fullres", 0, "-tr", trainer, "-p", plans, "-device", "cpu"],
            train_env)
    model = os.path.join(env["nnUNet_results"], os.path.basename(raw), f"{trainer}__{plans}__3d_fullres")
    arch = json.load(open(os.path.join(model, "plans.json")))["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"] == NETWORK and arch["arch_kwargs"]["encoder"] == "vit_test"
    assert arch["arch_kwargs"]["fusion_stages"] == [default_fusion_stage(arch["arch_kwargs"]["strides"])]
    log = "".join(open(os.path.join(model, "fold_0", f)).read() for f in os.listdir(os.path.join(model, "fold_0"))
                  if f.startswith("training_log"))
    assert "RANDOM weights" in log
    assert os.path.isfile(os.path.join(model, "fold_0", "validation", "summary.json"))

    predictions = str(tmp_path / "pred")  # no nnUNet_SAM_* variable: the network comes from the model folder
    run_cli(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", predictions, "-d", dataset_id, "-c",
             "3d_fullres", "-p", plans, "-tr", trainer, "-f", 0, "-device", "cpu", "-npp", 0, "-nps", 0,
             "--disable_tta"], env)
    cases = sorted(f for f in os.listdir(os.path.join(raw, "labelsTs")) if f.endswith(".nii.gz"))
    assert cases
    for case in cases:
        pred = sitk.ReadImage(os.path.join(predictions, case))
        assert pred.GetSize() == sitk.ReadImage(os.path.join(raw, "labelsTs", case)).GetSize()
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}
