"""nnUNetTrainerShortRun: found by nnU-Net through nnUNet_extTrainer; nnU-Net's trainer, shortened only when asked."""
import pytest
from helpers import make_trainer

from sam_nnunet.errors import UserFacingExit
from sam_nnunet.trainers.short_run import nnUNetTrainerShortRun


def test_nnunet_finds_the_short_baseline():
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    assert recursive_find_trainer_class_by_name("nnUNetTrainerShortRun") is nnUNetTrainerShortRun


def test_it_is_nnunets_trainer_unless_shortened(synthetic_dataset, sam_env):
    trainer = make_trainer(nnUNetTrainerShortRun, synthetic_dataset)
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == \
        (1000, 250, 50)
    sam_env.setenv("nnUNet_SAM_num_epochs", "3")
    sam_env.setenv("nnUNet_SAM_iterations_per_epoch", "7")
    trainer = make_trainer(nnUNetTrainerShortRun, synthetic_dataset)
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (3, 7, 7)
    sam_env.setenv("nnUNet_SAM_num_epochs", "zero")
    with pytest.raises(UserFacingExit, match="positive integer"):
        make_trainer(nnUNetTrainerShortRun, synthetic_dataset)
