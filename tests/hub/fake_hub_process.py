"""Tests: runs tests/hub/fake_hub.py (tests/hub/FAKE_HUB.md) as a child process on a
free port, and talks to its control endpoints. The Python twin of hub/fake_hub_process.h.

    with FakeHubProcess(data_dir, workdir, tokens=["hf_x"]) as hub:
        os.environ["HF_ENDPOINT"] = hub.endpoint
        hub.faults([...]); hub.stats(); ...

Python tests import it with tests/hub on sys.path (tests/python/conftest.py puts it
there; scripts outside tests/python insert it themselves, as they locate fake_hub.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from typing import Any, Iterable, Optional

FAKE_HUB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_hub.py")


class FakeHubStartError(RuntimeError):
    """The fake Hub exited or did not listen in time; the message ends with its log."""


class FakeHubProcess:
    """fake_hub.py --data DATA --port 0 --port-file WORKDIR/port [--token T]... [--quiet] EXTRA.

    Waits (`start_timeout` s at most) until it listens (the fake writes the port file
    atomically once its socket is bound); raises FakeHubStartError otherwise, having
    stopped it. Its stderr goes to WORKDIR/fake_hub.log (`log_path`, `log()`); its
    stdout is discarded. stop() (also on leaving a `with`) sends SIGTERM, then SIGKILL
    after `stop_timeout` s.
    """

    def __init__(self, data: "os.PathLike[str] | str", workdir: "os.PathLike[str] | str",
                 tokens: Iterable[str] = (), extra_args: Iterable[str] = (), quiet: bool = True,
                 start_timeout: float = 15.0, stop_timeout: float = 10.0) -> None:
        workdir = os.fspath(workdir)
        os.makedirs(workdir, exist_ok=True)
        self.port_file = os.path.join(workdir, "port")
        self.log_path = os.path.join(workdir, "fake_hub.log")
        self.stop_timeout = stop_timeout
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        args = [sys.executable, FAKE_HUB, "--data", os.fspath(data), "--port", "0",
                "--port-file", self.port_file]
        for token in tokens:
            args += ["--token", token]
        if quiet:
            args.append("--quiet")
        args += list(extra_args)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self._log)
        self.port = self._wait_for_port(start_timeout)
        if not self.port:
            why = ("exited %s" % self.proc.returncode if self.proc.poll() is not None
                   else "did not listen in %g s" % start_timeout)
            self.stop()
            raise FakeHubStartError("the fake Hub %s; its log:\n%s" % (why, self.log()[-2000:]))
        self.endpoint = "http://127.0.0.1:%d" % self.port

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with open(self.port_file) as f:
                    text = f.read()
                if text.endswith("\n"):
                    return int(text)
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        return 0

    def __enter__(self) -> "FakeHubProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        """Its stderr so far, for failure messages."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after stop_timeout s; idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()

    # Control endpoints (tests/hub/FAKE_HUB.md).

    def control(self, method: str, path: str, body: Optional[Any] = None, timeout: float = 30) -> Any:
        """METHOD endpoint+path with a JSON body; the answer's JSON (None when empty)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.endpoint + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read()
        return json.loads(text) if text.strip() else None

    def faults(self, rules: list) -> None:
        self.control("POST", "/_fake/faults", {"rules": rules})

    def clear_faults(self) -> None:
        self.control("DELETE", "/_fake/faults")

    def throttle(self, bytes_per_second: int) -> None:
        self.control("POST", "/_fake/throttle", {"bytes_per_second": bytes_per_second})

    def stats(self) -> dict:
        return self.control("GET", "/_fake/stats")

    def reset_stats(self) -> None:
        self.control("DELETE", "/_fake/stats")
