"""Nodes in one process over real loopback TCP: join, replicate a write, leave, restart with a higher
incarnation. (Real processes come with the `dsm node run` command.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from dsm import EpidemicStorage, StorageConfig, StorageFactory
from dsm.core.peer import PeerSettings
from dsm.core.ring import State
from dsm.net.runtime import Runtime
from dsm.net.security import Keyring
from dsm.storage.sqlite import SQLiteStore

FAST = PeerSettings(
    probe_interval_ms=200, probe_timeout_ms=100, membership_sync_interval_ms=1000, gossip_interval_ms=500
)
pytestmark = pytest.mark.usefixtures("loopback_hosts")
SECRET = "runtime-test-secret-0001"


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> float:
    """Waits until `check()` is true; returns how long it took (s)."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.nodes: dict[str, tuple[Runtime, EpidemicStorage]] = {}

    async def start(
        self,
        node_id: str,
        host: str,
        bootstrap: list[str],
        port: int = 0,
        settings: PeerSettings = FAST,
        before: dict[str, bytes] | None = None,
    ) -> Runtime:
        factory = StorageFactory(StorageConfig(listen_addr="", node_id=node_id))
        storage = await factory.create_epidemic_storage(backing_storage=SQLiteStore(self.tmp / f"{node_id}.db"))
        for key, value in (before or {}).items():  # written before the node runs: never published
            await storage.put(key, value)
        runtime = Runtime(storage.commits, settings, f"{host}:{port}", keyring=Keyring(SECRET), seed=len(self.nodes))
        await runtime.start(bootstrap)
        self.nodes[node_id] = (runtime, storage)
        return runtime

    async def stop(self, node_id: str, leave: bool = False) -> None:
        runtime, storage = self.nodes.pop(node_id)
        await runtime.close(leave=leave)
        await storage.close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    for node_id in list(c.nodes):
        await c.stop(node_id)


