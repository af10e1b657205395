"""Real processes on loopback: `dsm node run` nodes, a write everywhere within 1 s, kill -9 and restart with
catch-up, graceful leave, the command-line client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dsm.client import Client

pytestmark = pytest.mark.usefixtures("loopback_hosts")

ENV = {
    "DSM_CLUSTER_SECRET": "process-test-secret-000001",
    "DSM_PROBE_INTERVAL_MS": "200",
    "DSM_PROBE_TIMEOUT_MS": "100",
    "DSM_MEMBERSHIP_SYNC_INTERVAL_MS": "1000",
    "DSM_GOSSIP_INTERVAL_MS": "500",
    "DSM_ANTI_ENTROPY_INTERVAL_MS": "1000",
}


class Proc:
    def __init__(self, node_id: str, host: str, data: Path, bootstrap: list[str], port: int = 0) -> None:
        args = [sys.executable, "-m", "dsm.cli", "node", "run", "--node-id", node_id, "--listen", f"{host}:{port}"]
        args += ["--http", f"{host}:0", "--data-dir", str(data / node_id), "--log-level", "WARNING"]
        for addr in bootstrap:
            args += ["--bootstrap", addr]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | ENV
        self.node_id = node_id
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"{node_id} did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")
        ready = json.loads(line)
        assert ready["event"] == "ready", ready
        self.listen: str = ready["listen"]
        self.url = "http://" + ready["http"]
        self.client = Client(self.url)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.client.close()
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.stop(signal.SIGKILL)


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
    return time.monotonic() - start


def holds(p: Proc, key: str, value: bytes) -> bool:
    got = p.client.get(key)
    return got is not None and got.value == value


def test_a_cluster_of_processes_replicates_survives_kill_9_and_leaves(procs: list[Proc], tmp_path: Path) -> None:
    first = Proc("p0", "127.0.0.1", tmp_path, [])
    procs.append(first)
    for i in (1, 2, 3):
        procs.append(Proc(f"p{i}", f"127.0.0.{i + 1}", tmp_path, [first.listen]))
    eventually(lambda: all(len([m for m in p.client.members() if m["state"] == "alive"]) == 4 for p in procs))

    procs[3].client.put("greeting", b"hello")
    took = eventually(lambda: all(holds(p, "greeting", b"hello") for p in procs), timeout=5)
    assert took < 1.0, f"the write took {took:.2f} s to be readable on every node"

    # kill -9 one node during writes, write more, restart it: it catches up with everything acknowledged.
    victim = procs[1]
    acked = []
    for i in range(40):
        if i == 10:
            assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
        procs[0].client.put(f"w{i}", str(i).encode())
        acked.append(i)
    restarted = Proc("p1", "127.0.0.2", tmp_path, [first.listen])
    procs[1] = restarted
    took = eventually(lambda: all(holds(restarted, f"w{i}", str(i).encode()) for i in acked), timeout=10)
    assert took <= 2.0, f"caught up after {took:.2f} s (2 anti-entropy intervals: 2 s)"
    assert holds(restarted, "greeting", b"hello")

    # A graceful stop is a leave, seen by the others.
    leaver = procs.pop(2)
    assert leaver.stop(signal.SIGTERM) == 0
    eventually(lambda: all({m["id"]: m["state"] for m in p.client.members()}["p2"] == "left" for p in procs))


def test_the_command_line_client(procs: list[Proc], tmp_path: Path) -> None:
    node = Proc("solo", "127.0.0.1", tmp_path, [])
    procs.append(node)

    def dsm(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | {"DSM_NODE_URL": node.url}
        return subprocess.run(
            [sys.executable, "-m", "dsm.cli", *args], input=stdin, capture_output=True, env=env, timeout=30
        )

    assert dsm("put", "k1", "v1").returncode == 0
    assert dsm("put", "k2", "-", stdin=b"\x00binary").returncode == 0
    got = dsm("get", "k1")
    assert got.returncode == 0 and got.stdout == b"v1\n" and b"context=" in got.stderr
    assert dsm("get", "k2").stdout == b"\x00binary\n"
    assert dsm("list").stdout.split() == [b"k1", b"k2"]
    assert dsm("delete", "k1").returncode == 0
    missing = dsm("get", "k1")
    assert missing.returncode == 1 and b"not found" in missing.stderr
    bad = dsm("put", "k", "v", "--consistency", "nonsense")
    assert bad.returncode == 1 and b"bad_consistency" in bad.stderr
    status = dsm("status")
    assert status.returncode == 0 and b"solo" in status.stdout and b"alive" in status.stdout
    members = [json.loads(line) for line in dsm("members").stdout.splitlines()]
    assert [m["id"] for m in members] == ["solo"]
    down = subprocess.run(
        [sys.executable, "-m", "dsm.cli", "get", "k", "--node", "http://127.0.0.1:9"], capture_output=True, timeout=30
    )
    assert down.returncode == 1 and b"127.0.0.1:9" in down.stderr
