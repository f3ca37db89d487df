"""The two session methods the napari widget stands on (no napari needed): ``automatic`` is the prompt-free
prediction of every tile whatever ``tiles`` says, as an undoable interaction that the next rounds refine;
``set_initial_segmentation`` keeps the given segmentation as the mask and hands it to the next round as logits on
the preprocessed grid that nnU-Net's export turns back into it."""
import numpy as np
import pytest
import torch
from helpers import plans_with_patch

from sam_nnunet.inference.predict import CasePrompts, predict_case_prompts
from sam_nnunet.inference.predictor import PromptedPredictor
from sam_nnunet.inference.session import InteractiveSession, SessionError
from sam_nnunet.networks.zap25d_prompted import ZAP25DPromptedNetwork

SHAPE = (14, 20, 10)


@pytest.fixture(scope="module")
def session(synthetic_dataset):
    pm, cm, dataset_json = plans_with_patch(synthetic_dataset["preprocessed"], [16, 16, 16])
    torch.manual_seed(0)
    net = ZAP25DPromptedNetwork(1, 3, "vit_test", window_size=4).eval()
    with torch.no_grad():
        for p in net.prompt_encoder.parameters():
            p.normal_()
    predictor = PromptedPredictor(tiles="clicked", tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                  perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(net, pm, cm, [net.state_dict()], dataset_json, "ZAP25DSAMTrainer_prompted",
                                    None)
    session = InteractiveSession(predictor)
    image = np.random.default_rng(0).normal(size=(1, *SHAPE)).astype(np.float32)
    session.set_image(image, {"spacing": [1.5, 1.0, 1.0]})  # resampled: the initial segmentation must follow
    return session


def test_automatic_is_the_prompt_free_prediction_of_every_tile(session):
    session.reset()
    mask = session.automatic()
    assert session.predictor.tiles == "clicked"  # restored
    predictor = session.predictor
    predictor.tiles = "all"
    try:
        logits = predict_case_prompts(predictor, session._data, CasePrompts.of(), session._properties)
    finally:
        predictor.tiles = "clicked"
    torch.testing.assert_close(session.logits, logits.cpu())
    assert mask.shape == SHAPE and len(session.interactions.labels) == 0
    clicked = session.add_click([7, 10, 5], "anterior")
    assert session.interactions.point_rounds.tolist() == [1]  # the click is the round after the automatic one
    assert (clicked != mask).any()
    np.testing.assert_array_equal(session.undo(), mask)
    assert (session.undo() == 0).all()


def test_initial_segmentation_is_kept_and_refined(session):
    session.reset()
    drawn = np.zeros(SHAPE, np.uint8)
    drawn[3:11, 4:15, 2:6] = 1
    drawn[3:11, 4:15, 6:9] = 2
    np.testing.assert_array_equal(session.set_initial_segmentation(drawn), drawn)
    np.testing.assert_array_equal(session.get_mask(), drawn)
    # its logits, exported as nnU-Net exports a prediction, give the segmentation back (resampled twice)
    session._push(CasePrompts.of(), session.logits)
    back = session.get_mask()
    assert (back == drawn).mean() > 0.97 and set(np.unique(back)) == {0, 1, 2}
    session.undo()
    refined = session.add_click([7, 10, 7], "posterior", positive=False)
    assert (refined != drawn).any() and session.undo() is not None
    np.testing.assert_array_equal(session.undo(), np.zeros(SHAPE))
    with pytest.raises(SessionError, match=r"has shape \[3, 4, 5\], the image \[14, 20, 10\]"):
        session.set_initial_segmentation(np.zeros((3, 4, 5), np.uint8))
    with pytest.raises(SessionError, match=r"values \[3\] that are no label of this model"):
        session.set_initial_segmentation(np.full(SHAPE, 3, np.uint8))
