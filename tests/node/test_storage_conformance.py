"""One conformance suite for every backing store: memory, SQLite and PostgreSQL.

Each test runs against all three through `BackingStore` alone, so a backend that passes behaves the same
to the node: atomic batches, replace-on-write, stable key order, range digests identical across backends,
metadata, persistence across reopen (SQLite, PostgreSQL), and the single-user lock.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from dsm.core.encoding import digest
from dsm.errors import StorageLockedError
from dsm.storage import BackingStore, RangeDigest, StoredKey

pytestmark = pytest.mark.parametrize(
    "make_store",
    ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)


def row(key: str, payload: bytes, ts: int = 1) -> StoredKey:
    return StoredKey(key, payload, digest(key, payload), ts)


async def test_read_of_missing_key_is_none(store: BackingStore) -> None:
    assert await store.read("nope") is None
    assert await store.read_many(["nope", "neither"]) == {}
    assert await store.count() == 0


async def test_write_then_read_replaces_previous_row(store: BackingStore) -> None:
    await store.write([row("a", b"one"), row("b", b"two")])
    assert await store.read("a") == b"one"
    await store.write([row("a", b"three", ts=2)])
    assert await store.read("a") == b"three"
    assert await store.read_many(["a", "b", "c"]) == {"a": b"three", "b": b"two"}
    assert await store.count() == 2


async def test_batch_with_meta_is_stored_together(store: BackingStore) -> None:
    await store.write([row("k", b"v")], {"hlc_reserved": b"123"})
    assert await store.read_meta("hlc_reserved") == b"123"
    await store.write([], {"hlc_reserved": b"456"})
    assert await store.read_meta("hlc_reserved") == b"456"
    assert await store.read_meta("absent") is None


async def test_binary_payloads_and_unicode_keys_round_trip(store: BackingStore) -> None:
    payload = bytes(range(256)) * 4
    keys = ["ключ", "键", "😀 emoji", "a/b?c=d&e", " leading space", "Z", "a" * 1024]
    await store.write([row(k, payload + k.encode()) for k in keys])
    for k in keys:
        assert await store.read(k) == payload + k.encode()


async def test_scan_is_in_code_point_order_with_digests(store: BackingStore) -> None:
    keys = ["b", "a", "aa", "B", "é", "z", "中", "😀", "a0", "a-", "~"]
    await store.write([row(k, k.encode()) for k in keys])
    scanned = await store.scan()
    assert [k for k, _ in scanned] == sorted(keys)
    assert dict(scanned) == {k: digest(k, k.encode()) for k in keys}
    # Half-open ranges and paging.
    assert [k for k, _ in await store.scan("a", "b")] == [k for k in sorted(keys) if "a" <= k < "b"]
    first = await store.scan(limit=3)
    rest = await store.scan(first[-1][0] + "\x01", limit=100)
    assert [k for k, _ in first + rest] == sorted(keys)


async def test_range_digest_matches_reference_and_composes(store: BackingStore) -> None:
    rnd = random.Random(7)
    keys = [f"key{rnd.randrange(10**6):07d}" for _ in range(300)]
    rows = {k: row(k, rnd.randbytes(20)) for k in keys}
    await store.write(list(rows.values()))
    everything = await store.range_digest()
    assert everything == RangeDigest.of(r.digest for r in rows.values())
    assert everything.count == len(rows)
    # Disjoint ranges compose: counts add, fingerprints are the reference of the union.
    left = await store.range_digest("", "key0500000")
    right = await store.range_digest("key0500000", None)
    assert left.count + right.count == everything.count
    assert left == RangeDigest.of(r.digest for k, r in rows.items() if k < "key0500000")
    assert right == RangeDigest.of(r.digest for k, r in rows.items() if k >= "key0500000")
    assert await store.range_digest("x", "y") == RangeDigest(0, 0)


async def test_range_digest_changes_when_one_row_changes(store: BackingStore) -> None:
    await store.write([row(f"k{i}", b"v") for i in range(50)])
    before = await store.range_digest()
    await store.write([row("k7", b"w")])
    after = await store.range_digest()
    assert after.count == before.count and after.fingerprint != before.fingerprint


async def test_negative_and_extreme_digests_are_stored_exactly(store: BackingStore) -> None:
    extremes = [-(2**63), 2**63 - 1, -1, 0, 1]
    rows = [StoredKey(f"e{i}", b"x", d, 2**62) for i, d in enumerate(extremes)]
    await store.write(rows)
    assert [d for _, d in await store.scan()] == extremes
    assert await store.range_digest() == RangeDigest.of(extremes)


async def test_rows_survive_close_and_reopen(make_store: Callable[[], BackingStore]) -> None:
    first = make_store()
    await first.open()
    await first.write([row(f"k{i}", f"v{i}".encode()) for i in range(100)], {"hlc_reserved": b"99"})
    await first.close()
    again = make_store()
    await again.open()
    try:
        assert await again.count() == 100
        assert await again.read("k42") == b"v42"
        assert await again.read_meta("hlc_reserved") == b"99"
    finally:
        await again.close()


async def test_large_batch_is_atomic_and_complete(store: BackingStore) -> None:
    rows = [row(f"bulk{i:05d}", i.to_bytes(4, "big") * 8) for i in range(3000)]
    await store.write(rows)
    assert await store.count() == 3000
    found = await store.read_many([r.key for r in rows])
    assert found == {r.key: r.versions for r in rows}


async def test_second_open_of_same_store_is_refused(
    make_store: Callable[[], BackingStore], store: BackingStore
) -> None:
    if store.url == "memory:":
        # A memory store is private to its object: a second holder is the same object, which is fine.
        assert make_store() is store
        return
    other = make_store()
    with pytest.raises(StorageLockedError):
        await other.open()
    # The first holder is unaffected.
    await store.write([row("still", b"works")])
    assert await store.read("still") == b"works"


async def test_deletes_remove_rows_atomically_with_the_rest_of_a_batch(store: BackingStore) -> None:
    await store.write([row("a", b"1"), row("b", b"2"), row("c", b"3")])
    await store.write([row("d", b"4")], {"m": b"x"}, deletes=["a", "c", "never-there"])
    assert await store.read("a") is None and await store.read("c") is None
    assert await store.read("b") == b"2" and await store.read("d") == b"4"
    assert await store.read_meta("m") == b"x"
    assert [k for k, _ in await store.scan()] == ["b", "d"]
    assert await store.count() == 2
    assert await store.range_digest() == RangeDigest.of(d for _, d in await store.scan())
    await store.write([], deletes=["b"])  # a batch of deletes alone
    assert await store.read("b") is None and await store.count() == 1


async def test_older_than_pages_through_old_rows_in_key_order(store: BackingStore) -> None:
    await store.write([row(f"k{i:02}", b"v", ts=i) for i in range(20)])
    first = await store.older_than(10, "", 4)
    assert [k for k, _ in first] == ["k00", "k01", "k02", "k03"] and first[0][1] == b"v"
    rest = await store.older_than(10, first[-1][0], 100)
    assert [k for k, _ in rest] == [f"k{i:02}" for i in range(4, 10)]
    assert await store.older_than(0) == []
