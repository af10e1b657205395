"""Expiry events in watches (`dsm.node.watches` with `dsm.node.expiries`): a key that expires under a watched
prefix is reported once, as an event with `expired` and `deleted`, when the node's clock passes its expiry,
though nothing was written then; the event's cursor carries the expiry mark, so a watch resumed from a cursor
given before the expiry reports it, and one resumed after it does not. In process, SQLite, a clock the test
moves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dsm import EpidemicStorage, NodeInfo, StorageConfig
from dsm.core import watch_cursor
from dsm.core.hlc import physical_ms
from dsm.node.watches import Event, Item, Watch
from dsm.storage.sqlite import SQLiteStore

START = 1_800_000_000_000


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[EpidemicStorage, Clock]]:
    clock = Clock(START)
    config = StorageConfig(node_id="n1", listen_addr="")
    storage = EpidemicStorage(config, NodeInfo(), SQLiteStore(tmp_path / "n1.db"), wall_ms=clock)
    await storage.start()
    yield storage, clock
    await storage.close()


async def next_event(watch: Watch) -> Event:
    item: Item = await asyncio.wait_for(anext(watch), 30)
    assert isinstance(item, Event), item
    return item


async def test_a_key_that_expires_is_reported_once_and_resumes_keep_the_mark(
    node: tuple[EpidemicStorage, Clock],
) -> None:
    storage, clock = node
    watch = storage.watch("s/")
    ack = await storage.put("s/1", b"v", ttl_ms=1_000)
    await storage.put("s/2", b"kept")
    await storage.put("t/1", b"v", ttl_ms=500)  # another prefix: never reported here
    first, second = await next_event(watch), await next_event(watch)
    assert (first.key, first.expired, first.deleted) == ("s/1", False, False)
    assert second.key == "s/2"
    expires = physical_ms(ack.timestamp) + 1_000

    clock.ms = expires - 1
    await storage.put("s/3", b"x")  # the key has not expired yet: the next event is this write
    third = await next_event(watch)
    assert third.key == "s/3" and not third.expired

    clock.ms = expires
    expired = await next_event(watch)
    assert (expired.key, expired.expired, expired.deleted) == ("s/1", True, True)
    assert (expired.timestamp, expired.writer) == (ack.timestamp, "n1")  # the version that expired
    assert watch_cursor.decode(expired.cursor).expiry_ms >= expires > watch_cursor.decode(third.cursor).expiry_ms
    await storage.put("s/4", b"y")
    assert (await next_event(watch)).key == "s/4"  # reported once
    watch.close()

    # Resumed from before the expiry: s/4's write, then s/1's expiry (replayed rows first, then expiries).
    before = storage.watch("s/", since=third.cursor)
    assert (await next_event(before)).key == "s/4"
    again = await next_event(before)
    assert (again.key, again.expired) == ("s/1", True)
    before.close()
    # Resumed from the expired event: the next expiry it reports is a later one, not s/1 again.
    after = storage.watch("s/", since=expired.cursor)
    assert (await next_event(after)).key == "s/4"
    short = await storage.put("s/5", b"z", ttl_ms=10)
    assert (await next_event(after)).key == "s/5"
    clock.ms = physical_ms(short.timestamp) + 10
    later = await next_event(after)
    assert (later.key, later.expired) == ("s/5", True)
    after.close()


async def test_a_renewed_key_is_not_reported_and_a_sibling_that_expires_alone_is_not_an_event(
    tmp_path: Path,
) -> None:
    clock = Clock(START)
    config = StorageConfig(node_id="n1", listen_addr="", conflict_resolution="siblings")
    storage = EpidemicStorage(config, NodeInfo(), SQLiteStore(tmp_path / "s.db"), wall_ms=clock)
    await storage.start()
    try:
        watch = storage.watch("")
        await storage.put("lease", b"v", ttl_ms=1_000)
        read = await storage.get("lease")
        assert read is not None
        await storage.put("lease", b"v", context=read.context, ttl_ms=5_000)  # renewed before it expires
        await storage.put("pair", b"short", ttl_ms=1_000)
        await storage.put("pair", b"forever")  # a blind write: a sibling that never expires
        assert [(await next_event(watch)).key for _ in range(4)] == ["lease", "lease", "pair", "pair"]
        clock.ms += 2_000
        await storage.put("marker", b"m")
        assert (await next_event(watch)).key == "marker"  # neither lease nor pair became absent
        clock.ms += 5_000
        event = await next_event(watch)
        assert (event.key, event.expired) == ("lease", True)
    finally:
        await storage.close()
