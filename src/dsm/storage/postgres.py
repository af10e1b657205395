"""The PostgreSQL backing store (psycopg 3, async), for those who run a PostgreSQL server.

Same schema as SQLite (`dsm_kv`, `dsm_meta`, since schema version 2 the paxos keyspace `dsm_paxos`, since
version 3 the rows' `seq` and `expires_ms` with their indexes; an older database is upgraded when it opens, in
one transaction with the new version number). Keys and hkeys use the "C" collation so their order is
byte order, the same as the other backends, whatever the database's locale. Two connections: one for
writes (each batch one transaction, sent with psycopg's pipelined `executemany`) and one for reads, so
reads never wait behind a commit.
Durability 'process' sets `synchronous_commit = off` on the write session: a commit is acknowledged once
the server holds it, so our process dying loses nothing, and a crash of the *server* may lose the last
fraction of a second; 'fsync' keeps `synchronous_commit = on`.

Single user: the write session holds a PostgreSQL advisory lock named after the table set, so a second node
pointed at the same database fails with `StorageLockedError` instead of corrupting merges. A connection
that breaks is reopened on the next call (a new write session is used only once it holds the lock again);
the call that saw it break raises `StorageUnavailableError`. Every call has a client-side deadline
(`timeout_s`, the config's `storage_timeout_ms`) and connections use TCP keepalives, so a server that stops
answering fails calls with `StorageUnavailableError` instead of hanging them; the stuck connection is dropped
and a write in flight is not acknowledged (its outcome is unknown, as with any timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from dsm.errors import (
    ClosedError,
    ConfigError,
    StorageCorruptError,
    StorageError,
    StorageLockedError,
    StorageReadOnlyError,
    StorageUnavailableError,
)
from dsm.storage.base import (
    META_SCHEMA,
    ChangedRow,
    ExpiringRow,
    PaxosEntry,
    RangeDigest,
    StoredKey,
    paxos_changes,
    schema_to_record,
)
from dsm.storage.sqlview import RANGE_SUMS, SqlRangeView

T = TypeVar("T")

_LOCK_ID = 0x44534D5F4B560001  # 'DSM_KV' + 1: the advisory lock (per database) of the dsm_kv table set
#: Tries of the advisory lock at open, LOCK_RETRY_S apart, before the store counts as in use by another node.
LOCK_RETRIES = 10
LOCK_RETRY_S = 0.05
_SCHEMA = (
    'CREATE TABLE IF NOT EXISTS dsm_kv (key TEXT COLLATE "C" PRIMARY KEY, versions BYTEA NOT NULL,'
    " digest BIGINT NOT NULL, ts BIGINT NOT NULL, seq BIGINT NOT NULL DEFAULT 0, expires_ms BIGINT)",
    "CREATE TABLE IF NOT EXISTS dsm_meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL)",
    'CREATE TABLE IF NOT EXISTS dsm_paxos (hkey TEXT COLLATE "C" PRIMARY KEY, state BYTEA NOT NULL)',
)
#: What schema version 3 added to the rows of an older store (old rows: seq 0, below every cursor; no expiry).
_ROW_COLUMNS = (
    "ALTER TABLE dsm_kv ADD COLUMN seq BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE dsm_kv ADD COLUMN expires_ms BIGINT",
)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS dsm_kv_seq ON dsm_kv(seq)",
    "CREATE INDEX IF NOT EXISTS dsm_kv_expires ON dsm_kv(expires_ms) WHERE expires_ms IS NOT NULL",
)
_UPSERT = (
    "INSERT INTO dsm_kv(key, versions, digest, ts, seq, expires_ms) VALUES (%s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (key) DO UPDATE SET versions = excluded.versions, digest = excluded.digest, ts = excluded.ts,"
    " seq = excluded.seq, expires_ms = excluded.expires_ms"
)
_CHANGED = "SELECT key, versions, seq FROM dsm_kv WHERE {after} AND key >= %s{hi} ORDER BY seq, key LIMIT %s"
_AFTER_STAMP = "seq > %s"
_AFTER_ROW = "seq >= %s AND (seq > %s OR key > %s)"
_EXPIRING = (
    "SELECT key, versions, expires_ms FROM dsm_kv WHERE expires_ms > %s AND expires_ms <= %s AND key >= %s{hi}"
    " ORDER BY expires_ms, key LIMIT %s"
)
_META_UPSERT = (
    "INSERT INTO dsm_meta(name, value) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)
_PAXOS_UPSERT = (
    "INSERT INTO dsm_paxos(hkey, state) VALUES (%s, %s) ON CONFLICT (hkey) DO UPDATE SET state = excluded.state"
)


def redact(url: str) -> str:
    """The URL without its password (in the user-info part or as a `password` query parameter).

    The user-info part ends at the last '@' before any query string, so an unescaped '/' or '@' in a
    password (invalid for libpq, but possible in a config) is still hidden.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "postgresql://(unparsable URL)"
    head, qmark, query = rest.partition("?")
    if "@" in head:
        userinfo, _, hostpath = head.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        head = f"{userinfo}@{hostpath}"
    if qmark:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs])
    return f"{scheme}://{head}{qmark}{query}"


