"""The in-memory backing store: a `SortedReplica` (ordered rows with their digests) plus each row's timestamp,
commit stamp (`seq`) and expiry, the metadata and the paxos keyspace (a dict beside a sorted list of its
hkeys, apart from the rows so nothing about rows sees it). Nothing survives the process.

Used by tests and the simulator, where thousands of nodes each need a store; it is a real, complete
implementation of the interface (it passes the same conformance suite as the SQL stores). Every operation
is synchronous underneath: the async interface wraps `read_many_now`, `read_paxos_now`, `scan_paxos_now`,
`write_now` and `view`, which the simulator calls directly (it has no event loop), so simulated nodes store
through the same code. A batch is checked before anything changes, so a refused batch leaves no trace.
`changed_since` and `expiring` scan every row (no index): enough for tests and the simulator.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from dsm.core.reconcile import SortedReplica
from dsm.errors import ClosedError
from dsm.storage.base import ChangedRow, ExpiringRow, PaxosEntry, RangeDigest, StoredKey, paxos_changes

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
        self._seqs: dict[str, int] = {}
        self._expiries: dict[str, int] = {}  # only the rows that expire
        self._meta: dict[str, bytes] = {}
        self._paxos: dict[str, bytes] = {}
        self._paxos_hkeys: list[str] = []  # sorted
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

    def read_paxos_now(self, hkeys: Sequence[str]) -> dict[str, bytes]:
        """`read_paxos`, without an event loop."""
        self._check()
        paxos = self._paxos
        return {h: v for h in hkeys if (v := paxos.get(h)) is not None}

    def scan_paxos_now(self, start: str = "", end: str | None = None, limit: int = 1000) -> list[tuple[str, bytes]]:
        """`scan_paxos`, without an event loop."""
        self._check()
        hkeys = self._paxos_hkeys
        lo = bisect.bisect_left(hkeys, start)
        hi = len(hkeys) if end is None else max(lo, bisect.bisect_left(hkeys, end))
        return [(h, self._paxos[h]) for h in hkeys[lo : min(hi, lo + max(0, limit))]]

    def write_now(
        self,
        rows: Sequence[StoredKey],
        meta: Mapping[str, bytes] | None = None,
        deletes: Sequence[str] = (),
        paxos: Sequence[PaxosEntry] = (),
    ) -> None:
        """`write`, without an event loop."""
        self._check()
        # Checked first: nothing below can fail, so the batch is all or nothing.
        paxos_upserts, paxos_deletes = paxos_changes(paxos) if paxos else ([], [])
        replica, timestamps, seqs, expiries = self._rows, self._timestamps, self._seqs, self._expiries
        for row in rows:
            replica.put(row.key, row.versions, row.digest)
            timestamps[row.key] = row.timestamp
            seqs[row.key] = row.seq
            if row.expires_ms is None:
                expiries.pop(row.key, None)
            else:
                expiries[row.key] = row.expires_ms
        if meta:
            self._meta.update(meta)
        for key in deletes:
            replica.pop(key)
            timestamps.pop(key, None)
            seqs.pop(key, None)
            expiries.pop(key, None)
        states, hkeys = self._paxos, self._paxos_hkeys
        for hkey, state in paxos_upserts:
            if hkey not in states:
                bisect.insort(hkeys, hkey)
            states[hkey] = state
        for hkey in paxos_deletes:
            if states.pop(hkey, None) is not None:
                del hkeys[bisect.bisect_left(hkeys, hkey)]

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
        self,
        rows: Sequence[StoredKey],
        meta: Mapping[str, bytes] | None = None,
        deletes: Sequence[str] = (),
        paxos: Sequence[PaxosEntry] = (),
    ) -> None:
        self.write_now(rows, meta, deletes, paxos)

    async def read_paxos(self, hkeys: Sequence[str]) -> dict[str, bytes]:
        return self.read_paxos_now(hkeys)

    async def scan_paxos(self, start: str = "", end: str | None = None, limit: int = 1000) -> list[tuple[str, bytes]]:
        return self.scan_paxos_now(start, end, limit)

    def changed_since_now(
        self, stamp: int, lo: str = "", hi: str | None = None, after_key: str | None = None, limit: int = 1000
    ) -> list[ChangedRow]:
        """`changed_since`, without an event loop."""
        self._check()
        rows = self._rows
        found = sorted(
            (seq, key)
            for key, seq in self._seqs.items()
            if (seq > stamp or (after_key is not None and seq == stamp and key > after_key))
            and key >= lo
            and (hi is None or key < hi)
        )
        return [(key, rows[key], seq) for seq, key in found[: max(0, limit)]]

    def expiring_now(
        self, after_ms: int, upto_ms: int, lo: str = "", hi: str | None = None, limit: int = 1000
    ) -> list[ExpiringRow]:
        """`expiring`, without an event loop."""
        self._check()
        rows = self._rows
        found = sorted(
            (expires_ms, key)
            for key, expires_ms in self._expiries.items()
            if after_ms < expires_ms <= upto_ms and key >= lo and (hi is None or key < hi)
        )
        return [(key, rows[key], expires_ms) for expires_ms, key in found[: max(0, limit)]]

    async def changed_since(
        self, stamp: int, lo: str = "", hi: str | None = None, after_key: str | None = None, limit: int = 1000
    ) -> list[ChangedRow]:
        return self.changed_since_now(stamp, lo, hi, after_key, limit)

    async def expiring(
        self, after_ms: int, upto_ms: int, lo: str = "", hi: str | None = None, limit: int = 1000
    ) -> list[ExpiringRow]:
        return self.expiring_now(after_ms, upto_ms, lo, hi, limit)

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
        return max(max(self._timestamps.values(), default=0), max(self._seqs.values(), default=0))
