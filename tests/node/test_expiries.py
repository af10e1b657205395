"""`dsm.node.expiries` on a node's real store (memory and SQLite, written by the node's own commits): the keys
of a prefix that expired after a mark, page by page with the mark after each, and when to look again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dsm import EpidemicStorage, NodeInfo, StorageConfig
from dsm.core.expiry import EXPIRY_POLL_MAX_MS
from dsm.core.hlc import physical_ms
from dsm.node.expiries import Expiries
from dsm.storage import MemoryStore
from dsm.storage.sqlite import SQLiteStore

START = 1_800_000_000_000


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@pytest.fixture(params=["memory", "sqlite"])
async def node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[EpidemicStorage, Clock]]:
    clock = Clock(START)
    store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "n.db")
    storage = EpidemicStorage(StorageConfig(node_id="n", listen_addr=""), NodeInfo(), store, wall_ms=clock)
    await storage.start()
    yield storage, clock
    await storage.close()


async def test_the_keys_that_expired_after_a_mark_come_page_by_page(node: tuple[EpidemicStorage, Clock]) -> None:
    storage, clock = node
    expiries = Expiries(storage.store, clock, page_rows=2)
    due: dict[str, int] = {}
    for i in range(5):
        ack = await storage.put(f"s/{i}", b"v", ttl_ms=1_000 + 100 * i)
        due[f"s/{i}"] = physical_ms(ack.timestamp) + 1_000 + 100 * i
    await storage.put("s/forever", b"v")
    await storage.put("t/other", b"v", ttl_ms=1_000)  # another prefix
    renewed = await storage.get("s/4")
    assert renewed is not None
    await storage.put("s/4", b"v2", context=renewed.context)  # the expiry removed: never reported

    start = clock.ms
    assert [page async for page in expiries.pages("s/", "s0", start)] == []  # the clock is not past the mark
    assert [page async for page in expiries.pages("s/", "s0", start - 1)] == [([], start)]  # nothing expired
    clock.ms = due["s/3"]
    pages = [page async for page in expiries.pages("s/", "s0", start)]
    keys = [row[0] for rows, _ in pages for row in rows]
    assert keys == ["s/0", "s/1", "s/2", "s/3"]
    assert all(len(rows) <= 2 for rows, _ in pages) and pages[-1][1] == clock.ms
    for rows, mark in pages:  # each page's mark covers its rows and none after it
        assert all(row[2] <= mark for row in rows)
    # From the last mark nothing is due again until more time passes.
    clock.ms += 50
    later = [rows async for rows, _ in expiries.pages("s/", "s0", clock.ms - 50)]
    assert later == [[]]
    # Nothing is ahead under s/ (t/other is another prefix): look again after the poll period.
    assert await expiries.wake_at("s/", "s0", clock.ms) == clock.ms + EXPIRY_POLL_MAX_MS
    clock.ms = start
    assert await expiries.wake_at("s/", "s0", start) == due["s/0"]  # the next expiry, within the poll bound
    assert await expiries.wake_at("s/", "s0", due["s/0"] - EXPIRY_POLL_MAX_MS - 1) == due["s/0"] - 1  # beyond it
    assert await expiries.wake_at("s/", "s0", due["s/0"] - 10) == due["s/0"]
