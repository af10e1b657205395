"""Bad storage: corrupt files and rows, read-only files, a store in use, PostgreSQL down or restarted.

Each case must give a typed `StorageError` with a clear message, keep the node serving what it can, and
lose nothing already stored.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dsm import (
    StorageConfig,
    StorageCorruptError,
    StorageError,
    StorageFactory,
    StorageLockedError,
    StorageUnavailableError,
)
from dsm.storage.postgres import PostgresStore
from support import PostgresServer, free_port, skip_or_fail


def factory_for(data_dir: Path, **settings: object) -> StorageFactory:
    return StorageFactory(StorageConfig(listen_addr="", node_id="n1", data_dir=str(data_dir), **settings))  # type: ignore[arg-type]


async def fill(data_dir: Path, count: int = 50) -> None:
    factory = factory_for(data_dir)
    async with await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage()) as node:
        for i in range(count):
            await node.put(f"k{i}", f"v{i}".encode())


async def test_garbage_database_file_is_reported_corrupt_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "dsm.sqlite3"
    garbage = os.urandom(8192)
    db.write_bytes(garbage)
    factory = factory_for(tmp_path)
    with pytest.raises(StorageCorruptError, match="not a database"):
        await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage())
    assert db.read_bytes() == garbage  # DSM did not "repair" (overwrite) what it could not read


async def test_truncated_database_file_is_reported(tmp_path: Path) -> None:
    await fill(tmp_path, 3000)
    db = tmp_path / "dsm.sqlite3"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    factory = factory_for(tmp_path)
    with pytest.raises(StorageError) as caught:
        node = await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage())
        try:
            for i in range(3000):
                await node.get(f"k{i}")
            await node.count()
        finally:
            await node.close()
    # SQLite reports a cut-off file as malformed or "not a database", or fails to read pages past its end.
    assert isinstance(caught.value, StorageCorruptError | StorageUnavailableError) or "disk" in str(caught.value)
    assert "dsm.sqlite3" in str(caught.value)


async def test_corrupt_row_fails_only_that_key_and_node_keeps_serving(tmp_path: Path) -> None:
    await fill(tmp_path)
    with sqlite3.connect(tmp_path / "dsm.sqlite3") as con:
        con.execute("UPDATE dsm_kv SET versions = X'C1C1C1' WHERE key = 'k7'")
    factory = factory_for(tmp_path)
    async with await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage()) as node:
        with pytest.raises(StorageCorruptError, match="'k7'"):
            await node.get("k7")
        assert (await node.get("k8")).value == b"v8"  # type: ignore[union-attr]
        await node.put("k7", b"rewritten")  # last-writer-wins needs no read: the key is repaired
        assert (await node.get("k7")).value == b"rewritten"  # type: ignore[union-attr]
        assert await node.count() == 50


async def test_corrupt_row_in_siblings_mode_fails_the_write_not_the_node(tmp_path: Path) -> None:
    await fill(tmp_path)
    with sqlite3.connect(tmp_path / "dsm.sqlite3") as con:
        con.execute("UPDATE dsm_kv SET versions = X'00' WHERE key = 'k3'")
    factory = factory_for(tmp_path, conflict_resolution="siblings")
    async with await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage()) as node:
        with pytest.raises(StorageCorruptError):
            await node.put("k3", b"new")
        await node.put("k4", b"fine")
        assert (await node.get("k4")).value == b"fine"  # type: ignore[union-attr]


async def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    await fill(tmp_path, 1)
    with sqlite3.connect(tmp_path / "dsm.sqlite3") as con:
        con.execute("UPDATE dsm_meta SET value = X'39' WHERE name = 'schema_version'")
    factory = factory_for(tmp_path)
    with pytest.raises(StorageCorruptError, match="schema version"):
        await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage())


async def test_second_node_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    factory = factory_for(tmp_path)
    async with await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage()) as first:
        await first.put("k", b"v")
        with pytest.raises(StorageLockedError, match="in use"):
            await factory.create_epidemic_storage("n2", backing_storage=factory.create_sql_storage())
        assert (await first.get("k")).value == b"v"  # type: ignore[union-attr]


async def test_unwritable_data_dir_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    factory = StorageFactory(StorageConfig(listen_addr="", node_id="n1", data_dir=str(blocker / "sub")))
    with pytest.raises(StorageUnavailableError, match="directory"):
        await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage())


READ_ONLY_PROBE = textwrap.dedent(
    """
    import asyncio, sys
    from dsm import StorageConfig, StorageFactory, StorageError

    async def main():
        factory = StorageFactory(StorageConfig(listen_addr="", node_id="n1", data_dir=sys.argv[1]))
        try:
            node = await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage())
        except StorageError as exc:
            print(type(exc).__name__, exc)
            return
        print("opened")
        await node.close()

    asyncio.run(main())
    """
)


async def test_read_only_database_file_is_reported_and_untouched(tmp_path: Path) -> None:
    data_dir = tmp_path / "ro"
    data_dir.mkdir()
    await fill(data_dir)
    before = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file()}
    probe_cmd = [sys.executable, "-c", READ_ONLY_PROBE, str(data_dir)]
    if os.geteuid() == 0:
        # Root ignores file modes, so make the directory a read-only mount, in a private mount namespace
        # (nothing leaks if the test dies).
        if shutil.which("unshare") is None:
            skip_or_fail("running as root without unshare: cannot make a read-only file")
        script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"'
        command = ["unshare", "-m", "sh", "-c", script, "sh", str(data_dir), *probe_cmd]
    else:
        for path in data_dir.iterdir():
            path.chmod(0o444)
        data_dir.chmod(0o555)
        command = probe_cmd
    try:
        probe = subprocess.run(command, capture_output=True, text=True, timeout=60)
    finally:
        data_dir.chmod(0o755)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith("StorageReadOnlyError"), probe.stdout + probe.stderr
    assert "read-only" in probe.stdout
    after = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file()}
    assert after == before


async def test_unreachable_postgres_is_reported_quickly() -> None:
    store = PostgresStore(f"postgresql://nobody:secret@127.0.0.1:{free_port()}/none", timeout_s=2)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        skip_or_fail("psycopg is not installed")
    with pytest.raises(StorageUnavailableError) as caught:
        await store.open()
    assert "secret" not in str(caught.value)  # the password is redacted
    assert "127.0.0.1" in str(caught.value)


@pytest.mark.postgres
async def test_postgres_restart_fails_writes_then_recovers_without_loss(postgres_server: PostgresServer) -> None:
    # A server of its own, so stopping it does not disturb other tests.
    server = PostgresServer(postgres_server.bin)
    server.start()
    try:
        url = server.create_database()
        factory = StorageFactory(StorageConfig(listen_addr="", node_id="n1", storage_url=url))
        async with await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage()) as node:
            for i in range(20):
                await node.put(f"k{i}", f"v{i}".encode())
            server._run(str(server.bin / "pg_ctl"), "-D", str(server.data), "-m", "fast", "-w", "stop")
            with pytest.raises(StorageUnavailableError):
                await node.put("during", b"outage")
            with pytest.raises(StorageUnavailableError):
                await node.get("k1")
            server._run(
                str(server.bin / "pg_ctl"), "-D", str(server.data), "-l", str(server.root / "log"), "-w",
                "-o", f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.root}", "start",
            )  # fmt: skip
            await node.put("after", b"recovered")
            assert (await node.get("after")).value == b"recovered"  # type: ignore[union-attr]
            assert all([(await node.get(f"k{i}")).value == f"v{i}".encode() for i in range(20)])  # type: ignore[union-attr]
    finally:
        server.stop()
