"""Anti-entropy between two replicas of m keys that differ in d keys: bytes, round trips, time.

Both replicas hold the same m keys (real encoded version sets: one version, a 100-byte value), then d keys
are made to differ: a third missing on one side, a third on the other, a third holding a newer version on
the second replica. One exchange (`dsm.core.reconcile`) runs until neither side has anything to say, with
the real merge (`VersionSet.merge`, last-writer-wins) of what each side receives; afterwards the two
replicas must be identical (checked). Bytes are the msgpack encoding of every message plus a 4-byte frame
header; round trips are messages / 2.

Three store kinds, same algorithm: `memory` (`SortedReplica`), `sqlite` (two `SQLiteStore` files on
disk) and `postgres` (two databases of a throwaway PostgreSQL server, as the tests start one), the last
two read through `with_range_view`, merged entries written with `write`.

    python bench/anti_entropy_bench.py --keys 1000000 --diffs 0 1 100 10000 --stores memory sqlite postgres

Writes `bench/results/anti-entropy.json` and prints a Markdown table with the target of issue 4 beside
each row: bytes <= 3 x d x entry size + 4 KiB, round trips <= 6, and <= 1 KiB when d = 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from dsm.core.encoding import decode_versions, digest, encode_versions
from dsm.core.hlc import pack
from dsm.core.messages import Reconcile
from dsm.core.reconcile import SortedReplica, answer, opening
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, Version, VersionSet
from dsm.storage.base import StoredKey
from dsm.storage.postgres import PostgresStore
from dsm.storage.sqlite import SQLiteStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support: the throwaway PostgreSQL

RESULTS = Path(__file__).parent / "results"
VALUE = bytes(range(100))


def entry(key: str, ts: int, node: str) -> bytes:
    return encode_versions(VersionSet((Version(Dot(ts, node), VersionVector(), VALUE),)))


def dataset(m: int, d: int, seed: int) -> tuple[dict[str, bytes], dict[str, bytes | None], dict[str, bytes | None]]:
    """The common rows, and per side the keys that differ (None: missing on that side)."""
    base_ts = pack(1_700_000_000_000)
    rows = {f"user:{i:08d}": entry(f"user:{i:08d}", base_ts + i, "n1") for i in range(m)}
    rng = random.Random(seed)
    a_diff: dict[str, bytes | None] = {}
    b_diff: dict[str, bytes | None] = {}
    for n, key in enumerate(rng.sample(sorted(rows), d)):
        kind = n % 3
        if kind == 0:
            a_diff[key] = None
        elif kind == 1:
            b_diff[key] = None
        else:
            b_diff[key] = entry(key, base_ts + m + n, "n2")
    return rows, a_diff, b_diff


def merged(held: bytes | None, incoming: bytes) -> bytes:
    if held is None or held == incoming:
        return incoming
    return encode_versions(decode_versions(held).merge(decode_versions(incoming), Resolution.LWW))


class Side:
    """One replica as the exchange sees it: answer a message, merge entries."""

    async def answer(self, message: Reconcile, name: str) -> tuple[Reconcile | None, tuple[tuple[str, bytes], ...]]:
        raise NotImplementedError

    async def merge(self, entries: tuple[tuple[str, bytes], ...]) -> None:
        raise NotImplementedError

    async def opening(self, name: str) -> Reconcile:
        raise NotImplementedError

    async def snapshot(self) -> dict[str, bytes]:
        raise NotImplementedError


class MemorySide(Side):
    def __init__(self, rows: dict[str, bytes], diff: dict[str, bytes | None]) -> None:
        self.replica = SortedReplica(rows)
        for key, value in diff.items():
            if value is None:
                self.replica.pop(key)
            else:
                self.replica[key] = value

    async def answer(self, message: Reconcile, name: str) -> tuple[Reconcile | None, tuple[tuple[str, bytes], ...]]:
        return answer(message, name, self.replica)

    async def merge(self, entries: tuple[tuple[str, bytes], ...]) -> None:
        for key, versions in entries:
            self.replica[key] = merged(self.replica.get(key), versions)

    async def opening(self, name: str) -> Reconcile:
        return opening(1, name, self.replica)

    async def snapshot(self) -> dict[str, bytes]:
        return dict(self.replica.items())


class StoreSide(Side):
    """A real backing store (SQLite file or PostgreSQL database) read through `with_range_view`."""

    def __init__(self, store: SQLiteStore | PostgresStore) -> None:
        self.store = store

    async def fill(self, rows: dict[str, bytes], diff: dict[str, bytes | None]) -> None:
        await self.store.open()
        batch: list[StoredKey] = []
        for key, versions in rows.items():
            if key in diff:
                changed = diff[key]
                if changed is None:
                    continue
                versions = changed
            batch.append(StoredKey(key, versions, digest(key, versions), 1))
            if len(batch) >= 20_000:
                await self.store.write(batch)
                batch = []
        if batch:
            await self.store.write(batch)

    async def _view(self, fn: Callable[[Any], Any]) -> Any:
        return await self.store.with_range_view(fn)

    async def answer(self, message: Reconcile, name: str) -> tuple[Reconcile | None, tuple[tuple[str, bytes], ...]]:
        result: tuple[Reconcile | None, tuple[tuple[str, bytes], ...]] = await self._view(
            lambda view: answer(message, name, view)
        )
        return result

    async def merge(self, entries: tuple[tuple[str, bytes], ...]) -> None:
        if not entries:
            return
        held = await self.store.read_many([k for k, _ in entries])
        rows = []
        for key, versions in entries:
            new = merged(held.get(key), versions)
            rows.append(StoredKey(key, new, digest(key, new), 1))
        await self.store.write(rows)

    async def opening(self, name: str) -> Reconcile:
        result: Reconcile = await self._view(lambda view: opening(1, name, view))
        return result

    async def snapshot(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        start = ""
        while True:
            page = await self.store.scan(start, None, 50_000)
            if not page:
                return out
            found = await self.store.read_many([k for k, _ in page])
            out.update(found)
            start = page[-1][0] + "\x01"  # the next key (PostgreSQL text cannot hold NUL; no key here does)


async def exchange(a: Side, b: Side) -> dict[str, Any]:
    sides = {"a": a, "b": b}
    started = time.perf_counter()
    message: Reconcile | None = await a.opening("a")
    turn = "b"
    messages = 0
    size = 0
    sizes = []
    while message is not None:
        messages += 1
        n = len(msgpack.packb(message)) + 4
        size += n
        sizes.append(n)
        reply, entries = await sides[turn].answer(message, turn)
        await sides[turn].merge(entries)
        message = reply
        turn = "a" if turn == "b" else "b"
    return {
        "messages": messages,
        "round_trips": messages / 2,
        "bytes": size,
        "largest_message": max(sizes),
        "seconds": round(time.perf_counter() - started, 3),
    }


async def run_one(kind: str, m: int, d: int, seed: int, tmp: Path, pg: Any = None) -> dict[str, Any]:
    rows, a_diff, b_diff = dataset(m, d, seed)
    entry_size = statistics.mean(len(k) + len(v) for k, v in list(rows.items())[:1000])
    a: Side
    b: Side
    if kind == "memory":
        a, b = MemorySide(rows, a_diff), MemorySide(rows, b_diff)
    else:
        if kind == "sqlite":
            sa = StoreSide(SQLiteStore(tmp / f"a-{d}.sqlite3"))
            sb = StoreSide(SQLiteStore(tmp / f"b-{d}.sqlite3"))
        else:
            assert pg is not None
            sa, sb = StoreSide(PostgresStore(pg.create_database())), StoreSide(PostgresStore(pg.create_database()))
        await sa.fill(rows, a_diff)
        await sb.fill(rows, b_diff)
        a, b = sa, sb
    del rows
    result = await exchange(a, b)
    same = await a.snapshot() == await b.snapshot()
    if isinstance(a, StoreSide) and isinstance(b, StoreSide):
        await a.store.close()
        await b.store.close()
    budget = 3 * d * entry_size + 4096 if d else 1024
    return {
        "store": kind,
        "keys": m,
        "diffs": d,
        "entry_bytes": round(entry_size, 1),
        **result,
        "budget_bytes": round(budget),
        "bytes_ok": result["bytes"] <= budget,
        "round_trips_ok": result["round_trips"] <= 6,
        "identical_after": same,
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    pg = None
    if "postgres" in args.stores:
        from support import PostgresServer, pg_bin

        bin_dir = pg_bin()
        if bin_dir is None:
            raise SystemExit("PostgreSQL server binaries not found (set DSM_PG_BIN)")
        pg = PostgresServer(bin_dir)
        pg.start()
    try:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            for kind in args.stores:
                for d in args.diffs:
                    r = await run_one(kind, args.keys, d, args.seed, Path(tmp), pg)
                    print(json.dumps(r), flush=True)
                    results.append(r)
                    for f in Path(tmp).glob("*"):
                        f.unlink()
    finally:
        if pg is not None:
            pg.stop()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--diffs", type=int, nargs="+", default=[0, 1, 100, 10_000])
    ap.add_argument(
        "--stores", nargs="+", default=["memory", "sqlite"], choices=["memory", "sqlite", "postgres"],
        help="postgres starts a throwaway server (initdb on a free loopback port; needs the server binaries)",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tmp", default=None, help="directory for the SQLite files (default: system temp)")
    ap.add_argument("--out", default=str(RESULTS / "anti-entropy.json"))
    args = ap.parse_args()
    results = asyncio.run(main_async(args))
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print("\n| store | m | d | bytes | budget (3 d e + 4 KiB; 1 KiB at d = 0) | round trips | time (s) | identical |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['store']} | {r['keys']:,} | {r['diffs']:,} | {r['bytes']:,} {'ok' if r['bytes_ok'] else 'OVER'} | "
            f"{r['budget_bytes']:,} (e = {r['entry_bytes']} B) | {r['round_trips']} | {r['seconds']} | "
            f"{r['identical_after']} |"
        )


if __name__ == "__main__":
    main()
