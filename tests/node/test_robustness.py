"""Regressions from review: restarts and the clock, cancellation, the queue bound, per-key failures,
large values and the WAL, bad input reaching the front door, and PostgreSQL that reconnects or hangs.

Each test pins behaviour that was once broken (see the commit that added this file).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import psycopg
import pytest

from dsm import (
    ConfigError,
    InvalidInputError,
    InvalidValueError,
    StorageConfig,
    StorageCorruptError,
    StorageFactory,
    StorageLockedError,
    StorageUnavailableError,
)
from dsm.core.hlc import physical_ms
from dsm.storage.postgres import PostgresStore, redact
from dsm.storage.sqlite import WAL_SIZE_LIMIT_BYTES, SQLiteStore
from support import PostgresServer


def factory_for(data_dir: Path, **settings: object) -> StorageFactory:
    return StorageFactory(StorageConfig(listen_addr="", node_id="n1", data_dir=str(data_dir), **settings))  # type: ignore[arg-type]


async def open_node(data_dir: Path, **settings: object):  # type: ignore[no-untyped-def]
    factory = factory_for(data_dir, **settings)
    return await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage())


# --- the clock across restarts ----------------------------------------------------------------------------


async def test_restarts_do_not_push_the_clock_ahead_and_contexts_stay_usable(tmp_path: Path) -> None:
    for _ in range(4):
        node = await open_node(tmp_path)
        async with node:
            before = time.time_ns() // 1_000_000
            ack = await node.put("k", b"v")
            # The clock runs at the wall clock, not a reservation window ahead of it.
            assert physical_ms(ack.timestamp) <= before + 1000
            read = await node.get("k")
            assert read is not None
            await node.put("k", b"w", context=read.context)  # its own context is never "from the future"


async def test_crash_within_the_reservation_window_restarts_above_every_stored_timestamp(tmp_path: Path) -> None:
    node = await open_node(tmp_path)
    last = await node.put("k", b"v")
    # Simulate a crash: the store is closed without the node's clean-close floor.
    writer = node.commits._writer
    assert writer is not None
    node._state = "closed"
    writer.cancel()
    await node.store.close()
    # Restart with a wall clock 5 s in the past, inside the reservation window.
    from dsm import EpidemicStorage, NodeInfo

    past_ms = physical_ms(last.timestamp) - 5000
    again = EpidemicStorage(
        StorageConfig(listen_addr="", node_id="n1"), NodeInfo(), SQLiteStore(tmp_path / "dsm.sqlite3"), lambda: past_ms
    )
    await again.start()
    try:
        after = await again.put("k", b"w")
        assert after.timestamp > last.timestamp
        assert physical_ms(after.timestamp) - physical_ms(last.timestamp) < 1000  # just above, not a window ahead
    finally:
        await again.close()


async def test_corrupt_clock_floor_is_reported_at_start(tmp_path: Path) -> None:
    async with await open_node(tmp_path) as node:
        await node.put("k", b"v")
    with sqlite3.connect(tmp_path / "dsm.sqlite3") as con:
        con.execute("UPDATE dsm_meta SET value = ? WHERE name = 'hlc_reserved'", (b"9" * 20,))
    with pytest.raises(StorageCorruptError, match="hlc_reserved"):
        await open_node(tmp_path)


def test_demo_runs_twice_on_the_same_directory(tmp_path: Path) -> None:
    import subprocess
    import sys

    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "dsm.cli", "demo", "--single", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr


# --- cancellation and the queue bound ---------------------------------------------------------------------


async def test_cancelled_close_can_be_completed_by_another_close(tmp_path: Path) -> None:
    node = await open_node(tmp_path)
    writes = [asyncio.create_task(node.put(f"k{i}", b"v" * 1000)) for i in range(2000)]
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(node.close(), 0.0001)
    await node.close()  # completes the shutdown the cancelled call started
    assert node.closed
    await asyncio.gather(*writes, return_exceptions=True)
    async with await open_node(tmp_path) as again:  # the lock was released
        assert await again.count() == 2000


async def test_cancelled_writers_do_not_exceed_the_queue_bound_and_are_dropped(tmp_path: Path) -> None:
    node = await open_node(tmp_path, write_queue_max=4, write_batch_max=2)
    try:
        peak = 0
        for round_ in range(50):
            tasks = [asyncio.create_task(node.put(f"r{round_}-{i}", b"v")) for i in range(10)]
            await asyncio.sleep(0)
            for t in tasks[::2]:
                t.cancel()
            peak = max(peak, node.commits.waiting)
            await asyncio.gather(*tasks, return_exceptions=True)
        assert peak <= 4
        assert node.commits.waiting == 0
        # Writers cancelled before their batch started were dropped, not written.
        assert await node.count() < 500
    finally:
        await node.close()


# --- per-key failures -------------------------------------------------------------------------------------


async def test_one_corrupt_row_fails_only_its_own_writes_in_a_batch(tmp_path: Path) -> None:
    async with await open_node(tmp_path, conflict_resolution="siblings") as node:
        for i in range(10):
            await node.put(f"k{i}", b"old")
    with sqlite3.connect(tmp_path / "dsm.sqlite3") as con:
        con.execute("UPDATE dsm_kv SET versions = X'C1' WHERE key = 'k3'")
    async with await open_node(tmp_path, conflict_resolution="siblings") as node:
        results = await asyncio.gather(*(node.put(f"k{i}", b"new") for i in range(10)), return_exceptions=True)
        assert isinstance(results[3], StorageCorruptError)
        assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 3)
        assert sorted(s.value for s in (await node.get("k4")).siblings) == [b"new", b"old"]  # type: ignore[union-attr]


# --- large values -----------------------------------------------------------------------------------------


async def test_large_values_keep_the_wal_bounded_and_commits_in_small_batches(tmp_path: Path) -> None:
    async with await open_node(tmp_path, write_batch_max_bytes=1024 * 1024) as node:
        value = os.urandom(256 * 1024)
        wal = tmp_path / "dsm.sqlite3-wal"
        biggest = 0
        for _ in range(12):
            await asyncio.gather(*(node.put(f"k{i}", value) for i in range(32)))  # 8 MiB a round
            await asyncio.sleep(0.05)  # let the background checkpoint run
            biggest = max(biggest, wal.stat().st_size)
        assert biggest <= WAL_SIZE_LIMIT_BYTES, f"WAL grew to {biggest >> 20} MiB after 96 MiB of writes"
        assert (await node.get("k7")).value == value  # type: ignore[union-attr]


# --- bad input at the front door --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "field"),
    [({"data_dir": "a\x00b"}, "data_dir"), ({"storage_url": "sqlite:/x\x00y"}, "storage_url"),
     ({"listen_addr": "h:\u00b2"}, "listen_addr"), ({"http_addr": "h:\u0661\u0662"}, "http_addr")],
)  # fmt: skip
def test_config_refuses_nul_and_non_ascii_digits(settings: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        StorageConfig(**settings)  # type: ignore[arg-type]
    assert caught.value.field == field


async def test_released_memoryview_and_wrong_node_info_are_typed_errors(tmp_path: Path) -> None:
    async with await open_node(tmp_path) as node:
        view = memoryview(b"abc")
        view.release()
        with pytest.raises(InvalidValueError):
            await node.put("k", view)
    factory = factory_for(tmp_path / "other")
    with pytest.raises(InvalidInputError, match="NodeInfo"):
        await factory.create_epidemic_storage(node_info="eu")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="bootstrap_nodes"):
        await factory.create_epidemic_storage(bootstrap_nodes="127.0.0.1:7400")
    with pytest.raises(ConfigError, match="durability"):
        SQLiteStore(tmp_path / "x.db", durability="sometimes")


async def test_lock_holds_through_a_symlinked_path(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    first = SQLiteStore(real / "db.sqlite3")
    await first.open()
    try:
        with pytest.raises(StorageLockedError):
            await SQLiteStore(tmp_path / "link" / "db.sqlite3").open()
    finally:
        await first.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user:s3cret@host:5432/db",
        "postgresql://user:s3/cr@t@host/db",
        "postgresql://user@host/db?password=s3cret&sslmode=require",
        "postgresql://user:s3cret@[::1]:5432/db?PASSWORD=s3cret",
    ],
)
def test_redact_removes_passwords(url: str) -> None:
    assert "s3cret" not in redact(url) and "s3/cr" not in redact(url)
    assert "user" in redact(url)


async def test_durability_settings_reach_sqlite(tmp_path: Path) -> None:
    for durability, expected in (("process", 1), ("fsync", 2)):  # NORMAL, FULL
        store = SQLiteStore(tmp_path / f"{durability}.db", durability)
        await store.open()
        try:
            assert store._write_con is not None
            assert store._write_con.execute("PRAGMA synchronous").fetchone()[0] == expected
        finally:
            await store.close()


# --- PostgreSQL: reconnect keeps the lock, a hung server fails calls ------------------------------------


def _writer_backend_pid(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.postgres
async def test_postgres_durability_setting_reaches_the_session(postgres_url: str) -> None:
    for durability, expected in (("process", "off"), ("fsync", "on")):
        store = PostgresStore(postgres_url, durability)
        await store.open()
        try:
            cur = await store._w.execute("SHOW synchronous_commit")
            assert (await cur.fetchone())[0] == expected
        finally:
            await store.close()


@pytest.mark.postgres
async def test_postgres_reconnect_never_writes_without_the_lock(postgres_url: str) -> None:
    factory = StorageFactory(StorageConfig(listen_addr="", node_id="a", storage_url=postgres_url))
    a = await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage())
    b = None
    try:
        await a.put("k", b"from a")
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (_writer_backend_pid(postgres_url),))
        with pytest.raises(StorageUnavailableError):
            await a.put("k", b"lost connection")
        b = PostgresStore(postgres_url)
        await b.open()  # takes the lock while a is disconnected
        for _ in range(3):
            with pytest.raises(StorageLockedError):
                await a.put("k", b"must not be written")
        read = await b.read("k")
        assert read is not None and b"must not" not in read
    finally:
        if b is not None:
            await b.close()
        await a.close()


@pytest.mark.postgres
async def test_postgres_that_stops_answering_fails_calls_instead_of_hanging(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()
    factory = StorageFactory(StorageConfig(listen_addr="", node_id="a", storage_url=url, storage_timeout_ms=1000))
    node = await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage())
    pid = _writer_backend_pid(url)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError, match="did not complete"):
            await asyncio.wait_for(node.put("k", b"v"), 30)
        assert time.monotonic() - started < 10
    finally:
        os.kill(pid, signal.SIGCONT)
    # The node recovers on a fresh connection and still serves.
    await node.put("k", b"after")
    assert (await node.get("k")).value == b"after"  # type: ignore[union-attr]
    await asyncio.wait_for(node.close(), 30)


# --- a held write lock (a checkpoint) never blocks the event loop ----------------------------------------


def _hold_write_lock(path: Path, seconds: float, started: threading.Event) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")  # what a RESTART checkpoint holds while it finishes
    started.set()
    time.sleep(seconds)
    con.execute("COMMIT")
    con.close()


async def test_inline_write_waits_for_a_held_lock_without_blocking_the_loop(tmp_path: Path) -> None:
    async with await open_node(tmp_path) as node:
        await node.put("warm", b"up")
        started = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(tmp_path / "dsm.sqlite3", 0.3, started))
        holder.start()
        started.wait(5)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        began = time.monotonic()
        await node.put("k", b"after the lock")
        waited = time.monotonic() - began
        tick_task.cancel()
        holder.join()
        assert waited >= 0.2  # it did wait for the lock
        assert ticks >= 10  # and the loop kept running other tasks meanwhile
        assert (await node.get("k")).value == b"after the lock"  # type: ignore[union-attr]


async def test_inline_write_gives_up_with_a_typed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dsm.storage.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "BUSY_WAIT_S", 0.1)
    async with await open_node(tmp_path) as node:
        started = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(tmp_path / "dsm.sqlite3", 1.0, started))
        holder.start()
        started.wait(5)
        with pytest.raises(StorageLockedError):
            await node.put("k", b"v")
        holder.join()
        await node.put("k", b"later")  # the node keeps serving once the lock is free
        assert (await node.get("k")).value == b"later"  # type: ignore[union-attr]