class PostgresStore:
    """A `BackingStore` in a PostgreSQL database.

    Args:
        url: a libpq URL, `postgresql://user[:password]@host:port/dbname`.
        durability: 'process' or 'fsync' (see the module docstring).
        timeout_s: the deadline of every call, connecting included.
    """

    def __init__(self, url: str, durability: str = "process", timeout_s: float = 10.0) -> None:
        if durability not in ("process", "fsync"):
            raise ConfigError("durability", durability, "'process' or 'fsync'")
        self._dsn = url.replace("postgres://", "postgresql://", 1)
        self.url = redact(self._dsn)
        self.durability = durability
        self.timeout_s = timeout_s
        self._w: Any = None
        self._r: Any = None
        self._opened = False
        self._psycopg: Any = None

    def _error(self, exc: Exception, doing: str) -> StorageError:
        psycopg = self._psycopg
        where = f"PostgreSQL {self.url}: {doing} failed: {str(exc).strip()}"
        if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction | psycopg.errors.InsufficientPrivilege):
            return StorageReadOnlyError(where)
        if isinstance(exc, psycopg.errors.DataCorrupted | psycopg.errors.IndexCorrupted):
            return StorageCorruptError(where)
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return StorageUnavailableError(where)
        return StorageError(where)

    async def _connect(self, doing: str) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s + 1):
                return await self._psycopg.AsyncConnection.connect(
                    self._dsn,
                    autocommit=True,
                    connect_timeout=max(1, round(self.timeout_s)),
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                )
        except TimeoutError:
            raise StorageUnavailableError(
                f"PostgreSQL {self.url}: {doing} did not complete within {self.timeout_s:g} s"
            ) from None
        except self._psycopg.Error as exc:
            raise self._error(exc, doing) from exc

    async def _discard(self, con: Any) -> None:
        """Closes a connection that misbehaved, without waiting long for a server that may not answer."""
        if con is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await con.close()

    async def open(self) -> None:
        if self._opened:
            return
        try:
            import psycopg
        except ImportError as exc:
            raise StorageUnavailableError("PostgreSQL storage needs psycopg 3: pip install 'dsm[postgres]'") from exc
        self._psycopg = psycopg
        self._w = await self._locked_writer()
        try:
            self._r = await self._connect("connect")
        except BaseException:
            await self._discard(self._w)
            self._w = None
            raise
        self._opened = True

    async def _locked_writer(self) -> Any:
        """A new write session that holds the advisory lock and has the schema ready."""
        con = await self._connect("connect")
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._prepare_writer(con)
        except TimeoutError:
            await self._discard(con)
            raise StorageUnavailableError(f"PostgreSQL {self.url}: preparing the schema timed out") from None
        except BaseException:
            await self._discard(con)
            raise
        return con

    async def _prepare_writer(self, con: Any) -> None:
        try:
            locked = await (await con.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_ID,))).fetchone()
            for _ in range(LOCK_RETRIES):  # a previous session's end (a killed node) reaches the server late
                if locked[0]:
                    break
                await asyncio.sleep(LOCK_RETRY_S)
                locked = await (await con.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_ID,))).fetchone()
            if not locked[0]:
                raise StorageLockedError(
                    f"PostgreSQL {self.url} is in use by another DSM node (advisory lock held); "
                    "two nodes must not share a database"
                )
            sync = "on" if self.durability == "fsync" else "off"
            await con.execute(f"SET synchronous_commit = {sync}")
            async with con.transaction():
                for statement in _SCHEMA:
                    await con.execute(statement)
                cur = await con.execute("SELECT value FROM dsm_meta WHERE name = %s", (META_SCHEMA,))
                row = await cur.fetchone()
                # A version-1 database got its paxos table from the statements above; an older one gets its
                # row columns here, all in this transaction with the new version number.
                step = schema_to_record(None if row is None else bytes(row[0]), f"PostgreSQL {self.url}")
                if step.add_row_columns:
                    for statement in _ROW_COLUMNS:
                        await con.execute(statement)
                for statement in _INDEXES:
                    await con.execute(statement)
                if step.record is not None:
                    await con.execute(_META_UPSERT, (META_SCHEMA, step.record))
        except self._psycopg.Error as exc:
            raise self._error(exc, "prepare schema") from exc

    async def close(self) -> None:
        self._opened = False
        if self._w is not None and not self._w.closed and not self._w.broken:
            # Released here, not when the server notices the session is gone: a store opened right after this
            # one closed (a restart) would otherwise find the lock still held for a moment.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._w.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
        for con in (self._r, self._w):
            await self._discard(con)
        self._r = self._w = None

    async def _writer(self) -> Any:
        if not self._opened:
            raise ClosedError(f"PostgreSQL store {self.url} is closed")
        if self._w is None or self._w.closed or self._w.broken:
            stale, self._w = self._w, None
            await self._discard(stale)
            # Only a session that holds the lock again becomes the writer (or two nodes could write).
            self._w = await self._locked_writer()
        return self._w

    async def _reader(self) -> Any:
        if not self._opened:
            raise ClosedError(f"PostgreSQL store {self.url} is closed")
        if self._r is None or self._r.closed or self._r.broken:
            stale, self._r = self._r, None
            await self._discard(stale)
            self._r = await self._connect("reconnect")
        return self._r

    async def _call(self, doing: str, writer: bool, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Runs `fn(connection)` with the deadline; a timed-out connection is dropped."""
        con = await (self._writer() if writer else self._reader())
        try:
            async with asyncio.timeout(self.timeout_s):
                return await fn(con)
        except TimeoutError:
            if writer:
                self._w = None
            else:
                self._r = None
            await self._discard(con)
            raise StorageUnavailableError(
                f"PostgreSQL {self.url}: {doing} did not complete within {self.timeout_s:g} s; connection dropped"
            ) from None
        except self._psycopg.Error as exc:
            raise self._error(exc, doing) from exc

    async def _fetch(self, doing: str, sql: str, args: Sequence[Any]) -> list[Any]:
        async def run(con: Any) -> list[Any]:
            cur = await con.execute(sql, args)
            return list(await cur.fetchall())

        return await self._call(doing, False, run)

    async def read(self, key: str) -> bytes | None:
        rows = await self._fetch("read", "SELECT versions FROM dsm_kv WHERE key = %s", (key,))
        return bytes(rows[0][0]) if rows else None

    async def read_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        rows = await self._fetch("read", "SELECT key, versions FROM dsm_kv WHERE key = ANY(%s)", (list(keys),))
        return {k: bytes(v) for k, v in rows}

    async def older_than(self, timestamp: int, after: str = "", limit: int = 1000) -> list[tuple[str, bytes]]:
        sql = "SELECT key, versions FROM dsm_kv WHERE key > %s AND ts < %s ORDER BY key LIMIT %s"
        rows = await self._fetch("read", sql, (after, timestamp, limit))
        return [(k, bytes(v)) for k, v in rows]

    async def changed_since(
        self, stamp: int, lo: str = "", hi: str | None = None, after_key: str | None = None, limit: int = 1000
    ) -> list[ChangedRow]:
        args: list[Any] = [stamp, lo] if after_key is None else [stamp, stamp, after_key, lo]
        if hi is not None:
            args.append(hi)
        args.append(limit)
        after = _AFTER_STAMP if after_key is None else _AFTER_ROW
        rows = await self._fetch(
            "changed_since", _CHANGED.format(after=after, hi="" if hi is None else " AND key < %s"), args
        )
        return [(k, bytes(v), int(n)) for k, v, n in rows]

    async def expiring(
        self, after_ms: int, upto_ms: int, lo: str = "", hi: str | None = None, limit: int = 1000
    ) -> list[ExpiringRow]:
        args: list[Any] = [after_ms, upto_ms, lo]
        if hi is not None:
            args.append(hi)
        args.append(limit)
        rows = await self._fetch("expiring", _EXPIRING.format(hi="" if hi is None else " AND key < %s"), args)
        return [(k, bytes(v), int(n)) for k, v, n in rows]

    async def read_paxos(self, hkeys: Sequence[str]) -> dict[str, bytes]:
        if not hkeys:
            return {}
        rows = await self._fetch("read_paxos", "SELECT hkey, state FROM dsm_paxos WHERE hkey = ANY(%s)", (list(hkeys),))
        return {h: bytes(v) for h, v in rows}

    async def scan_paxos(self, start: str = "", end: str | None = None, limit: int = 1000) -> list[tuple[str, bytes]]:
        if end is None:
            sql = "SELECT hkey, state FROM dsm_paxos WHERE hkey >= %s ORDER BY hkey LIMIT %s"
            rows = await self._fetch("scan_paxos", sql, (start, limit))
        else:
            sql = "SELECT hkey, state FROM dsm_paxos WHERE hkey >= %s AND hkey < %s ORDER BY hkey LIMIT %s"
            rows = await self._fetch("scan_paxos", sql, (start, end, limit))
        return [(h, bytes(v)) for h, v in rows]

    async def read_meta(self, name: str) -> bytes | None:
        rows = await self._fetch("read_meta", "SELECT value FROM dsm_meta WHERE name = %s", (name,))
        return bytes(rows[0][0]) if rows else None

    async def scan(self, start: str = "", end: str | None = None, limit: int = 1000) -> list[tuple[str, int]]:
        if end is None:
            rows = await self._fetch(
                "scan", "SELECT key, digest FROM dsm_kv WHERE key >= %s ORDER BY key LIMIT %s", (start, limit)
            )
        else:
            rows = await self._fetch(
                "scan",
                "SELECT key, digest FROM dsm_kv WHERE key >= %s AND key < %s ORDER BY key LIMIT %s",
                (start, end, limit),
            )
        return [(k, int(d)) for k, d in rows]

    async def range_digest(self, start: str = "", end: str | None = None) -> RangeDigest:
        cols = RANGE_SUMS
        if end is None:
            rows = await self._fetch("range_digest", f"SELECT {cols} FROM dsm_kv WHERE key >= %s", (start,))
        else:
            rows = await self._fetch(
                "range_digest", f"SELECT {cols} FROM dsm_kv WHERE key >= %s AND key < %s", (start, end)
            )
        count, low, high = rows[0]
        return RangeDigest.from_sums(int(count), int(low), int(high))

    async def with_range_view(self, fn: Callable[[SqlRangeView], T]) -> T:
        """Runs `fn` (an anti-entropy step, `dsm.core.reconcile`) on a worker thread over its own
        synchronous connection, inside one read-only REPEATABLE READ transaction (a consistent snapshot),
        so the event loop keeps serving while the server scans. Each statement has the store's deadline."""
        if not self._opened:
            raise ClosedError(f"PostgreSQL store {self.url} is closed")
        psycopg = self._psycopg
        timeout_ms = max(1, int(self.timeout_s * 1000))

        def run() -> T:
            with psycopg.connect(self._dsn, connect_timeout=max(1, round(self.timeout_s))) as con:
                con.execute(f"SET statement_timeout = {timeout_ms}")
                con.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                try:
                    return fn(SqlRangeView(lambda sql, args: con.execute(sql, args).fetchall(), "%s"))
                finally:
                    con.rollback()

        try:
            return await asyncio.to_thread(run)
        except psycopg.Error as exc:
            raise self._error(exc, "anti-entropy") from exc

    async def count(self) -> int:
        rows = await self._fetch("count", "SELECT count(*) FROM dsm_kv", ())
        return int(rows[0][0])

    async def max_timestamp(self) -> int:
        sql = "SELECT greatest(coalesce(max(ts), 0), coalesce(max(seq), 0)) FROM dsm_kv"
        rows = await self._fetch("max_timestamp", sql, ())
        return int(rows[0][0])

    async def write(
        self,
        rows: Sequence[StoredKey],
        meta: Mapping[str, bytes] | None = None,
        deletes: Sequence[str] = (),
        paxos: Sequence[PaxosEntry] = (),
    ) -> None:
        paxos_upserts, paxos_deletes = paxos_changes(paxos) if paxos else ([], [])

        async def run(con: Any) -> None:
            if len(rows) == 1 and not meta and not deletes and not paxos:
                # One statement in autocommit mode is its own transaction: one round trip instead of three.
                r = rows[0]
                await con.execute(_UPSERT, (r.key, r.versions, r.digest, r.timestamp, r.seq, r.expires_ms))
                return
            async with con.transaction(), con.cursor() as cur:
                await cur.executemany(
                    _UPSERT, [(r.key, r.versions, r.digest, r.timestamp, r.seq, r.expires_ms) for r in rows]
                )
                if meta:
                    await cur.executemany(_META_UPSERT, list(meta.items()))
                if deletes:
                    await cur.execute("DELETE FROM dsm_kv WHERE key = ANY(%s)", (list(deletes),))
                if paxos_upserts:
                    await cur.executemany(_PAXOS_UPSERT, paxos_upserts)
                if paxos_deletes:
                    await cur.execute("DELETE FROM dsm_paxos WHERE hkey = ANY(%s)", (paxos_deletes,))

        await self._call("write", True, run)
