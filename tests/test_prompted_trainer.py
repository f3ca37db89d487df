"""SAMAdapterTrainer_prompted inside nnU-Net's training loop (in-process, tiny encoder, synthetic data)."""
import numpy as np
import pytest
import torch
from helpers import make_trainer

from sam_nnunet.prompts.clicks import NO_CLICK
from sam_nnunet.trainers import SAMAdapterTrainer_prompted, SAMAdapterTrainer_prompted_public
from sam_nnunet.trainers.prompted import ClickBoundNetwork


@pytest.fixture
def results(sam_env, tmp_path):
    sam_env.setenv("nnUNet_results", str(tmp_path / "results"))
    sam_env.setenv("nnUNet_n_proc_DA", "0")  # in-process data augmentation
    return sam_env


def test_train_and_validation_steps_pass_clicks_drawn_from_the_target(synthetic_dataset, results,
                                                                      tiny_sam_checkpoint):
    path, state = tiny_sam_checkpoint
    results.setenv("nnUNet_SAM_checkpoint", path)
    trainer = make_trainer(SAMAdapterTrainer_prompted, synthetic_dataset)
    trainer.train_box_probability = trainer.refine_probability = 0.0  # the clicks alone (boxes and rounds: below)
    trainer.on_train_start()
    net = trainer.sam_network
    assert type(net).__name__ == "SAMAdapterPromptedNetwork"
    for k, v in net.vit.state_dict().items():  # pretrained weights loaded after nnU-Net built the network
        torch.testing.assert_close(v, state["image_encoder." + k], rtol=0, atol=0)

    seen = []
    original_forward = net.forward

    def spy(x, point_coords=None, point_labels=None):
        seen.append((x.shape, None if point_coords is None else (point_coords.clone(), point_labels.clone())))
        return original_forward(x, point_coords, point_labels)

    net.forward = spy
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    prompt_before = {n: p.detach().clone() for n, p in net.prompt_encoder.named_parameters()}
    trainer.on_train_epoch_start()
    torch.manual_seed(0)
    losses = [trainer.train_step(next(trainer.dataloader_train))["loss"] for _ in range(2)]
    assert all(np.isfinite(losses))
    assert not isinstance(trainer.network, ClickBoundNetwork)  # the binding lasts one step
    heads = trainer.label_manager.num_segmentation_heads  # background + 2 classes
    assert len(seen) == len(losses)  # one forward per step, each with clicks
    for shape, (coords, labels) in seen:
        batch = shape[0]
        assert coords.shape == (batch, 10 * (heads - 1) + 20, 3) and labels.shape == (batch, 10 * (heads - 1) + 20)
        valid = labels != NO_CLICK
        assert valid.any()
        assert ((coords[valid] >= 0) & (coords[valid] < torch.tensor(shape[2:]))).all()
        assert int(labels.max()) <= 2 * (heads - 1)
    for n, p in net.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen parameter {n} changed"
    assert any(not torch.equal(p, prompt_before[n]) for n, p in net.prompt_encoder.named_parameters())
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == trainable

    seen.clear()
    trainer.on_validation_epoch_start()
    with torch.no_grad():
        out = trainer.validation_step(next(trainer.dataloader_val))
    assert len(out["tp_hard"]) == heads - 1
    (_, (coords, labels)), = seen
    assert labels.shape[1] == 10 * (heads - 1)  # the paper validates with 10 clicks per class, no random ones
    trainer.on_train_end()


def test_prompt_free_prediction_through_nnunet(synthetic_dataset, results):
    """nnU-Net's own validation and nnUNetv2_predict call network(x): the automatic mode."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    results.setenv("nnUNet_SAM_encoder", "vit_test")
    results.setenv("nnUNet_SAM_allow_random_init", "1")
    trainer = make_trainer(SAMAdapterTrainer_prompted, synthetic_dataset)
    trainer.initialize()
    network = SAMAdapterTrainer_prompted.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, trainer.label_manager.num_segmentation_heads,
        enable_deep_supervision=False)
    network.load_state_dict(trainer.sam_network.state_dict())
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, "SAMAdapterTrainer_prompted", (0, 1, 2))
    logits = predictor.predict_sliding_window_return_logits(torch.randn(1, 41, 50, 40))
    assert logits.shape == (trainer.label_manager.num_segmentation_heads, 41, 50, 40)
    assert torch.isfinite(logits).all()


def _random_init_vit_test(results):
    results.setenv("nnUNet_SAM_encoder", "vit_test")
    results.setenv("nnUNet_SAM_allow_random_init", "1")


def test_visual_sampler_choice_round_trips_through_the_plans(synthetic_dataset, results, tmp_path):
    """The trainer writes its visual sampler into the plans; nnUNetv2_predict's rebuild from plans.json gets it
    back; plans written before the option existed rebuild the sampler they were trained with."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    _random_init_vit_test(results)
    states = {}
    for cls, sampler in ((SAMAdapterTrainer_prompted, "click_aware"), (SAMAdapterTrainer_prompted_public, "public")):
        trainer = make_trainer(cls, synthetic_dataset)
        trainer.initialize()
        assert trainer.sam_network.prompt_encoder.sampler == sampler
        plans = trainer.plans_manager.plans
        assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["visual_sampler"] == sampler
        save_json(plans, str(tmp_path / "plans.json"))
        saved = PlansManager(str(tmp_path / "plans.json"))
        network = cls.build_network_architecture(saved, saved.get_configuration("3d_fullres"), 1,
                                                 trainer.label_manager.num_segmentation_heads,
                                                 enable_deep_supervision=False)
        assert network.prompt_encoder.sampler == sampler
        states[sampler] = trainer.sam_network.state_dict()
        network.load_state_dict(states[sampler])  # strict, as the predictor loads
    assert set(states["click_aware"]) - set(states["public"])  # the two are not interchangeable
    del plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["visual_sampler"]
    save_json(plans, str(tmp_path / "old_plans.json"))
    old = PlansManager(str(tmp_path / "old_plans.json"))
    network = SAMAdapterTrainer_prompted.build_network_architecture(
        old, old.get_configuration("3d_fullres"), 1, trainer.label_manager.num_segmentation_heads,
        enable_deep_supervision=False)
    network.load_state_dict(states["click_aware"])


