"""The in-memory backing store: a `SortedReplica` (ordered rows with their digests) plus each row's timestamp
and the metadata. Nothing survives the process.

Used by tests and the simulator, where thousands of nodes each need a store; it is a real, complete
implementation of the interface (it passes the same conformance suite as the SQL stores). Every operation
is synchronous underneath: the async interface wraps `read_many_now`, `write_now` and `view`, which the
simulator calls directly (it has no event loop), so simulated nodes store through the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from dsm.core.reconcile import SortedReplica
from dsm.errors import ClosedError
from dsm.storage.base import RangeDigest, StoredKey

T = TypeVar("T")


class MemoryStore:
    """A `BackingStore` held in memory.

    Args:
        opened: start open (the simulator's stores, which are never closed), rather than at `open()`.
    """

    def __init__(self, opened: bool = False) -> None:
        self.url = "memory:"
        self._rows = SortedReplica()
        self._timestamps: dict[str, int] = {}
        self._meta: dict[str, bytes] = {}
        self._open = opened

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    def _check(self) -> None:
        if not self._open:
            raise ClosedError("the memory store is not open")

    # --- synchronous access

    def view(self) -> SortedReplica:
        """The rows as a mapping and a `RangeView` (live: it follows later writes)."""
        self._check()
        return self._rows

    def read_many_now(self, keys: Sequence[str]) -> dict[str, bytes]:
        """`read_many`, without an event loop."""
        self._check()
        rows = self._rows
        return {k: v for k in keys if (v := rows.get(k)) is not None}

    def write_now(
        self, rows: Sequence[StoredKey], meta: Mapping[str, bytes] | None = None, deletes: Sequence[str] = ()
    ) -> None:
        """`write`, without an event loop."""
        self._check()
        replica, timestamps = self._rows, self._timestamps
        for row in rows:
            replica.put(row.key, row.versions, row.digest)
            timestamps[row.key] = row.timestamp
        if meta:
            self._meta.update(meta)
        for key in deletes:
            replica.pop(key)
            timestamps.pop(key, None)

    # --- the BackingStore interface

    async def with_range_view(self, fn: Callable[[SortedReplica], T]) -> T:
        """Runs `fn` on the rows (consistent: nothing else runs during the synchronous call)."""
        return fn(self.view())

    async def read(self, key: str) -> bytes | None:
        self._check()
        return self._rows.get(key)

    async def read_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        return self.read_many_now(keys)

    async def write(
        self, rows: Sequence[StoredKey], meta: Mapping[str, bytes] | None = None, deletes: Sequence[str] = ()
    ) -> None:
        self.write_now(rows, meta, deletes)

    async def older_than(self, timestamp: int, after: str = "", limit: int = 1000) -> list[tuple[str, bytes]]:
        self._check()
        out: list[tuple[str, bytes]] = []
        timestamps = self._timestamps
        for key, versions in self._rows.after(after):
            if timestamps.get(key, 0) < timestamp:
                out.append((key, versions))
                if len(out) >= limit:
                    break
        return out

    async def scan(self, start: str = "", end: str | None = None, limit: int = 1000) -> list[tuple[str, int]]:
        self._check()
        return self._rows.digests(start, end, limit)

    async def range_digest(self, start: str = "", end: str | None = None) -> RangeDigest:
        self._check()
        count, fingerprint = self._rows.fingerprint(start, end)
        return RangeDigest(count, fingerprint)

    async def read_meta(self, name: str) -> bytes | None:
        self._check()
        return self._meta.get(name)

    async def count(self) -> int:
        self._check()
        return len(self._rows)

    async def max_timestamp(self) -> int:
        self._check()
        return max(self._timestamps.values(), default=0)
