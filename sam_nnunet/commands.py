"""Running a command as a user would type it (nnU-Net's console scripts, ours, a worker module): the one subprocess
harness of the demo, the learning curve and the benchmark."""
import os
import shlex
import subprocess
import sys
import time
from typing import Callable, Dict, Optional, Sequence

# the console scripts of the environment this runs in (nnUNetv2_*, sam-nnunet): found there, not on a PATH that may
# name another installation
BIN = os.path.dirname(sys.executable)


class CommandFailed(RuntimeError):
    """A command ended with a non-zero status; the message names it, its status and the end of its output."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


def console_script(name: str) -> str:
    """This environment's console script of that name, if it has one; the name unchanged otherwise."""
    path = os.path.join(BIN, name)
    return path if os.sep not in name and os.path.isfile(path) else name


def run_command(cmd: Sequence, env: Optional[Dict[str, str]] = None, log: Optional[str] = None,
                while_running: Optional[Callable[[], None]] = None, check: bool = True) -> float:
    """Run ``cmd`` (its first word through ``console_script``) and return its wall seconds.

    Output: appended to ``log`` after the command line, or, without a log, to this process's own output with the
    command line echoed first. ``while_running`` is called every half second while it runs (progress bars). Ctrl-C
    stops the command too. ``check``: raise CommandFailed on a non-zero status (with the log's last lines)."""
    cmd = [str(c) for c in cmd]
    cmd[0] = console_script(cmd[0])
    line = " ".join(shlex.quote(c) for c in cmd)
    start = time.time()
    if log:
        os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
        out = open(log, "a")
        out.write(f"$ {line}\n")
        out.flush()
    else:
        out = None
        print(f"\n$ {line}", flush=True)
    try:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)
        try:
            while process.poll() is None:
                if while_running is None:
                    process.wait()
                else:
                    while_running()
                    time.sleep(0.5)
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
    finally:
        if out is not None:
            out.close()
    if check and process.returncode:
        tail = ""
        if log:
            with open(log) as f:
                tail = ":\n" + f.read()[-2000:]
        where = f"; see {log}" if log else ""
        raise CommandFailed(f"{os.path.basename(cmd[0])} failed ({process.returncode}){where}{tail}",
                            process.returncode)
    return time.time() - start
