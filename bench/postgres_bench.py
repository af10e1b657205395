"""PostgreSQL benchmark: DSM's front door on PostgreSQL against raw psycopg 3 on the same server, same run.

Starts a throwaway PostgreSQL (initdb on a free loopback port, as the tests do; needs the server binaries),
then per repetition measures, interleaved:
  raw   single-row autocommit upserts/s and point reads/s with psycopg's async connection (the
        peers/pg_upsert.sql table shape: key TEXT PRIMARY KEY, 100-byte value, 32-byte meta), and the same
        upserts from 8 concurrent connections (a small pool, `--raw-connections`);
  dsm   single-writer put/s, get/s, and 64 concurrent writer tasks (one write connection, group commit).
Both sides use synchronous_commit as DSM's durability setting does ('process' = off, 'fsync' = on).

Usage: python bench/postgres_bench.py [--reps 3] [--single 3000] [--reads 10000] [--durability process,fsync]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import summary
from dsm import StorageConfig, StorageFactory
from support import PostgresServer, pg_bin

VALUE = os.urandom(100)
META = os.urandom(32)
UPSERT = (
    "INSERT INTO kv(key, value, meta) VALUES (%s, %s, %s) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, meta = excluded.meta"
)
SYNC = {"process": "off", "fsync": "on"}


async def raw(url: str, durability: str, keys: list[str], read_keys: list[str], writers: int) -> dict[str, float]:
    con = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await con.execute(f"SET synchronous_commit = {SYNC[durability]}")
    await con.execute("DROP TABLE IF EXISTS kv")
    await con.execute("CREATE TABLE kv(key TEXT PRIMARY KEY, value BYTEA, meta BYTEA)")
    lat = []
    t0 = time.perf_counter()
    for k in keys:
        s = time.perf_counter()
        await con.execute(UPSERT, (k, VALUE, META))
        lat.append(time.perf_counter() - s)
    single = len(keys) / (time.perf_counter() - t0)
    rlat = []
    t0 = time.perf_counter()
    for k in read_keys:
        s = time.perf_counter()
        await (await con.execute("SELECT value, meta FROM kv WHERE key = %s", (k,))).fetchone()
        rlat.append(time.perf_counter() - s)
    reads = len(read_keys) / (time.perf_counter() - t0)
    await con.close()
    pool = [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(writers)]
    for c in pool:
        await c.execute(f"SET synchronous_commit = {SYNC[durability]}")

    async def writer(c: Any, part: list[str]) -> None:
        for k in part:
            await c.execute(UPSERT, (k, VALUE, META))

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(c, keys[i::writers]) for i, c in enumerate(pool)))
    concurrent = len(keys) / (time.perf_counter() - t0)
    for c in pool:
        await c.close()
    return {
        **summary("put", single, lat),
        **summary("get", reads, rlat),
        "concurrent_put_per_s": concurrent,
    }


async def dsm(url: str, durability: str, keys: list[str], read_keys: list[str], writers: int) -> dict[str, float]:
    factory = StorageFactory(StorageConfig(listen_addr="", node_id="bench", storage_url=url, durability=durability))
    storage = await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage())
    try:
        lat = []
        t0 = time.perf_counter()
        for k in keys:
            s = time.perf_counter()
            await storage.put(k, VALUE)
            lat.append(time.perf_counter() - s)
        single = len(keys) / (time.perf_counter() - t0)
        rlat = []
        t0 = time.perf_counter()
        for k in read_keys:
            s = time.perf_counter()
            await storage.get(k)
            rlat.append(time.perf_counter() - s)
        reads = len(read_keys) / (time.perf_counter() - t0)

        async def writer(part: list[str]) -> None:
            for k in part:
                await storage.put(k, VALUE)

        t0 = time.perf_counter()
        await asyncio.gather(*(writer(keys[i::64]) for i in range(64)))
        concurrent = len(keys) / (time.perf_counter() - t0)
    finally:
        await storage.close()
    return {
        **summary("put", single, lat),
        **summary("get", reads, rlat),
        "concurrent_put_per_s": concurrent,
    }


def cell(side: dict[str, float], op: str) -> str:
    return f"{side[op + '_per_s']:,.0f}/s (p50 {side[op + '_p50_us']:.0f} us, p99 {side[op + '_p99_us']:.0f} us)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--single", type=int, default=3000)
    ap.add_argument("--reads", type=int, default=10000)
    ap.add_argument("--raw-connections", type=int, default=8)
    ap.add_argument("--durability", default="process,fsync")
    a = ap.parse_args()
    bin_dir = pg_bin()
    if bin_dir is None:
        sys.exit("PostgreSQL server binaries not found (set DSM_PG_BIN)")
    server = PostgresServer(bin_dir)
    server.start()
    # The tests' throwaway server runs with fsync=off; a benchmark of durability needs it on.
    server._run(str(bin_dir / "pg_ctl"), "-D", str(server.data), "-m", "fast", "-w", "stop")
    server._run(
        str(bin_dir / "pg_ctl"), "-D", str(server.data), "-l", str(server.root / "log"), "-w",
        "-o", f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.root} -c fsync=on", "start",
    )  # fmt: skip
    rnd = random.Random(42)
    try:
        print(f"PostgreSQL {bin_dir}, psycopg {psycopg.__version__}, {a.reps} reps; medians")
        for durability in a.durability.split(","):
            raws, dsms = [], []
            for _ in range(a.reps):
                keys = [f"k{rnd.randrange(10**6):08d}" for _ in range(a.single)]
                read_keys = [rnd.choice(keys) for _ in range(a.reads)]
                raws.append(asyncio.run(raw(server.create_database(), durability, keys, read_keys, a.raw_connections)))
                dsms.append(asyncio.run(dsm(server.create_database(), durability, keys, read_keys, 64)))
            r = {k: statistics.median(x[k] for x in raws) for k in raws[0]}
            d = {k: statistics.median(x[k] for x in dsms) for k in dsms[0]}
            print(f"\n**durability={durability}** (synchronous_commit={SYNC[durability]})\n")
            print("| operation | raw psycopg (async) | DSM front door | DSM / raw |")
            print("| --- | --- | --- | --- |")
            print(
                f"| single-writer put | {cell(r, 'put')} | {cell(d, 'put')} | {d['put_per_s'] / r['put_per_s']:.0%} |"
            )
            print(f"| get (point read) | {cell(r, 'get')} | {cell(d, 'get')} | {d['get_per_s'] / r['get_per_s']:.0%} |")
            print(
                f"| concurrent put | {r['concurrent_put_per_s']:,.0f}/s ({a.raw_connections} connections) | "
                f"{d['concurrent_put_per_s']:,.0f}/s (64 tasks, 1 connection, group commit) | "
                f"{d['concurrent_put_per_s'] / r['concurrent_put_per_s']:.0%} |"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
