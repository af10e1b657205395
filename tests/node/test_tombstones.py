"""Safe deletes: tombstones are purged once older than tombstone_grace_ms (each checked again in the commit
that deletes it); a member never takes back, for a key it no longer holds, a version older than the grace
period written while it was a member; and a node whose data was away longer than the grace period refuses
to start with it (or empties it and rejoins, with stale_replica = 'discard')."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dsm import EpidemicStorage, NodeInfo, StaleReplicaError, StorageConfig
from dsm.core.dissemination import update_id
from dsm.core.encoding import encode_versions
from dsm.core.hlc import pack
from dsm.core.messages import DataItem
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, VersionSet, purgeable, write
from dsm.storage.sqlite import SQLiteStore

GRACE = 60_000
DAY = 86_400_000


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def clock() -> Iterator[Clock]:
    yield Clock(1_800_000_000_000)


def make(tmp_path: Path, clock: Clock, **settings: object) -> EpidemicStorage:
    config = StorageConfig(node_id="n1", listen_addr="", tombstone_grace_ms=GRACE, **settings)  # type: ignore[arg-type]
    return EpidemicStorage(config, NodeInfo(), SQLiteStore(str(tmp_path / "n1.sqlite3")), wall_ms=clock)


def remote_item(key: str, written_ms: int, value: bytes | None = b"x", node: str = "n9") -> DataItem:
    ts = pack(written_ms)
    versions = write(VersionSet(), Dot(ts, node), VersionVector(), value, Resolution.LWW, 1)
    return DataItem(update_id(key, ts, node), key, encode_versions(versions))


def test_purgeable_needs_only_tombstones_older_than_the_cutoff() -> None:
    dead = write(VersionSet(), Dot(100, "a"), VersionVector(), None, Resolution.SIBLINGS, 4)
    both = write(dead, Dot(101, "b"), VersionVector(), b"v", Resolution.SIBLINGS, 4)
    assert purgeable(dead, 101) and not purgeable(dead, 100)
    assert not purgeable(both, 1_000) and not purgeable(VersionSet(), 1_000)


async def test_the_sweep_purges_old_tombstones_only(tmp_path: Path, clock: Clock) -> None:
    node = make(tmp_path, clock)
    await node.start()
    try:
        await node.put("live", b"v")
        await node.put("gone", b"v")
        await node.delete("gone")
        await node.put("back", b"v")
        await node.delete("back")
        clock.ms += GRACE // 2
        await node.delete("recent")  # a tombstone younger than the grace period
        assert await node.sweep() == 0
        clock.ms += GRACE // 2 + 1
        await node.put("back", b"again")  # written again before the sweep: not purged
        assert await node.sweep() == 1  # "gone"
        assert node.tombstones_purged == 1
        assert await node.store.read("gone") is None
        assert await node.store.read("recent") is not None
        assert (await node.get("back")).value == b"again"  # type: ignore[union-attr]
        assert (await node.get("live")).value == b"v"  # type: ignore[union-attr]
        assert await node.count() == 3
    finally:
        await node.close()


async def test_a_member_refuses_an_expired_version_of_a_key_it_no_longer_holds(tmp_path: Path, clock: Clock) -> None:
    node = make(tmp_path, clock)
    await node.start()  # member since now
    try:
        joined = clock.ms
        await node.put("held", b"mine")
        clock.ms += GRACE + 10_000
        # Written while this node was a member, older than the grace period, for keys it does not hold: the
        # key was deleted here and its tombstone purged; taking it would resurrect it.
        assert await node.merge([remote_item("purged", joined + 1_000)]) == 0
        assert node.merge_stats.refused_expired == 1
        assert await node.get("purged") is None
        # A key it holds merges as always; so does a version written before it was a member (it never had
        # it) and a recent one.
        assert await node.merge([remote_item("held", joined + 2_000, b"theirs")]) == 1
        assert await node.merge([remote_item("older", joined - DAY)]) == 1
        assert await node.merge([remote_item("fresh", clock.ms - 1_000)]) == 1
        assert node.merge_stats.refused_expired == 1
    finally:
        await node.close()


async def test_a_node_away_longer_than_the_grace_period_refuses_its_data_or_discards_it(
    tmp_path: Path, clock: Clock
) -> None:
    node = make(tmp_path, clock)
    await node.start(networked=True)
    await node.put("old", b"v")
    await node.close()
    clock.ms += GRACE // 2
    again = make(tmp_path, clock)
    await again.start(networked=True)  # away less than the grace period: fine
    assert (await again.get("old")).value == b"v"  # type: ignore[union-attr]
    await again.close()  # a clean close dates the last presence
    clock.ms += GRACE + 1
    standalone = make(tmp_path, clock)
    await standalone.start()  # a standalone node has no cluster to resurrect keys into
    await standalone.close()
    clock.ms += GRACE + 1
    with pytest.raises(StaleReplicaError, match="tombstone_grace_ms"):
        await make(tmp_path, clock).start(networked=True)
    fresh = make(tmp_path, clock, stale_replica="discard")
    await fresh.start(networked=True)
    try:
        assert await fresh.count() == 0
        # Emptied, it is a new member: old versions the cluster sends back are taken.
        assert await fresh.merge([remote_item("old", clock.ms - 3 * GRACE)]) == 1
    finally:
        await fresh.close()
