"""Restarts at the edges, on real `dsm node run` processes: a member killed and restarted without bootstrap
addresses rejoins through the members it saved (after 2 s and after 40 s away) and never becomes a cluster
of one; a node whose bootstrap addresses answer nothing, or that holds the wrong cluster secret, is not
ready, refuses levels above `local` and says why; a store written by another node id is refused."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dsm.client import ConsistencyUnmetError
from procs import Proc, eventually, holds, procs_fixture  # noqa: F401 (the `procs` fixture)

pytestmark = pytest.mark.usefixtures("loopback_hosts")


def alive_ids(p: Proc) -> set[str]:
    return {member["id"] for member in p.client.members() if member["state"] == "alive"}


def ready_status(p: Proc) -> tuple[int, dict[str, object]]:
    """`GET /health/ready`: (status, body)."""
    try:
        with urllib.request.urlopen(p.url + "/health/ready", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def live_status(p: Proc) -> int:
    with urllib.request.urlopen(p.url + "/health/live", timeout=10) as response:
        return int(response.status)


def port_of(p: Proc) -> int:
    return int(p.listen.rpartition(":")[2])


def closed_port() -> str:
    """A loopback address nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.slow
@pytest.mark.parametrize("away_s", [2, 40])
def test_a_member_restarted_without_bootstrap_rejoins_and_counts_levels_on_the_real_cluster(
    procs: list[Proc], tmp_path: Path, away_s: int
) -> None:
    r1 = Proc("r1", "127.0.0.1", tmp_path, [])
    procs.append(r1)
    r2 = Proc("r2", "127.0.0.2", tmp_path, [r1.listen])
    procs.append(r2)
    r3 = Proc("r3", "127.0.0.3", tmp_path, [r1.listen])
    procs.append(r3)
    eventually(lambda: alive_ids(r1) == alive_ids(r2) == alive_ids(r3) == {"r1", "r2", "r3"})
    time.sleep(1.5)  # the member tables are saved within a second of a change

    r3.stop(signal.SIGKILL)
    time.sleep(away_s)
    r1.client.put("while-away", b"written while r3 was down", consistency="quorum")

    # Restarted with its id and data, but no --bootstrap: it must rejoin, not start a cluster of one.
    r3 = Proc("r3", "127.0.0.3", tmp_path, [])
    procs.append(r3)
    assert r3.event["event"] == "ready"  # printed only once a member answered its Join
    eventually(lambda: alive_ids(r3) == {"r1", "r2", "r3"})
    eventually(lambda: alive_ids(r1) == alive_ids(r2) == {"r1", "r2", "r3"})
    assert ready_status(r3)[0] == 200
    with urllib.request.urlopen(r3.url + "/metrics", timeout=10) as response:
        assert "dsm_joined 1.0" in response.read().decode()

    # Writes flow both ways.
    r3.client.put("from-r3", b"after the restart")
    eventually(lambda: holds(r1, "from-r3", b"after the restart") and holds(r2, "from-r3", b"after the restart"))
    eventually(lambda: holds(r3, "while-away", b"written while r3 was down"))
    r3.client.put("quorum-on-r3", b"two of three", consistency="quorum")
    got = r2.client.get("quorum-on-r3", consistency="quorum")
    assert got is not None and got.value == b"two of three"

    # A quorum write on it succeeds only while a real majority can hold it: with the two others gone, it fails.
    r1.stop(signal.SIGKILL)
    r2.stop(signal.SIGKILL)
    with pytest.raises(ConsistencyUnmetError) as unmet:
        r3.client.put("alone", b"one of three", consistency="quorum")
    assert unmet.value.required == 2 and unmet.value.acknowledged == 1


@pytest.mark.slow
def test_a_whole_cluster_restarted_without_bootstrap_waits_then_rejoins(procs: list[Proc], tmp_path: Path) -> None:
    a = Proc("a", "127.0.0.1", tmp_path, [])
    procs.append(a)
    b = Proc("b", "127.0.0.2", tmp_path, [a.listen])
    procs.append(b)
    eventually(lambda: alive_ids(a) == alive_ids(b) == {"a", "b"})
    time.sleep(1.5)
    a.stop(signal.SIGKILL)
    b.stop(signal.SIGTERM)  # a clean stop saves the table too

    # b comes back first: its saved member (a) is down, so it waits rather than serve as a cluster of one.
    b = Proc("b", "127.0.0.2", tmp_path, [], until="waiting")  # on another port: a learns it from b's Join
    procs.append(b)
    assert b.event["reason"] and a.listen in b.event["targets"]
    status, body = ready_status(b)
    assert status == 503 and body["joined"] is False
    assert live_status(b) == 200  # alive, serving, just not ready
    b.client.put("local-while-waiting", b"kept")  # local reads and writes go on
    with pytest.raises(ConsistencyUnmetError):
        b.client.put("quorum-while-waiting", b"refused", consistency="quorum")

    a = Proc("a", "127.0.0.1", tmp_path, [], port=int(a.listen.rpartition(":")[2]), until="any")
    procs.append(a)
    b.wait_ready()
    a.wait_ready()
    eventually(lambda: alive_ids(a) == alive_ids(b) == {"a", "b"})
    eventually(lambda: holds(a, "local-while-waiting", b"kept"))
    b.client.put("quorum-after", b"both", consistency="quorum")


