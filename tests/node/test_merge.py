"""Replication into a node's store: `EpidemicStorage.merge` and what commits publish (`Commits.subscribe`), on
real stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from dsm import EpidemicStorage, StorageConfig, StorageFactory
from dsm.core.encoding import decode_versions, encode_versions
from dsm.core.hlc import pack
from dsm.core.messages import DataItem
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, VersionSet, write
from dsm.node.commits import MERGE_PART
from dsm.storage import BackingStore, MemoryStore
from dsm.storage.sqlite import SQLiteStore

Maker = Callable[..., "asyncio.Future[tuple[EpidemicStorage, list[DataItem]]]"]


@pytest.fixture(params=["memory", "sqlite"])
async def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Maker]:
    """Opens independent replicas (each its own store) that record what they publish."""
    opened: list[EpidemicStorage] = []

    async def make(node_id: str, **settings: object) -> tuple[EpidemicStorage, list[DataItem]]:
        store: BackingStore = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / f"{node_id}.db")
        settings.setdefault("listen_addr", "")
        factory = StorageFactory(StorageConfig(**settings))  # type: ignore[arg-type]
        node = await factory.create_epidemic_storage(node_id, backing_storage=store)
        published: list[DataItem] = []
        node.commits.subscribe(lambda commit: published.extend(commit.published))
        opened.append(node)
        return node, published

    yield make  # type: ignore[misc]
    for node in opened:
        await node.close()


async def test_a_published_write_merges_into_another_replica(replicas: Maker) -> None:
    a, out_a = await replicas("a")
    b, _ = await replicas("b")
    result = await a.put("k", b"v1")
    assert [item.key for item in out_a] == ["k"]
    assert decode_versions(out_a[0].versions).max_timestamp == result.timestamp
    assert await b.merge(out_a) == 1
    got = await b.get("k")
    assert got is not None and got.value == b"v1"
    assert await b.merge(out_a) == 0  # idempotent: nothing changed, nothing written
    assert b.merge_stats.items == 2 and b.merge_stats.keys_changed == 1


async def test_lww_a_write_after_a_merge_is_newer_than_what_was_merged(replicas: Maker) -> None:
    a, out_a = await replicas("a")
    b, out_b = await replicas("b")
    for i in range(5):  # a's clock runs ahead: each write on a comes after many on b
        await a.put("k", f"a{i}".encode())
    await b.merge(out_a)
    await b.put("k", b"from b")  # a blind write: no read in lww, the clock must have seen a's versions
    await a.merge(out_b)
    for node in (a, b):
        got = await node.get("k")
        assert got is not None and got.value == b"from b", node.node_id
    assert out_b[-1].versions == encode_versions(decode_versions(out_b[-1].versions))


async def test_siblings_concurrent_writes_converge_to_the_same_set(replicas: Maker) -> None:
    a, out_a = await replicas("a", conflict_resolution="siblings")
    b, out_b = await replicas("b", conflict_resolution="siblings")
    await a.put("k", b"from a")
    await b.put("k", b"from b")
    await b.merge(out_a)
    await a.merge(out_b)
    got_a, got_b = await a.get("k"), await b.get("k")
    assert got_a is not None and got_b is not None
    assert sorted(s.value for s in got_a.siblings) == sorted(s.value for s in got_b.siblings) == [b"from a", b"from b"]
    assert got_a.context == got_b.context


async def test_merges_and_local_writes_of_one_key_never_lose_an_acknowledged_write(replicas: Maker) -> None:
    a, out_a = await replicas("a", conflict_resolution="siblings")
    b, out_b = await replicas("b", conflict_resolution="siblings")
    # Blind writes in siblings mode are all kept (3 per key per side, under max_siblings), so every
    # acknowledged value must be present on both replicas at the end.
    for i in range(15):
        await a.put(f"k{i % 5}", f"a{i}".encode())
    # b writes the same keys while it merges a's writes, all at once.
    writes = [b.put(f"k{i % 5}", f"b{i}".encode()) for i in range(15)]
    merges = [b.merge(out_a[i : i + 4]) for i in range(0, len(out_a), 4)]
    await asyncio.gather(*writes, *merges)
    await a.merge(out_b)
    for k in range(5):
        expected = {f"{side}{i}".encode() for side in "ab" for i in range(k, 15, 5)}
        for node in (a, b):
            got = await node.get(f"k{k}")
            assert got is not None and {s.value for s in got.siblings} == expected, node.node_id


async def test_bad_remote_items_are_refused_and_counted_and_the_rest_merge(replicas: Maker) -> None:
    b, _ = await replicas("b", max_clock_offset_ms=1000)
    future = pack(10**13)  # the year 2286
    ahead = write(VersionSet(), Dot(future, "x"), VersionVector(), b"from the future", Resolution.LWW, 1)
    good = write(VersionSet(), Dot(pack(1_700_000_000_000), "x"), VersionVector(), b"ok", Resolution.LWW, 1)
    items = [
        DataItem(1, "ahead", encode_versions(ahead)),
        DataItem(2, "garbage", b"\xff\x00not versions"),
        DataItem(3, "fine", encode_versions(good)),
    ]
    assert await b.merge(items) == 1
    assert b.merge_stats.refused_skew == 1 and b.merge_stats.refused_corrupt == 1
    assert await b.get("ahead") is None and await b.get("garbage") is None
    fine = await b.get("fine")
    assert fine is not None and fine.value == b"ok"
    later = await b.put("fine", b"later")  # the clock was not dragged into the future
    assert later.timestamp < future


async def test_a_large_merge_commits_in_parts_and_writes_queued_meanwhile_go_between_them(replicas: Maker) -> None:
    a, out_a = await replicas("a")
    b, _ = await replicas("b")
    for i in range(3 * MERGE_PART):
        await a.put(f"k{i:04}", b"v")
    items = [*out_a, DataItem(9, "garbage", b"\xff\x00not versions")]  # refused, in the last part
    commits: list[set[str]] = []
    b.commits.subscribe(lambda commit: commits.append({row.key for row in commit.rows}))
    merging = asyncio.ensure_future(b.commits.merge(items))
    await asyncio.sleep(0)  # the merge's first part is queued
    put = asyncio.ensure_future(b.put("local", b"mine"))
    await asyncio.gather(merging, put)
    merge = merging.result()
    assert merge.changed == 3 * MERGE_PART and merge.refused == 1
    # 3 * MERGE_PART + 1 items: 4 parts, 4 commits (the last stores nothing: its one item was refused).
    assert len(commits) == 4 and max(len(c - {"local"}) for c in commits) == MERGE_PART and commits[-1] == set()
    # The local write did not wait for the whole merge: it committed with one of its first parts.
    assert "local" in set().union(*commits[:3])
    for i in (0, MERGE_PART, 3 * MERGE_PART - 1):
        assert await b.get(f"k{i:04}") is not None
