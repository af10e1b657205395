"""Real processes on loopback: `dsm node run` nodes, a write everywhere within 1 s, kill -9 and restart with
catch-up, graceful leave, the command-line client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from procs import Proc, eventually, holds, procs_fixture  # noqa: F401 (the `procs` fixture)

pytestmark = pytest.mark.usefixtures("loopback_hosts")


@pytest.mark.slow
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

    # A graceful stop is not a leave: the others see the member fail (it still counts for levels).
    stopped = procs.pop(2)
    assert stopped.stop(signal.SIGTERM) == 0
    eventually(lambda: all({m["id"]: m["state"] for m in p.client.members()}["p2"] == "dead" for p in procs))
    # With leave_on_terminate it is a leave for good, seen by the others.
    others = list(procs)
    leaver = Proc("p9", "127.0.0.9", tmp_path, [first.listen], env={"DSM_LEAVE_ON_TERMINATE": "true"})
    procs.append(leaver)
    eventually(lambda: all("p9" in {m["id"] for m in p.client.members()} for p in others))
    assert leaver.stop(signal.SIGTERM) == 0
    eventually(lambda: all({m["id"]: m["state"] for m in p.client.members()}["p9"] == "left" for p in others))


@pytest.mark.slow
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
    assert bad.returncode == 2 and b"nonsense" in bad.stderr and b"region_quorum" in bad.stderr
    status = dsm("status")
    assert status.returncode == 0 and b"solo" in status.stdout and b"alive" in status.stdout
    members = [json.loads(line) for line in dsm("members", "-o", "raw").stdout.splitlines()]
    assert [m["id"] for m in members] == ["solo"]
    down = subprocess.run(
        [sys.executable, "-m", "dsm.cli", "get", "k", "--node", "http://127.0.0.1:9"], capture_output=True, timeout=30
    )
    assert down.returncode == 1 and b"127.0.0.1:9" in down.stderr