def alive_everywhere(cluster: Cluster, ids: list[str]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        for runtime, _ in cluster.nodes.values():
            assert runtime.peer is not None
            if any(runtime.peer.member_state(i) != State.ALIVE for i in ids):
                return False
        return True

    return check


async def test_nodes_join_replicate_a_write_within_a_second_and_leave(cluster: Cluster) -> None:
    seed = await cluster.start("n0", "127.0.0.1", [])
    for i in range(1, 4):
        await cluster.start(f"n{i}", f"127.0.0.{i + 1}", [seed.addr])
    ids = [f"n{i}" for i in range(4)]
    await eventually(alive_everywhere(cluster, ids))
    _, writer = cluster.nodes["n3"]
    await writer.put("k", b"hello")

    async def everywhere() -> bool:
        for _, storage in cluster.nodes.values():
            got = await storage.get("k")
            if got is None or got.value != b"hello":
                return False
        return True

    took = await eventually(everywhere, timeout=5)
    assert took < 1.0, f"the write took {took:.2f} s to reach every node"
    await cluster.stop("n2", leave=True)

    async def left() -> bool:
        return all(r.peer is not None and r.peer.member_state("n2") == State.LEFT for r, _ in cluster.nodes.values())

    await eventually(left)


async def test_a_restarted_node_comes_back_with_a_higher_incarnation_and_its_data(cluster: Cluster) -> None:
    seed = await cluster.start("n0", "127.0.0.1", [])
    node = await cluster.start("n1", "127.0.0.2", [seed.addr])
    await eventually(alive_everywhere(cluster, ["n0", "n1"]))
    _, storage = cluster.nodes["n1"]
    await storage.put("mine", b"kept")
    addr = node.addr
    await cluster.stop("n1")
    again = await cluster.start("n1", "127.0.0.2", [seed.addr], port=int(addr.rsplit(":", 1)[1]))
    assert again.peer is not None and again.peer.incarnation == 1
    await eventually(alive_everywhere(cluster, ["n0", "n1"]))
    got = await cluster.nodes["n1"][1].get("mine")
    assert got is not None and got.value == b"kept"


async def test_a_node_without_the_secret_cannot_join(cluster: Cluster, tmp_path: Path) -> None:
    seed = await cluster.start("n0", "127.0.0.1", [])
    factory = StorageFactory(StorageConfig(listen_addr="", node_id="intruder"))
    storage = await factory.create_epidemic_storage(backing_storage=SQLiteStore(tmp_path / "x.db"))
    intruder = Runtime(storage.commits, FAST, "127.0.0.9:0", keyring=Keyring("not-the-cluster-secret"))
    try:
        await intruder.start([seed.addr])
        await asyncio.sleep(1.0)
        assert seed.peer is not None and seed.peer.member_state("intruder") == State.UNKNOWN
        assert seed.transport.stats.rejected["auth"] >= 1
        assert intruder.peer is not None and intruder.peer.live_count() <= 1
    finally:
        await intruder.close()
        await storage.close()


async def test_anti_entropy_brings_writes_that_were_never_published(cluster: Cluster) -> None:
    quick = PeerSettings(
        probe_interval_ms=200, probe_timeout_ms=100, membership_sync_interval_ms=1000, anti_entropy_interval_ms=300
    )
    old = {f"old{i}": f"v{i}".encode() for i in range(300)}
    seed = await cluster.start("n0", "127.0.0.1", [], settings=quick, before={"mine": b"n0's"})
    await cluster.start("n1", "127.0.0.2", [seed.addr], settings=quick, before=old)

    async def both_hold_everything() -> bool:
        for _, storage in cluster.nodes.values():
            if await storage.count() != 301:
                return False
        return True

    await eventually(both_hold_everything, timeout=15)
    got = await cluster.nodes["n0"][1].get("old299")
    assert got is not None and got.value == b"v299"
    runtimes = [r for r, _ in cluster.nodes.values()]
    assert sum(r.anti_entropy_sessions for r in runtimes) >= 1 and sum(r.anti_entropy_answers for r in runtimes) >= 1


async def test_anti_entropy_rounds_wait_while_writes_flow_and_run_once_they_ease(cluster: Cluster) -> None:
    # An exchange every 300 ms, held while a node sees more than 20 writes a second (`anti_entropy_busy_writes`).
    busy = PeerSettings(
        probe_interval_ms=200,
        probe_timeout_ms=100,
        membership_sync_interval_ms=1000,
        anti_entropy_interval_ms=300,
        anti_entropy_busy_writes=20,
    )
    seed = await cluster.start("n0", "127.0.0.1", [], settings=busy)
    await cluster.start("n1", "127.0.0.2", [seed.addr], settings=busy)
    await eventually(alive_everywhere(cluster, ["n0", "n1"]))
    runtimes = [r for r, _ in cluster.nodes.values()]
    writer = cluster.nodes["n0"][1]
    await asyncio.sleep(0.7)  # past the catch-up exchanges, which never wait
    sessions = [r.anti_entropy_sessions for r in runtimes]
    for i in range(160):  # ~80 writes a second for 2 s: every round due meanwhile waits (at most 300 ms more)
        await writer.put(f"w{i}", b"v")
        await asyncio.sleep(0.0125)
    assert sum(r.anti_entropy_held for r in runtimes) >= 2
    assert sum(r.anti_entropy_sessions for r in runtimes) > sum(sessions)  # the bound: held rounds still ran
    await asyncio.sleep(1.5)  # the write rate's last busy window has rolled over
    held = [r.anti_entropy_held for r in runtimes]
    opened = sum(r.anti_entropy_sessions for r in runtimes)
    await asyncio.sleep(1.5)  # quiet: rounds every interval again, none held
    assert sum(r.anti_entropy_sessions for r in runtimes) >= opened + 4
    assert [r.anti_entropy_held for r in runtimes] == held
