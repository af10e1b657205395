"""One conformance suite for every backing store: memory, SQLite and PostgreSQL.

Each test runs against all three through `BackingStore` alone, so a backend that passes behaves the same
to the node: atomic batches, replace-on-write, stable key order, range digests identical across backends,
metadata, persistence across reopen (SQLite, PostgreSQL), and the single-user lock. The paxos keyspace
(acceptor state of conditional writes) too: atomic with rows, ordered by hkey, invisible to everything
about rows (anti-entropy included). The watch columns (schema version 3): `changed_since` and `expiring` in
order, by range and in pages, kept with rewrites and deletes; stores of versions 1 and 2, as those versions
created them, upgraded in place in one transaction.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from dsm.core.encoding import digest
from dsm.core.reconcile import SortedReplica
from dsm.core.ring import position
from dsm.core.sketch import salt_of
from dsm.errors import StorageCorruptError, StorageError, StorageLockedError
from dsm.storage import BackingStore, RangeDigest, StoredKey
from dsm.storage.base import META_SCHEMA, SCHEMA_VERSION, paxos_bound, paxos_key
from dsm.storage.postgres import PostgresStore
from dsm.storage.sqlite import SQLiteStore

pytestmark = pytest.mark.parametrize(
    "make_store",
    ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)


def row(key: str, payload: bytes, ts: int = 1, seq: int = 0, expires_ms: int | None = None) -> StoredKey:
    return StoredKey(key, payload, digest(key, payload), ts, seq, expires_ms)


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


# --- the paxos keyspace


def run_sql(request: pytest.FixtureRequest, store: BackingStore, statements: Sequence[str]) -> None:
    """Runs SQL on the database under a SQL store, on a connection of its own (to age or break it)."""
    if isinstance(store, SQLiteStore):
        with contextlib.closing(sqlite3.connect(store.path, isolation_level=None)) as con:
            for statement in statements:
                con.execute(statement)
    else:
        assert isinstance(store, PostgresStore)
        import psycopg

        with psycopg.connect(request.getfixturevalue("postgres_url"), autocommit=True) as con:
            for statement in statements:
                con.execute(statement)


def set_schema_version(request: pytest.FixtureRequest, store: BackingStore, version: int) -> None:
    blob = "BLOB" if isinstance(store, SQLiteStore) else "BYTEA"
    run_sql(request, store, [f"UPDATE dsm_meta SET value = CAST('{version}' AS {blob}) WHERE name = '{META_SCHEMA}'"])


def no_schema_in_memory(store: BackingStore) -> None:
    if store.url == "memory:":
        pytest.skip("the memory store keeps nothing across processes, so it has no schema to version or migrate")


async def test_paxos_entries_are_stored_replaced_and_deleted(store: BackingStore) -> None:
    await store.write([], paxos=[("h1", b"one"), ("h2", b"two"), ("h3", b"three")])
    assert await store.read_paxos(["h1", "h2", "missing"]) == {"h1": b"one", "h2": b"two"}
    await store.write([], paxos=[("h1", b"uno"), ("h2", None), ("never-there", None)])
    assert await store.read_paxos(["h1", "h2", "h3"]) == {"h1": b"uno", "h3": b"three"}
    # Within a batch the last entry of an hkey wins, whether it stores or deletes.
    await store.write([], paxos=[("h4", b"a"), ("h4", b"b"), ("h3", b"x"), ("h3", None)])
    assert await store.read_paxos(["h3", "h4"]) == {"h4": b"b"}
    assert [h for h, _ in await store.scan_paxos()] == ["h1", "h4"]
    assert await store.read_paxos([]) == {}


async def test_paxos_entries_go_in_the_same_batch_as_rows_and_meta(store: BackingStore) -> None:
    state = bytes(range(256)) * 64  # binary, 16 KiB
    await store.write([row("k", b"v")], {"m": b"1"}, paxos=[(paxos_key("k"), state)])
    assert await store.read("k") == b"v" and await store.read_meta("m") == b"1"
    assert await store.read_paxos([paxos_key("k")]) == {paxos_key("k"): state}
    # A row delete and a paxos delete in one batch.
    await store.write([row("j", b"w")], deletes=["k"], paxos=[(paxos_key("k"), None), (paxos_key("j"), b"s")])
    assert await store.read("k") is None and await store.read("j") == b"w"
    assert await store.scan_paxos() == [(paxos_key("j"), b"s")]


async def test_scan_paxos_is_in_hkey_order_with_ranges_and_pages(store: BackingStore) -> None:
    keys = ["b", "a", "aa", "B", "é", "z", "中", "😀", "a0", "a-", "~", "x" * 1024]
    states = {paxos_key(k): k.encode() for k in keys}
    await store.write([], paxos=list(states.items()))
    scanned = await store.scan_paxos()
    assert scanned == sorted(states.items())
    # paxos_key sorts by ring position, so an arc [lo, hi) of positions is one range.
    lo, hi = sorted(position(k) for k in keys)[3], sorted(position(k) for k in keys)[8]
    arc = await store.scan_paxos(paxos_bound(lo), paxos_bound(hi))
    assert [h for h, _ in arc] == sorted(paxos_key(k) for k in keys if lo <= position(k) < hi)
    assert len(arc) == 5
    first = await store.scan_paxos(limit=4)
    rest = await store.scan_paxos(first[-1][0] + "\x01", limit=100)
    assert first + rest == scanned and len(first) == 4
    assert await store.scan_paxos(paxos_bound(2**64 - 1) + "~") == []


async def test_paxos_key_is_the_ring_position_then_the_key(store: BackingStore) -> None:
    assert paxos_key("k") == f"{position('k'):016x}k" and paxos_bound(255) == "00000000000000ff"
    # Two keys of equal position prefix compare by the key itself (byte order, as every backend sorts).
    await store.write([], paxos=[(paxos_bound(5) + "b", b"2"), (paxos_bound(5) + "a", b"1"), (paxos_bound(4), b"0")])
    assert [h for h, _ in await store.scan_paxos()] == [paxos_bound(4), paxos_bound(5) + "a", paxos_bound(5) + "b"]


async def test_paxos_keyspace_is_invisible_to_rows_and_anti_entropy(store: BackingStore) -> None:
    rows = [row(f"k{i:02}", f"v{i}".encode(), ts=10 + i) for i in range(20)]
    await store.write(rows)

    def view_of_rows(view: Any) -> tuple[object, ...]:
        hkeys = ["k03", paxos_key("k03"), "p0", "zz"]
        return (
            view.fingerprint("", None),
            view.digests("", None),
            view.split("", None, 4),
            view.entries(hkeys),
            view.keys_of("", None, [r.digest for r in rows]),
        )

    before = (
        await store.scan(),
        await store.range_digest(),
        await store.count(),
        await store.older_than(2**62),
        await store.max_timestamp(),
        await store.with_range_view(view_of_rows),
    )
    # Paxos entries named like rows, like paxos_key(row key), and sorting before and after every row.
    paxos = [("k03", b"vote"), (paxos_key("k03"), b"vote"), ("p0", b"vote"), ("", b"vote"), ("zz", b"vote")]
    await store.write([], paxos=paxos)
    after = (
        await store.scan(),
        await store.range_digest(),
        await store.count(),
        await store.older_than(2**62),
        await store.max_timestamp(),
        await store.with_range_view(view_of_rows),
    )
    assert after == before
    assert await store.read("p0") is None and await store.read_many(["zz", ""]) == {}
    assert await store.read("k03") == b"v3"
    # And rows are invisible to the paxos keyspace.
    assert [h for h, _ in await store.scan_paxos()] == sorted(h for h, _ in paxos)
    assert await store.read_paxos(["k04"]) == {}


async def test_a_range_view_sketches_as_the_in_memory_replica_does(store: BackingStore) -> None:
    """Every store's view builds the same difference sketches as `SortedReplica` over the same rows: digests
    of either sign (the SQL stores read them packed as hex), whole space, sub-ranges, an empty range."""
    rows = [row(f"k{i:03}", f"v{i}".encode()) for i in range(300)]
    await store.write(rows)
    assert any(r.digest < 0 for r in rows) and any(r.digest > 0 for r in rows)
    memory = SortedReplica({r.key: r.versions for r in rows})
    ranges = [("", None, 96), ("k050", "k120", 30), ("k2", None, 201), ("x", None, 30), ("k100", "k100", 30)]

    def sketches(view: Any) -> list[bytes]:
        return [view.sketch(lo, hi, cells, salt_of(7)).to_bytes() for lo, hi, cells in ranges]

    assert await store.with_range_view(sketches) == sketches(memory)


async def test_malformed_paxos_entry_refuses_the_whole_batch(store: BackingStore) -> None:
    await store.write([row("a", b"1")], {"m": b"1"}, paxos=[("h", b"old")])
    bad: Any = [("h", b"new"), ("h2", "a str, not bytes")]
    with pytest.raises(TypeError, match="h2"):
        await store.write([row("a", b"2"), row("b", b"2")], {"m": b"2"}, deletes=["a"], paxos=bad)
    assert await store.read_many(["a", "b"]) == {"a": b"1"}
    assert await store.read_meta("m") == b"1"
    assert await store.scan_paxos() == [("h", b"old")]


async def test_failure_inside_the_transaction_stores_neither_rows_nor_paxos(
    request: pytest.FixtureRequest, store: BackingStore
) -> None:
    if store.url == "memory:":
        pytest.skip("the memory store cannot fail after its up-front check (the malformed-entry test covers it)")
    await store.write([row("a", b"1"), row("gone", b"x")], {"m": b"1"}, paxos=[("h", b"old"), ("del", b"d")])
    # The database refuses the paxos entry 'boom', which the store writes after the rows, meta and row deletes.
    if isinstance(store, SQLiteStore):
        inject = [
            "CREATE TRIGGER dsm_test_fail BEFORE INSERT ON dsm_paxos WHEN NEW.hkey = 'boom'"
            " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        ]
    else:
        inject = [
            "CREATE FUNCTION dsm_test_fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.hkey = 'boom' THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER dsm_test_fail BEFORE INSERT ON dsm_paxos FOR EACH ROW EXECUTE FUNCTION dsm_test_fail()",
        ]
    run_sql(request, store, inject)
    batch: dict[str, Any] = {
        "rows": [row("a", b"2"), row("b", b"2")],
        "meta": {"m": b"2"},
        "deletes": ["gone"],
        "paxos": [("h", b"new"), ("del", None), ("h2", b"new"), ("boom", b"new")],
    }
    with pytest.raises(StorageError, match="injected failure"):
        await store.write(**batch)
    assert await store.read_many(["a", "b", "gone"]) == {"a": b"1", "gone": b"x"}
    assert await store.read_meta("m") == b"1"
    assert await store.scan_paxos() == [("del", b"d"), ("h", b"old")]
    assert await store.count() == 2
    # The store is still usable: without the fault the same batch goes in whole.
    run_sql(
        request, store, ["DROP TRIGGER dsm_test_fail" + ("" if isinstance(store, SQLiteStore) else " ON dsm_paxos")]
    )
    await store.write(**batch)
    assert await store.read_many(["a", "b", "gone"]) == {"a": b"2", "b": b"2"}
    assert await store.read_meta("m") == b"2"
    assert await store.scan_paxos() == [("boom", b"new"), ("h", b"new"), ("h2", b"new")]


async def test_paxos_entries_survive_close_and_reopen(make_store: Callable[[], BackingStore]) -> None:
    first = make_store()
    await first.open()
    await first.write([row("k", b"v")], paxos=[(paxos_key(f"k{i}"), f"s{i}".encode()) for i in range(50)])
    await first.write([], paxos=[(paxos_key("k7"), None)])
    await first.close()
    again = make_store()
    await again.open()
    try:
        scanned = await again.scan_paxos()
        assert len(scanned) == 49 and paxos_key("k7") not in dict(scanned)
        assert await again.read_paxos([paxos_key("k42")]) == {paxos_key("k42"): b"s42"}
        assert await again.read("k") == b"v"
    finally:
        await again.close()


# What older versions of DSM created, verbatim (storage/sqlite.py and storage/postgres.py at schema versions 1
# and 2): a store of that version is these tables, rows written with four columns, and the version recorded.
OLD_SCHEMAS: dict[str, dict[int, list[str]]] = {
    "sqlite": {
        1: [
            "CREATE TABLE IF NOT EXISTS dsm_kv ( key TEXT PRIMARY KEY NOT NULL, versions BLOB NOT NULL,"
            " digest INTEGER NOT NULL, ts INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS dsm_meta (name TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL)",
        ],
        2: ["CREATE TABLE IF NOT EXISTS dsm_paxos (hkey TEXT PRIMARY KEY NOT NULL, state BLOB NOT NULL)"],
    },
    "postgres": {
        1: [
            'CREATE TABLE IF NOT EXISTS dsm_kv (key TEXT COLLATE "C" PRIMARY KEY, versions BYTEA NOT NULL,'
            " digest BIGINT NOT NULL, ts BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS dsm_meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL)",
        ],
        2: ['CREATE TABLE IF NOT EXISTS dsm_paxos (hkey TEXT COLLATE "C" PRIMARY KEY, state BYTEA NOT NULL)'],
    },
}


def make_old_store(
    request: pytest.FixtureRequest, store: BackingStore, version: int, rows: Sequence[StoredKey]
) -> None:
    """Creates, on an empty database, the store an older DSM (schema `version`) would have left."""
    dialect = "sqlite" if isinstance(store, SQLiteStore) else "postgres"
    statements = [s for v in range(1, version + 1) for s in OLD_SCHEMAS[dialect][v]]
    blob, mark = ("BLOB", "?") if dialect == "sqlite" else ("BYTEA", "%s")
    statements.append(f"INSERT INTO dsm_meta(name, value) VALUES ('{META_SCHEMA}', CAST('{version}' AS {blob}))")
    statements.append(f"INSERT INTO dsm_meta(name, value) VALUES ('hlc_reserved', CAST('77' AS {blob}))")
    run_sql(request, store, statements)
    insert = f"INSERT INTO dsm_kv(key, versions, digest, ts) VALUES ({mark}, {mark}, {mark}, {mark})"
    if dialect == "sqlite":
        assert isinstance(store, SQLiteStore)
        with contextlib.closing(sqlite3.connect(store.path, isolation_level=None)) as con:
            con.executemany(insert, [(r.key, r.versions, r.digest, r.timestamp) for r in rows])
    else:
        import psycopg

        with psycopg.connect(request.getfixturevalue("postgres_url"), autocommit=True) as con:
            con.cursor().executemany(insert, [(r.key, r.versions, r.digest, r.timestamp) for r in rows])


def index_names(request: pytest.FixtureRequest, store: BackingStore) -> set[str]:
    if isinstance(store, SQLiteStore):
        with contextlib.closing(sqlite3.connect(store.path)) as con:
            return {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    import psycopg

    with psycopg.connect(request.getfixturevalue("postgres_url")) as con:
        return {n for (n,) in con.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'dsm_kv'")}


@pytest.mark.parametrize("old_version", [1, 2])
async def test_older_store_is_upgraded_in_place_and_keeps_its_rows(
    request: pytest.FixtureRequest, make_store: Callable[[], BackingStore], old_version: int
) -> None:
    first = make_store()
    no_schema_in_memory(first)
    old_rows = [row(f"k{i:02}", f"v{i}".encode(), ts=100 + i) for i in range(30)]
    make_old_store(request, first, old_version, old_rows)
    assert SCHEMA_VERSION == 3
    upgraded = make_store()
    await upgraded.open()
    try:
        assert await upgraded.read_meta(META_SCHEMA) == b"3"
        assert await upgraded.count() == 30 and await upgraded.read("k29") == b"v29"
        assert await upgraded.range_digest() == RangeDigest.of(r.digest for r in old_rows)
        assert await upgraded.read_meta("hlc_reserved") == b"77"
        assert await upgraded.max_timestamp() == 129
        # Old rows have seq 0 (below every cursor: none existed) and no expiry.
        assert [k for k, _, _ in await upgraded.changed_since(-1, limit=100)] == [r.key for r in old_rows]
        assert {seq for _, _, seq in await upgraded.changed_since(-1, limit=100)} == {0}
        assert await upgraded.changed_since(0) == [] and await upgraded.expiring(0, 2**62) == []
        assert await upgraded.scan_paxos() == []
        await upgraded.write(
            [row("k05", b"new", ts=200, seq=500, expires_ms=9_000)], paxos=[(paxos_key("k1"), b"vote")]
        )
        assert await upgraded.changed_since(0) == [("k05", b"new", 500)]
        assert await upgraded.expiring(0, 10_000) == [("k05", b"new", 9_000)]
        assert {"dsm_kv_seq", "dsm_kv_expires"} <= index_names(request, upgraded)
    finally:
        await upgraded.close()
    again = make_store()
    await again.open()
    try:
        assert await again.read_paxos([paxos_key("k1")]) == {paxos_key("k1"): b"vote"}
        assert await again.read_meta(META_SCHEMA) == b"3"
        assert await again.changed_since(0) == [("k05", b"new", 500)]
        assert await again.max_timestamp() == 500
    finally:
        await again.close()


async def test_failed_upgrade_changes_nothing(
    request: pytest.FixtureRequest, make_store: Callable[[], BackingStore]
) -> None:
    """The upgrade is one transaction: when its last step fails, the store is still the version-2 store."""
    first = make_store()
    no_schema_in_memory(first)
    make_old_store(request, first, 2, [row("k", b"v", ts=5)])
    # The database refuses the new version number, which the upgrade records last, after the columns.
    if isinstance(first, SQLiteStore):
        inject = [
            "CREATE TRIGGER dsm_test_fail BEFORE UPDATE ON dsm_meta BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        ]
    else:
        inject = [
            "CREATE FUNCTION dsm_test_fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " RAISE EXCEPTION 'injected failure'; END $$",
            "CREATE TRIGGER dsm_test_fail BEFORE UPDATE ON dsm_meta FOR EACH ROW EXECUTE FUNCTION dsm_test_fail()",
        ]
    run_sql(request, first, inject)
    with pytest.raises(StorageError, match="injected failure"):
        await make_store().open()
    if isinstance(first, SQLiteStore):
        with contextlib.closing(sqlite3.connect(first.path)) as con:
            columns = [c[1] for c in con.execute("PRAGMA table_info(dsm_kv)")]
            version = con.execute(f"SELECT value FROM dsm_meta WHERE name = '{META_SCHEMA}'").fetchone()[0]
    else:
        import psycopg

        with psycopg.connect(request.getfixturevalue("postgres_url")) as con:
            sql = (
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'dsm_kv'"
                " ORDER BY ordinal_position"
            )
            columns = [c for (c,) in con.execute(sql)]
            version = con.execute(f"SELECT value FROM dsm_meta WHERE name = '{META_SCHEMA}'").fetchone()[0]
    assert columns == ["key", "versions", "digest", "ts"] and bytes(version) == b"2"
    run_sql(request, first, ["DROP TRIGGER dsm_test_fail" + ("" if isinstance(first, SQLiteStore) else " ON dsm_meta")])
    again = make_store()
    await again.open()
    try:
        assert await again.read("k") == b"v" and await again.read_meta(META_SCHEMA) == b"3"
    finally:
        await again.close()


async def test_store_of_a_newer_schema_is_refused_and_left_alone(
    request: pytest.FixtureRequest, make_store: Callable[[], BackingStore]
) -> None:
    first = make_store()
    no_schema_in_memory(first)
    await first.open()
    await first.write([row("k", b"v")], paxos=[("h", b"s")])
    await first.close()
    set_schema_version(request, first, 4)
    with pytest.raises(StorageCorruptError, match="schema version b'4'"):
        await make_store().open()
    # Nothing was changed: put version 3 back and everything is there.
    set_schema_version(request, first, 3)
    again = make_store()
    await again.open()
    try:
        assert await again.read("k") == b"v" and await again.read_paxos(["h"]) == {"h": b"s"}
    finally:
        await again.close()


# --- commit stamps and expiries (schema version 3)


async def test_changed_since_is_in_seq_then_key_order_by_range_and_page(store: BackingStore) -> None:
    # Three commits: stamps 10 (three keys), 20 (two keys), 30 (one key rewrites a key of stamp 10).
    await store.write([row("b", b"1", seq=10), row("a", b"1", seq=10), row("x/c", b"1", seq=10)])
    await store.write([row("x/a", b"2", seq=20), row("d", b"2", seq=20)])
    await store.write([row("b", b"3", seq=30)])
    everything = await store.changed_since(0)
    assert everything == [
        ("a", b"1", 10), ("x/c", b"1", 10), ("d", b"2", 20), ("x/a", b"2", 20), ("b", b"3", 30)
    ]  # fmt: skip
    assert await store.changed_since(10) == everything[2:]
    assert await store.changed_since(30) == []
    # A prefix is a key range.
    assert await store.changed_since(0, "x/", "x0") == [("x/c", b"1", 10), ("x/a", b"2", 20)]
    assert await store.changed_since(0, "c") == [("x/c", b"1", 10), ("d", b"2", 20), ("x/a", b"2", 20)]
    # Pages continue after the last (seq, key) seen, even inside one commit's stamp.
    page = await store.changed_since(0, limit=1)
    assert page == everything[:1]
    pages = list(page)
    while page:
        key, _, seq = page[-1]
        page = await store.changed_since(seq, after_key=key, limit=2)
        pages += page
    assert pages == everything
    assert await store.changed_since(10, after_key="a") == everything[1:]
    # A purged row is gone from the history.
    await store.write([], deletes=["d"])
    assert [k for k, _, _ in await store.changed_since(0)] == ["a", "x/c", "x/a", "b"]


async def test_expiring_is_a_window_in_expiry_then_key_order(store: BackingStore) -> None:
    await store.write(
        [
            row("never", b"v", seq=1),
            row("b", b"v", seq=1, expires_ms=1_000),
            row("a", b"v", seq=1, expires_ms=1_000),
            row("p/late", b"v", seq=1, expires_ms=5_000),
            row("p/soon", b"v", seq=1, expires_ms=2_000),
        ]
    )
    assert await store.expiring(0, 10_000) == [
        ("a", b"v", 1_000), ("b", b"v", 1_000), ("p/soon", b"v", 2_000), ("p/late", b"v", 5_000)
    ]  # fmt: skip
    # (after_ms, upto_ms]: the lower bound excludes, the upper includes.
    assert [k for k, _, _ in await store.expiring(1_000, 5_000)] == ["p/soon", "p/late"]
    assert [k for k, _, _ in await store.expiring(0, 1_999)] == ["a", "b"]
    assert await store.expiring(5_000, 10_000) == [] and await store.expiring(3_000, 2_000) == []
    assert [k for k, _, _ in await store.expiring(0, 10_000, "p/", "p0")] == ["p/soon", "p/late"]
    assert [k for k, _, _ in await store.expiring(0, 10_000, limit=1)] == ["a"]
    # A rewrite that no longer expires, or a new expiry, replaces the old one; a purged row is gone.
    await store.write([row("a", b"w", seq=2), row("p/late", b"w", seq=2, expires_ms=1_500)], deletes=["b"])
    assert await store.expiring(0, 10_000) == [("p/late", b"w", 1_500), ("p/soon", b"v", 2_000)]


async def test_seq_and_expiry_survive_reopen_and_bound_max_timestamp(make_store: Callable[[], BackingStore]) -> None:
    first = make_store()
    await first.open()
    await first.write([row("k", b"v", ts=40, seq=70, expires_ms=123), row("j", b"v", ts=90, seq=60)])
    # max_timestamp covers commit stamps too: a restarted clock must start above every one it gave.
    assert await first.max_timestamp() == 90
    await first.write([row("i", b"v", ts=10, seq=95)])
    assert await first.max_timestamp() == 95
    await first.close()
    again = make_store()
    await again.open()
    try:
        assert await again.changed_since(0) == [("j", b"v", 60), ("k", b"v", 70), ("i", b"v", 95)]
        assert await again.expiring(0, 1_000) == [("k", b"v", 123)]
        assert await again.max_timestamp() == 95
    finally:
        await again.close()


async def test_single_row_writes_keep_seq_and_expiry(store: BackingStore) -> None:
    """A batch of one row takes the stores' one-statement fast path."""
    await store.write([row("k", b"1", seq=5, expires_ms=50)])
    await store.write([row("k", b"2", seq=6)])
    assert await store.changed_since(5) == [("k", b"2", 6)] and await store.expiring(0, 100) == []
    await store.write([row("k", b"3", seq=7, expires_ms=70)])
    assert await store.expiring(0, 100) == [("k", b"3", 70)]
