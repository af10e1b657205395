"""The backing-store interface: a small, dumb, ordered map from key to encoded versions.

A store keeps, per key, the canonical encoding of the key's version set, a 64-bit digest of it and the
largest version timestamp in it; plus a few named metadata blobs. Merging versions and resolving conflicts
happen above the stores, once (`dsm.core.versions`); a store never interprets what it holds.

What anti-entropy needs is here from the start, so later protocol work needs no new schema:
- `scan`: keys in a stable order (ascending by Unicode code point, which is UTF-8 byte order, the same in
  every backend) with their digests, a bounded page at a time;
- `range_digest`: the count and a fingerprint of every key in a half-open key range. The fingerprint is two
  independent 32-bit sums (of the digests' low and high halves), so the digest of a union of disjoint
  ranges is computable from the parts and identical in every backend.

A second, separate keyspace holds the per-key Paxos acceptor state of conditional writes (issue 19;
`dsm.core.cas_acceptor.AcceptorState`, encoded): `hkey -> state bytes`, written with `write(..., paxos=...)`,
read with `read_paxos` and paged in `hkey` order with `scan_paxos`. The caller names entries with
`paxos_key(key)`, the key's ring position in 16 hex digits followed by the key, so the entries of a ring arc
are one `scan_paxos` range (a handover sweep pages through an arc). It is invisible to everything about rows:
`scan`, `range_digest`, `count`, `older_than`, `max_timestamp`, `with_range_view` and so anti-entropy and the
tombstone sweep never see it. That is deliberate: an acceptor's state records the votes *this* member cast,
and members legitimately differ; copying one member's promise or accepted value to another would make it
claim votes it never cast, which is how Paxos would choose a value a majority never voted for.
Bounds: an `hkey` is at most `max_key_bytes` + 16 bytes, because the caller builds it only from a key it has
already checked (`dsm.node.checks`); a state is at most `cas_acceptor.STATE_MAX_BYTES`, one version set like
a row. Stores do not check these (as for rows): they are the caller's.

Watches (issue 19, schema version 3): each row also records `seq`, the commit stamp of the last commit that
changed it (`StoredKey.seq`, from the replica's clock; 0 for rows from before version 3), and `expires_ms`,
the moment the key becomes absent by expiry (`StoredKey.expires_ms`; None: never). `changed_since` pages
through the rows changed after a stamp in (seq, key) order, the coalesced history a watch replays (no log,
so nothing to compact); `expiring` pages through the rows that expire in a window of wall-clock time, for
expiry events. Both are indexed (`dsm_kv_seq`, and the partial `dsm_kv_expires` on rows that expire).

Contract every backend keeps (tested by `tests/node/test_storage_conformance.py`):
- `write` is atomic: all of a batch's rows, metadata and paxos entries are stored, or none. When it returns,
  the batch is durable to the store's configured level.
- The SQL stores record their `SCHEMA_VERSION` and upgrade an older one in place when they open, in the same
  transaction as the new version number (version 1 lacked the paxos table, versions 1 and 2 the `seq` and
  `expires_ms` columns and their indexes); a store from a newer version is refused with
  `StorageCorruptError`.
- Only one process uses a store at a time; an open of a store in use raises `StorageLockedError`.
- Failures raise `StorageError` subclasses; committed data is never damaged by a failed call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from dsm.core.replica import StoredKey
from dsm.core.ring import position
from dsm.errors import StorageCorruptError

__all__ = [
    "BackingStore",
    "ChangedRow",
    "ExpiringRow",
    "PaxosEntry",
    "RangeDigest",
    "StoredKey",
    "paxos_bound",
    "paxos_key",
]

MASK32 = 0xFFFFFFFF
#: 2 added the paxos keyspace (`dsm_paxos`); 3 the rows' `seq` and `expires_ms` columns. An older store is
#: upgraded when it opens (`schema_to_record`).
SCHEMA_VERSION = 3
#: Metadata name of the schema version.
META_SCHEMA = "schema_version"
#: Characters `paxos_key` puts before the key (the ring position, in hex).
PAXOS_PREFIX_CHARS = 16

#: One paxos-keyspace change of a batch: (hkey, encoded acceptor state), or (hkey, None) to delete it.
PaxosEntry = tuple[str, bytes | None]


def paxos_key(key: str) -> str:
    """The paxos-keyspace name of `key`'s acceptor state: the key's ring position (the same BLAKE2b-64
    position nodes have, `dsm.core.ring.position`) in 16 lowercase hex digits, then the key itself. So
    entries sort by ring position and the keys of an arc are one `scan_paxos` range (`paxos_bound`)."""
    return f"{position(key):0{PAXOS_PREFIX_CHARS}x}{key}"


def paxos_bound(ring_position: int) -> str:
    """The `scan_paxos` bound at a ring position: `scan_paxos(paxos_bound(a), paxos_bound(b))` pages through
    the keys whose position is in [a, b) (for a <= b; a wrapping arc is two scans)."""
    return f"{ring_position:0{PAXOS_PREFIX_CHARS}x}"


def paxos_changes(entries: Sequence[PaxosEntry]) -> tuple[list[tuple[str, bytes]], list[str]]:
    """A batch's paxos entries as (upserts, deletes), the last entry of an hkey winning; checked before a
    backend changes anything.

    Raises:
        TypeError: an hkey that is not a str, or a state that is neither bytes nor None (a caller's bug).
    """
    final: dict[str, bytes | None] = {}
    for hkey, state in entries:
        if not isinstance(hkey, str):
            raise TypeError(f"paxos hkey must be a str, got {type(hkey).__name__}")
        if state is not None and not isinstance(state, bytes):
            raise TypeError(f"paxos state of {hkey!r} must be bytes or None, got {type(state).__name__}")
        final[hkey] = state
    upserts = [(h, s) for h, s in final.items() if s is not None]
    deletes = [h for h, s in final.items() if s is None]
    return upserts, deletes


#: One row `changed_since` returns: (key, encoded versions, seq).
ChangedRow = tuple[str, bytes, int]
#: One row `expiring` returns: (key, encoded versions, expires_ms).
ExpiringRow = tuple[str, bytes, int]


@dataclass(frozen=True, slots=True)
class SchemaStep:
    """What a SQL store does to its schema when it opens (`schema_to_record`).

    Attributes:
        record: the version to record now (None: already current).
        add_row_columns: the store predates version 3: `dsm_kv` needs its `seq` and `expires_ms` columns
            (ALTER TABLE, in the same transaction as the record).
    """

    record: bytes | None
    add_row_columns: bool


def schema_to_record(found: bytes | None, where: str) -> SchemaStep:
    """What a SQL store opening finds as its recorded schema version (`found`; None in a new store) decides:
    the version to record now (new store, or an older one upgraded in place by the same transaction), or
    None when it is current, and whether the rows' version-3 columns must be added.

    Raises:
        StorageCorruptError: a newer or unreadable version (`where` names the store in the message).
    """
    current = str(SCHEMA_VERSION).encode()
    if found is None:
        return SchemaStep(current, False)  # a new store: CREATE TABLE made every column
    if found == current:
        return SchemaStep(None, False)
    if found in (b"1", b"2"):
        # Version 1 also lacked the paxos table, which CREATE TABLE IF NOT EXISTS just added.
        return SchemaStep(current, True)
    raise StorageCorruptError(
        f"{where}: schema version {found!r}; this DSM reads version {SCHEMA_VERSION} (or 1 and 2, upgraded)"
    )


@dataclass(frozen=True, slots=True)
class RangeDigest:
    """The summary of a key range: how many keys and a fingerprint of their digests."""

    count: int
    fingerprint: int

    @staticmethod
    def of(digests: Iterable[int]) -> RangeDigest:
        """The range digest of some key digests, as every backend computes it."""
        count = low = high = 0
        for d in digests:
            count += 1
            low += d & MASK32
            high += (d >> 32) & MASK32
        return RangeDigest.from_sums(count, low, high)

    @staticmethod
    def from_sums(count: int, low_sum: int, high_sum: int) -> RangeDigest:
        return RangeDigest(count, ((high_sum & MASK32) << 32) | (low_sum & MASK32))


T = TypeVar("T")


class BackingStore(Protocol):
    """What a node needs of its store. All methods may raise `StorageError` subclasses."""

    #: The store's URL, with any password removed (safe to log).
    url: str

    async def open(self) -> None:
        """Opens (creating if needed) the store; checks its schema. Idempotent."""

    async def close(self) -> None:
        """Flushes and closes. Idempotent; the store may be opened again."""

    async def read(self, key: str) -> bytes | None:
        """The encoded versions of `key`, or None."""

    async def read_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The encoded versions of those `keys` that are present."""

    async def write(
        self,
        rows: Sequence[StoredKey],
        meta: Mapping[str, bytes] | None = None,
        deletes: Sequence[str] = (),
        paxos: Sequence[PaxosEntry] = (),
    ) -> None:
        """Stores `rows` (replacing each key's previous row) and `meta`, removes the rows of `deletes`
        (purged tombstones) and applies `paxos` (hkey -> state, None deleting; the last entry of an hkey
        wins), all in one transaction, durably.

        Raises:
            TypeError: a malformed paxos entry (nothing is stored).
        """

    async def read_paxos(self, hkeys: Sequence[str]) -> dict[str, bytes]:
        """The paxos-keyspace states of those `hkeys` that are present."""

    async def scan_paxos(self, start: str = "", end: str | None = None, limit: int = 1000) -> list[tuple[str, bytes]]:
        """(hkey, state) of the paxos keyspace in [start, end), ascending by hkey, at most `limit`."""

    async def changed_since(
        self, stamp: int, lo: str = "", hi: str | None = None, after_key: str | None = None, limit: int = 1000
    ) -> list[ChangedRow]:
        """(key, versions, seq) of the rows in [lo, hi) changed after commit stamp `stamp`, in (seq, key)
        order, at most `limit`: those with `seq > stamp`, or, with `after_key`, those whose (seq, key) sorts
        after (stamp, after_key) (the next page after a row (stamp, after_key))."""

    async def expiring(
        self, after_ms: int, upto_ms: int, lo: str = "", hi: str | None = None, limit: int = 1000
    ) -> list[ExpiringRow]:
        """(key, versions, expires_ms) of the rows in [lo, hi) with `after_ms < expires_ms <= upto_ms`, in
        (expires_ms, key) order, at most `limit`."""

    async def older_than(self, timestamp: int, after: str = "", limit: int = 1000) -> list[tuple[str, bytes]]:
        """(key, versions) of rows whose `timestamp` is below `timestamp` and whose key sorts after `after`,
        in key order, at most `limit` (the tombstone sweep pages through them)."""

    async def scan(self, start: str = "", end: str | None = None, limit: int = 1000) -> list[tuple[str, int]]:
        """(key, digest) of keys in [start, end) in ascending order, at most `limit` of them."""

    async def range_digest(self, start: str = "", end: str | None = None) -> RangeDigest:
        """The count and fingerprint of keys in [start, end)."""

    async def read_meta(self, name: str) -> bytes | None:
        """A metadata blob, or None."""

    async def count(self) -> int:
        """The number of keys stored (tombstones included)."""

    async def max_timestamp(self) -> int:
        """The largest row `timestamp` or `seq` (0 when empty): every clock reading the store holds, so a
        restarted clock starts above them. May scan the whole store; used on start only."""

    async def with_range_view(self, fn: Callable[[Any], T]) -> T:
        """Runs `fn` (an anti-entropy step, `dsm.core.reconcile`) against a synchronous, consistent view
        of the store (a `RangeView`), off the event loop where the store can (SQL stores: a worker
        thread inside one read transaction)."""
