"""The shorter schedules (``-tr ZAP25DSAMTrainer_250epochs``) through nnU-Net's own trainer lookup."""
import pytest
from helpers import make_trainer
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from sam_nnunet.evaluation.learning_curve import is_prompted
from sam_nnunet.evaluation.prompted import paper_tiles
from sam_nnunet.trainers import SAM2_3dMedTrainer, ZAP25DSAMTrainer, ZAP25DSAMTrainer_prompted
from sam_nnunet.trainers.registry import find_trainer_class, get_trainer_class


@pytest.mark.parametrize("name, parent, epochs", [
    ("ZAP25DSAMTrainer_250epochs", ZAP25DSAMTrainer, 250), ("ZAP25DSAMTrainer_100epochs", ZAP25DSAMTrainer, 100),
    ("ZAP25DSAMTrainer_prompted_250epochs", ZAP25DSAMTrainer_prompted, 250),
    ("SAM2_3dMedTrainer_100epochs", SAM2_3dMedTrainer, 100)])
def test_nnunet_finds_the_schedules(name, parent, epochs):
    cls = recursive_find_trainer_class_by_name(name)
    assert cls is not None and issubclass(cls, parent) and cls.epochs == epochs
    assert cls.network_class == parent.network_class
    # our tools find them as nnU-Net does (the demo's encoder, the learning curve's prompted rows)
    assert find_trainer_class(name) is cls and get_trainer_class(name) is cls
    assert is_prompted(name) == is_prompted(parent.__name__)


def test_epochs_set_and_the_short_run_variables_still_win(synthetic_dataset, sam_env, tmp_path):
    sam_env.setenv("nnUNet_results", str(tmp_path))
    sam_env.setenv("nnUNet_SAM_encoder", "vit_test")
    sam_env.setenv("nnUNet_SAM_allow_random_init", "1")
    cls = recursive_find_trainer_class_by_name("ZAP25DSAMTrainer_250epochs")
    trainer = make_trainer(cls, synthetic_dataset)
    assert trainer.num_epochs == 250 and trainer.num_iterations_per_epoch == 250
    sam_env.setenv("nnUNet_SAM_num_epochs", "3")
    assert make_trainer(cls, synthetic_dataset).num_epochs == 3


@pytest.mark.parametrize("name, parent", [("ZAP25DSAMTrainer_upsample2", ZAP25DSAMTrainer),
                                          ("ZAP25DSAMTrainer_prompted_upsample2", ZAP25DSAMTrainer_prompted)])
def test_the_x2_scale_goes_into_the_plans_and_halves_the_token_grid(name, parent, synthetic_dataset, sam_env,
                                                                      tmp_path):
    sam_env.setenv("nnUNet_results", str(tmp_path))
    sam_env.setenv("nnUNet_SAM_encoder", "vit_test")
    sam_env.setenv("nnUNet_SAM_allow_random_init", "1")
    cls = recursive_find_trainer_class_by_name(name)
    assert cls is not None and issubclass(cls, parent) and cls.network_class == parent.network_class
    # our tools know it as nnU-Net does (prompted or not, its paper's click tiles)
    assert find_trainer_class(name) is cls and find_trainer_class("NoSuchTrainer") is None
    assert get_trainer_class(name) is cls  # the memory check builds its loss through it
    assert is_prompted(name) == is_prompted(parent.__name__) and paper_tiles(name) == paper_tiles(parent.__name__)
    grids = {}
    for trainer_class in (parent, cls):
        trainer = make_trainer(trainer_class, synthetic_dataset)
        trainer.initialize()
        arch = trainer.plans_manager.plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
        assert arch["upsample"] == (2 if trainer_class is cls else 4)
        grids[trainer_class] = trainer.sam_network.encoder.grid(48, 40)
    assert grids[cls] == tuple(g // 2 for g in grids[parent])


def test_sam2_3dmed_at_x2_plans_smaller_frames(synthetic_dataset, sam_env, tmp_path):
    from sam_nnunet.blocks.frames import frame_geometry

    sam_env.setenv("nnUNet_results", str(tmp_path))
    sam_env.setenv("nnUNet_SAM_encoder", "sam2_test")
    sam_env.setenv("nnUNet_SAM_allow_random_init", "1")
    cls = recursive_find_trainer_class_by_name("SAM2_3dMedTrainer_upsample2")
    assert cls is not None and issubclass(cls, SAM2_3dMedTrainer) and find_trainer_class(cls.__name__) is cls
    trainer = make_trainer(cls, synthetic_dataset)
    arch = trainer.plans_manager.plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert arch["upsample"] == 2 and arch["encoder"] == "sam2_test"
    # hippocampus's 56 x 40 slices: 128-pixel frames at x2 instead of 224 at x4; masks still cover the voxel grid
    assert frame_geometry(56, 40, 2).size == 128 and frame_geometry(56, 40, 4).size == 224
    assert frame_geometry(56, 40, 2).mask_hw == (28, 20)


def test_zap_plans_x2_for_litemedsam_x4_for_sam_vit_and_a_resumed_run_keeps_its_scale(synthetic_dataset, sam_env,
                                                                                       tmp_path):
    import json
    import os

    from sam_nnunet.planners.sam_planner import planned_method

    sam_env.setenv("nnUNet_results", str(tmp_path))
    sam_env.setenv("nnUNet_SAM_allow_random_init", "1")

    def planned(cls, encoder):
        sam_env.setenv("nnUNet_SAM_encoder", encoder)
        trainer = make_trainer(cls, synthetic_dataset)
        return trainer, trainer.plans_manager.plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]

    trainer, arch = planned(ZAP25DSAMTrainer, "litemedsam")
    assert arch["upsample"] == 2 and arch["encoder"] == "litemedsam"
    assert planned(ZAP25DSAMTrainer_prompted, "litemedsam")[1]["upsample"] == 2
    assert planned(recursive_find_trainer_class_by_name("ZAP25DSAMTrainer_upsample4"), "litemedsam")[1]["upsample"] == 4
    # the planner sizes what the trainer will write
    assert planned_method("ZAP25DSAMTrainer", "litemedsam").network_kwargs["upsample"] == 2
    assert planned_method("ZAP25DSAMTrainer", "vit_test").network_kwargs["upsample"] == 4
    # a model folder trained before x2 became LiteMedSAM's scale (its plans say x4) resumes and predicts at x4
    os.makedirs(trainer.output_folder_base, exist_ok=True)
    plans = trainer.plans_manager.plans
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["upsample"] = 4
    with open(os.path.join(trainer.output_folder_base, "plans.json"), "w") as f:
        json.dump(plans, f)
    from sam_nnunet.trainers import base

    reads = []
    sam_env.setattr(base, "load_json", lambda path: reads.append(path) or json.load(open(path)))
    assert planned(ZAP25DSAMTrainer, "litemedsam")[1]["upsample"] == 4
    assert reads == [os.path.join(trainer.output_folder_base, "plans.json")]  # read once (encoder, then scale)
