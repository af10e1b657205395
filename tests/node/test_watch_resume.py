"""Watches that resume, on one node (real SQLite store): the commit stamps every changed row records, the
store's epoch, and the watch's cursor, replay and resync.
"""

from __future__ import annotations

from pathlib import Path

from dsm import EpidemicStorage, NodeInfo, StorageConfig
from dsm.node import startup
from dsm.storage.sqlite import SQLiteStore
from test_tombstones import GRACE, Clock


def make(tmp_path: Path, clock: Clock, **settings: object) -> EpidemicStorage:
    config = StorageConfig(node_id="n1", listen_addr="", tombstone_grace_ms=GRACE, **settings)  # type: ignore[arg-type]
    return EpidemicStorage(config, NodeInfo(), SQLiteStore(str(tmp_path / "n1.sqlite3")), wall_ms=clock)


async def test_rows_record_increasing_stamps_across_restarts_even_when_the_wall_clock_went_back(
    tmp_path: Path,
) -> None:
    clock = Clock(1_800_000_000_000)
    seqs: list[int] = []
    for restart in range(3):
        node = make(tmp_path, clock)
        await node.start()
        try:
            for i in range(3):
                await node.put(f"k{restart}{i}", b"v")
            rows = await node.store.changed_since(seqs[-1] if seqs else 0, limit=100)
            assert [k for k, _, _ in rows] == [f"k{restart}{i}" for i in range(3)]
            seqs += [seq for _, _, seq in rows]
        finally:
            await node.close()
        clock.ms -= 5_000  # the next start's wall clock is behind this one's
    assert seqs == sorted(set(seqs))


async def test_the_store_epoch_is_kept_across_restarts_and_renewed_when_the_store_is_emptied(tmp_path: Path) -> None:
    clock = Clock(1_800_000_000_000)
    node = make(tmp_path, clock)
    await node.start(networked=True)
    epoch = await startup.store_epoch(node.store)
    await node.put("k", b"v")
    await node.close()
    again = make(tmp_path, clock)
    await again.start(networked=True)
    assert await startup.store_epoch(again.store) == epoch
    await again.close()
    clock.ms += GRACE + 1
    fresh = make(tmp_path, clock, stale_replica="discard")
    await fresh.start(networked=True)  # away too long: emptied, a new history of stamps
    try:
        assert await fresh.count() == 0
        assert await startup.store_epoch(fresh.store) not in (epoch, 0)
    finally:
        await fresh.close()
