"""Storage benchmark: DSM's front door against raw stdlib sqlite3, in the same run, same durability.

For each repetition and each durability setting it measures, interleaved so both sides share the noise:
  raw   single-commit upserts/s (one autocommit statement per row, the peers/sqlite_bench.py table shape:
        key TEXT PRIMARY KEY, 100-byte value, 32-byte meta), point reads/s, batched upserts/s;
  dsm   single-writer `await storage.put` /s, `await storage.get` /s (random present keys), and the
        total put/s of 64 concurrent writer tasks (group commit), each put returning only once committed.
Reports medians over repetitions, per-operation p50/p99 latencies, and the ratios the targets are set on.
With --memory-floor, each repetition also runs DSM's front door over the in-memory store (no SQLite, no
disk): what the node's own Python costs per put, the floor under any SQLite work.

Usage: python bench/storage_bench.py [--reps 5] [--single 5000] [--reads 50000] [--loop asyncio|uvloop]
       [--durability process,fsync] [--listen 127.0.0.1:0] [--memory-floor] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from common import pct, summary
from dsm import StorageConfig, StorageFactory
from dsm.storage.memory import MemoryStore
from dsm.storage.sqlite import SQLiteStore

SYNC = {"process": "NORMAL", "fsync": "FULL"}
VALUE = os.urandom(100)
META = os.urandom(32)
UPSERT = (
    "INSERT INTO kv(key, value, meta) VALUES (?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, meta = excluded.meta"
)


def raw_sqlite(workdir: str, durability: str, keys: list[str], read_keys: list[str], batched: int) -> dict[str, float]:
    path = os.path.join(workdir, "raw.db")
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={SYNC[durability]}")
    con.execute("CREATE TABLE kv(key TEXT PRIMARY KEY, value BLOB, meta BLOB)")
    lat = []
    t0 = time.perf_counter()
    for k in keys:
        s = time.perf_counter()
        con.execute(UPSERT, (k, VALUE, META))
        lat.append(time.perf_counter() - s)
    single = len(keys) / (time.perf_counter() - t0)
    rows = [(f"k{i:08d}", VALUE, META) for i in range(batched)]
    t0 = time.perf_counter()
    for i in range(0, len(rows), 1000):
        con.execute("BEGIN")
        con.executemany(UPSERT, rows[i : i + 1000])
        con.execute("COMMIT")
    batch_rate = batched / (time.perf_counter() - t0)
    query = "SELECT value, meta FROM kv WHERE key = ?"
    rlat = []
    t0 = time.perf_counter()
    for k in read_keys:
        s = time.perf_counter()
        con.execute(query, (k,)).fetchone()
        rlat.append(time.perf_counter() - s)
    reads = len(read_keys) / (time.perf_counter() - t0)
    con.close()
    return {**summary("put", single, lat), "batched_put_per_s": batch_rate, **summary("get", reads, rlat)}


async def dsm_node(
    workdir: str,
    durability: str,
    keys: list[str],
    read_keys: list[str],
    fill: int,
    writers: int,
    per_writer: int,
    commits: str = "default",  # or "inline", "thread"; "memory": the in-memory store instead (--memory-floor)
    listen: str = "",
) -> dict[str, float]:
    config = StorageConfig(listen_addr=listen, data_dir=os.path.join(workdir, "dsm"), durability=durability)
    factory = StorageFactory(config)
    backing = factory.create_sql_storage()
    if commits == "memory":
        backing = MemoryStore()
    elif commits != "default":
        backing = SQLiteStore(os.path.join(workdir, "dsm", "dsm.sqlite3"), durability, commits == "thread")
    storage = await factory.create_epidemic_storage("bench-node", backing_storage=backing)
    stalls: list[float] = []
    phase = Phase()
    monitor = asyncio.create_task(watch_loop(stalls, phase))
    try:
        lat = []
        t0 = time.perf_counter()
        for k in keys:
            s = time.perf_counter()
            await storage.put(k, VALUE)
            lat.append(time.perf_counter() - s)
        single = len(keys) / (time.perf_counter() - t0)

        async def fill_part(part: int) -> None:
            for i in range(part, fill, writers):
                await storage.put(f"k{i:08d}", VALUE)

        await asyncio.gather(*(fill_part(p) for p in range(writers)))

        # A loop of gets never yields (an SQLite read does not suspend), so the stall monitor cannot run
        # during it; stalls are measured over the write phases, where DSM's commits run on the loop.
        phase.pause()
        rlat = []
        t0 = time.perf_counter()
        for k in read_keys:
            s = time.perf_counter()
            result = await storage.get(k)
            rlat.append(time.perf_counter() - s)
            assert result is not None and result.value == VALUE
        reads = len(read_keys) / (time.perf_counter() - t0)
        phase.resume()

        clat: list[float] = []

        async def writer(w: int) -> None:
            rnd = random.Random(w)
            for _ in range(per_writer):
                s = time.perf_counter()
                await storage.put(f"c{rnd.randrange(fill):08d}", VALUE)
                clat.append(time.perf_counter() - s)

        t0 = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(writers)))
        concurrent = writers * per_writer / (time.perf_counter() - t0)
    finally:
        monitor.cancel()
        await storage.close()
    return {
        **summary("put", single, lat),
        **summary("get", reads, rlat),
        **summary("concurrent_put", concurrent, clat),
        "loop_stall_p99_ms": pct(stalls, 99) * 1e3,
        "loop_stall_max_ms": max(stalls) * 1e3,
    }


class Phase:
    """Whether the stall monitor records; a pause/resume invalidates the sample that spans it."""

    def __init__(self) -> None:
        self.recording = True
        self.epoch = 0

    def pause(self) -> None:
        self.recording = False
        self.epoch += 1

    def resume(self) -> None:
        self.recording = True
        self.epoch += 1


async def watch_loop(stalls: list[float], phase: Phase, period_s: float = 0.001) -> None:
    """Records how late a 1 ms timer fires: how long the event loop was kept from other work."""
    while True:
        epoch = phase.epoch
        start = time.perf_counter()
        await asyncio.sleep(period_s)
        if phase.recording and phase.epoch == epoch:
            stalls.append(max(0.0, time.perf_counter() - start - period_s))


def report(
    durability: str, raw: dict[str, float], dsm: dict[str, float], ratios: dict[str, float], writers: int
) -> None:
    """Prints one durability setting's medians as a Markdown table (pasted into BENCHMARKS.md)."""

    def cell(side: dict[str, float], op: str) -> str:
        return f"{side[op + '_per_s']:,.0f}/s (p50 {side[op + '_p50_us']:.0f} us, p99 {side[op + '_p99_us']:.0f} us)"

    print(f"\n**durability={durability}** (SQLite synchronous={SYNC[durability]})\n")
    print("| operation | raw sqlite3 | DSM front door | DSM / raw | target |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| single-writer put | {cell(raw, 'put')} | {cell(dsm, 'put')} | {ratios['put_vs_raw_single']:.0%} | >= 50% |"
    )
    print(f"| get (point read) | {cell(raw, 'get')} | {cell(dsm, 'get')} | {ratios['get_vs_raw_read']:.0%} | >= 50% |")
    print(
        f"| {writers} concurrent writers, total put | single-commit: {raw['put_per_s']:,.0f}/s | "
        f"{cell(dsm, 'concurrent_put')} | {ratios['concurrent_put_vs_raw_single']:.0%} | > 100% |"
    )
    print(f"| batched upsert, 1000 per txn | {raw['batched_put_per_s']:,.0f}/s | | | (ceiling) |")
    print(
        f"\nEvent-loop stalls during DSM's write phases (how late a 1 ms timer fired): p99"
        f" {dsm['loop_stall_p99_ms']:.2f} ms, max {dsm['loop_stall_max_ms']:.2f} ms (medians over repetitions)."
    )


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--single", type=int, default=5000, help="single-writer puts per repetition")
    ap.add_argument("--reads", type=int, default=50000, help="point reads per repetition")
    ap.add_argument("--keyspace", type=int, default=20000, help="keys filled before reads")
    ap.add_argument("--writers", type=int, default=64)
    ap.add_argument("--per-writer", type=int, default=300)
    ap.add_argument("--durability", default="process,fsync")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument("--json", default="", help="write the results here as JSON")
    ap.add_argument(
        "--listen",
        default="",
        help="the node's listen_addr: empty (default) runs it standalone; 127.0.0.1:0 is a networked node as "
        "the default configuration makes it (alone in its cluster)",
    )
    ap.add_argument(
        "--commits",
        choices=["default", "inline", "thread"],
        default="default",
        help="where SQLite commits run (default: inline for process, a writer thread for fsync)",
    )
    ap.add_argument(
        "--memory-floor",
        action="store_true",
        help="also run DSM over the in-memory store in each repetition (the node's own cost per put)",
    )
    a = ap.parse_args()
    runner: Callable[[Any], Any] = asyncio.run
    if a.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    rnd = random.Random(42)
    results: dict[str, Any] = {"sqlite": sqlite3.sqlite_version, "loop": a.loop, "args": vars(a), "modes": {}}
    print(
        f"sqlite {sqlite3.sqlite_version}, loop {a.loop}, commits {a.commits}, {a.reps} reps;"
        " medians (p50/p99 latency in us)"
    )
    for durability in a.durability.split(","):
        single = a.single if durability == "process" else max(500, a.single // 5)
        raw_runs, dsm_runs, floor_runs = [], [], []
        for _rep in range(a.reps):
            workdir = tempfile.mkdtemp(prefix="dsm-bench-")
            try:
                keys = [f"k{rnd.randrange(a.keyspace):08d}" for _ in range(single)]
                read_keys = [f"k{rnd.randrange(a.keyspace):08d}" for _ in range(a.reads)]
                raw_runs.append(raw_sqlite(workdir, durability, keys, read_keys, a.keyspace))
                dsm_runs.append(
                    runner(
                        dsm_node(
                            workdir,
                            durability,
                            keys,
                            read_keys,
                            a.keyspace,
                            a.writers,
                            a.per_writer,
                            a.commits,
                            a.listen,
                        )
                    )
                )
                if a.memory_floor:
                    floor_runs.append(
                        runner(
                            dsm_node(
                                workdir, durability, keys, read_keys, a.keyspace, a.writers, a.per_writer,
                                "memory", a.listen,
                            )
                        )
                    )  # fmt: skip
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        raw, dsm = median_of(raw_runs), median_of(dsm_runs)
        ratios = {
            "put_vs_raw_single": dsm["put_per_s"] / raw["put_per_s"],
            "get_vs_raw_read": dsm["get_per_s"] / raw["get_per_s"],
            "concurrent_put_vs_raw_single": dsm["concurrent_put_per_s"] / raw["put_per_s"],
        }
        results["modes"][durability] = {
            "raw": raw,
            "dsm": dsm,
            "ratios": ratios,
            "raw_runs": raw_runs,
            "dsm_runs": dsm_runs,
        }
        report(durability, raw, dsm, ratios, a.writers)
        if floor_runs:
            floor = median_of(floor_runs)
            results["modes"][durability].update(floor=floor, floor_runs=floor_runs)
            print(
                f"\nDSM over the in-memory store (no SQLite), same run: single-writer put {floor['put_per_s']:,.0f}/s"
                f" (p50 {floor['put_p50_us']:.0f} us; {floor['put_per_s'] / raw['put_per_s']:.0%} of raw),"
                f" {a.writers} writers {floor['concurrent_put_per_s']:,.0f}/s"
                f" ({floor['concurrent_put_per_s'] / raw['put_per_s']:.0%} of raw single-commit)."
            )
    if a.json:
        with open(a.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
