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

Contract every backend keeps (tested by `tests/node/test_storage_conformance.py`):
- `write` is atomic: all of a batch's rows and metadata are stored, or none. When it returns, the batch is
  durable to the store's configured level.
- Only one process uses a store at a time; an open of a store in use raises `StorageLockedError`.
- Failures raise `StorageError` subclasses; committed data is never damaged by a failed call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from dsm.core.replica import StoredKey

__all__ = ["BackingStore", "RangeDigest", "StoredKey"]

MASK32 = 0xFFFFFFFF
SCHEMA_VERSION = 1
#: Metadata name of the schema version.
META_SCHEMA = "schema_version"


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
        self, rows: Sequence[StoredKey], meta: Mapping[str, bytes] | None = None, deletes: Sequence[str] = ()
    ) -> None:
        """Stores `rows` (replacing each key's previous row) and `meta`, and removes the rows of `deletes`
        (purged tombstones), atomically and durably."""

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
        """The largest row `timestamp` (0 when empty). May scan the whole store; used on start only."""

    async def with_range_view(self, fn: Callable[[Any], T]) -> T:
        """Runs `fn` (an anti-entropy step, `dsm.core.reconcile`) against a synchronous, consistent view
        of the store (a `RangeView`), off the event loop where the store can (SQL stores: a worker
        thread inside one read transaction)."""
