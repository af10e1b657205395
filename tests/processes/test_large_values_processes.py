"""Values of every allowed size replicate, on real `dsm node run` processes over loopback: a 10 MiB value
(above the 8 MiB frame; it travels in chunks) written at `quorum` on one node of three reaches every node and
a `quorum` read on another returns it intact; twelve concurrent 1 MiB sibling writers on three nodes (whose
merged set would hold 12 MiB) leave identical replicas, byte for byte in the stopped nodes' stores, within
the sibling byte bound, and a `quorum` read of that key succeeds."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from dsm.client import Client
from dsm.core.encoding import decode_versions
from dsm.core.versions import SIBLINGS_MAX_BYTES
from procs import Proc, eventually, procs_fixture  # noqa: F401 (the `procs` fixture)

pytestmark = pytest.mark.usefixtures("loopback_hosts")
MIB = 1024 * 1024


def cluster(tmp_path: Path, procs: list[Proc], env: dict[str, str]) -> list[Proc]:
    first = Proc("n0", "127.0.0.1", tmp_path, [], env=env)
    procs.append(first)
    for i in (1, 2):
        procs.append(Proc(f"n{i}", f"127.0.0.{i + 1}", tmp_path, [first.listen], env=env))
    eventually(lambda: all(sum(m["state"] == "alive" for m in p.client.members()) == 3 for p in procs), timeout=30)
    return procs


def settled(check: object, timeout: float) -> None:
    """Polls `check` every 0.2 s (each poll may move megabytes) until it holds."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def stored(path: Path, key: str) -> bytes:
    with sqlite3.connect(path) as con:
        row = con.execute("SELECT versions FROM dsm_kv WHERE key = ?", (key,)).fetchone()
    assert row is not None, f"{key!r} is not in {path}"
    return bytes(row[0])


@pytest.mark.slow
def test_a_value_larger_than_a_frame_reaches_every_node(procs: list[Proc], tmp_path: Path) -> None:
    env = {"DSM_MAX_VALUE_BYTES": str(20 * MIB), "DSM_CONSISTENCY_TIMEOUT_MS": "30000"}
    nodes = cluster(tmp_path, procs, env)
    value = hashlib.shake_256(b"a large value").digest(10 * MIB)
    digest = hashlib.sha256(value).digest()
    with Client(nodes[0].url, timeout=60) as writer:
        writer.put("big", value, consistency="quorum")

    def everywhere() -> bool:
        for p in nodes:
            got = p.client.get("big")
            if got is None or hashlib.sha256(got.value).digest() != digest:
                return False
        return True

    settled(everywhere, timeout=60)
    with Client(nodes[2].url, timeout=60) as reader:
        read = reader.get("big", consistency="quorum")
    assert read is not None and len(read.siblings) == 1
    assert hashlib.sha256(read.value).digest() == digest


@pytest.mark.slow
def test_concurrent_large_siblings_converge_to_identical_replicas(procs: list[Proc], tmp_path: Path) -> None:
    env = {"DSM_CONFLICT_RESOLUTION": "siblings", "DSM_MAX_VALUE_BYTES": str(2 * MIB)}
    nodes = cluster(tmp_path, procs, env)
    writers = 12
    start = threading.Barrier(writers)
    errors: list[BaseException] = []
    acked: list[tuple[int, str]] = []

    def write(i: int) -> None:
        node = nodes[i % 3]
        try:
            with Client(node.url, timeout=60) as client:
                start.wait(30)
                ack = client.put("k", bytes([i]) * MIB)  # blind: each write is concurrent with the others
            acked.append((ack.timestamp, node.node_id))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors

    def seen(p: Proc) -> tuple[tuple[int, str], ...]:
        got = p.client.get("k")
        assert got is not None
        return tuple((s.timestamp, s.writer) for s in got.siblings)

    # Identical on every node, three times in a row across two anti-entropy intervals.
    agreed: list[tuple[tuple[int, str], ...]] = []

    def converged() -> bool:
        views = {seen(p) for p in nodes}
        agreed.append(views.pop() if len(views) == 1 else ())
        return len(agreed) >= 10 and len(set(agreed[-10:])) == 1 and agreed[-1] != ()

    settled(converged, timeout=60)
    # The merged set travels: a quorum read gathers it from the other members.
    for p in nodes:
        with Client(p.url, timeout=60) as reader:
            read = reader.get("k", consistency="quorum")
        assert read is not None and tuple((s.timestamp, s.writer) for s in read.siblings) == agreed[-1]
    for p in nodes:
        assert p.stop(signal.SIGTERM) == 0
    held = [stored(tmp_path / p.node_id / "dsm.sqlite3", "k") for p in nodes]
    assert held[0] == held[1] == held[2]
    # Within the bound: the four newest writes (a write supersedes, and a merge cuts, only versions with at
    # least four newer ones; four values of 1 MiB fill the 4 MiB bound).
    kept = decode_versions(held[0])
    assert sum(len(v.value or b"") for v in kept.versions) <= SIBLINGS_MAX_BYTES
    assert [tuple(v.dot) for v in kept.versions] == sorted(acked, reverse=True)[:4]
    assert all(v.value is not None and v.value == v.value[:1] * MIB for v in kept.versions)
