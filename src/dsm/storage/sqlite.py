"""The SQLite backing store (stdlib `sqlite3`, WAL journal): the default, embedded in the node process.

How it keeps the event loop responsive, measured in `bench/storage_bench.py`: with durability 'process'
(synchronous=NORMAL) a commit only appends to the WAL file and takes tens of microseconds, so point reads
and commits run inline on the caller's thread, where a thread hop would cost ~130 us per call. Commits are
bounded by the node's `write_batch_max`. What can take milliseconds runs on a background thread with its own
connection: WAL checkpoints (automatic checkpoints are off on the write connection; the store asks for a
passive checkpoint every `CHECKPOINT_ROWS` rows or `CHECKPOINT_BYTES` bytes written, and the WAL file is
cut back to `WAL_SIZE_LIMIT_BYTES` when it restarts), whole-range scans and digests, the final checkpoint
at close. With durability
'fsync' (synchronous=FULL) every commit waits for the disk, so commits run on a dedicated writer thread;
concurrent writers then share each fsync through the node's group commit.

Durability: WAL with synchronous=NORMAL loses nothing a committed transaction wrote if the *process* dies
(the WAL is in the OS page cache); synchronous=FULL also survives power loss.

Only one process may use a database: an exclusive `flock` on `<path>.lock` is held while the store is open.

Tables: `dsm_kv` (the rows; since schema version 3 with each row's commit stamp `seq` and expiry `expires_ms`,
indexed by `dsm_kv_seq` and the partial `dsm_kv_expires`), `dsm_meta` (named blobs, the schema version among
them) and `dsm_paxos` (the paxos keyspace, `storage/base.py`; added by schema version 2). An older database
is upgraded when it opens, in one transaction with the new version number (`_create_schema`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

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
from dsm.storage.sqlview import IN_CHUNK as _IN_CHUNK
from dsm.storage.sqlview import RANGE_SUMS, SqlRangeView

T = TypeVar("T")

#: Rows, or bytes, written between two requests for a passive WAL checkpoint (whichever comes first).
CHECKPOINT_ROWS = 4000
CHECKPOINT_BYTES = 8 * 1024 * 1024
#: A WAL at least this large is restarted after the passive checkpoint (see `_request_checkpoint`).
WAL_RESTART_BYTES = 16 * 1024 * 1024
#: After a checkpoint resets the WAL, SQLite truncates the file to this size.
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dsm_kv ("
    " key TEXT PRIMARY KEY NOT NULL, versions BLOB NOT NULL,"
    " digest INTEGER NOT NULL, ts INTEGER NOT NULL, seq INTEGER NOT NULL DEFAULT 0, expires_ms INTEGER)",
    "CREATE TABLE IF NOT EXISTS dsm_meta (name TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dsm_paxos (hkey TEXT PRIMARY KEY NOT NULL, state BLOB NOT NULL)",
)
#: What schema version 3 added to the rows of an older store (old rows: seq 0, below every cursor; no expiry).
_ROW_COLUMNS = (
    "ALTER TABLE dsm_kv ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE dsm_kv ADD COLUMN expires_ms INTEGER",
)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS dsm_kv_seq ON dsm_kv(seq)",
    "CREATE INDEX IF NOT EXISTS dsm_kv_expires ON dsm_kv(expires_ms) WHERE expires_ms IS NOT NULL",
)
_UPSERT = (
    "INSERT INTO dsm_kv(key, versions, digest, ts, seq, expires_ms) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(key) DO UPDATE SET versions = excluded.versions, digest = excluded.digest, ts = excluded.ts,"
    " seq = excluded.seq, expires_ms = excluded.expires_ms"
)
#: `seq >= stamp` alone bounds the index range; with an after_key, the rest picks the rows after it.
_CHANGED = "SELECT key, versions, seq FROM dsm_kv WHERE {after} AND key >= ?{hi} ORDER BY seq, key LIMIT ?"
_AFTER_STAMP = "seq > ?"
_AFTER_ROW = "seq >= ? AND (seq > ? OR key > ?)"
_EXPIRING = (
    "SELECT key, versions, expires_ms FROM dsm_kv WHERE expires_ms > ? AND expires_ms <= ? AND key >= ?{hi}"
    " ORDER BY expires_ms, key LIMIT ?"
)
_META_UPSERT = "INSERT INTO dsm_meta(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value"
_PAXOS_UPSERT = (
    "INSERT INTO dsm_paxos(hkey, state) VALUES (?, ?) ON CONFLICT(hkey) DO UPDATE SET state = excluded.state"
)
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
#: A batch's paxos entries, checked: (upserts, deletes) (`base.paxos_changes`).
_PaxosChanges = tuple[list[tuple[str, bytes]], list[str]]
#: How long an inline write keeps retrying while a checkpoint holds the write lock.
BUSY_WAIT_S = 5.0


class _Busy(Exception):
    """A write found the database lock held (by a checkpoint) and wrote nothing."""

    def __init__(self, error: sqlite3.Error) -> None:
        super().__init__(str(error))
        self.error = error


def translate(exc: sqlite3.Error, path: str, doing: str) -> StorageError:
    """Maps a sqlite3 error onto the DSM hierarchy with a message naming the file and the operation."""
    text = str(exc)
    lowered = text.lower()
    where = f"SQLite {path}: {doing} failed: {text}"
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return StorageCorruptError(where)
    if "readonly" in lowered or "read-only" in lowered:
        return StorageReadOnlyError(where)
    if "locked" in lowered or "busy" in lowered:
        return StorageLockedError(where)
    if "unable to open" in lowered or "disk i/o" in lowered:
        return StorageUnavailableError(where)
    return StorageError(where)


class SQLiteStore:
    """A `BackingStore` in one SQLite database file.

    Args:
        path: the database file; its directory is created if missing.
        durability: 'process' (synchronous=NORMAL) or 'fsync' (synchronous=FULL).
        commit_in_thread: run commits on a writer thread (default: only with 'fsync', whose commits wait
            for the disk). Inline fsync commits double single-writer throughput here but stall the event
            loop for each fsync (BENCHMARKS.md has the measurements).
    """

    def __init__(
        self, path: str | os.PathLike[str], durability: str = "process", commit_in_thread: bool | None = None
    ) -> None:
        if durability not in ("process", "fsync"):
            raise ConfigError("durability", durability, "'process' or 'fsync'")
        if "\x00" in os.fspath(path):
            raise ConfigError("storage_url", os.fspath(path), "a path without NUL characters")
        # The resolved path names the lock file, so a second open through a symlink finds the same lock.
        self.path = str(Path(path).resolve())
        self.url = "sqlite://" + self.path
        self.durability = durability
        self.commit_in_thread = durability == "fsync" if commit_in_thread is None else commit_in_thread
        self._write_con: sqlite3.Connection | None = None
        self._read_con: sqlite3.Connection | None = None
        self._lock_file: Any = None
        # One background thread (own connection) for checkpoints, scans and digests; in fsync mode a
        # second thread for commits.
        self._background: concurrent.futures.ThreadPoolExecutor | None = None
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._background_cons: list[sqlite3.Connection] = []
        self._rows_since_checkpoint = 0
        self._bytes_since_checkpoint = 0
        self._checkpoint: concurrent.futures.Future[None] | None = None

    # --- life cycle ---

    async def open(self) -> None:
        if self._write_con is not None:
            return
        self._prepare_directory()
        self._take_lock()
        try:
            self._write_con = self._connect(writer=True)
            self._read_con = self._connect(writer=False)
        except BaseException:
            self._close_connections()
            self._release_lock()
            raise
        self._background = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dsm-sqlite-bg")
        if self.commit_in_thread:
            self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dsm-sqlite-wr")

    def _prepare_directory(self) -> None:
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailableError(f"SQLite {self.path}: cannot create its directory: {exc}") from exc
        if not os.access(self.path if os.path.exists(self.path) else Path(self.path).parent, os.W_OK):
            raise StorageReadOnlyError(
                f"SQLite {self.path}: the database file is read-only; the node needs write access"
            )

    def _take_lock(self) -> None:
        lock_path = self.path + ".lock"
        try:
            handle = open(lock_path, "a+b")  # noqa: SIM115 - held for the store's lifetime
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StorageReadOnlyError(
                    f"SQLite {self.path}: the data directory is read-only ({exc.strerror}); "
                    "the node needs to write its database, WAL and lock files there"
                ) from exc
            raise StorageUnavailableError(f"SQLite {self.path}: cannot open lock file {lock_path}: {exc}") from exc
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise StorageLockedError(
                f"SQLite {self.path} is in use by another process (lock {lock_path}); "
                "two nodes must not share a data directory"
            ) from None
        self._lock_file = handle

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _connect(self, writer: bool) -> sqlite3.Connection:
        doing = "opening for writing" if writer else "opening for reading"
        try:
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        except sqlite3.Error as exc:
            raise translate(exc, self.path, doing) from exc
        try:
            con.execute("PRAGMA busy_timeout = 5000")
            if writer:
                mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StorageError(f"SQLite {self.path}: cannot switch to WAL journal (got {mode!r})")
                sync = "FULL" if self.durability == "fsync" else "NORMAL"
                con.execute(f"PRAGMA synchronous = {sync}")
                con.execute("PRAGMA wal_autocheckpoint = 0")
                con.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
                self._create_schema(con)
                if not self.commit_in_thread:
                    # Inline commits must not wait in SQLite's busy handler (it sleeps on the event loop while
                    # a checkpoint holds the lock): a busy write fails at once and `write` retries it after
                    # yielding to the loop.
                    con.execute("PRAGMA busy_timeout = 0")
            else:
                con.execute("PRAGMA query_only = 1")
            return con
        except sqlite3.Error as exc:
            con.close()
            raise translate(exc, self.path, doing) from exc
        except BaseException:
            con.close()
            raise

    def _create_schema(self, con: sqlite3.Connection) -> None:
        con.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                con.execute(statement)
            row = con.execute("SELECT value FROM dsm_meta WHERE name = ?", (META_SCHEMA,)).fetchone()
            # A version-1 database got its paxos table from the statements above; an older one gets its row
            # columns here, all in this transaction with the new version number.
            step = schema_to_record(None if row is None else bytes(row[0]), f"SQLite {self.path}")
            if step.add_row_columns:
                for statement in _ROW_COLUMNS:
                    con.execute(statement)
            for statement in _INDEXES:
                con.execute(statement)
            if step.record is not None:
                con.execute(_META_UPSERT, (META_SCHEMA, step.record))
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._write_con is None:
            return
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._background is not None:
            # Fold the WAL into the database so a reopen does not replay it, off the event loop (a large WAL
            # takes seconds). Harmless if it fails: the WAL keeps the data.
            def final_checkpoint() -> None:
                with contextlib.suppress(sqlite3.Error):
                    self._background_con().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

            try:
                await asyncio.get_running_loop().run_in_executor(self._background, final_checkpoint)
            finally:
                self._background.shutdown(wait=True)
                self._background = None
        self._close_connections()
        self._release_lock()

    def _close_connections(self) -> None:
        for con in (self._read_con, self._write_con, *self._background_cons):
            if con is not None:
                with contextlib.suppress(sqlite3.Error):
                    con.close()
        self._read_con = self._write_con = None
        self._background_cons = []

    # --- helpers ---

    def _reader(self) -> sqlite3.Connection:
        if self._read_con is None:
            raise ClosedError(f"SQLite store {self.path} is closed")
        return self._read_con

    def _background_con(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
            con.execute("PRAGMA busy_timeout = 5000")
            self._local.con = con
            self._background_cons.append(con)
        return con

    async def _in_background(self, doing: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._background is None:
            raise ClosedError(f"SQLite store {self.path} is closed")

        def run() -> T:
            try:
                return fn(self._background_con())
            except sqlite3.Error as exc:
                raise translate(exc, self.path, doing) from exc

        return await asyncio.get_running_loop().run_in_executor(self._background, run)

    async def with_range_view(self, fn: Callable[[SqlRangeView], T]) -> T:
        """Runs `fn` (an anti-entropy step, `dsm.core.reconcile`) on the background thread against a
        synchronous view of the store, inside one read transaction (a consistent snapshot), so the
        event loop keeps serving while it scans."""

        def run(con: sqlite3.Connection) -> T:
            con.execute("BEGIN")
            try:
                return fn(SqlRangeView(lambda sql, args: con.execute(sql, args).fetchall(), "?"))
            finally:
                con.execute("COMMIT")

        return await self._in_background("anti-entropy", run)

    # --- reads ---

    async def read(self, key: str) -> bytes | None:
        try:
            row = self._reader().execute("SELECT versions FROM dsm_kv WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise translate(exc, self.path, "read") from exc
        return None if row is None else bytes(row[0])

    async def older_than(self, timestamp: int, after: str = "", limit: int = 1000) -> list[tuple[str, bytes]]:
        sql = "SELECT key, versions FROM dsm_kv WHERE key > ? AND ts < ? ORDER BY key LIMIT ?"
        try:
            rows = self._reader().execute(sql, (after, timestamp, limit)).fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, self.path, "read") from exc
        return [(k, bytes(v)) for k, v in rows]

    async def changed_since(
        self, stamp: int, lo: str = "", hi: str | None = None, after_key: str | None = None, limit: int = 1000
    ) -> list[ChangedRow]:
        args: list[Any] = [stamp, lo] if after_key is None else [stamp, stamp, after_key, lo]
        if hi is not None:
            args.append(hi)
        args.append(limit)
        after = _AFTER_STAMP if after_key is None else _AFTER_ROW
        sql = _CHANGED.format(after=after, hi="" if hi is None else " AND key < ?")
        return await self._select_rows("changed_since", sql, args)

    async def expiring(
        self, after_ms: int, upto_ms: int, lo: str = "", hi: str | None = None, limit: int = 1000
    ) -> list[ExpiringRow]:
        args: list[Any] = [after_ms, upto_ms, lo]
        if hi is not None:
            args.append(hi)
        args.append(limit)
        return await self._select_rows("expiring", _EXPIRING.format(hi="" if hi is None else " AND key < ?"), args)

    async def _select_rows(self, doing: str, sql: str, args: Sequence[Any]) -> list[tuple[str, bytes, int]]:
        """(key, blob, int) rows of a bounded query on the read connection (inline: a page of an index)."""
        try:
            rows = self._reader().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, self.path, doing) from exc
        return [(k, bytes(v), int(n)) for k, v, n in rows]

    async def read_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        return self._read_in("SELECT key, versions FROM dsm_kv WHERE key IN", keys, "read")

    async def read_paxos(self, hkeys: Sequence[str]) -> dict[str, bytes]:
        return self._read_in("SELECT hkey, state FROM dsm_paxos WHERE hkey IN", hkeys, "read_paxos")

    def _read_in(self, select: str, keys: Sequence[str], what: str) -> dict[str, bytes]:
        """The (key, blob) rows `select ... IN (keys)` finds, asking `_IN_CHUNK` keys at a time."""
        con = self._reader()
        found: dict[str, bytes] = {}
        try:
            for i in range(0, len(keys), _IN_CHUNK):
                chunk = list(keys[i : i + _IN_CHUNK])
                for key, blob in con.execute(f"{select} ({','.join('?' * len(chunk))})", chunk):
                    found[key] = bytes(blob)
        except sqlite3.Error as exc:
            raise translate(exc, self.path, what) from exc
        return found

    async def scan_paxos(self, start: str = "", end: str | None = None, limit: int = 1000) -> list[tuple[str, bytes]]:
        def run(con: sqlite3.Connection) -> list[tuple[str, bytes]]:
            if end is None:
                sql, args = "SELECT hkey, state FROM dsm_paxos WHERE hkey >= ? ORDER BY hkey LIMIT ?", (start, limit)
            else:
                sql = "SELECT hkey, state FROM dsm_paxos WHERE hkey >= ? AND hkey < ? ORDER BY hkey LIMIT ?"
                args = (start, end, limit)  # type: ignore[assignment]
            return [(h, bytes(v)) for h, v in con.execute(sql, args)]

        return await self._in_background("scan_paxos", run)

    async def read_meta(self, name: str) -> bytes | None:
        try:
            row = self._reader().execute("SELECT value FROM dsm_meta WHERE name = ?", (name,)).fetchone()
        except sqlite3.Error as exc:
            raise translate(exc, self.path, "read_meta") from exc
        return None if row is None else bytes(row[0])

    async def scan(self, start: str = "", end: str | None = None, limit: int = 1000) -> list[tuple[str, int]]:
        def run(con: sqlite3.Connection) -> list[tuple[str, int]]:
            if end is None:
                sql, args = (
                    "SELECT key, digest FROM dsm_kv WHERE key >= ? ORDER BY key LIMIT ?",
                    (start, limit),
                )
            else:
                sql = "SELECT key, digest FROM dsm_kv WHERE key >= ? AND key < ? ORDER BY key LIMIT ?"
                args = (start, end, limit)  # type: ignore[assignment]
            return [(k, d) for k, d in con.execute(sql, args)]

        return await self._in_background("scan", run)

    async def range_digest(self, start: str = "", end: str | None = None) -> RangeDigest:
        def run(con: sqlite3.Connection) -> RangeDigest:
            cols = RANGE_SUMS
            if end is None:
                row = con.execute(f"SELECT {cols} FROM dsm_kv WHERE key >= ?", (start,)).fetchone()
            else:
                row = con.execute(f"SELECT {cols} FROM dsm_kv WHERE key >= ? AND key < ?", (start, end)).fetchone()
            return RangeDigest.from_sums(int(row[0]), int(row[1]), int(row[2]))

        return await self._in_background("range_digest", run)

    async def max_timestamp(self) -> int:
        return await self._in_background(
            "max_timestamp",
            lambda con: int(
                con.execute("SELECT max(coalesce(max(ts), 0), coalesce(max(seq), 0)) FROM dsm_kv").fetchone()[0]
            ),
        )

    async def count(self) -> int:
        return await self._in_background(
            "count", lambda con: int(con.execute("SELECT count(*) FROM dsm_kv").fetchone()[0])
        )

    # --- writes ---

    async def write(
        self,
        rows: Sequence[StoredKey],
        meta: Mapping[str, bytes] | None = None,
        deletes: Sequence[str] = (),
        paxos: Sequence[PaxosEntry] = (),
    ) -> None:
        if self._write_con is None:
            raise ClosedError(f"SQLite store {self.path} is closed")
        changes = paxos_changes(paxos) if paxos else None
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(
                self._writer, self._write_sync, rows, meta, deletes, changes
            )
        else:
            try:
                self._write_sync(rows, meta, deletes, changes)
            except _Busy:
                await self._retry_busy(rows, meta, deletes, changes)
        self._rows_since_checkpoint += len(rows)
        self._bytes_since_checkpoint += len(rows[0].versions) if len(rows) == 1 else sum(len(r.versions) for r in rows)
        if changes is not None:
            self._rows_since_checkpoint += len(changes[0]) + len(changes[1])
            self._bytes_since_checkpoint += sum(len(state) for _, state in changes[0])
        if self._rows_since_checkpoint >= CHECKPOINT_ROWS or self._bytes_since_checkpoint >= CHECKPOINT_BYTES:
            self._request_checkpoint()

    async def _retry_busy(
        self,
        rows: Sequence[StoredKey],
        meta: Mapping[str, bytes] | None,
        deletes: Sequence[str],
        paxos: _PaxosChanges | None,
    ) -> None:
        """Retries an inline write that found the lock held, yielding to the loop between tries."""
        loop = asyncio.get_running_loop()
        delay_s, deadline = 0.0005, loop.time() + BUSY_WAIT_S
        while True:
            await asyncio.sleep(delay_s)
            try:
                self._write_sync(rows, meta, deletes, paxos)
                return
            except _Busy as busy:
                if loop.time() > deadline:
                    raise translate(busy.error, self.path, "write") from busy.error
                delay_s = min(delay_s * 2, 0.02)

    def _write_sync(
        self,
        rows: Sequence[StoredKey],
        meta: Mapping[str, bytes] | None,
        deletes: Sequence[str] = (),
        paxos: _PaxosChanges | None = None,
    ) -> None:
        con = self._write_con
        assert con is not None
        try:
            if len(rows) == 1 and not meta and not deletes and paxos is None:
                # One statement in autocommit mode is its own transaction: one call instead of three.
                r = rows[0]
                con.execute(_UPSERT, (r.key, r.versions, r.digest, r.timestamp, r.seq, r.expires_ms))
                return
            con.execute("BEGIN IMMEDIATE")
            con.executemany(_UPSERT, [(r.key, r.versions, r.digest, r.timestamp, r.seq, r.expires_ms) for r in rows])
            if meta:
                con.executemany(_META_UPSERT, list(meta.items()))
            if deletes:
                con.executemany("DELETE FROM dsm_kv WHERE key = ?", [(k,) for k in deletes])
            if paxos is not None:
                upserts, removals = paxos
                con.executemany(_PAXOS_UPSERT, upserts)
                con.executemany("DELETE FROM dsm_paxos WHERE hkey = ?", [(h,) for h in removals])
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            if con.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
            if not con.in_transaction and getattr(exc, "sqlite_errorcode", None) in (_SQLITE_BUSY, _SQLITE_LOCKED):
                raise _Busy(exc) from exc  # nothing was written; the caller may retry the whole batch
            raise translate(exc, self.path, "write") from exc

    def _request_checkpoint(self) -> None:
        if self._background is None or (self._checkpoint is not None and not self._checkpoint.done()):
            return
        self._rows_since_checkpoint = 0
        self._bytes_since_checkpoint = 0

        def run() -> None:
            # PASSIVE copies the WAL into the database beside the writer (the bulk of the work, off the event
            # loop), but with a writer that never pauses it never backfills every frame, so the WAL would never
            # restart and would grow without bound. Once the WAL passes WAL_RESTART_BYTES, RESTART finishes
            # the few frames left, holding writers back only that long (the inline writer then waits in
            # SQLite's busy handler: the price of a bounded WAL), and makes the next write start the WAL from
            # its beginning (cut back to WAL_SIZE_LIMIT_BYTES). A failed checkpoint loses nothing.
            con = self._background_con()
            with contextlib.suppress(sqlite3.Error):
                _, wal_pages, _ = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                page_size = con.execute("PRAGMA page_size").fetchone()[0]
                if wal_pages * page_size >= WAL_RESTART_BYTES:
                    con.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

        self._checkpoint = self._background.submit(run)
