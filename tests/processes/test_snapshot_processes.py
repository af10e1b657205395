"""Snapshots on real processes, through the command line: `dsm snapshot save` of a node under write load, the
node's disk lost (SIGKILL, data directory deleted), `dsm snapshot restore` into a new one; the node started on
it serves every key acknowledged before the save began at `local` before it has joined, then joins and
catches up with what was written after, and takes no part as an acceptor of conditional writes (which keep
working on the other two). And a node SIGKILLed while it writes a snapshot: the save fails clearly, leaves no
file, and the node restarted on its data serves on (the temporary file gone)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dsm.client import Client
from procs import Proc, eventually, procs_fixture  # noqa: F401 (the `procs` fixture)

pytestmark = pytest.mark.usefixtures("loopback_hosts")

TOKEN = "snapshot-token-0123456789"
ENV = {"DSM_HTTP_TOKEN": TOKEN}


def dsm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {"DSM_HTTP_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "dsm.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def c(p: Proc) -> Client:
    return Client(p.url, token=TOKEN)


def reads(p: Proc, key: str, value: bytes) -> bool:
    got = c(p).get(key, consistency="local")
    return got is not None and got.value == value


@pytest.mark.slow
def test_save_under_load_lose_the_disk_restore_and_catch_up(procs: list[Proc], tmp_path: Path) -> None:
    first = Proc("s0", "127.0.0.1", tmp_path, [], env=ENV)
    procs.append(first)
    for i in (1, 2):
        procs.append(Proc(f"s{i}", f"127.0.0.{i + 1}", tmp_path, [first.listen], env=ENV))
    eventually(lambda: all(len([m for m in c(p).members() if m["state"] == "alive"]) == 3 for p in procs))
    writer = Client(first.url, token=TOKEN)
    acked: list[tuple[float, str]] = []  # (when acknowledged, key)
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            writer.put(f"w{i}", f"v{i}".encode(), consistency="quorum")
            acked.append((time.monotonic(), f"w{i}"))
            i += 1

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    time.sleep(1.0)
    began = time.monotonic()
    saved = dsm("snapshot", "save", "--node", procs[1].url, str(tmp_path / "s1.dsmsnap"))
    assert saved.returncode == 0, saved.stderr
    time.sleep(1.0)
    stop.set()
    thread.join(10)
    before = [key for at, key in acked if at < began]
    assert len(before) > 20 and len(acked) > len(before)

    victim = procs.pop(1)
    host, port = victim.listen.rsplit(":", 1)
    assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
    shutil.rmtree(tmp_path / "s1")  # the disk is lost
    restored = dsm("snapshot", "restore", str(tmp_path / "s1.dsmsnap"), "--data-dir", str(tmp_path / "s1"))
    assert restored.returncode == 0, restored.stderr

    # Started where it cannot reach anyone: not joined, it serves what the snapshot holds at local.
    alone = Proc("s1", host, tmp_path, ["127.0.0.9:9"], port=int(port), env=ENV, until="waiting")
    procs.append(alone)
    assert all(reads(alone, key, f"v{key[1:]}".encode()) for key in before)
    assert alone.stop() == 0
    procs.remove(alone)

    back = Proc("s1", host, tmp_path, [first.listen], port=int(port), env=ENV)
    procs.append(back)
    missing = {key for _, key in acked}

    def caught_up() -> bool:  # each key read until it is there, not again after
        missing.difference_update([key for key in list(missing) if reads(back, key, f"v{key[1:]}".encode())])
        return not missing

    eventually(caught_up, timeout=30)
    # It is no acceptor of conditional writes (its promises after the snapshot are forgotten); they still work.
    c(back).put("cas-after-restore", b"x", if_absent=True)
    eventually(lambda: reads(first, "cas-after-restore", b"x"))


def test_a_node_killed_while_it_saves_leaves_no_snapshot_and_serves_on(procs: list[Proc], tmp_path: Path) -> None:
    node = Proc("k0", "127.0.0.1", tmp_path, [], env=ENV)
    procs.append(node)
    client = c(node)
    value = b"x" * 20_000
    for j in range(1_000):  # 20 MB: the node takes a moment to write its snapshot
        client.put(f"big{j}", value)
    target = tmp_path / "k0.dsmsnap"
    save = subprocess.Popen(
        [sys.executable, "-m", "dsm.cli", "snapshot", "save", "--node", node.url, str(target)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={"DSM_HTTP_TOKEN": TOKEN, "PATH": "/usr/bin"},
    )  # fmt: skip
    data = tmp_path / "k0"
    deadline = time.monotonic() + 60
    while not list(data.glob(".snapshot-*.tmp")) and save.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert save.poll() is None, "the save ended before the node could be killed while writing it"
    assert node.stop(signal.SIGKILL) == -signal.SIGKILL
    _, err = save.communicate(timeout=60)
    assert save.returncode != 0 and "failed" in err, err
    assert not target.exists() and not target.with_name(target.name + ".partial").exists()

    again = Proc("k0", "127.0.0.1", tmp_path, [], env=ENV)
    procs[0] = again
    assert not list(data.glob(".snapshot-*.tmp"))  # the cut-short save's file is gone
    assert reads(again, "big999", value)