def test_a_node_whose_bootstrap_answers_nothing_is_not_ready_and_says_why(procs: list[Proc], tmp_path: Path) -> None:
    nowhere = closed_port()
    lonely = Proc("lonely", "127.0.0.1", tmp_path, [nowhere], until="waiting")
    procs.append(lonely)
    assert lonely.event["targets"] == [nowhere]
    assert ready_status(lonely)[0] == 503
    assert alive_ids(lonely) == {"lonely"}
    lonely.client.put("k", b"local")
    assert holds(lonely, "k", b"local")
    for level in ("region_quorum", "quorum", "all"):
        with pytest.raises(ConsistencyUnmetError):
            lonely.client.put("k", b"v", consistency=level)
        with pytest.raises(ConsistencyUnmetError):
            lonely.client.get("k", consistency=level)
    time.sleep(1.0)
    with urllib.request.urlopen(lonely.url + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert "dsm_joined 0.0" in metrics
    assert re.search(r'^dsm_peer_connect_failures_total\{reason="refused"\} [1-9]', metrics, re.MULTILINE), metrics
    lonely.stop()
    assert "WARNING" in lonely.stderr and nowhere in lonely.stderr and "refused" in lonely.stderr, lonely.stderr


def test_a_node_with_the_wrong_secret_is_not_ready_and_says_why(procs: list[Proc], tmp_path: Path) -> None:
    good = Proc("good", "127.0.0.1", tmp_path, [])
    procs.append(good)
    intruder = Proc(
        "intruder", "127.0.0.2", tmp_path, [good.listen], env={"DSM_CLUSTER_SECRET": "not-the-cluster-secret-01"},
        until="waiting",
    )  # fmt: skip
    procs.append(intruder)
    assert ready_status(intruder)[0] == 503
    with pytest.raises(ConsistencyUnmetError):
        intruder.client.put("k", b"v", consistency="quorum")
    time.sleep(1.0)
    intruder.stop()
    assert good.listen in intruder.stderr and "wrong_secret" in intruder.stderr, intruder.stderr
    assert alive_ids(good) == {"good"}


def test_a_store_written_by_another_node_id_is_refused_unless_adopted(procs: list[Proc], tmp_path: Path) -> None:
    first = Proc("first", "127.0.0.1", tmp_path, [])
    procs.append(first)
    first.client.put("k", b"first's")
    first.stop()
    with pytest.raises(AssertionError) as refused:
        Proc("second", "127.0.0.1", tmp_path, [], extra=["--data-dir", str(tmp_path / "first")])
    assert "'first'" in str(refused.value) and "'second'" in str(refused.value), refused.value
    adopted = Proc("second", "127.0.0.1", tmp_path, [], extra=["--data-dir", str(tmp_path / "first"), "--adopt-store"])
    procs.append(adopted)
    assert holds(adopted, "k", b"first's")


@pytest.mark.slow
def test_stopping_two_of_three_with_sigterm_does_not_let_the_third_meet_all_alone(
    procs: list[Proc], tmp_path: Path
) -> None:
    # A graceful stop is not a leave: the stopped members still count, so `all` and `quorum` on the one left
    # fail, and once they are back a quorum read finds every acknowledged write.
    s1 = Proc("s1", "127.0.0.1", tmp_path, [])
    procs.append(s1)
    s2 = Proc("s2", "127.0.0.2", tmp_path, [s1.listen])
    procs.append(s2)
    s3 = Proc("s3", "127.0.0.3", tmp_path, [s1.listen])
    procs.append(s3)
    eventually(lambda: alive_ids(s1) == alive_ids(s2) == alive_ids(s3) == {"s1", "s2", "s3"})
    s3.stop(signal.SIGTERM)
    s2.stop(signal.SIGTERM)
    for level, required in (("all", 3), ("quorum", 2)):
        with pytest.raises(ConsistencyUnmetError) as unmet:
            s1.client.put("acked", b"by one", consistency=level)
        assert unmet.value.required == required and unmet.value.acknowledged == 1
    s1.client.put("acked", b"locally")  # local still works
    s1.stop(signal.SIGTERM)

    # Back on their addresses, without bootstrap: they find each other through their saved tables.
    s2 = Proc("s2", "127.0.0.2", tmp_path, [], port=port_of(s2), until="any")
    procs.append(s2)
    s3 = Proc("s3", "127.0.0.3", tmp_path, [], port=port_of(s3), until="any")
    procs.append(s3)
    s2.wait_ready()
    s3.wait_ready()
    with pytest.raises(ConsistencyUnmetError):  # s1 is away and still counts: 2 of 3 answer, `all` needs 3
        s3.client.put("k", b"v", consistency="all")
    s3.client.put("k", b"v", consistency="quorum")
    got = s2.client.get("k", consistency="quorum")
    assert got is not None and got.value == b"v"


@pytest.mark.slow
def test_a_member_that_lost_its_store_and_starts_alone_says_that_its_cluster_calls_it(
    procs: list[Proc], tmp_path: Path
) -> None:
    # No saved members and no bootstrap is a new cluster, by the rule; but a member of the old cluster that
    # still probes it shows the operator's likely mistake, which the node names.
    w1 = Proc("w1", "127.0.0.1", tmp_path, [])
    procs.append(w1)
    w2 = Proc("w2", "127.0.0.2", tmp_path, [w1.listen])
    procs.append(w2)
    eventually(lambda: alive_ids(w1) == alive_ids(w2) == {"w1", "w2"})
    w2.stop(signal.SIGKILL)
    # A node that joins normally hears its join target first (its JoinReply): no alarm about that.
    assert "runs a cluster of its own" not in w2.stderr, w2.stderr
    shutil.rmtree(tmp_path / "w2")
    w2 = Proc("w2", "127.0.0.2", tmp_path, [], port=port_of(w2))
    procs.append(w2)
    time.sleep(3.0)
    w2.stop()
    assert "runs a cluster of its own" in w2.stderr and "'w1'" in w2.stderr, w2.stderr
