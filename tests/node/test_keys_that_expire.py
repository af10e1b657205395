"""Keys that expire, on nodes (in process, SQLite, a clock the test moves): `put(..., ttl_ms=)` is read as
absent once the node's wall clock passes its expiry, on the writer and on a replica that merged it; listing
leaves it out; a write with a read's context renews or removes the expiry (in siblings mode too, where the
context also covers an expired sibling); the sweep purges expired keys once the grace period has passed
since their expiry, not before; `ttl_ms` is validated."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dsm import EpidemicStorage, NodeInfo, StorageConfig
from dsm.core.encoding import decode_versions
from dsm.core.hlc import physical_ms
from dsm.errors import InvalidInputError
from dsm.storage.sqlite import SQLiteStore

GRACE = 60_000
START = 1_800_000_000_000


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def make(tmp_path: Path, node_id: str, clock: Clock, **settings: object) -> EpidemicStorage:
    config = StorageConfig(node_id=node_id, listen_addr="", tombstone_grace_ms=GRACE, **settings)  # type: ignore[arg-type]
    return EpidemicStorage(config, NodeInfo(), SQLiteStore(str(tmp_path / f"{node_id}.sqlite3")), wall_ms=clock)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[EpidemicStorage, EpidemicStorage, Clock, Clock]]:
    """Two nodes of one cluster, each with its own wall clock; replication is done by hand (`merge` of what
    the writer committed), as the network runtime would do it."""
    clock_a, clock_b = Clock(START), Clock(START + 3)
    a, b = make(tmp_path, "a", clock_a), make(tmp_path, "b", clock_b)
    await a.start()
    await b.start()
    try:
        yield a, b, clock_a, clock_b
    finally:
        await a.close()
        await b.close()


async def replicate(source: EpidemicStorage, target: EpidemicStorage, key: str) -> None:
    from dsm.core.messages import DataItem

    encoded = await source.store.read(key)
    assert encoded is not None
    await target.merge([DataItem(0, key, encoded)])


async def test_an_expired_key_reads_absent_on_the_writer_and_on_a_replica(
    pair: tuple[EpidemicStorage, EpidemicStorage, Clock, Clock],
) -> None:
    a, b, clock_a, clock_b = pair
    ack = await a.put("session/1", b"s", ttl_ms=30_000)
    await a.put("session/2", b"forever")
    await replicate(a, b, "session/1")
    await replicate(a, b, "session/2")
    expires = physical_ms(ack.timestamp) + 30_000
    got = await b.get("session/1")
    assert got is not None and got.value == b"s" and got.newest.expires_ms == expires
    assert (await a.list_keys("session/"))[0] == ["session/1", "session/2"]
    clock_a.ms = expires  # each node decides by its own wall clock
    assert await a.get("session/1") is None
    assert (await b.get("session/1")) is not None  # b's clock is still 3 ms behind
    clock_b.ms = expires
    for node in (a, b):
        assert await node.get("session/1") is None
        assert (await node.list_keys("session/"))[0] == ["session/2"]
        assert (await node.get("session/2")) is not None
    # Nothing was rewritten at expiry: both replicas hold the same bytes as before.
    assert await a.store.read("session/1") == await b.store.read("session/1")


async def test_a_write_with_the_context_of_a_read_renews_or_removes_the_expiry(
    pair: tuple[EpidemicStorage, EpidemicStorage, Clock, Clock],
) -> None:
    a, _, clock, _ = pair
    await a.put("lease", b"v1", ttl_ms=1_000)
    read = await a.get("lease")
    assert read is not None
    clock.ms += 900
    renewed = await a.put("lease", b"v2", context=read.context, ttl_ms=1_000)
    clock.ms += 900  # past the first expiry, within the renewed one
    got = await a.get("lease")
    assert got is not None and got.value == b"v2" and got.newest.expires_ms == physical_ms(renewed.timestamp) + 1_000
    await a.put("lease", b"v3", context=got.context)  # without ttl_ms: the expiry is removed
    clock.ms += 10 * 365 * 86_400_000
    last = await a.get("lease")
    assert last is not None and last.value == b"v3" and last.newest.expires_ms == 0


async def test_siblings_hide_an_expired_sibling_and_a_write_with_the_context_supersedes_it(tmp_path: Path) -> None:
    clock_a, clock_b = Clock(START), Clock(START)
    a = make(tmp_path, "a", clock_a, conflict_resolution="siblings")
    b = make(tmp_path, "b", clock_b, conflict_resolution="siblings")
    await a.start()
    await b.start()
    try:
        await a.put("k", b"short", ttl_ms=100)
        await b.put("k", b"long")  # concurrent: a sibling
        await replicate(b, a, "k")
        both = await a.get("k")
        assert both is not None and both.conflict
        clock_a.ms += 100
        one = await a.get("k")
        assert one is not None and not one.conflict and one.value == b"long"
        # The read's context covers the expired sibling too: the write supersedes both.
        await a.put("k", b"merged", context=one.context)
        stored = await a.store.read("k")
        assert stored is not None and [v.value for v in decode_versions(stored).versions] == [b"merged"]
    finally:
        await a.close()
        await b.close()


async def test_the_sweep_purges_an_expired_key_once_the_grace_period_has_passed_since_its_expiry(
    pair: tuple[EpidemicStorage, EpidemicStorage, Clock, Clock],
) -> None:
    a, _, clock, _ = pair
    ack = await a.put("cache/x", b"x", ttl_ms=5_000)
    await a.put("cache/y", b"y")
    expires = physical_ms(ack.timestamp) + 5_000
    clock.ms = expires + GRACE  # dead for exactly the grace period: kept
    assert await a.sweep() == 0 and await a.store.read("cache/x") is not None
    clock.ms = expires + GRACE + 1
    assert await a.sweep() == 1
    assert await a.store.read("cache/x") is None and await a.store.read("cache/y") is not None
    assert a.tombstones_purged == 1


@pytest.mark.parametrize("ttl", [0, -5, True, 1.5, "30s", 3650 * 86_400_000 + 1])
async def test_a_ttl_outside_1_to_max_ttl_ms_is_refused(
    pair: tuple[EpidemicStorage, EpidemicStorage, Clock, Clock], ttl: object
) -> None:
    a = pair[0]
    with pytest.raises(InvalidInputError, match="ttl_ms"):
        await a.put("k", b"v", ttl_ms=ttl)  # type: ignore[arg-type]
    assert await a.store.read("k") is None
    await a.put("k", b"v", ttl_ms=3650 * 86_400_000)  # max_ttl_ms (10 years) itself is fine
