"""ZAP25DSAMTrainer_prompted: ZAP-2.5DSAM with its point prompts through SAM's frozen prompt encoder, plus boxes and
simulated correction rounds with the previous mask (issue 17)."""
from sam_nnunet.trainers.prompted import PromptedTrainerMixin
from sam_nnunet.trainers.zap25d import ZAP25DSAMTrainer


class ZAP25DSAMTrainer_prompted(PromptedTrainerMixin, ZAP25DSAMTrainer):
    """ZAP-2.5DSAM with 3D click prompts (SAM's frozen prompt encoder, per plane); also segments without clicks.

    Clicks per training patch as the paper's code: k ~ U{1, 2, 3} distinct positive clicks per class present, no
    other click; here 20% of the patches get no click so the automatic mode is trained too (the paper clicks every
    crop with foreground). Validation (pseudo Dice): 3 clicks per class, as the paper. Zero added parameters, the
    trainable set of ZAP25DSAMTrainer; recipe otherwise ZAP25DSAMTrainer's.

    Boxes and refinement (not in the paper; MedSAM's boxes, SAM's and nnInteractive's interaction rounds; see
    ``PromptedTrainerMixin``): boxes on half of the prompted patches, half of the steps after 1-3 correction rounds,
    half of those starting from an imperfect mask (issue 35); the frozen encoder's output of the rounds is what the
    step trains from.
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
    train_box_probability = 0.5
    train_box_clicks_probability = 0.5
    refine_probability = 0.5
    max_refine_rounds = 3
    rounds_reuse_encoding = True  # the encoder is frozen
    # issue 35: half of the refinement steps start from an imperfect mask (eroded / dilated / shifted label, a
    # neighbour's) with a correction click per class, as correcting nnU-Net's or anyone's segmentation does
    imperfect_mask_probability = 0.5
