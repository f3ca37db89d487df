"""Issue 37: the interactive session checks every prompt as prompt files do (finite numbers, three coordinates, 3-D
box corners, a class by name or integer but not a bool), its world convention when it is constructed or set (also
through from_model_folder); predict-prompted takes --merge. The session's predictor is a stub: every refusal comes
before any prediction."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import sam_nnunet.inference.predict as predict
import sam_nnunet.inference.session as session_module
from sam_nnunet.inference.session import InteractiveSession, SessionError

LABELS = {"background": 0, "Anterior": 1, "Posterior": 2}


class _Predictor:
    label_manager = SimpleNamespace(has_regions=False)
    dataset_json = {"labels": LABELS}

    def check_network_takes_clicks(self):
        pass


def _session(**kwargs) -> InteractiveSession:
    session = InteractiveSession(_Predictor(), **kwargs)
    session._data, session._shape = torch.zeros(1, 14, 12, 10), (14, 12, 10)  # an image is set
    return session


@pytest.mark.parametrize("call, message", [
    (lambda s: s.add_box([float("nan"), 7, 11], [9, 9, 9], 1), r"\[nan, 7.0, 11.0\] is not a position \(NaN or Inf"),
    (lambda s: s.add_box([1, 1, 1], [9, float("inf"), 9], 1), r"\(last corner\): \[9.0, inf, 9.0\] is not a position"),
    (lambda s: s.add_click([1, float("nan"), 3], 1), r"click \[1, nan, 3\]: \[1.0, nan, 3.0\] is not a position"),
    (lambda s: s.add_click([1, 2], 1), r"click \[1, 2\]: a position is three numbers \[x, y, z\], not \[1, 2\]"),
    (lambda s: s.add_click(np.array([1, 2, 3, 4]), 1), r"a position is three numbers \[x, y, z\], not \[1, 2, 3, 4\]"),
    (lambda s: s.add_click([[1, 2, 3]], 1), r"a position is three numbers"),
    (lambda s: s.add_click("abc", 1), r"a position is three numbers"),
    (lambda s: s.add_click([1, True, 3], 1), r"a position is three numbers"),
    (lambda s: s.add_box([1, 2], [3, 4], 1), r"\(first corner\): a position is three numbers"),
    (lambda s: s.add_box([1, 2, 3], [[3, 4, 5]], 1), r"\(last corner\): a position is three numbers"),
    (lambda s: s.add_click([1, 1, 1], True), r"the class must be a label name or integer value, not True"),
    (lambda s: s.add_box([1, 1, 1], [3, 3, 3], 1.0), r"the class must be a label name or integer value, not 1.0"),
    (lambda s: s.add_click([1, 1, 1], 1, positive="yes"), r"positive must be True or False, not 'yes'"),
    (lambda s: s.add_click([1, 1, 1], np.int64(7)), r"class 7 is not a label of this model"),  # numpy ints are ints
])
def test_every_bad_prompt_is_one_session_error(call, message):
    with pytest.raises(SessionError, match=message):
        call(_session())


def test_the_world_convention_is_checked_when_given_and_when_set(monkeypatch):
    for bad in ("XYZ", "", None, "LSP"):
        with pytest.raises(SessionError, match=r"world_convention must be \"LPS\" .* or \"RAS\" .*, not "):
            InteractiveSession(_Predictor(), world_convention=bad)
    session = _session(world_convention="ras")  # any case: there is no other reading of it
    assert session.world_convention == "RAS"
    with pytest.raises(SessionError, match="world_convention must be"):
        session.world_convention = "xyz"
    assert session.world_convention == "RAS"
    # from_model_folder: refused before the model loads, passed on to the session
    monkeypatch.setattr(session_module, "load_prompted_predictor", lambda *a, **k: _Predictor())
    assert InteractiveSession.from_model_folder("model", world_convention="Ras").world_convention == "RAS"
    monkeypatch.setattr(session_module, "load_prompted_predictor", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(SessionError, match="world_convention must be"):
        InteractiveSession.from_model_folder("model", world_convention="XYZ")


def test_predict_prompted_takes_merge(monkeypatch, tmp_path):
    from sam_nnunet.cli import main

    seen = {}
    monkeypatch.setattr(predict, "predict_prompted", lambda *a, **k: seen.update(k))
    main(["predict-prompted", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", "model", "--prompts", "p.json",
          "--merge", "none"])
    assert seen["merge"] == "none"
    main(["predict-prompted", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", "model", "--prompts", "p.json"])
    assert seen["merge"] == "progressive"
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"--merge must be one of progressive, none, not 'all'"):
        predict.predict_prompted(str(tmp_path), str(tmp_path / "out"), "no_model", [0], prompts_file="p.json",
                                 merge="all")
