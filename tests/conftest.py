"""Shared fixtures: backends for the conformance suite and a throwaway PostgreSQL server.

PostgreSQL tests start their own server (`initdb` into a temporary directory, a free loopback port, run as
the `postgres` user via `runuser` when the tests run as root) and stop it at the end of the session. Where
PostgreSQL binaries are missing those tests skip with the reason, except when `DSM_TEST_STRICT=1` (set by
`.ci/run`): then a missing prerequisite is a failure, so CI cannot go green by skipping.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from dsm.storage import BackingStore, MemoryStore
from dsm.storage.postgres import PostgresStore
from dsm.storage.sqlite import SQLiteStore
from support import PostgresServer, pg_bin, skip_or_fail


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = pg_bin()
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


@pytest.fixture(scope="session")
def loopback_hosts() -> None:
    """Tests that give each node its own 127.0.0.x address need those addresses (Linux has all of
    127.0.0.0/8; macOS only 127.0.0.1 unless aliased with `ifconfig lo0 alias 127.0.0.2`)."""
    import socket

    for host in ("127.0.0.2", "127.0.0.9"):
        with socket.socket() as probe:
            try:
                probe.bind((host, 0))
            except OSError as exc:
                skip_or_fail(f"loopback address {host} is not usable here ({exc})")
