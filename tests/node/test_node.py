"""The front door on one node: put, get, delete, version contexts, siblings, limits, reopen.

Every test runs on the memory, SQLite and PostgreSQL backends through `StorageFactory`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from dsm import (
    ClosedError,
    ConfigError,
    EpidemicStorage,
    InvalidContextError,
    InvalidKeyError,
    InvalidValueError,
    NodeInfo,
    StorageConfig,
    StorageFactory,
)
from dsm.core.encoding import decode_context, encode_context
from dsm.core.hlc import pack
from dsm.core.vclock import VersionVector
from dsm.core.versions import SIBLINGS_MAX_BYTES
from dsm.storage import BackingStore

pytestmark = pytest.mark.parametrize(
    "make_store",
    ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)

NodeMaker = Callable[..., "asyncio.Future[EpidemicStorage]"]


@pytest.fixture
async def open_node(make_store: Callable[[], BackingStore]) -> AsyncIterator[Callable[..., object]]:
    """Opens nodes on the backend under test; closes whatever is still open at the end."""
    opened: list[EpidemicStorage] = []

    async def make(node_id: str = "n1", **settings: object) -> EpidemicStorage:
        settings.setdefault("listen_addr", "")
        factory = StorageFactory(StorageConfig(**settings))  # type: ignore[arg-type]
        node = await factory.create_epidemic_storage(node_id, backing_storage=make_store())
        opened.append(node)
        return node

    yield make
    for node in opened:
        await node.close()


async def test_put_get_delete(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node()
    assert await node.get("k") is None
    written = await node.put("k", b"hello")
    result = await node.get("k")
    assert result is not None
    assert result.value == b"hello" and not result.conflict
    assert result.siblings[0].writer == "n1" and result.siblings[0].timestamp == written.timestamp
    await node.delete("k")
    assert await node.get("k") is None
    assert await node.count() == 1  # the tombstone is kept
    await node.put("k", b"again")
    again = await node.get("k")
    assert again is not None and again.value == b"again"


async def test_bytes_like_values_and_empty_value(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node()
    await node.put("a", bytearray(b"ba"))
    await node.put("b", memoryview(b"mv"))
    await node.put("c", b"")
    assert [(await node.get(k)).value for k in "abc"] == [b"ba", b"mv", b""]  # type: ignore[union-attr]


async def test_timestamps_increase_and_context_covers_the_write(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node()
    stamps = [(await node.put("k", bytes([i]))).timestamp for i in range(50)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 50
    result = await node.get("k")
    assert result is not None and result.value == bytes([49])
    assert decode_context(result.context, 4096, "k").covers(stamps[-1], "n1")


async def test_lww_blind_writes_keep_the_newest(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node()
    results = await asyncio.gather(*(node.put("hot", str(i).encode()) for i in range(100)))
    newest = max(results, key=lambda r: r.timestamp)
    got = await node.get("hot")
    assert got is not None and got.value == str(results.index(newest)).encode()
    assert len(got.siblings) == 1


async def test_siblings_mode_keeps_concurrent_writes_until_resolved(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node(conflict_resolution="siblings")
    await node.put("doc", b"base")
    base = await node.get("doc")
    assert base is not None
    # Two clients both read "base" and write concurrently.
    await node.put("doc", b"alice", context=base.context)
    await node.put("doc", b"bob", context=base.context)
    both = await node.get("doc")
    assert both is not None and both.conflict  # computed before the siblings are built
    newest = both.newest
    assert sorted(s.value for s in both.siblings) == [b"alice", b"bob"]
    assert newest == both.siblings[0] and both.conflict
    assert both.value == both.siblings[0].value  # newest first
    # A write with the context of the conflicted read resolves it.
    await node.put("doc", b"merged", context=both.context)
    merged = await node.get("doc")
    assert merged is not None and not merged.conflict and merged.newest.value == b"merged"
    assert [s.value for s in merged.siblings] == [b"merged"]


async def test_siblings_blind_write_and_delete_with_context(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node(conflict_resolution="siblings")
    await node.put("k", b"one")
    await node.put("k", b"two")  # blind: concurrent with "one"
    read = await node.get("k")
    assert read is not None and sorted(s.value for s in read.siblings) == [b"one", b"two"]
    await node.delete("k", context=read.context)
    assert await node.get("k") is None


async def test_siblings_are_bounded(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node(conflict_resolution="siblings", max_siblings=4)
    for i in range(20):
        await node.put("k", str(i).encode())  # every one blind, so each would be a sibling
    read = await node.get("k")
    assert read is not None
    assert [s.value for s in read.siblings] == [b"19", b"18", b"17", b"16"]


async def test_siblings_are_bounded_by_bytes_so_a_key_fits_in_one_message(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node(conflict_resolution="siblings")
    value = 1024 * 1024
    for i in range(8):  # eight blind 1 MiB values: 8 MiB would not fit in a frame
        await node.put("big", bytes([i]) * value)
    read = await node.get("big")
    assert read is not None
    assert [s.value[0] for s in read.siblings] == [7, 6, 5, 4]  # 4 MiB: the newest four
    assert sum(len(s.value) for s in read.siblings) <= SIBLINGS_MAX_BYTES


async def test_write_result_context_supersedes_only_what_it_saw(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node(conflict_resolution="siblings")
    first = await node.put("k", b"1")
    await node.put("k", b"2")  # concurrent with 1 (blind)
    # A client that only knows its own write's context supersedes "1" but not "2".
    await node.put("k", b"3", context=first.context)
    read = await node.get("k")
    assert read is not None and sorted(s.value for s in read.siblings) == [b"2", b"3"]


async def test_bad_keys_are_refused(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node(max_key_bytes=16)
    for bad in [b"bytes", 7, None, "", "x\x00y", "\ud800", "a" * 17, "é" * 9]:
        with pytest.raises(InvalidKeyError):
            await node.put(bad, b"v")
        with pytest.raises(InvalidKeyError):
            await node.get(bad)
        with pytest.raises(InvalidKeyError):
            await node.delete(bad)
    await node.put("a" * 16, b"ok")  # exactly at the limit
    await node.put("é" * 8, b"ok")  # 16 bytes of UTF-8
    assert await node.count() == 2


async def test_bad_values_are_refused(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node(max_value_bytes=10)
    for bad in ["text", 5, None, [1, 2], b"x" * 11]:
        with pytest.raises(InvalidValueError):
            await node.put("k", bad)
    await node.put("k", b"x" * 10)
    assert (await node.get("k")).value == b"x" * 10  # type: ignore[union-attr]


async def test_default_limits_are_1_kib_keys_and_1_mib_values(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node()
    await node.put("k" * 1024, b"v" * (1024 * 1024))
    with pytest.raises(InvalidKeyError, match="1024"):
        await node.put("k" * 1025, b"v")
    with pytest.raises(InvalidValueError, match="1048576"):
        await node.put("k", b"v" * (1024 * 1024 + 1))
    assert (await node.get("k" * 1024)).value == b"v" * (1024 * 1024)  # type: ignore[union-attr]


async def test_bad_contexts_are_refused(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node(max_context_bytes=200)
    future = encode_context(VersionVector.of({"n9": pack(2**46)}), "k")  # far in the future
    for bad in [
        b"bytes",
        12,
        "not base64 !!",
        "A" * 201,
        encode_context(VersionVector(), "k") + "garbage",
        encode_context(VersionVector(), "another key"),
        future,
    ]:
        with pytest.raises(InvalidContextError):
            await node.put("k", b"v", context=bad)
        with pytest.raises(InvalidContextError):
            await node.delete("k", context=bad)
    assert await node.get("k") is None  # nothing was written


async def test_many_concurrent_writers_are_all_acknowledged_and_stored(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node(write_batch_max=16, write_queue_max=32)
    await asyncio.gather(*(node.put(f"k{i}", str(i).encode()) for i in range(500)))
    assert await node.count() == 500
    for i in range(0, 500, 37):
        assert (await node.get(f"k{i}")).value == str(i).encode()  # type: ignore[union-attr]


async def test_cancelled_waiting_writer_does_not_leak_queue_room(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node(write_queue_max=2)
    tasks = [asyncio.create_task(node.put(f"k{i}", b"v")) for i in range(10)]
    await asyncio.sleep(0)
    tasks[5].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[5], asyncio.CancelledError)
    # The queue still admits writers afterwards (no room was lost to the cancelled waiter).
    await asyncio.wait_for(asyncio.gather(*(node.put(f"after{i}", b"v") for i in range(10))), 10)
    assert await node.count() >= 19


async def test_closed_node_refuses_operations(open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node()
    await node.put("k", b"v")
    await node.close()
    await node.close()  # idempotent
    for call in (node.get("k"), node.put("k", b"v"), node.delete("k")):
        with pytest.raises(ClosedError):
            await call


async def test_close_commits_queued_writes(make_store, open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node()
    writes = [asyncio.create_task(node.put(f"q{i}", b"v")) for i in range(200)]
    await asyncio.sleep(0)  # queued, not yet committed
    await node.close()
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert all(not isinstance(r, BaseException) for r in results)
    again = await open_node()
    if again.store.url != "memory:":
        assert await again.count() == 200


async def test_data_survives_reopen_and_clock_never_goes_back(make_store, open_node) -> None:  # type: ignore[no-untyped-def]
    node = await open_node()
    last = None
    for i in range(20):
        last = await node.put(f"k{i}", str(i).encode())
    await node.close()
    # Reopen with a wall clock an hour in the past: timestamps must still increase.
    reopened = EpidemicStorage(StorageConfig(node_id="n1"), NodeInfo(), make_store(), wall_ms=lambda: 1_000_000)
    await reopened.start()
    try:
        assert (await reopened.get("k7")).value == b"7"  # type: ignore[union-attr]
        after = await reopened.put("k0", b"new")
        assert last is not None and after.timestamp > last.timestamp
        assert (await reopened.get("k0")).value == b"new"  # type: ignore[union-attr]
    finally:
        await reopened.close()


async def test_factory_requires_a_node_id_and_a_standalone_node_refuses_bootstrap_nodes(make_store) -> None:  # type: ignore[no-untyped-def]
    factory = StorageFactory(StorageConfig(listen_addr=""))
    with pytest.raises(ConfigError, match="node_id"):
        await factory.create_epidemic_storage(backing_storage=make_store())
    with pytest.raises(ConfigError, match="node_id"):
        await factory.create_epidemic_storage("bad id with spaces", backing_storage=make_store())
    with pytest.raises(ConfigError, match="bootstrap_nodes"):
        await factory.create_epidemic_storage("n1", bootstrap_nodes=["127.0.0.1:7400"], backing_storage=make_store())


async def test_node_info_region_and_async_with(make_store) -> None:  # type: ignore[no-untyped-def]
    factory = StorageFactory(StorageConfig(node_id="n1", listen_addr=""))
    node = await factory.create_epidemic_storage(node_info=NodeInfo(region="eu-west"), backing_storage=make_store())
    async with node:
        assert node.config.region == "eu-west" and node.node_id == "n1"
        await node.put("k", b"v")
    assert node.closed


def test_default_factory_store_is_sqlite_under_data_dir(tmp_path: Path, make_store) -> None:  # type: ignore[no-untyped-def]
    store = StorageFactory(StorageConfig(data_dir=str(tmp_path))).create_sql_storage()
    assert store.url == "sqlite://" + str(tmp_path / "dsm.sqlite3")
