"""`SqlRangeView`: what anti-entropy (`dsm.core.reconcile.RangeView`) reads of a SQL store, on one
synchronous connection. The SQLite and PostgreSQL stores run it off the event loop, inside one read
transaction (`with_range_view`), with their own placeholder style; the SQL is otherwise the same (keys in
byte order: SQLite's BINARY collation, PostgreSQL's "C")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dsm.core.sketch import Sketch, signed64
from dsm.storage.base import RangeDigest

#: The count and digest-half sums of a key range (`RangeDigest.from_sums`), the same SQL in both stores.
#: sum() of 32-bit halves stays an exact int64 up to 2**31 keys (SQLite's total() would round to a float).
RANGE_SUMS = "count(*), coalesce(sum(digest & 4294967295), 0), coalesce(sum((digest >> 32) & 4294967295), 0)"
#: A range's digests as one string of 16 hex digits each (two's complement), by placeholder style: SQLite
#: (`printf`'s %llx) and PostgreSQL (`to_hex` of a bigint). The database builds it without Python objects per
#: row (and, for SQLite, with the GIL released for the whole aggregate, so the event loop keeps running):
#: whole exchanges over 1,000,000 keys took 10-30 % less time than with the digests fetched row by row
#: (BENCHMARKS, issue 21 part 1, "Sketch digests read packed"). One string per range: both databases
#: bound a string at 1 GB, about 67 million keys (the row-by-row read needed ~6 GB of Python objects there).
#: Reading it in bounded parts (`ORDER BY key LIMIT n`) walked the key index and cost 5-30 % more time.
HEX_DIGESTS = {
    "?": "group_concat(printf('%016llx', digest), '')",
    "%s": "string_agg(lpad(to_hex(digest), 16, '0'), '')",
}
#: Most keys in one `IN (...)` list.
IN_CHUNK = 500
#: Most digests in one `IN (...)` list (each list costs a scan of the range: there is no digest index;
#: both SQLite, 32,766, and PostgreSQL, 65,535, allow this many parameters).
DIGEST_CHUNK = 4096

Fetch = Callable[[str, Sequence[Any]], list[Any]]


class SqlRangeView:
    """Range queries over the `dsm_kv` table through `fetch(sql, args) -> rows`; `mark` is the driver's
    placeholder ("?" for sqlite3, "%s" for psycopg)."""

    def __init__(self, fetch: Fetch, mark: str) -> None:
        self.fetch = fetch
        self.mark = mark
        # The digests of the last range a sketch was built of: a step that finds its first sketch of a range
        # does not peel answers with a larger one of the same range (`reconcile._on_sketch`), and the view
        # lives for one step's read transaction, so the second comes from here instead of another scan.
        self._last: tuple[str, str | None, np.ndarray] | None = None

    def _where(self, hi: str | None) -> str:
        m = self.mark
        return f"key >= {m}" if hi is None else f"key >= {m} AND key < {m}"

    @staticmethod
    def _args(lo: str, hi: str | None) -> tuple[str, ...]:
        return (lo,) if hi is None else (lo, hi)

    def fingerprint(self, lo: str, hi: str | None) -> tuple[int, int]:
        row = self.fetch(f"SELECT {RANGE_SUMS} FROM dsm_kv WHERE {self._where(hi)}", self._args(lo, hi))[0]
        d = RangeDigest.from_sums(int(row[0]), int(row[1]), int(row[2]))
        return d.count, d.fingerprint

    def split(self, lo: str, hi: str | None, parts: int) -> list[tuple[str, int, int]]:
        count, _ = self.fingerprint(lo, hi)
        step = max(1, -(-count // parts))
        # One pass: number the range's keys in order and sum each block of `step` of them.
        sql = (
            f"SELECT min(key), {RANGE_SUMS} FROM (SELECT key, digest,"
            f" (row_number() OVER (ORDER BY key) - 1) / {self.mark} AS part"
            f" FROM dsm_kv WHERE {self._where(hi)}) AS numbered GROUP BY part ORDER BY part"
        )
        out = []
        for i, (first, n, low, high) in enumerate(self.fetch(sql, (step, *self._args(lo, hi)))):
            d = RangeDigest.from_sums(int(n), int(low), int(high))
            out.append((lo if i == 0 else first, d.count, d.fingerprint))
        return out or [(lo, 0, 0)]

    def digests(self, lo: str, hi: str | None) -> list[tuple[str, int]]:
        sql = f"SELECT key, digest FROM dsm_kv WHERE {self._where(hi)} ORDER BY key"
        return [(k, int(d)) for k, d in self.fetch(sql, self._args(lo, hi))]

    def entries(self, keys: Sequence[str]) -> list[tuple[str, bytes]]:
        found: dict[str, bytes] = {}
        for i in range(0, len(keys), IN_CHUNK):
            chunk = list(keys[i : i + IN_CHUNK])
            marks = ",".join([self.mark] * len(chunk))
            for key, versions in self.fetch(f"SELECT key, versions FROM dsm_kv WHERE key IN ({marks})", chunk):
                found[key] = bytes(versions)
        return [(k, found[k]) for k in keys if k in found]

    def sketch(self, lo: str, hi: str | None, cells: int, salt: int) -> Sketch:
        last = self._last
        if last is not None and last[0] == lo and last[1] == hi:
            return Sketch.build(last[2], cells, salt)
        sql = f"SELECT {HEX_DIGESTS[self.mark]} FROM dsm_kv WHERE {self._where(hi)}"
        packed = self.fetch(sql, self._args(lo, hi))[0][0]
        digests = np.frombuffer(bytes.fromhex(packed or ""), dtype=">i8").astype(np.int64)
        self._last = (lo, hi, digests)
        return Sketch.build(digests, cells, salt)

    def keys_of(self, lo: str, hi: str | None, digests: Sequence[int]) -> list[str]:
        signed = [signed64(d) for d in digests]
        out: list[str] = []
        for i in range(0, len(signed), DIGEST_CHUNK):
            chunk = signed[i : i + DIGEST_CHUNK]
            marks = ",".join([self.mark] * len(chunk))
            sql = f"SELECT key FROM dsm_kv WHERE {self._where(hi)} AND digest IN ({marks})"
            out.extend(k for (k,) in self.fetch(sql, (*self._args(lo, hi), *chunk)))
        return out
