"""Consistency levels and read repair on a cluster of networked library nodes (real TCP on loopback, SQLite
stores): writes at region_quorum / quorum / all return once enough members stored them; reads merge the
members' versions and repair the stale ones; a level that cannot be met fails with ConsistencyError after
consistency_timeout_ms, and the write stays durable and keeps spreading."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dsm import EpidemicStorage, NodeInfo, StorageConfig, StorageFactory
from dsm.core.consistency import Level
from dsm.core.encoding import digest
from dsm.core.replica import StoredKey
from dsm.core.ring import State
from dsm.core.vclock import VersionVector
from dsm.errors import ConsistencyError, InvalidInputError
from support import eventually, runtime_of

pytestmark = pytest.mark.usefixtures("loopback_hosts")

FAST = {
    "probe_interval_ms": 200,
    "probe_timeout_ms": 100,
    "membership_sync_interval_ms": 1000,
    "gossip_interval_ms": 500,
    "anti_entropy_interval_ms": 3_600_000,  # out of the way: only the paths under test repair
    "consistency_timeout_ms": 800,
    "cluster_secret": "consistency-test-secret-01",
}
REGIONS = ("a", "a", "a", "b", "b")


async def held(node: EpidemicStorage, key: str) -> bytes | None:
    got = await node.get(key, consistency="local")
    return None if got is None else got.value


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[EpidemicStorage]]:
    """Five nodes: n0-n2 in region a, n3-n4 in region b."""
    nodes: list[EpidemicStorage] = []
    bootstrap: list[str] = []
    try:
        for i, region in enumerate(REGIONS):
            config = StorageConfig(data_dir=str(tmp_path / f"n{i}"), listen_addr=f"127.0.0.{i + 1}:0", **FAST)  # type: ignore[arg-type]
            factory = StorageFactory(config)
            node = await factory.create_epidemic_storage(
                f"n{i}", NodeInfo(region=region), bootstrap, factory.create_sql_storage()
            )
            nodes.append(node)
            bootstrap = [runtime_of(nodes[0]).addr]

        async def all_alive() -> bool:
            for node in nodes:
                peer = runtime_of(node).peer
                if peer is None or any(peer.member_state(f"n{i}") != State.ALIVE for i in range(len(REGIONS))):
                    return False
            return True

        await eventually(all_alive)
        yield nodes
    finally:
        for node in nodes:
            await node.close()


async def cut_off(node: EpidemicStorage) -> None:
    """Makes `node` unreachable without a leave: its transport stops (no answers, no refusals at the
    protocol level), as if its machine vanished. The others keep counting it in the denominator."""
    runtime = runtime_of(node)
    if runtime._timer is not None:
        runtime._timer.cancel()
        runtime._timer = None
    runtime.peer = None  # stops driving the core: nothing it receives is answered
    await runtime.transport.close(0.1)


async def test_quorum_writes_are_stored_on_enough_members_and_quorum_reads_see_them(
    cluster: list[EpidemicStorage],
) -> None:
    n0 = cluster[0]
    for level in ("region_quorum", "quorum", "each_region_quorum", "all"):
        ack = await n0.put(f"k-{level}", level.encode(), consistency=level)
        assert ack.timestamp > 0
        # What a level acknowledges is already durable on that many members (no waiting for spreading).
        holders = [node for node in cluster if await held(node, f"k-{level}") == level.encode()]
        if level == "all":
            assert len(holders) == 5
        if level == "region_quorum":
            assert len([n for n in holders if n.config.region == "a"]) >= 2
    got = await cluster[4].get("k-quorum", consistency=Level.QUORUM)
    assert got is not None and got.value == b"quorum"
    stats = n0.level_stats
    assert stats[("write", "all", "ok")] == 1 and stats[("write", "quorum", "ok")] == 1
    assert cluster[4].level_stats[("read", "quorum", "ok")] == 1


async def test_region_quorum_goes_on_while_the_other_region_is_cut_off_and_quorum_fails_cleanly(
    cluster: list[EpidemicStorage],
) -> None:
    n0 = cluster[0]
    await cut_off(cluster[3])
    await cut_off(cluster[4])
    await n0.put("in-a", b"1", consistency="region_quorum")
    assert (await n0.get("in-a", consistency="region_quorum")).value == b"1"  # type: ignore[union-attr]
    # Three of five is still a quorum; every region's majority is not.
    await n0.put("q", b"1", consistency="quorum")
    started = time.monotonic()
    with pytest.raises(ConsistencyError) as caught:
        await n0.put("each", b"1", consistency="each_region_quorum")
    assert 0.7 <= time.monotonic() - started < 5
    error = caught.value
    assert (error.level, error.operation, error.required) == ("each_region_quorum", "write", 4)
    assert error.shortfall == {"b": (0, 2)}
    assert "durable where it landed" in str(error)
    # Not rolled back: the write is on n0 and spreads to the reachable members of region a.
    assert await held(n0, "each") == b"1"

    async def spread() -> bool:
        return all([await held(node, "each") == b"1" for node in cluster[:3]])

    await eventually(spread, timeout=5)

    # A majority of all members down: quorum fails, region_quorum in a still holds with n0, n1, n2.
    await cut_off(cluster[2])
    with pytest.raises(ConsistencyError) as caught:
        await n0.put("q2", b"2", consistency="quorum")
    assert (caught.value.received, caught.value.required) == (2, 3)
    await n0.put("q3", b"3", consistency="region_quorum")  # 2 of 3 in region a
    with pytest.raises(ConsistencyError):
        await cluster[1].get("q3", consistency="all")
    assert n0.level_stats[("write", "quorum", "unmet")] == 1


async def test_a_read_repairs_the_members_that_missed_a_write(cluster: list[EpidemicStorage]) -> None:
    n0, n1, n2 = cluster[:3]

    async def caught_up() -> bool:  # every node's start-up anti-entropy exchange has run
        return all(runtime_of(node).anti_entropy_sessions >= 1 for node in cluster)

    await eventually(caught_up)
    await asyncio.sleep(0.5)
    # A write n0 stores without publishing it: the other members miss it (as after a lost push with
    # gossip and anti-entropy yet to run).
    publish = runtime_of(n0)._on_commit
    n0.commits.unsubscribe(publish)
    try:
        await n0.put("missed", b"v1", consistency="local")
    finally:
        n0.commits.subscribe(publish)
    await asyncio.sleep(0.3)
    assert await held(n1, "missed") is None and await held(n2, "missed") is None

    got = await n1.get("missed", consistency="all")  # gathers every member's versions
    assert got is not None and got.value == b"v1"
    assert n1.read_repairs == 4  # this node and n2, n3, n4 were stale

    async def repaired() -> bool:
        return all([await held(node, "missed") == b"v1" for node in cluster])

    await eventually(repaired, timeout=5)
    # A second read finds nothing stale.
    await n2.get("missed", consistency="all")
    assert n2.read_repairs == 0


async def test_bad_levels_are_refused_before_anything_is_written(cluster: list[EpidemicStorage]) -> None:
    n0 = cluster[0]
    for bad in ("strong", "", "QUORUM", 3):
        with pytest.raises(InvalidInputError, match="unknown consistency level"):
            await n0.put("never", b"x", consistency=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        await n0.get("never", consistency="each-region")
    assert await held(n0, "never") is None


async def test_region_defaults_come_from_the_config(tmp_path: Path) -> None:
    config = StorageConfig(
        data_dir=str(tmp_path / "solo"),
        listen_addr="",
        region="eu",
        regions={"eu": {"write_consistency": "all", "read_consistency": "quorum"}},
    )
    node = await StorageFactory(config).create_epidemic_storage("solo", NodeInfo(), [], None)
    try:
        await node.put("k", b"v")
        await node.get("k")
        assert node.level_stats[("write", "all", "ok")] == 1
        assert node.level_stats[("read", "quorum", "ok")] == 1
        await node.put("k2", b"v", consistency="local")
        assert sum(node.level_stats.values()) == 2
    finally:
        await node.close()


async def test_a_node_that_has_not_joined_refuses_levels_above_local(tmp_path: Path) -> None:
    # Its bootstrap member does not answer: its view is only itself, and a "majority" of that view would be
    # its own answer. Levels are refused until the join completes; local writes go on.
    config = StorageConfig(data_dir=str(tmp_path / "lone"), listen_addr="127.0.0.1:0", **FAST)  # type: ignore[arg-type]
    factory = StorageFactory(config)
    node = await factory.create_epidemic_storage("lone", NodeInfo(), ["127.0.0.9:9"], factory.create_sql_storage())
    try:
        with pytest.raises(ConsistencyError, match="not joined") as caught:
            await node.put("k", b"v", consistency="quorum")
        assert caught.value.cause == "not_joined"
        with pytest.raises(ConsistencyError, match="not joined"):
            await node.get("k", consistency="region_quorum")
        await node.put("k", b"v", consistency="local")
        assert await held(node, "k") == b"v"
        assert node.level_stats[("write", "quorum", "unmet")] == 1
    finally:
        await node.close()


async def test_removed_members_stop_counting_and_unreachable_ones_do_not(cluster: list[EpidemicStorage]) -> None:
    n0 = cluster[0]
    await cut_off(cluster[3])
    await cut_off(cluster[4])
    with pytest.raises(ConsistencyError):  # unreachable members still count: 3 of 5
        await n0.put("k", b"1", consistency="all")
    runtime = runtime_of(n0)
    with pytest.raises(ValueError, match="itself"):
        runtime.remove_member("n0")
    with pytest.raises(ValueError, match="no member"):
        runtime.remove_member("stranger")
    runtime.remove_member("n3")
    runtime.remove_member("n4")

    async def spread() -> bool:  # the removal travels like a leave
        peer = runtime_of(cluster[2]).peer
        return peer is not None and all(peer.member_state(n) == State.LEFT for n in ("n3", "n4"))

    await eventually(spread)
    await n0.put("k", b"2", consistency="all")  # 3 of 3
    got = await cluster[2].get("k", consistency="all")
    assert got is not None and got.value == b"2"


async def test_a_member_that_refuses_the_write_does_not_count_towards_the_level(
    cluster: list[EpidemicStorage],
) -> None:
    # n4's stored row of the key is unreadable: it refuses every version of it (an operator must look at
    # the row), and answers the coordinator's Replicate with stored=False. That answer must not count.
    n0, n4 = cluster[0], cluster[4]
    garbage = b"\xffnot a version set"
    await n4.store.write([StoredKey("refused", garbage, digest("refused", garbage), 0)])
    with pytest.raises(ConsistencyError) as caught:
        await n0.put("refused", b"v1", consistency="all")
    assert caught.value.received == 4 and caught.value.required == 5
    assert n4.merge_stats.refused_corrupt >= 1
    # Without the refusing member the level is met as usual.
    await n0.put("accepted", b"v1", consistency="all")


async def test_a_write_at_a_level_reaches_every_node_even_when_its_level_request_never_comes(
    cluster: list[EpidemicStorage],
) -> None:
    """A write above `local` is published by its level request (whose tree push skips the members its
    `Replicate` reaches); one committed for a level request that never comes (its caller cancelled in
    between) is published by the runtime a moment later, so it still reaches every node without anti-entropy
    (which is out of the way here)."""
    await cluster[0].put("levelled", b"v", consistency="region_quorum")
    await eventually(lambda: all_hold(cluster, "levelled", b"v"))
    result = await cluster[3].commits.submit("orphan", b"o", VersionVector(), 0, deferred=True)
    assert result.key == "orphan"
    await eventually(lambda: all_hold(cluster, "orphan", b"o"))


async def all_hold(nodes: list[EpidemicStorage], key: str, value: bytes) -> bool:
    return all([await held(node, key) == value for node in nodes])
