"""Test-only: start `python -m MODULE`, `python -c CODE` or `python SCRIPT` as a fork of a Python that has already
imported torch, torchvision, timm and fastai.

Each command the tests start pays 8 to 10 s of CPU on a 2-core machine to import those libraries before its first
line runs, and the suite starts dozens (measured: 20 single-run `pipeline.train` commands alone took 153 s of CPU).
`Popen` and `run` here take subprocess's arguments and start the same command as a fork of one server per test
process, which imported the libraries once. The command is still a process of its own, with its own pid, argv,
environment, working directory, standard streams, session, signals and exit status, and it ends as a fresh
interpreter ends (atexit handlers, non-daemon threads). What differs from a fresh `python`: the libraries above are
already imported (warnings printed at their import are not printed again), and OpenMP read OMP_NUM_THREADS when the
server started. A test of what a command imports, or of the interpreter's start, uses subprocess.

The server: `python tests/warm_python.py SOCKET`. It forks a child per request; the child sends its pid once set up,
the server its wait status once it has ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PRELOAD = ("torch", "torchvision", "timm", "fastai.vision.all", "hydra", "omegaconf", "pandas", "sklearn")
HEADER = 8  # bytes of a request's length
# The server's environment: the test process's as it started (where PYTHONPATH may hold the libraries, as on a GPU
# machine given them as wheels), not as a test may have patched it when the first command starts the server
SERVER_ENV = dict(os.environ)


# --- the server (its own process: it imports nothing of the tests or of the pipeline) ---


def serve(path: str) -> dict:
    """Fork a child per request until the process that started the server ends. Returns only in a child: the
    request it is to run, its standard streams and session already set."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".binding")
    listener.listen(64)
    os.rename(path + ".binding", path)  # connectable once it has its name
    starter, children = os.getppid(), {}
    while os.getppid() == starter:
        if select.select([listener], [], [], 0.05)[0]:
            conn, _ = listener.accept()
            request, fds = _receive(conn)
            sys.stdout.flush(), sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in children.values():
                    other.close()
                _start(conn, request, fds)
                return request
            for fd in fds:
                os.close(fd)
            children[pid] = conn
        _reap(children)
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)  # its socket and log: the tests are over
    sys.exit(0)


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    size = int.from_bytes(data[:HEADER], "big")
    while len(data) < HEADER + size:
        data += conn.recv(1 << 20)
    return json.loads(data[HEADER:]), fds


def _reap(children: dict[int, socket.socket]) -> None:
    """Send each ended child's raw wait status to the client that asked for it."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid)
        with contextlib.suppress(OSError):  # OSError: the client went away, nobody waits for this status
            conn.sendall(f"{status}\n".encode())
        conn.close()


def _start(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the child: set up, then tell the client its pid, as Popen returns once the new process has its streams,
    session and folder; or why it could not start (a missing folder, as FileNotFoundError from Popen)."""
    try:
        _enter(request, fds)
    except OSError as e:
        conn.sendall(f"!{e}\n".encode())
        os._exit(255)
    conn.sendall(f"{os.getpid()}\n".encode())
    conn.close()


def _enter(request: dict, fds: list[int]) -> None:
    """In the child: the streams, session, folder, environment and fresh random state of a new process."""
    import random

    import numpy as np

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)
    if request["new_session"]:
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    random.seed(), np.random.seed()  # seeded from the OS, as each new interpreter seeds itself


def run_request(request: dict) -> None:
    """Run the command as `python ARGS` would, with sys.path as that interpreter would set it."""
    import runpy
    import types

    args = request["args"]
    # sys.path[0] as `python` sets it: the folder for -m, "" for -c, the script's folder; then PYTHONPATH
    first = {"-m": os.getcwd(), "-c": ""}.get(args[0], str(Path(args[0]).resolve().parent))
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [first, *extra, *_interpreter_path()]
    if args[0] == "-m":
        sys.argv = args[1:]
        runpy._run_module_as_main(args[1], alter_argv=True)
    elif args[0] == "-c":
        sys.argv = ["-c", *args[2:]]
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(args[1], "<string>", "exec"), main.__dict__)
    else:
        sys.argv = list(args)
        runpy.run_path(args[0], run_name="__main__")


def _interpreter_path() -> list[str]:
    """The server's sys.path without its script's folder and its PYTHONPATH: those come before the standard
    library's zip entry, which Python lists whether or not the file exists."""
    stdlib_zip = f"python{sys.version_info.major}{sys.version_info.minor}.zip"
    return sys.path[next(i for i, p in enumerate(sys.path) if p.endswith(stdlib_zip)) :]


