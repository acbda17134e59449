"""The warm Python the CLI tests start their commands from (tests/warm_python.py) behaves as a fresh `python` does:
the same command gives the same exit status and output both ways."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests import warm_python
from tests.conftest import REPO

# What a fresh interpreter sets up and does at its end: argv, folder, environment, __main__, sys.path, an atexit
# handler and a non-daemon thread that outlives the main one, output on both streams, then a chosen exit status.
PROBE = """
import atexit, os, random, sys, threading, time
print(sys.argv, os.getcwd(), os.environ.get("WARM_PROBE"), __name__)
print(sys.path)
print("pid", os.getpid(), "random", random.random())
atexit.register(lambda: print("atexit ran"))
threading.Thread(target=lambda: (time.sleep(0.3), print("thread ended"))).start()
sys.stderr.write("to stderr\\n")
sys.exit(int(sys.argv[1]))
"""


def both(command: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """The command run by a fresh interpreter, then by the warm server."""
    kwargs = {"cwd": REPO, "capture_output": True, "text": True, "timeout": 120} | kwargs
    return subprocess.run(command, **kwargs), warm_python.run(command, **kwargs)


def test_a_command_ends_as_in_a_fresh_interpreter(tmp_path):
    lib = tmp_path / "lib"  # PYTHONPATH: the command's own, ahead of the interpreter's packages
    env = os.environ | {"WARM_PROBE": "x", "PYTHONPATH": str(lib)}
    fresh, warm = both([sys.executable, "-c", PROBE, "5"], cwd=tmp_path, env=env)
    assert warm.returncode == fresh.returncode == 5
    assert warm.stderr == fresh.stderr == "to stderr\n"
    f_args, f_path, f_pid, *f_end = fresh.stdout.splitlines()
    w_args, w_path, w_pid, *w_end = warm.stdout.splitlines()
    assert w_args == f_args == f"['-c', '5'] {tmp_path} x __main__"
    assert w_path == f_path and w_path.startswith(f"['', '{lib}', ")
    assert w_end == f_end == ["thread ended", "atexit ran"]
    assert w_pid != f_pid  # a process of its own, its random state its own
    again = warm_python.run([sys.executable, "-c", PROBE, "0"], capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.splitlines()[2] not in (w_pid, f_pid)


def test_a_cli_refusing_its_input_says_the_same_both_ways(tmp_path):
    command = [sys.executable, "-m", "pipeline.train", "+model=effnet_lite0", f"data.root={tmp_path / 'nowhere'}"]
    fresh, warm = both([*command, f"paths.outputs={tmp_path}"])
    assert fresh.returncode == warm.returncode == 2
    assert fresh.stderr.startswith("error: ") and warm.stderr == fresh.stderr
    assert warm.stdout == fresh.stdout


def test_signals_reach_the_command_and_its_own_session():
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    job = warm_python.Popen(sleeper, start_new_session=True)
    try:
        assert os.getpgid(job.pid) == job.pid != os.getpgid(0)
        time.sleep(0.2)
        os.killpg(job.pid, signal.SIGINT)  # Ctrl-C: Python's KeyboardInterrupt, the status of a SIGINT
        assert job.wait(timeout=30) == -signal.SIGINT
    finally:
        job.kill()
    job = warm_python.Popen(sleeper)
    with pytest.raises(subprocess.TimeoutExpired):  # still sleeping
        job.wait(timeout=0.2)
    job.kill()
    assert job.wait(timeout=30) == -signal.SIGKILL
