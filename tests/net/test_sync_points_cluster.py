"""Sync points between real runtimes over loopback TCP (SQLite stores): anti-entropy leaves them, they are kept
in the store's metadata across a restart, and a watch resumed on the other node from a cursor of the first
replays that node's own rows after the sync point instead of resyncing the prefix."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from dsm.core import watch_cursor
from dsm.core.peer import PeerSettings
from dsm.node import startup, sync_points
from dsm.node.watches import Event, Resync, Watch
from test_runtime import Cluster, cluster, eventually  # noqa: F401 (the `cluster` fixture)

QUICK = PeerSettings(
    probe_interval_ms=200, probe_timeout_ms=100, membership_sync_interval_ms=1000, anti_entropy_interval_ms=200
)


async def next_items(watch: Watch, done: Callable[[list[Event | Resync]], bool]) -> list[Event | Resync]:
    items: list[Event | Resync] = []
    async with asyncio.timeout(10):
        while not done(items):
            item = await anext(watch)
            assert isinstance(item, Event | Resync)
            items.append(item)
    return items


def has(key: str) -> Callable[[list[Event | Resync]], bool]:
    return lambda items: any(isinstance(i, Event) and i.key == key for i in items)


async def test_a_watch_resumes_on_another_node_through_a_sync_point(cluster: Cluster) -> None:  # noqa: F811
    a = await cluster.start("n0", "127.0.0.1", [], settings=QUICK)
    b = await cluster.start("n1", "127.0.0.2", [a.addr], settings=QUICK)
    store_a, store_b = cluster.nodes["n0"][1], cluster.nodes["n1"][1]
    await asyncio.gather(*(store_a.put(f"w/{i:03}", b"1") for i in range(300)))

    def held(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
        async def run() -> bool:
            return check()

        return run

    async def b_has_all() -> bool:
        return await store_b.count() >= 300

    await eventually(b_has_all)
    had_all = b.sync_points.last_stamp  # n1's stamp once it held all 300
    first = store_a.watch("w/")
    cursor = watch_cursor.decode(first.cursor)  # the reader holds every change on n0 up to here
    first.close()
    # Anti-entropy keeps running: n1 soon keeps a sync point of n0 covering the cursor, from after it held all.
    await eventually(
        held(
            lambda: any(p.peer_stamp <= cursor.stamp and p.own_stamp >= had_all for p in b.sync_points.points.of("n0"))
        )
    )
    assert a.sync_points.points.of("n1"), "and n0 one of n1"
    await store_a.put("w/late", b"2")  # after the cursor's point

    async def b_has_late() -> bool:
        return (await store_b.get("w/late")) is not None

    await eventually(b_has_late)
    resumed = store_b.watch("w/", since=watch_cursor.encode(cursor))
    items = await next_items(resumed, has("w/late"))
    assert not any(isinstance(i, Resync) for i in items)  # no resync of the prefix
    assert len(items) < 10  # what changed since the sync point (w/late), not the 301 keys under the prefix
    assert store_b.watches.resumes["sync_point"] == 1 and store_b.watches.resumes["resync"] == 0
    # The events' cursors are n1's own: a later resume there is a same-node replay.
    assert all(watch_cursor.decode(i.cursor).node == "n1" for i in items if isinstance(i, Event))
    resumed.close()

    # Kept in the store's metadata: a restart of n1 finds them again.
    epoch = await startup.store_epoch(store_b.store)
    assert (await sync_points.read(store_b.store, epoch)).of("n0")
    await cluster.stop("n1")
    again = await cluster.start("n1", "127.0.0.2", [a.addr], settings=QUICK)
    assert again.sync_points.points.of("n0"), "read back at start"
