"""The in-memory backing store: a dict plus a sorted key list. Nothing survives the process.

Used by tests and the simulator, where thousands of nodes each need a store; it is a real, complete
implementation of the interface (it passes the same conformance suite as the SQL stores).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from dsm.core.reconcile import SortedReplica
from dsm.errors import ClosedError
from dsm.storage.base import RangeDigest, StoredKey

T = TypeVar("T")


class MemoryStore:
    """A `BackingStore` held in memory."""

    def __init__(self) -> None:
        self.url = "memory:"
        self._rows: dict[str, StoredKey] = {}
        self._keys: list[str] = []
        self._meta: dict[str, bytes] = {}
        self._open = False

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    def _check(self) -> None:
        if not self._open:
            raise ClosedError("the memory store is not open")

    async def with_range_view(self, fn: Callable[[SortedReplica], T]) -> T:
        """Runs `fn` on an in-memory snapshot of the store (built for the call: memory stores are small)."""
        self._check()
        return fn(SortedReplica({key: row.versions for key, row in self._rows.items()}))

    async def read(self, key: str) -> bytes | None:
        self._check()
        row = self._rows.get(key)
        return row.versions if row else None

    async def read_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        self._check()
        return {k: self._rows[k].versions for k in keys if k in self._rows}

    async def write(
        self, rows: Sequence[StoredKey], meta: Mapping[str, bytes] | None = None, deletes: Sequence[str] = ()
    ) -> None:
        self._check()
        for row in rows:
            if row.key not in self._rows:
                bisect.insort(self._keys, row.key)
            self._rows[row.key] = row
        if meta:
            self._meta.update(meta)
        for key in deletes:
            if self._rows.pop(key, None) is not None:
                del self._keys[bisect.bisect_left(self._keys, key)]

    async def older_than(self, timestamp: int, after: str = "", limit: int = 1000) -> list[tuple[str, bytes]]:
        self._check()
        out: list[tuple[str, bytes]] = []
        for key in self._keys[bisect.bisect_right(self._keys, after) :]:
            row = self._rows[key]
            if row.timestamp < timestamp:
                out.append((key, row.versions))
                if len(out) >= limit:
                    break
        return out

    def _range(self, start: str, end: str | None) -> tuple[int, int]:
        lo = bisect.bisect_left(self._keys, start)
        hi = len(self._keys) if end is None else bisect.bisect_left(self._keys, end)
        return lo, max(lo, hi)

    async def scan(self, start: str = "", end: str | None = None, limit: int = 1000) -> list[tuple[str, int]]:
        self._check()
        lo, hi = self._range(start, end)
        return [(k, self._rows[k].digest) for k in self._keys[lo : min(hi, lo + limit)]]

    async def range_digest(self, start: str = "", end: str | None = None) -> RangeDigest:
        self._check()
        lo, hi = self._range(start, end)
        return RangeDigest.of(self._rows[k].digest for k in self._keys[lo:hi])

    async def read_meta(self, name: str) -> bytes | None:
        self._check()
        return self._meta.get(name)

    async def count(self) -> int:
        self._check()
        return len(self._rows)

    async def max_timestamp(self) -> int:
        self._check()
        return max((row.timestamp for row in self._rows.values()), default=0)