def test_papers_patch_sampling_and_gradient_clipping(synthetic_dataset, results):
    """Foreground-centred patches as the public code crops (3DSAM-adapter 0.67, ZAP-2.5DSAM 0.95; nnU-Net 0.33);
    the prompted 3DSAM-adapter clips the gradient norm of the visual sampler, the decoder and the rest each at 1.0
    (nnU-Net's train_step: 12 over all), in the optimiser step that train_step takes."""
    from sam_nnunet.trainers import SAMAdapterTrainer, ZAP25DSAMTrainer, ZAP25DSAMTrainer_prompted

    _random_init_vit_test(results)
    for cls, share in ((ZAP25DSAMTrainer, 0.95), (ZAP25DSAMTrainer_prompted, 0.95), (SAMAdapterTrainer, 0.67),
                       (SAMAdapterTrainer_prompted, 0.67)):
        trainer = make_trainer(cls, synthetic_dataset)
        trainer.initialize()
        assert trainer.oversample_foreground_percent == share and trainer.probabilistic_oversampling, cls.__name__
        net = trainer.sam_network
        trainable = [p for p in net.parameters() if p.requires_grad]
        for p in trainable:
            p.grad = torch.full_like(p, 0.1)  # norm far above 1.0 in every part
        trainer.optimizer.step()
        if cls is not SAMAdapterTrainer_prompted:
            assert all(torch.equal(p.grad, torch.full_like(p, 0.1)) for p in trainable), cls.__name__
            continue
        sampler, decoder = set(net.prompt_encoder.parameters()), set(net.decoder.parameters())
        parts = [sampler, decoder, set(trainable) - sampler - decoder]
        for part in parts:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in part if p.requires_grad]))
            torch.testing.assert_close(norm, torch.tensor(1.0), rtol=1e-4, atol=1e-4)


def test_boxes_and_correction_rounds_in_training(synthetic_dataset, results):
    """Boxes drawn from the target and simulated rounds (each with the previous mask and a correction click) reach
    the network; the rounds run the encoder once, the step runs it again with gradients (its adapters train)."""
    _random_init_vit_test(results)
    trainer = make_trainer(SAMAdapterTrainer_prompted, synthetic_dataset)
    trainer.train_box_probability, trainer.train_box_clicks_probability = 1.0, 0.0  # box-only patches
    trainer.refine_probability, trainer.max_refine_rounds = 1.0, 2
    trainer.on_train_start()
    net = trainer.sam_network
    calls, encodings = [], []
    forward, encoded = net.forward, net.encoded

    def spy_forward(x, point_coords=None, point_labels=None, **more):
        calls.append((type(x).__name__, point_labels.clone(), {k: v.clone() for k, v in more.items()}))
        return forward(x, point_coords, point_labels, **more)

    def spy_encoded(x):
        encodings.append(torch.is_grad_enabled())
        return encoded(x)

    net.forward, net.encoded = spy_forward, spy_encoded
    adapters = {n: p.detach().clone() for n, p in net.named_parameters() if "adapters" in n}
    trainer.on_train_epoch_start()
    torch.manual_seed(1)
    loss = trainer.train_step(next(trainer.dataloader_train))["loss"]
    trainer.on_train_end()
    assert np.isfinite(loss)
    rounds = [c for c in calls if c[0] == "EncodedPatch"]
    step = [c for c in calls if c[0] == "Tensor"]
    assert 1 <= len(rounds) <= 2 and len(step) == 1 and encodings == [False] + [True]  # rounds: once, no grad
    _, labels, more = step[0]
    assert (more["box_labels"] >= 0).any() and "mask_prompt" in more
    assert more["mask_prompt"].shape[1] == trainer.label_manager.num_segmentation_heads - 1
    # box-only patches: the step's clicks are the correction clicks of the rounds, one slot per round
    assert labels.shape[1] == rounds[0][1].shape[1] + len(rounds)
    assert any(not torch.equal(p, adapters[n]) for n, p in net.named_parameters() if n in adapters)


def test_the_public_sampler_trains_with_clicks_only(synthetic_dataset, results):
    _random_init_vit_test(results)
    trainer = make_trainer(SAMAdapterTrainer_prompted_public, synthetic_dataset)
    assert trainer.train_box_probability == trainer.refine_probability == 0
    trainer.train_box_probability = 0.5
    with pytest.raises(ValueError, match="takes neither; set train_box_probability and refine_probability to 0"):
        trainer.initialize()
