"""SAMPlanner's knowledge of ZAP25DSAMTrainer and SAM2_3dMedTrainer: token grids (square SAM 2 frames), encoders,
label-dependent network arguments, variants inheriting their method's rules, the trainer's own loss in the memory
trace."""
import pytest
import torch

from sam_nnunet.networks.token_grid import UNALIGNED_GRID
from sam_nnunet.planners.sam_planner import PlannedMethod, SAMPlanner, planned_method, resolve_encoder
from sam_nnunet.trainers import SAM2_3dMedTrainer, SAM2_3dMedTrainer_noAux, SAMAdapterTrainer, ZAP25DSAMTrainer
from sam_nnunet.trainers.training_memory import TrainingMemoryEstimator, TrainingSetup

LABELS = {"background": 0, "anterior": 1, "posterior": 2}
HIPPOCAMPUS = ((1.0, 1.0, 1.0), (36.0, 50.0, 35.0))  # spacing, median shape


def test_zap_grid_is_the_pseudo_slice_pooling():
    method = planned_method("ZAP25DSAMTrainer", "vit_test")
    grid = method.grid(method.arch_kwargs((1.0, 1.0, 1.0)))
    assert grid.stride == (4, 4, 4) and not grid.windows and not grid.square
    assert grid.fits(0, 40) and grid.fits(1, 52) and not grid.fits(0, 41) and grid.round_up(0, 35) == 36
    candidates = SAMPlanner.patch_candidates(grid, *HIPPOCAMPUS)
    assert candidates[0] == (36, 52, 36) and candidates[-1] == (16, 16, 16)
    assert all(grid.fits_patch(p) for p in candidates)


def test_sam2_grid_has_square_frames_and_any_number_of_slices():
    method = planned_method("SAM2_3dMedTrainer", "sam2_test")
    grid = method.grid(method.arch_kwargs((1.0, 1.0, 1.0)))
    assert grid.stride == (1, 8, 8) and grid.square == (1, 2)
    assert grid.fits_patch((37, 56, 56)) and not grid.fits_patch((36, 56, 48)) and not grid.fits_patch((36, 52, 52))
    assert grid.minimum(0) == 8 and grid.minimum(1) == 32  # a full memory bank; 128-pixel frames
    candidates = SAMPlanner.patch_candidates(grid, *HIPPOCAMPUS)
    # the in-plane axes start at the longer median side (50 -> 56) and shrink together
    assert candidates[0] == (36, 56, 56) and candidates[1] == (36, 48, 48) and candidates[-1] == (8, 32, 32)
    assert all(grid.fits_patch(p) for p in candidates)
    volumes = [p[0] * p[1] * p[2] for p in candidates]
    assert all(a > b for a, b in zip(volumes, volumes[1:]))


def test_label_dependent_arguments_are_planned_as_the_trainers_write_them():
    zap, sam2 = planned_method("ZAP25DSAMTrainer", "vit_test"), planned_method("SAM2_3dMedTrainer", "sam2_test")
    assert zap.arch_kwargs((1.0, 1.0, 1.0))["background_channel"] is True
    assert zap.arch_kwargs((1.0, 1.0, 1.0), has_regions=True)["background_channel"] is False
    assert sam2.arch_kwargs((1.0, 1.0, 1.0))["regions"] is False
    assert sam2.arch_kwargs((1.0, 1.0, 1.0), has_regions=True)["regions"] is True


def test_variant_trainers_inherit_the_rules_of_their_method():
    kwargs = {"encoder": "sam2_test", "upsample": 4}
    assert planned_method("SAM2_3dMedTrainer_noAux", "sam2_test").grid(kwargs) == \
        planned_method("SAM2_3dMedTrainer", "sam2_test").grid(kwargs)
    assert planned_method("ZAP25DSAMTrainer", "vit_test").declares_grid

    class OtherNetworkTrainer(SAMAdapterTrainer):  # another network: SAMAdapterTrainer's grid says nothing about it
        network_class = "planner_toys.FrozenStemNet"

    other = PlannedMethod("OtherNetworkTrainer", OtherNetworkTrainer, "vit_test", OtherNetworkTrainer.network_class,
                          {"encoder": "vit_test"})
    assert not other.declares_grid and other.grid({}) is UNALIGNED_GRID


def test_encoders_the_trainers_default_to(sam_env):
    assert resolve_encoder(ZAP25DSAMTrainer) == "vit_b"  # as it trains without nnUNet_SAM_encoder / a checkpoint
    assert resolve_encoder(SAM2_3dMedTrainer) == SAM2_3dMedTrainer.default_encoder == "sam2.1_hiera_t"
    # several encoders: each trainer takes the first of a family it adapts
    assert resolve_encoder(SAM2_3dMedTrainer, ["vit_test", "sam2_test"]) == "sam2_test"
    assert resolve_encoder(ZAP25DSAMTrainer, ["litemedsam", "vit_test"]) == "litemedsam"
    sam_env.setenv("nnUNet_SAM_encoder", "litemedsam")
    assert resolve_encoder(ZAP25DSAMTrainer) == "litemedsam"
    assert resolve_encoder(SAMAdapterTrainer) == "vit_b"  # litemedsam is not a plain ViT


