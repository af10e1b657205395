"""Real `dsm node run` processes for tests: `Proc` (start one, read its JSON ready line), the `procs` fixture
(every process a test started is SIGKILLed by PID at the end if still running), `eventually` and `holds`.

A test module imports what it uses and the fixture function (`from procs import Proc, eventually, holds,
procs_fixture`): pytest finds the fixture, named `procs`, through the import."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from dsm.client import Client

#: The `DSM_*` environment of every node started by `Proc` (nothing else of the caller's `DSM_*` leaks in).
ENV = {
    "DSM_CLUSTER_SECRET": "process-test-secret-000001",
    "DSM_PROBE_INTERVAL_MS": "200",
    "DSM_PROBE_TIMEOUT_MS": "100",
    "DSM_MEMBERSHIP_SYNC_INTERVAL_MS": "1000",
    "DSM_GOSSIP_INTERVAL_MS": "500",
    "DSM_ANTI_ENTROPY_INTERVAL_MS": "1000",
}


class Proc:
    """One `dsm node run` process, its data in `data/<node_id>`; `env` overrides or adds `DSM_*` settings;
    `wrapper` runs it through a command (`ip netns exec NS` for a network namespace)."""

    def __init__(
        self,
        node_id: str,
        host: str,
        data: Path,
        bootstrap: list[str],
        port: int = 0,
        env: Mapping[str, str] | None = None,
        wrapper: list[str] | None = None,
        until: str = "ready",
        extra: list[str] | None = None,
    ) -> None:
        args = [*(wrapper or []), sys.executable, "-m", "dsm.cli", "node", "run", "--node-id", node_id]
        args += ["--listen", f"{host}:{port}"]
        args += ["--http", f"{host}:0", "--data-dir", str(data / node_id), "--log-level", "WARNING"]
        for addr in bootstrap:
            args += ["--bootstrap", addr]
        args += extra or []
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | ENV | dict(env or {})
        self.node_id = node_id
        self._lines: queue.Queue[str] | None = None
        self.event: dict[str, Any] = {}
        # Its log goes to a file beside its data (appended across restarts), not a pipe nobody reads while it
        # runs: a full pipe would block the node at its next log line.
        self.log_path = data / f"{node_id}.stderr.log"
        self._log_start = len(self.log_path.read_text(errors="replace")) if self.log_path.exists() else 0
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=environ, text=True)
        try:
            ready = self._line()
            if until == "ready" and ready["event"] == "waiting":
                ready = self._line()
            assert ready["event"] == until or until == "any", ready
        except BaseException:
            self.proc.kill()  # not yet in any `procs` list: nothing else would stop it
            self.proc.wait(15)
            raise
        self.listen: str = ready["listen"]
        self.http: str = ready["http"]
        self.url = "http://" + self.http
        self.client = Client(self.url)
        self.stderr = ""

    def _line(self, timeout: float = 60.0) -> dict[str, Any]:
        """The next JSON line the node prints (its `waiting`, `ready` or `stopped` event)."""
        if self._lines is None:
            assert self.proc.stdout is not None
            self._lines = queue.Queue()
            threading.Thread(target=_pump_lines, args=(self.proc.stdout, self._lines), daemon=True).start()
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.node_id} printed nothing within {timeout} s") from None
        if not line:
            self.proc.wait(15)
            raise AssertionError(f"{self.node_id} did not start: {self.log()}")
        event: dict[str, Any] = json.loads(line)
        self.event = event
        return event

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Waits for the `ready` line of a node that printed `waiting` (it joined)."""
        if self.event["event"] != "ready":
            assert self._line(timeout)["event"] == "ready", self.event

    def log(self) -> str:
        """What the node (in all its lives with this data directory) wrote on stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Sends `sig` and waits for the exit status; what this life wrote on stderr is kept in `stderr`."""
        self.client.close()
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        finally:
            if self.proc.poll() is not None:
                self.stderr = self.log()[self._log_start :]
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def _pump_lines(stream: Any, lines: queue.Queue[str]) -> None:
    """Hands each line of a node's standard output to `lines` (an empty string at the end)."""
    try:
        for line in iter(stream.readline, ""):
            lines.put(line)
    except (ValueError, OSError):  # the stream was closed (the process stopped)
        pass
    lines.put("")


@pytest.fixture(name="procs")
def procs_fixture() -> Iterator[list[Proc]]:
    """The processes a test starts: append each; those still running at the end are SIGKILLed."""
    started: list[Proc] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.stop(signal.SIGKILL)


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> float:
    """Polls `check` until it is true (AssertionError after `timeout` s); returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
    return time.monotonic() - start


def holds(p: Proc, key: str, value: bytes) -> bool:
    got = p.client.get(key)
    return got is not None and got.value == value
