"""Watches that resume, on one node (real SQLite store): the commit stamps every changed row records, the
store's epoch, and the watch's cursor, replay and resync.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dsm import EpidemicStorage, NodeInfo, StorageConfig
from dsm.core import watch_cursor
from dsm.core.encoding import decode_versions
from dsm.core.watch_cursor import Cursor, Plan
from dsm.node import startup, watches
from dsm.node.watches import End, Event, Item, Resync, Watch
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


# --- watches: cursors, replay, resync, ends


async def drain(watch: Watch, timeout_s: float = 0.2) -> list[Item]:
    """The items a watch has ready (until it has nothing for `timeout_s`, or ends)."""
    items: list[Item] = []
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                items.append(await anext(watch))
        except (TimeoutError, StopAsyncIteration):
            return items


def events(items: list[Item]) -> list[Event]:
    return [i for i in items if isinstance(i, Event)]


def final_states(items: list[Item]) -> dict[str, tuple[int, bool]]:
    """Each key's last state in a stream: (timestamp, deleted)."""
    return {e.key: (e.timestamp, e.deleted) for e in events(items)}


async def store_states(node: EpidemicStorage, prefix: str) -> dict[str, tuple[int, bool]]:
    out = {}
    for key, _ in await node.store.scan(prefix, prefix + "\uffff", 10_000):
        versions = decode_versions((await node.store.read(key)) or b"")
        newest = max(versions.versions, key=lambda v: v.dot.timestamp)
        out[key] = (newest.dot.timestamp, not versions.live)
    return out


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[EpidemicStorage]:
    n = make(tmp_path, Clock(1_800_000_000_000))
    await n.start()
    yield n
    await n.close()


async def test_a_resume_on_the_same_node_replays_each_changed_key_once_in_its_current_state(
    node: EpidemicStorage,
) -> None:
    first = node.watch("p/")
    await node.put("p/a", b"1")
    await node.put("p/b", b"1")
    got = await drain(first)
    assert [e.key for e in events(got)] == ["p/a", "p/b"]
    cursor = events(got)[0].cursor  # after p/a: p/b is missed by whoever stopped here
    first.close()
    await node.put("p/c", b"1")
    await node.put("p/a", b"2")
    await node.put("q/x", b"1")  # not under the prefix
    await node.delete("p/c")
    resumed = node.watch("p/", since=cursor)
    assert resumed.plan is Plan.SAME_NODE
    replayed = await drain(resumed)
    # p/b (missed), then p/a and p/c each once, in their current state (p/c deleted), in commit order.
    assert [(e.key, e.deleted) for e in events(replayed)] == [("p/b", False), ("p/a", False), ("p/c", True)]
    assert final_states(replayed) == await store_states(node, "p/")
    # Then live, without a gap.
    await node.put("p/d", b"1")
    assert [e.key for e in events(await drain(resumed))] == ["p/d"]
    # A cursor after the last event replays nothing.
    last = node.watch("p/", since=resumed.cursor)
    await node.put("q/y", b"1")
    assert await drain(last) == []


async def test_a_resume_inside_one_commit_gets_the_rest_of_that_commit(node: EpidemicStorage) -> None:
    watch = node.watch("")
    await asyncio.gather(*(node.put(f"k{i}", b"v") for i in range(6)))  # group commit: few commits
    got = events(await drain(watch))
    assert sorted(e.key for e in got) == [f"k{i}" for i in range(6)]
    for i, event in enumerate(got):
        resumed = node.watch("", since=event.cursor)
        again = {e.key for e in events(await drain(resumed, 0.05))}
        assert {e.key for e in got[i + 1 :]} <= again  # nothing after the cursor missed
        resumed.close()


async def test_a_replay_pages_through_many_rows_and_a_page_boundary_inside_one_commit(
    node: EpidemicStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watches, "PAGE_ROWS", 3)
    start = node.watch("")
    cursor = start.cursor
    start.close()
    await asyncio.gather(*(node.put(f"k{i:02}", b"v") for i in range(20)))
    await node.put("k05", b"w")
    resumed = node.watch("", since=cursor)
    got = events(await drain(resumed))
    assert sorted(e.key for e in got) == [f"k{i:02}" for i in range(20)] and len(got) == 20
    assert final_states(got) == await store_states(node, "k")


