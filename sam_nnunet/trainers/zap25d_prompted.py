"""ZAP25DSAMTrainer_prompted: ZAP-2.5DSAM with its point prompts through SAM's frozen prompt encoder."""
from sam_nnunet.trainers.prompted import PromptedTrainerMixin
from sam_nnunet.trainers.zap25d import ZAP25DSAMTrainer


class ZAP25DSAMTrainer_prompted(PromptedTrainerMixin, ZAP25DSAMTrainer):
    """ZAP-2.5DSAM with 3D click prompts (SAM's frozen prompt encoder, per plane); also segments without clicks.

    Clicks per training patch as the paper's code: k ~ U{1, 2, 3} distinct positive clicks per class present, no
    other click; here 20% of the patches get no click so the automatic mode is trained too (the paper clicks every
    crop with foreground). Validation (pseudo Dice): 3 clicks per class, as the paper. Zero added parameters, the
    trainable set of ZAP25DSAMTrainer; recipe otherwise ZAP25DSAMTrainer's.
    """
    network_class = "sam_nnunet.networks.zap25d_prompted.ZAP25DPromptedNetwork"
    train_positive_clicks = 3
    train_min_positive_clicks = 1
    distinct_clicks = True
    train_random_clicks = 0
    prompt_free_probability = 0.2
    val_positive_clicks = 3
    val_random_clicks = 0
    paper_click_tiles = "clicked"  # the paper predicts only sliding windows holding a click (prompts.predictor)