# --- the client (in the test process) ---

_server: dict[str, object] = {}
_start_lock = threading.Lock()


def _server_path() -> str:
    """The server's socket. The server starts on first use: the first command waits for its imports, as it would
    have waited for a fresh interpreter's."""
    with _start_lock:
        if "path" not in _server:
            folder = tempfile.mkdtemp(prefix="warm", dir="/tmp")  # short: a socket's path must fit 107 bytes
            path = os.path.join(folder, "s")
            log = open(os.path.join(folder, "server.log"), "w")  # noqa: SIM115 (the server's life long)
            proc = subprocess.Popen(
                [sys.executable, __file__, path], env=SERVER_ENV, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
            _server.update(path=path, proc=proc, log=log.name)
        path, proc = _server["path"], _server["proc"]
    deadline = time.monotonic() + 300
    while not os.path.exists(path):
        assert proc.poll() is None, f"the warm Python server ended: {Path(_server['log']).read_text()[-3000:]}"
        assert time.monotonic() < deadline, "the warm Python server did not start in 300 s"
        time.sleep(0.05)
    return path


class Popen(subprocess.Popen):
    """subprocess.Popen of `[sys.executable, ...]`, the child forked by the warm server."""

    def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo, creationflags,
                       shell, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite, restore_signals, gid, gids,
                       uid, umask, start_new_session, process_group):  # fmt: skip
        assert not shell and not pass_fds and preexec_fn is None and os.path.basename(args[0]).startswith("python")
        request = {
            "args": [os.fsdecode(a) for a in args[1:]],
            "cwd": os.path.abspath(os.fsdecode(cwd) if cwd is not None else os.getcwd()),
            "env": dict(os.environ if env is None else env),
            "new_session": bool(start_new_session),
        }
        fds = [fd if fd != -1 else default for fd, default in ((p2cread, 0), (c2pwrite, 1), (errwrite, 2))]
        payload = json.dumps(request).encode()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(_server_path())
            socket.send_fds(conn, [len(payload).to_bytes(HEADER, "big") + payload], fds)
            self._warm_conn, self._warm_read = conn, b""
            line = self._warm_line(block=True)
            if line.startswith(b"!"):
                raise OSError(line[1:].decode())
            self.pid = int(line)
        finally:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)
        self._child_created = True

    def _warm_line(self, block: bool) -> bytes | None:
        """The server's next line: the child's pid, then its wait status; None if not there yet and not `block`."""
        while b"\n" not in self._warm_read:
            if not block and not select.select([self._warm_conn], [], [], 0)[0]:
                return None
            chunk = self._warm_conn.recv(64)
            assert chunk, "the warm Python server ended without the command's exit status"
            self._warm_read += chunk
        line, self._warm_read = self._warm_read.split(b"\n", 1)
        return line

    def _warm_waitpid(self, pid: int, flags: int) -> tuple[int, int]:
        """os.waitpid for the server's child: its raw wait status as the server reports it, or (0, 0) while it
        runs (WNOHANG)."""
        line = self._warm_line(block=not flags & os.WNOHANG)
        if line is None:
            return 0, 0
        self._warm_conn.close()
        return pid, int(line)

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:
        return self._warm_waitpid(self.pid, wait_flags)

    def _internal_poll(self, _deadstate=None, **_):
        return super()._internal_poll(_deadstate, _waitpid=self._warm_waitpid)


def run(args, *, input=None, capture_output=False, timeout=None, check=False, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run with the warm Popen."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with Popen(args, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    if check and process.returncode:
        raise subprocess.CalledProcessError(process.returncode, process.args, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def main() -> None:
    """Serve; in a child, run its command and end as an interpreter ends: an uncaught exception's traceback,
    then non-daemon threads joined, atexit handlers, streams flushed. Not the teardown of every module after
    that: freeing the preloaded libraries took 2.2 s of each command, and a process's memory goes anyway."""
    import atexit
    import signal
    import threading

    request = serve(sys.argv[1])
    code, interrupted = 0, False
    try:
        run_request(request)
    except SystemExit as e:  # as Python treats sys.exit's argument: a number, None, or a message and 1
        code = e.code if isinstance(e.code, int) or e.code is None else 1
        if code != e.code:
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
        sys.excepthook(*sys.exc_info())
    except BaseException:
        code = 1
        sys.excepthook(*sys.exc_info())
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed stream, or its reader gone
            stream.flush()
    if interrupted:  # as Python ends on an uncaught KeyboardInterrupt: killed by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code or 0)


if __name__ == "__main__":
    main()
