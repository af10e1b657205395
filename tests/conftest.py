"""Shared fixtures: backends for the conformance suite and a throwaway PostgreSQL server.

PostgreSQL tests start their own server (`initdb` into a temporary directory, a free loopback port, run as
the `postgres` user via `runuser` when the tests run as root) and stop it at the end of the session. Where
PostgreSQL binaries are missing those tests skip with the reason, except when `DSM_TEST_STRICT=1` (set by
`.ci/run`): then a missing prerequisite is a failure, so CI cannot go green by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from dsm.storage import BackingStore, MemoryStore
from dsm.storage.postgres import PostgresStore
from dsm.storage.sqlite import SQLiteStore

STRICT = os.environ.get("DSM_TEST_STRICT") == "1"
PG_BIN_DIRS = [os.environ.get("DSM_PG_BIN", ""), "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"]


def skip_or_fail(reason: str) -> None:
    """Skips the test, or fails it under DSM_TEST_STRICT=1."""
    if STRICT:
        pytest.fail(f"{reason} (DSM_TEST_STRICT=1 turns this skip into a failure)")
    pytest.skip(reason)


def _pg_bin() -> Path | None:
    for candidate in PG_BIN_DIRS:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="dsm-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self.started = False

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
            "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200",
            "start",
        )  # fmt: skip
        self.started = True

    def stop(self) -> None:
        if self.started:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = _pg_bin()
    if bin_dir is None:
        skip_or_fail("PostgreSQL server binaries (initdb, pg_ctl) not found; set DSM_PG_BIN")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        skip_or_fail("psycopg is not installed: pip install 'dsm[postgres]'")
    assert bin_dir is not None
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except (subprocess.SubprocessError, OSError) as exc:
        server.stop()
        skip_or_fail(f"could not start a throwaway PostgreSQL: {exc}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()


BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], BackingStore]:
    """A factory of stores of the backend under test; each call opens the *same* underlying store anew.

    For 'memory' the same object is returned (nothing survives a real reopen).
    """
    kind = request.param
    if kind == "memory":
        store = MemoryStore()
        return lambda: store
    if kind == "sqlite":
        path = tmp_path / "store.sqlite3"
        return lambda: SQLiteStore(path)
    url = request.getfixturevalue("postgres_url")
    return lambda: PostgresStore(url)


@pytest.fixture
async def store(make_store: Callable[[], BackingStore]) -> AsyncIterator[BackingStore]:
    s = make_store()
    await s.open()
    yield s
    await s.close()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.01)
