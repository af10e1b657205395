"""The Redis-protocol front door on real `dsm node run --resp` processes, with redis-py's blocking client: a
write through one node's front door is read through another's, 24 clients spread over three nodes race
`SET NX` for one key and exactly one wins, an expiry set on one node is seen on another, and the node's
metrics count the commands. `dsm cluster up --resp-port` gives every node a front door."""

from __future__ import annotations

import re
import threading
import urllib.request
from pathlib import Path

import pytest
import redis

from dsm.localcluster import LocalCluster
from procs import Proc, eventually, procs_fixture  # noqa: F401 (the `procs` fixture)

pytestmark = pytest.mark.usefixtures("loopback_hosts")


def front_door(p: Proc) -> redis.Redis:
    host, port = str(p.event["resp"]).rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), socket_timeout=10)


def ttl_taken(door: redis.Redis) -> bool:
    try:
        return door.set("session", b"s", ex=60) is True
    except redis.ResponseError as exc:
        assert "feature 'ttl' is not available" in str(exc)
        return False


@pytest.mark.slow
def test_a_cluster_serves_redis_clients_on_every_node(procs: list[Proc], tmp_path: Path) -> None:
    first = Proc("r1", "127.0.0.1", tmp_path, [], extra=["--resp", "127.0.0.1:0"])
    procs.append(first)
    for i in (2, 3):
        procs.append(Proc(f"r{i}", f"127.0.0.{i}", tmp_path, [first.listen], extra=["--resp", f"127.0.0.{i}:0"]))
    doors = [front_door(p) for p in procs]
    eventually(lambda: all(len(p.client.members()) == 3 for p in procs))

    assert doors[0].set("greeting", b"hello") is True
    eventually(lambda: doors[2].get("greeting") == b"hello")
    # Expiry waits until every member is known to support it (a member just joined may not be, yet).
    eventually(lambda: ttl_taken(doors[1]))
    eventually(lambda: 55 <= doors[2].ttl("session") <= 60)
    assert doors[2].delete("greeting") == 1
    eventually(lambda: doors[0].get("greeting") is None)

    # 24 clients over the three nodes race to create one key: the conditional write lets exactly one win.
    results: list[object] = [None] * 24
    clients = [front_door(procs[i % 3]) for i in range(24)]

    def race(i: int) -> None:
        results[i] = clients[i].set("leader", f"c{i}".encode(), nx=True)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [i for i, won in enumerate(results) if won is True]
    assert len(winners) == 1 and results.count(None) == 23, results
    for door in doors:
        eventually(lambda door=door: door.get("leader") == f"c{winners[0]}".encode())  # type: ignore[misc]

    with urllib.request.urlopen(procs[0].url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.search(r'dsm_resp_commands_total\{command="set"\} (\S+)', text)
    assert found and float(found.group(1)) >= 1, text
    for c in [*doors, *clients]:
        c.close()


@pytest.mark.slow
def test_cluster_up_with_a_resp_port_gives_every_node_a_front_door(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c", env={"DSM_CLUSTER_SECRET": "resp-cluster-test-secret"})
    cluster.up(2, peer_port=0, http_port=0, resp_port=0)
    try:
        recorded = LocalCluster.load(tmp_path / "c")
        doors = []
        for n in recorded.nodes:
            host, port = n.resp.rsplit(":", 1)
            doors.append(redis.Redis(host=host, port=int(port), socket_timeout=10))
        assert doors[0].set("k", b"v") is True
        eventually(lambda: doors[1].get("k") == b"v")
        for door in doors:
            door.close()
    finally:
        cluster.down()