def test_the_trace_uses_the_trainers_own_loss():
    from sam_nnunet.losses.sam2_3dmed import SAM2_3dMedLoss

    method = planned_method("SAM2_3dMedTrainer_noAux", "sam2_test")
    setup = method.training_setup(method.arch_kwargs((1.0, 1.0, 1.0)), 1, LABELS)
    assert setup.trainer == "sam_nnunet.trainers.sam2_3dmed.SAM2_3dMedTrainer_noAux"
    loss = setup.build_loss()
    assert isinstance(loss, SAM2_3dMedLoss) and loss.srpp_weight == 0 and loss.bd_weight == 0
    nnunet_loss = TrainingSetup(setup.network_class, setup.arch_kwargs, 1, LABELS).build_loss()
    assert type(nnunet_loss).__name__ == "DC_and_CE_loss"
    # SAM 2's constructor reads tensor values: the estimator builds it for real and swaps in fake tensors
    estimator = TrainingMemoryEstimator(setup)
    assert all(type(p).__name__ == "FakeTensor" for p in estimator.network.parameters())
    frozen = sum(not p.requires_grad for p in estimator.network.parameters())
    assert frozen == sum(not p.requires_grad for p in setup.build_network().parameters()) > 0


def test_a_constructor_that_reads_values_is_estimated_like_any_other():
    def estimate(network_class):
        setup = TrainingSetup(network_class, {"width": 8}, 1, LABELS)
        return TrainingMemoryEstimator(setup)((16, 16, 16), 2)

    plain, value_reading = estimate("planner_toys.FrozenStemNet"), estimate("planner_toys.ValueReadingInitNet")
    assert value_reading.parameter_bytes == plain.parameter_bytes
    assert value_reading.persistent_bytes == plain.persistent_bytes
    # at most the two activation-sized temporaries of (* scale + offset) more, if they are alive at the peak
    output = 2 * 3 * 16 ** 3 * 4
    assert plain.peak_bytes <= value_reading.peak_bytes <= plain.peak_bytes + 2 * output



def test_prompted_trainers_are_traced_with_their_training_clicks():
    zap, adapter = (planned_method(t, "vit_test") for t in ("ZAP25DSAMTrainer_prompted", "SAMAdapterTrainer_prompted"))
    assert zap.clicks == (3, 0) and adapter.clicks == (10, 20)  # their click protocols: per class, anywhere
    kwargs = {"encoder": "vit_test"}
    assert zap.grid(kwargs) == planned_method("ZAP25DSAMTrainer", "vit_test").grid(kwargs)
    assert adapter.grid(kwargs) == planned_method("SAMAdapterTrainer", "vit_test").grid(kwargs)
    assert planned_method("ZAP25DSAMTrainer", "vit_test").clicks == (0, 0)
    setup = zap.training_setup(zap.arch_kwargs((1.0, 1.0, 1.0)), 1, LABELS)
    coords, labels = setup.make_clicks((16, 32, 24), 2)
    assert coords.shape == (2, 6, 3) and labels.tolist() == [[2, 4, 2, 4, 2, 4]] * 2  # every slot a positive click
    assert (coords >= 0).all() and (coords <= torch.tensor([15, 31, 23])).all()
    # ZAP's prompted decoding runs once more per mask output: more memory than the prompt-free step
    without = TrainingSetup(**{**vars(setup), "clicks_per_class": 0})
    patch = (16, 16, 16)
    assert TrainingMemoryEstimator(setup)(patch, 1).peak_bytes > TrainingMemoryEstimator(without)(patch, 1).peak_bytes


@pytest.mark.parametrize("trainer, encoder, patch", [("ZAP25DSAMTrainer_prompted", "vit_test", (16, 16, 16)),
                                                     ("SAMAdapterTrainer_prompted", "vit_test", (16, 16, 16)),
                                                     ("SAM2_3dMedTrainer", "sam2_test", (8, 32, 32))])
def test_the_trace_counts_what_a_real_step_allocates(trainer, encoder, patch):
    """The fake trace against the same live-tensor count on a real CPU step: clicks, SAM 2's auxiliary losses and
    its constructor built outside the fake mode, SAM's prompt encoder's data-dependent masking (upper bound)."""
    from sam_nnunet.trainers.training_memory import LiveTensorMemory, training_step

    torch.manual_seed(0)
    method = planned_method(trainer, encoder)
    setup = method.training_setup(method.arch_kwargs((1.0, 1.0, 1.0)), 1, LABELS)
    traced = TrainingMemoryEstimator(setup)(patch, 1)
    network, loss = setup.build_network(), setup.build_loss()
    network.train()
    optimizer = setup.build_optimizer(network)
    data, target = setup.make_batch(patch, 1)
    clicks = setup.make_clicks(patch, 1)
    memory = LiveTensorMemory()
    with memory:
        memory.track([*network.parameters(), *network.buffers(), data, target, *(clicks or ())])
        for _ in range(2):  # the first step creates AdamW's state, as the trace does
            training_step(network, optimizer, loss, data, target, clicks)
    assert traced.peak_bytes == pytest.approx(memory.peak, rel=0.01)
