"""SAMAdapterTrainer_prompted: 3DSAM-adapter with its visual-sampler prompt encoder, trained with clicks."""
from sam_nnunet.trainers.prompted import PromptedTrainerMixin
from sam_nnunet.trainers.sam_adapter import SAMAdapterTrainer


class SAMAdapterTrainer_prompted(PromptedTrainerMixin, SAMAdapterTrainer):
    """3DSAM-adapter with 3D click prompts (visual sampler); also segments without clicks.

    Clicks per training patch as the paper's code: 10 positive clicks per class present (with replacement) + 20
    anywhere in the patch; here 20% of the patches get no click so the automatic mode is trained too (the paper
    always clicks). Validation (pseudo Dice): 10 positive clicks per class, as the paper validates. Recipe otherwise
    SAMAdapterTrainer's.
    """
    network_class = "sam_nnunet.networks.sam_adapter_prompted.SAMAdapterPromptedNetwork"
    train_positive_clicks = 10
    train_random_clicks = 20
    prompt_free_probability = 0.2
    val_positive_clicks = 10
    paper_click_tiles = "centred"  # the paper tests one patch centred on the clicks (sam_nnunet.prompts.predictor)
