"""Consistency levels on real `dsm node run` processes, two regions on loopback: region A keeps taking
region_quorum writes while region B is cut off (its processes stopped with SIGSTOP: they hold their
connections open and answer nothing, the way a partitioned or frozen machine looks); quorum fails cleanly
over HTTP (503 with the level, the acknowledgements and the requirement) while a majority is away and
succeeds again once it is back; the write that failed its level was never rolled back; a deleted key does
not come back when a member that was away since before the delete returns with the old value."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dsm.client import ConsistencyUnmetError
from procs import ENV, Proc, eventually, holds, procs_fixture  # noqa: F401 (the `procs` fixture)

pytestmark = pytest.mark.usefixtures("loopback_hosts")

LEVELS = {"DSM_CONSISTENCY_TIMEOUT_MS": "1000"}


def start(
    procs: list[Proc], tmp_path: Path, node_id: str, host: str, region: str, bootstrap: list[str], **env: str
) -> Proc:
    proc = Proc(node_id, host, tmp_path, bootstrap, env={**LEVELS, "DSM_REGION": region, **env})
    procs.append(proc)
    return proc


def absent_at_all(p: Proc, key: str) -> bool:
    """Whether a read at `all` through `p` finds `key` absent (False while `p` still holds a returning member
    dead, so that the level cannot be met yet)."""
    try:
        return p.client.get(key, consistency="all") is None
    except ConsistencyUnmetError:
        return False


def alive_everywhere(nodes: list[Proc], count: int) -> bool:
    return all(len([m for m in p.client.members() if m["state"] == "alive"]) == count for p in nodes)


@pytest.mark.slow
def test_region_quorum_survives_a_cut_off_region_and_quorum_fails_cleanly(procs: list[Proc], tmp_path: Path) -> None:
    a0 = start(procs, tmp_path, "a0", "127.0.0.1", "a", [])
    a1 = start(procs, tmp_path, "a1", "127.0.0.2", "a", [a0.listen])
    a2 = start(procs, tmp_path, "a2", "127.0.0.3", "a", [a0.listen])
    b0 = start(procs, tmp_path, "b0", "127.0.0.4", "b", [a0.listen])
    b1 = start(procs, tmp_path, "b1", "127.0.0.5", "b", [a0.listen])
    eventually(lambda: alive_everywhere(procs, 5))
    regions = {m["id"]: m["region"] for m in a0.client.members()}
    assert regions == {"a0": "a", "a1": "a", "a2": "a", "b0": "b", "b1": "b"}
    a0.client.put("before", b"0", consistency="all")

    try:
        for p in (b0, b1):
            p.proc.send_signal(signal.SIGSTOP)
        # Region A alone: its own majority is there; every region's majority is not.
        a0.client.put("in-a", b"1", consistency="region_quorum")
        assert a1.client.get("in-a", consistency="region_quorum").value == b"1"  # type: ignore[union-attr]
        with pytest.raises(ConsistencyUnmetError) as caught:
            a1.client.put("each", b"1", consistency="each_region_quorum")
        error = caught.value
        assert (error.status, error.level, error.operation) == (503, "each_region_quorum", "write")
        assert (error.acknowledged, error.required) == (3, 4)
        # 3 of 5 is still a quorum; with a2 away too it is not.
        a0.client.put("q1", b"1", consistency="quorum")
        a2.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(ConsistencyUnmetError) as caught:
                a0.client.put("q2", b"2", consistency="quorum")
            assert (caught.value.acknowledged, caught.value.required) == (2, 3)
            with pytest.raises(ConsistencyUnmetError):
                a1.client.get("q1", consistency="quorum")
            assert a1.client.get("q1", consistency="local").value == b"1"  # type: ignore[union-attr]
        finally:
            a2.proc.send_signal(signal.SIGCONT)

        # The majority is back: quorum writes succeed again (once a0 counts a2 as reachable again).
        def quorum_write_works() -> bool:
            try:
                a0.client.put("q3", b"3", consistency="quorum")
            except ConsistencyUnmetError:
                return False
            return True

        eventually(quorum_write_works, timeout=15)
    finally:
        for p in (b0, b1):
            p.proc.send_signal(signal.SIGCONT)

    # Nothing was rolled back: the writes whose level failed are everywhere once region B is back.
    eventually(lambda: all(holds(p, "q2", b"2") and holds(p, "each", b"1") for p in procs), timeout=15)
    eventually(lambda: all(holds(p, "in-a", b"1") and holds(p, "q3", b"3") for p in procs), timeout=15)
    eventually(lambda: alive_everywhere(procs, 5))

    def read_all() -> bool:
        try:
            return b1.client.get("before", consistency="all").value == b"0"  # type: ignore[union-attr]
        except ConsistencyUnmetError:  # a member b1 still holds dead has not refuted yet
            return False

    eventually(read_all, timeout=15)
    with urllib.request.urlopen(a0.url + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'dsm_consistency_requests_total{level="quorum",op="write",outcome="unmet"} 1.0' in metrics
    assert 'dsm_consistency_requests_total{level="quorum",op="write",outcome="ok"}' in metrics


def test_a_deleted_key_stays_deleted_when_a_long_absent_member_returns(procs: list[Proc], tmp_path: Path) -> None:
    n0 = start(procs, tmp_path, "d0", "127.0.0.1", "a", [])
    n1 = start(procs, tmp_path, "d1", "127.0.0.2", "a", [n0.listen])
    n2 = start(procs, tmp_path, "d2", "127.0.0.3", "a", [n0.listen])
    eventually(lambda: alive_everywhere(procs, 3))
    n0.client.put("doomed", b"old", consistency="all")
    assert holds(n2, "doomed", b"old")
    # d2 goes away holding the value, and stays away while the key is deleted and writes go on.
    assert n2.stop(signal.SIGKILL) == -signal.SIGKILL
    procs.remove(n2)
    got = n0.client.get("doomed")
    assert got is not None
    n0.client.delete("doomed", context=got.context, consistency="quorum")
    for i in range(20):
        n1.client.put(f"later{i}", b"x", consistency="quorum")
    back = start(procs, tmp_path, "d2", "127.0.0.3", "a", [n0.listen])
    # It catches up with the writes made while it was away, and the old value does not come back: not on
    # the returning member, not on the others, not through a read that merges everyone's versions.
    eventually(lambda: all(holds(back, f"later{i}", b"x") for i in range(20)), timeout=10)
    for p in procs:
        assert p.client.get("doomed") is None, p.node_id
    eventually(lambda: alive_everywhere(procs, 3))
    eventually(lambda: absent_at_all(n1, "doomed"))


@pytest.mark.slow
def test_tombstones_are_purged_and_a_member_away_longer_than_the_grace_period_cannot_resurrect(
    procs: list[Proc], tmp_path: Path
) -> None:
    grace = {"DSM_TOMBSTONE_GRACE_MS": "3000"}

    def node(node_id: str, host: str, bootstrap: list[str], **extra: str) -> Proc:
        proc = Proc(node_id, host, tmp_path, bootstrap, env={**LEVELS, **grace, **extra})
        procs.append(proc)
        return proc

    g0 = node("g0", "127.0.0.1", [])
    g1 = node("g1", "127.0.0.2", [g0.listen])
    g2 = node("g2", "127.0.0.3", [g0.listen])
    eventually(lambda: alive_everywhere(procs, 3))
    g0.client.put("doomed", b"old", consistency="all")
    assert g2.stop(signal.SIGKILL) == -signal.SIGKILL
    procs.remove(g2)
    got = g0.client.get("doomed")
    assert got is not None
    g0.client.delete("doomed", context=got.context, consistency="quorum")

    def purged(p: Proc) -> bool:
        with urllib.request.urlopen(p.url + "/metrics", timeout=10) as response:
            return "dsm_tombstones_purged_total 1.0" in response.read().decode()

    eventually(lambda: purged(g0) and purged(g1), timeout=15)  # 3 s of grace, then a sweep (every 0.75 s)
    # g2 has been away longer than the grace period and still holds the value: it refuses to start.
    args = [sys.executable, "-m", "dsm.cli", "node", "run", "--node-id", "g2", "--listen", "127.0.0.3:0"]
    args += ["--http", "127.0.0.3:0", "--data-dir", str(tmp_path / "g2"), "--bootstrap", g0.listen]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | ENV | LEVELS | grace
    refused = subprocess.run(args, capture_output=True, text=True, env=environ, timeout=60)
    assert refused.returncode == 1, refused.stderr
    assert "StaleReplicaError" in refused.stderr and "--discard-stale-data" in refused.stderr
    # Told to discard its data, it rejoins empty, copies the cluster's data, and the key stays deleted.
    back = Proc("g2", "127.0.0.3", tmp_path, [g0.listen], env={**LEVELS, **grace, "DSM_STALE_REPLICA": "discard"})
    procs.append(back)
    g1.client.put("after", b"1", consistency="quorum")
    eventually(lambda: holds(back, "after", b"1"), timeout=10)
    for p in (g0, g1, back):
        assert p.client.get("doomed") is None, p.node_id
    eventually(lambda: absent_at_all(g1, "doomed"))


def test_an_operator_removes_a_dead_member_from_the_command_line(procs: list[Proc], tmp_path: Path) -> None:
    r0 = start(procs, tmp_path, "r0", "127.0.0.1", "a", [])
    r1 = start(procs, tmp_path, "r1", "127.0.0.2", "a", [r0.listen], DSM_TAGS='{"rack": "r7"}')
    r2 = start(procs, tmp_path, "r2", "127.0.0.3", "a", [r0.listen])
    eventually(lambda: alive_everywhere(procs, 3))
    # Tags (free metadata) reach every member.
    # Its tags, and the HTTP address every node advertises (for the dashboard's overlay).
    eventually(lambda: {m["id"]: m["metadata"] for m in r0.client.members()}["r1"] == {"rack": "r7", "http": r1.url})
    assert r2.stop(signal.SIGKILL) == -signal.SIGKILL
    procs.remove(r2)
    with pytest.raises(ConsistencyUnmetError):  # gone, but not removed: it still counts
        r0.client.put("k", b"1", consistency="all")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | {"DSM_NODE_URL": r1.url}

    def dsm(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "dsm.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)

    removed = dsm("remove-member", "r2")
    assert removed.returncode == 0 and "removed" in removed.stdout, removed.stderr
    unknown = dsm("remove-member", "nobody")
    assert unknown.returncode == 1 and "404" in unknown.stderr
    eventually(lambda: {m["id"]: m["state"] for m in r0.client.members()}["r2"] == "left")
    r0.client.put("k", b"2", consistency="all")  # 2 of 2
    assert r1.client.get("k", consistency="all").value == b"2"  # type: ignore[union-attr]


@pytest.mark.slow
def test_read_repair_fixes_a_member_that_missed_a_write(procs: list[Proc], tmp_path: Path) -> None:
    slow_ae = {"DSM_ANTI_ENTROPY_INTERVAL_MS": "3600000"}  # only the start-up exchange: read repair must fix it
    x0 = start(procs, tmp_path, "x0", "127.0.0.1", "a", [], **slow_ae)
    x1 = start(procs, tmp_path, "x1", "127.0.0.2", "a", [x0.listen], **slow_ae)
    x2 = start(procs, tmp_path, "x2", "127.0.0.3", "a", [x0.listen], **slow_ae)
    eventually(lambda: alive_everywhere(procs, 3))
    time.sleep(1.5)  # the start-up anti-entropy exchanges are over
    x2.proc.send_signal(signal.SIGSTOP)
    try:
        for p in (x0, x1):  # both hold x2 dead: neither pushes to it nor queues for it
            eventually(lambda p=p: {m["id"]: m["state"] for m in p.client.members()}["x2"] == "dead", timeout=30)
        x0.client.put("missed", b"v1")
        for i in range(20):
            x0.client.put(f"filler{i}", b"x")
        time.sleep(4)  # the write leaves the gossip rounds' window
    finally:
        x2.proc.send_signal(signal.SIGCONT)
    eventually(lambda: alive_everywhere(procs, 3), timeout=30)
    time.sleep(1.0)
    assert x2.client.get("missed") is None  # it missed the write (and nothing has repaired it yet)

    def read_all() -> bool:
        try:
            got = x1.client.get("missed", consistency="all")
        except ConsistencyUnmetError:
            return False
        return got is not None and got.value == b"v1"

    eventually(read_all)
    eventually(lambda: holds(x2, "missed", b"v1"), timeout=5)
    with urllib.request.urlopen(x1.url + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert "dsm_read_repairs_total 1.0" in metrics
