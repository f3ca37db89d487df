"""The demo's choices (scripts/demo.sh -> sam-nnunet demo): a seed; LiteMedSAM's real weights for a trainer that
takes them (ZAP25DSAMTrainer), the tiny random encoder when asked or where the trainer cannot take LiteMedSAM. The commands themselves are the
stock nnU-Net CLI, run end to end by the slow workflow tests; here the first command is intercepted."""
import pytest

from sam_nnunet import demo


class _Stop(Exception):
    pass


@pytest.fixture
def first_command(monkeypatch, tmp_path):
    for key in ("nnUNet_SAM_checkpoint", "nnUNet_SAM_encoder", "nnUNet_SAM_seed", "nnUNet_SAM_allow_random_init",
                "nnUNet_SAM_cache_copies", "nnUNet_SAM_num_epochs", "nnUNet_SAM_iterations_per_epoch",
                "nnUNet_n_proc_DA"):
        monkeypatch.delenv(key, raising=False)
    seen = {}

    def fake(command, env, *args, **kwargs):  # the first command (planning) passes, the training stops the demo
        seen.setdefault("command", command)
        seen.setdefault("env", env)
        if command[0] == "nnUNetv2_train":
            seen["train_env"] = env
            raise _Stop

    monkeypatch.setattr(demo, "run_command", fake)

    def run(**kwargs):
        seen.clear()
        with pytest.raises(_Stop):
            demo.run_demo(str(tmp_path / f"work{len(list(tmp_path.iterdir()))}"), **kwargs)
        return seen["command"], seen["env"], seen["train_env"]
    return run


def test_zap_trains_on_litemedsam_seeded(first_command):
    command, env, train_env = first_command(trainer="ZAP25DSAMTrainer")
    assert command[0] == "nnUNetv2_plan_and_preprocess"
    assert env["nnUNet_SAM_encoder"] == "litemedsam" and "nnUNet_SAM_allow_random_init" not in env
    assert env["nnUNet_SAM_seed"] == "0" and env["nnUNet_SAM_cache_copies"] == str(demo.DEMO_CACHE_COPIES)
    # augmentation where the seed reaches it; not for planning, where nnU-Net takes it as its torch thread count
    assert train_env["nnUNet_n_proc_DA"] == "0" and env["nnUNet_n_proc_DA"] != "0"
    assert (env["nnUNet_SAM_num_epochs"], env["nnUNet_SAM_iterations_per_epoch"]) == \
        (str(demo.DEMO_EPOCHS), str(demo.DEMO_ITERATIONS))


@pytest.mark.parametrize("kwargs, encoder", [({"tiny_encoder": True}, "vit_test"),
                                             ({}, "vit_test"),  # the default trainer, SAMAdapterTrainer
                                             ({"trainer": "SAM2_3dMedTrainer"}, "sam2_test")])
def test_tiny_random_encoder_when_asked_or_where_litemedsam_does_not_fit(first_command, kwargs, encoder):
    _, env, _ = first_command(**kwargs)
    assert env["nnUNet_SAM_encoder"] == encoder and env["nnUNet_SAM_allow_random_init"] == "1"


def test_unseeded_on_request_and_a_users_checkpoint_wins(first_command, monkeypatch):
    _, env, train_env = first_command(seed=None)
    assert "nnUNet_SAM_seed" not in env and train_env["nnUNet_n_proc_DA"] != "0"
    monkeypatch.setenv("nnUNet_SAM_checkpoint", "/weights/sam_vit_b_01ec64.pth")
    _, env, _ = first_command()
    assert "nnUNet_SAM_encoder" not in env and "nnUNet_SAM_allow_random_init" not in env
