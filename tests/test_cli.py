"""The sam-nnunet command: env exports, info listings and parameter counts as JSON."""
import json
import os
import subprocess
import sys

from sam_nnunet.cli import main
from sam_nnunet.nnunet_env import ext_trainer_dir, required_environment

BIN = os.path.dirname(sys.executable)


def test_env_prints_bash_exports_that_nnunet_finds(tmp_path):
    out = subprocess.run(["bash", "-c", f'unset nnUNet_extTrainer; eval "$({BIN}/sam-nnunet env --data-dir {tmp_path})"'
                          f' && echo "$nnUNet_extTrainer|$nnUNet_results"'],
                         capture_output=True, text=True, check=True).stdout.strip()
    ext, results = out.split("|")
    assert ext == ext_trainer_dir() and results == str(tmp_path / "nnUNet_results")
    assert "sam_nnunet_trainers.py" in os.listdir(ext)


def test_env_keeps_other_external_trainer_folders():
    env = required_environment(environ={"nnUNet_extTrainer": os.pathsep.join(["/opt/mine", ext_trainer_dir()])})
    assert env["nnUNet_extTrainer"].split(os.pathsep) == [ext_trainer_dir(), "/opt/mine"]


def test_nnunet_finds_our_trainer_through_the_shim():
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from sam_nnunet.trainers import SAMAdapterTrainer

    assert recursive_find_trainer_class_by_name("SAMAdapterTrainer") is SAMAdapterTrainer


def test_our_commands_find_our_trainers_without_the_export(monkeypatch, capsys):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from sam_nnunet.trainers import ZAP25DSAMTrainer_prompted

    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    main(["info"])
    assert os.environ["nnUNet_extTrainer"] == ext_trainer_dir()
    assert recursive_find_trainer_class_by_name("ZAP25DSAMTrainer_prompted") is ZAP25DSAMTrainer_prompted


def test_info_json_counts_for_vit_b():
    proc = subprocess.run([os.path.join(BIN, "sam-nnunet"), "info", "--trainer", "SAMAdapterTrainer", "--encoder",
                           "vit_b", "--inputs", "1", "--outputs", "2", "--json"], capture_output=True, text=True,
                          check=True)
    counts = json.loads(proc.stdout)
    assert counts["trainable"] == 22_298_240 and counts["encoder"] == "vit_b" and counts["outputs"] == 2


def test_info_lists_trainers_and_encoders_and_rejects_unknown_names(capsys):
    main(["info"])
    listing = capsys.readouterr().out
    assert "SAMAdapterTrainer" in listing and "vit_b" in listing and "vit_test" in listing
    for argv, message in [(["info", "--trainer", "NoSuchTrainer", "--encoder", "vit_b"], "unknown trainer"),
                          (["info", "--trainer", "SAMAdapterTrainer", "--encoder", "vit_q"], "not an encoder"),
                          (["info", "--trainer", "SAMAdapterTrainer"], "needs --encoder")]:
        try:
            main(argv)
        except SystemExit as e:
            assert message in str(e.code)
        else:
            raise AssertionError(f"{argv} did not fail")