async def test_a_cursor_of_another_node_or_epoch_is_resynced_in_the_stream(node: EpidemicStorage) -> None:
    await node.put("p/a", b"1")
    await node.put("p/b", b"1")
    await node.delete("p/b")
    await node.put("q/c", b"1")
    foreign = watch_cursor.encode(Cursor("elsewhere", 7, 123))
    watch = node.watch("p/", since=foreign, values=True)
    assert watch.plan is Plan.RESYNC and watch.cursor == foreign  # mid-resync: resuming resyncs again
    items = await drain(watch)
    assert items[0] == Resync(True) and isinstance(items[-1], Resync) and not items[-1].begin
    listed = events(items)
    assert [(e.key, e.deleted, e.value) for e in listed] == [("p/a", False, b"1"), ("p/b", True, None)]
    assert all(e.cursor == foreign for e in listed)
    end_cursor = items[-1].cursor
    assert end_cursor is not None and watch_cursor.decode(end_cursor).node == "n1"
    # Once a resync's end is handed out, the cursor is this node's (a progress line then resumes here).
    other = node.watch("p/", since=foreign)
    while not isinstance(item := await anext(other), Resync) or item.begin:
        pass
    assert other.cursor == item.cursor and watch_cursor.decode(other.cursor).node == "n1"
    await node.put("p/a", b"2")
    live = events(await drain(watch))
    assert [(e.key, e.value) for e in live] == [("p/a", b"2")]
    # The resync's end cursor resumes on this node without a resync.
    again = node.watch("p/", since=end_cursor)
    assert again.plan is Plan.SAME_NODE and [e.key for e in events(await drain(again))] == ["p/a"]
    other_epoch = node.watch("p/", since=watch_cursor.encode(Cursor("n1", node.watches.epoch + 1, 1)))
    assert other_epoch.plan is Plan.RESYNC


async def test_a_reader_too_far_behind_gets_a_final_cursor_and_resumes_from_it(node: EpidemicStorage) -> None:
    slow = node.watch("", limit=2)
    for i in range(5):
        await node.put(f"k{i}", b"v")
    items = await drain(slow)
    assert [e.key for e in events(items)] == ["k0", "k1"]
    end = items[-1]
    assert isinstance(end, End) and end.reason == "overflow" and end.cursor == events(items)[-1].cursor
    resumed = events(await drain(node.watch("", since=end.cursor)))
    assert [e.key for e in resumed] == ["k2", "k3", "k4"]
    assert final_states(events(items) + resumed) == await store_states(node, "k")


async def test_a_watch_survives_its_readers_timeouts(node: EpidemicStorage) -> None:
    await node.put("a", b"v")
    watch = node.watch("", since=watch_cursor.encode(Cursor("elsewhere", 1, 1)))
    assert await anext(watch) == Resync(True)
    for _ in range(3):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):  # cancelled while it reads the resync's first page
                await anext(watch)
    items = await drain(watch)
    assert [e.key for e in events(items)] == ["a"] and items[-1] == Resync(False, items[-1].cursor)  # type: ignore[union-attr]
    for _ in range(3):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):  # cancelled while it waits for a live change
                await anext(watch)
    await node.put("k", b"v")
    assert [e.key for e in events(await drain(watch))] == ["k"]


async def test_a_cursor_survives_a_restart_and_the_node_closing_ends_watches_with_one(tmp_path: Path) -> None:
    clock = Clock(1_800_000_000_000)
    node = make(tmp_path, clock)
    await node.start()
    watch = node.watch("")
    await node.put("a", b"1")
    await node.close()
    items = await drain(watch)
    end = items[-1]
    assert isinstance(end, End) and end.reason == "shutdown"
    again = make(tmp_path, clock)
    await again.start()
    try:
        await again.put("b", b"1")
        resumed = again.watch("", since=end.cursor)
        assert resumed.plan is Plan.SAME_NODE
        assert [e.key for e in events(await drain(resumed))] == ["b"]
    finally:
        await again.close()


async def test_a_resume_while_writers_run_misses_nothing(
    node: EpidemicStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watches, "PAGE_ROWS", 4)
    cursor = node.watch("").cursor
    await asyncio.gather(*(node.put(f"k{i % 13}", b"%d" % i) for i in range(40)))
    resumed = node.watch("", since=cursor)

    async def writers() -> None:
        for i in range(40, 100):
            await node.put(f"k{i % 17}", b"%d" % i)
            if i % 7 == 0:
                await node.delete(f"k{i % 5}")

    items, _ = await asyncio.gather(drain(resumed, 0.5), writers())
    items += await drain(resumed)
    assert final_states(items) == await store_states(node, "k")


async def test_a_cursor_given_before_any_commit_survives_a_restart_with_a_clock_gone_back(tmp_path: Path) -> None:
    """A quiet watch's cursor must not be a clock reading the store never recorded: a restart whose wall
    clock is behind restarts the clock from what is stored, and the next commits could be stamped below it."""
    clock = Clock(1_800_000_000_000)
    node = make(tmp_path, clock)
    await node.start()
    cursor = node.watch("").cursor
    await node.close()
    clock.ms -= 5_000
    again = make(tmp_path, clock)
    await again.start()
    try:
        await again.put("k", b"v")
        # (A cursor of a new store, before its first commit, is its beginning: resynced or replayed, the same.)
        assert [e.key for e in events(await drain(again.watch("", since=cursor)))] == ["k"]
        # The same after a commit, then a restart with the clock further back: replayed from the rows.
        cursor = again.watch("").cursor
    finally:
        await again.close()
    clock.ms -= 5_000
    third = make(tmp_path, clock)
    await third.start()
    try:
        await third.put("j", b"v")
        resumed = third.watch("", since=cursor)
        assert resumed.plan is Plan.SAME_NODE and [e.key for e in events(await drain(resumed))] == ["j"]
    finally:
        await third.close()
