"""A private bigsmalld: started on a socket in a temporary directory, with its
own shared-memory directory and model directories, stopped on exit.

For tests and for serving from a Python program (``bigsmall.serve(...)``):

    with DaemonProcess(model_dirs=[models], gpu_backend="emulated") as daemon:
        client = daemon.client()              # a _core.DaemonClient on its socket
        desc = client.open_model(f"{models}/model.bs")

The daemon is the ``bigsmalld`` installed next to the package
(``bigsmall/bin``; ``$BIGSMALL_BIN_DIR`` is looked in first, for a build tree).
It serves models only beneath ``model_dirs`` (the daemon's ``--model-dir``),
never opens Hugging Face Hub models unless ``hub=True``, and logs to a file
in its directory (``log()`` reads it). Every wait is bounded: start waits
``ready_timeout`` seconds for the daemon to answer, stop ``stop_timeout``
seconds for it to exit after SIGTERM (then it is killed).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket as _socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Optional, Sequence, Union

__all__ = ["DaemonProcess", "DaemonStartError", "daemon_binary", "tool_binary"]

PathLike = Union[str, "os.PathLike[str]"]

# sockaddr_un.sun_path holds 108 bytes, the terminating NUL included.
_MAX_SOCKET_PATH = 107


class DaemonStartError(RuntimeError):
    """bigsmalld did not start (it exited, or did not answer in time); the
    message ends with the tail of its log."""


def tool_binary(name: str) -> Path:
    """The path of one of the package's tools (``bigsmall``, ``bigsmalld``,
    ``bigsmall-client``): ``$BIGSMALL_BIN_DIR`` first, then ``bigsmall/bin``
    (bigsmall._tools). NotFoundError (a FileNotFoundError) when it is not
    installed."""
    from ._tools import tool_path
    return Path(tool_path(name))


def daemon_binary() -> Path:
    """The bigsmalld that ships with the package."""
    return tool_binary("bigsmalld")


def _private_dir() -> Path:
    # A socket path must fit sun_path: a long $TMPDIR falls back to /tmp.
    base = tempfile.gettempdir()
    if len(os.path.join(base, "bigsmalld-XXXXXXXX", "bigsmall.sock")) > _MAX_SOCKET_PATH:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="bigsmalld-", dir=base))


def _stop_process(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, then SIGKILL after `timeout` seconds; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


def _cleanup(proc: subprocess.Popen, workdir: Optional[Path], timeout: float) -> None:
    # Also run at interpreter exit for a daemon nobody stopped (weakref.finalize).
    try:
        _stop_process(proc, timeout)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


class DaemonProcess:
    """One private bigsmalld process (a context manager: started on enter,
    stopped on exit).

    Args:
      model_dirs: directories the daemon opens models beneath (``--model-dir``).
      gpu_backend: ``"none"`` (host layers only), ``"emulated"`` (one emulated
        GPU ``cuda:0``, no CUDA needed), ``"cuda"`` or ``"auto"``.
      workdir: where the socket, the shm directory and the log go; default a
        fresh temporary directory, removed by stop().
      socket: the socket path (default ``<workdir>/bigsmall.sock``), e.g. a
        known path for other processes (``environ()`` gives BIGSMALL_SOCKET).
      cache_budget: ``--cache-budget`` (e.g. ``"1G"``); None: the daemon's default.
      gpu_memory: ``--gpu-memory`` for a GPU backend; None: the daemon's default.
      window / max_window: ``--window`` / ``--max-window``; None: defaults.
      drain_seconds: ``--drain-seconds`` (SIGTERM grace for running calls).
      hub: serve Hugging Face Hub names (off: ``--no-hub``, no network).
      extra_args: more bigsmalld flags, appended as given.
      binary: the bigsmalld to run (default daemon_binary()).
      ready_timeout / stop_timeout: the bounded waits, in seconds.
      log_level: ``--log-level``.
    """

    def __init__(self, model_dirs: Sequence[PathLike] = (), *, gpu_backend: str = "none",
                 workdir: Optional[PathLike] = None, socket: Optional[PathLike] = None,
                 cache_budget: Optional[str] = None,
                 gpu_memory: Optional[str] = None, window: Optional[int] = None,
                 max_window: Optional[int] = None, drain_seconds: float = 1.0,
                 hub: bool = False, extra_args: Sequence[str] = (),
                 binary: Optional[PathLike] = None, ready_timeout: float = 30.0,
                 stop_timeout: float = 15.0, log_level: str = "info",
                 env: Optional[dict[str, str]] = None) -> None:
        self.model_dirs = [str(Path(d).resolve()) for d in model_dirs]
        self.gpu_backend = gpu_backend
        self._own_workdir = workdir is None
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self._socket_arg = str(Path(socket).absolute()) if socket is not None else None
        self.cache_budget = cache_budget
        self.gpu_memory = gpu_memory
        self.window = window
        self.max_window = max_window
        self.drain_seconds = drain_seconds
        self.hub = hub
        self.extra_args = list(extra_args)
        self.binary = Path(binary) if binary is not None else None
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.log_level = log_level
        self.env = env
        self.workdir: Optional[Path] = None
        self.socket: str = ""
        self.shm_dir: str = ""
        self.log_path: str = ""
        self._proc: Optional[subprocess.Popen] = None
        self._finalizer: Optional[weakref.finalize] = None
        self._last_log = ""

    # ------------------------------------------------------------------ lifecycle
    def args(self) -> list[str]:
        """The daemon's command line (after start() chose the directories)."""
        binary = str(self.binary if self.binary is not None else daemon_binary())
        args = [binary, "--socket", self.socket, "--shm-dir", self.shm_dir,
                "--log-level", self.log_level, "--drain-seconds", str(self.drain_seconds),
                "--gpu-backend", self.gpu_backend]
        for d in self.model_dirs:
            args += ["--model-dir", d]
        if not self.hub:
            args.append("--no-hub")
        if self.cache_budget is not None:
            args += ["--cache-budget", str(self.cache_budget)]
        if self.gpu_memory is not None:
            args += ["--gpu-memory", str(self.gpu_memory)]
        if self.window is not None:
            args += ["--window", str(self.window)]
        if self.max_window is not None:
            args += ["--max-window", str(self.max_window)]
        return args + self.extra_args

    def start(self) -> "DaemonProcess":
        """Starts the daemon and waits (at most ready_timeout) until it answers."""
        if self._proc is not None:
            raise RuntimeError("this DaemonProcess was already started")
        if self._workdir_arg is not None:
            self._workdir_arg.mkdir(parents=True, exist_ok=True)
            self.workdir = self._workdir_arg
        else:
            self.workdir = _private_dir()
        self.socket = self._socket_arg or str(self.workdir / "bigsmall.sock")
        self.shm_dir = str(self.workdir / "shm")
        self.log_path = str(self.workdir / "bigsmalld.log")
        if len(self.socket) > _MAX_SOCKET_PATH:
            raise ValueError(f"socket path too long for a Unix socket: {self.socket}")
        args = self.args()
        env = dict(os.environ if self.env is None else self.env)
        env.pop("BIGSMALL_SOCKET", None)  # --socket says it
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, env=env, close_fds=True)
        self._finalizer = weakref.finalize(
            self, _cleanup, self._proc, self.workdir if self._own_workdir else None,
            self.stop_timeout)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise DaemonStartError(
                    f"bigsmalld exited with status {code} at start:\n{self.log_tail()}")
            if os.path.exists(self.socket) and self._answers(deadline):
                return
            if time.monotonic() >= deadline:
                raise DaemonStartError(
                    f"bigsmalld did not answer on {self.socket} within {self.ready_timeout} s:\n"
                    f"{self.log_tail()}")
            time.sleep(0.02)

    def _answers(self, deadline: float) -> bool:
        # The health check, through the extension's client when it is there;
        # else a plain connect (the daemon listens only once it serves).
        left_ms = max(1, int((deadline - time.monotonic()) * 1000))
        try:
            from . import _core
        except ImportError:
            _core = None
        if _core is not None:
            try:
                _core.DaemonClient(self.socket, rpc_timeout_ms=min(left_ms, 1000)).wait_ready(
                    min(left_ms, 250))
                return True
            except Exception:  # not serving yet
                return False
        with _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM) as s:
            try:
                s.connect(self.socket)
                return True
            except OSError:
                return False

    def stop(self) -> Optional[int]:
        """SIGTERM, waits at most stop_timeout (then SIGKILL); removes a
        temporary workdir. Idempotent. The daemon's exit status (0: clean)."""
        if self._proc is None:
            return None
        code = _stop_process(self._proc, self.stop_timeout)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._own_workdir and self.workdir is not None:
            # Keep the log readable after stop(): read it first if you need it.
            self._last_log = self.log()
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code

    def __enter__(self) -> "DaemonProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ use
    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else -1

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> Optional[int]:
        return None if self._proc is None else self._proc.poll()

    def environ(self) -> dict[str, str]:
        """The environment a client process needs: {"BIGSMALL_SOCKET": socket}."""
        return {"BIGSMALL_SOCKET": self.socket}

    def client(self, **kwargs: Any):
        """A _core.DaemonClient on this daemon's socket (kwargs: rpc_timeout_ms,
        stream_idle_timeout_ms)."""
        from . import _core
        return _core.DaemonClient(self.socket, **kwargs)

    def log(self) -> str:
        """The daemon's log so far (after stop(): its last contents)."""
        if self.log_path and os.path.exists(self.log_path):
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        return self._last_log

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])
