"""The one subprocess harness (demo, learning curve, benchmark): log, echo, progress callback, failures."""
import os
import sys

import pytest

from sam_nnunet import commands
from sam_nnunet.commands import CommandFailed, console_script, run_command


def test_a_command_logs_its_line_and_output_and_reports_progress(tmp_path):
    log = str(tmp_path / "sub" / "log.txt")
    calls = []
    seconds = run_command([sys.executable, "-c", "import time; print('hello'); time.sleep(1.2)"], log=log,
                          while_running=lambda: calls.append(1))
    text = open(log).read()
    assert text.startswith("$ ") and "hello" in text and seconds >= 1.2
    assert len(calls) >= 2  # every half second while it ran


def test_a_failing_command_names_its_status_and_the_end_of_its_log(tmp_path):
    log = str(tmp_path / "log.txt")
    with pytest.raises(CommandFailed, match=r"failed \(3\); see .*log.txt:\n.*went wrong") as e:
        run_command([sys.executable, "-c", "import sys; print('it went wrong'); sys.exit(3)"], log=log)
    assert e.value.returncode == 3
    run_command([sys.executable, "-c", "import sys; sys.exit(3)"], log=log, check=False)  # no raise


def test_console_scripts_come_from_this_environment(capsys, tmp_path, monkeypatch):
    # nnU-Net is installed with this package: its script is the one beside this interpreter, not one on the PATH
    assert console_script("nnUNetv2_train") == os.path.join(os.path.dirname(sys.executable), "nnUNetv2_train")
    monkeypatch.setattr(commands, "BIN", str(tmp_path))
    (tmp_path / "tool").write_text("")
    assert console_script("tool") == str(tmp_path / "tool")
    assert console_script("no-such-tool-here") == "no-such-tool-here"  # not in the environment: left to the PATH
    assert console_script(os.path.join("sub", "tool")) == os.path.join("sub", "tool")  # a path stays a path
    run_command([sys.executable, "-c", "print(1)"])  # without a log: the line is echoed
    assert "$ " in capsys.readouterr().out
