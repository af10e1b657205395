"""`EpidemicStorage`: one DSM node as a library object (the object behind the front door).

It owns the node's hybrid logical clock, validates every request, turns writes into versions with the
pure core (`dsm.core.versions`) and commits them to the backing store.

Group commit: `put` and `delete` queue their write and wait; one writer task takes every queued write (up
to `write_batch_max`), computes the new version sets and commits them in one store transaction, then wakes
the writers. A single writer therefore pays one commit per write, and many concurrent writers share one
commit. A call returns only after its commit: an acknowledged write is durable to the configured level.
At most `write_queue_max` writes wait at once; further writers wait for room (backpressure).

Clock floor: the store's metadata holds `hlc_reserved` (Unix ms), and every stored timestamp is at most
that; the writer moves it ahead (by `HLC_RESERVE_MS`) in the same transaction as the write that needs it.
A reopened node starts its clock above it, so it never issues a timestamp at or below one it issued before,
even if the wall clock went back across the restart.

Networking (membership, gossip, anti-entropy) arrives with the protocol issues; this node runs alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from dsm.config import StorageConfig
from dsm.core.encoding import (
    DecodeError,
    decode_context,
    decode_versions,
    digest,
    encode_versions,
)
from dsm.core.hlc import HybridLogicalClock, pack, physical_ms
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, VersionSet, write
from dsm.errors import (
    ClockSkewError,
    ClosedError,
    DSMError,
    InvalidContextError,
    InvalidKeyError,
    InvalidValueError,
    StorageCorruptError,
    StorageError,
)
from dsm.storage.base import BackingStore, StoredKey
from dsm.types import NodeInfo, ReadResult, WriteResult

log = logging.getLogger("dsm.node")

#: How far ahead of the newest timestamp the clock floor is reserved, ms (one metadata write per period).
HLC_RESERVE_MS = 60_000
META_HLC = "hlc_reserved"
_EMPTY = VersionSet()
_NO_CONTEXT = VersionVector()


def wall_clock_ms() -> int:
    """The system wall clock in Unix milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Write:
    key: str
    value: bytes | None
    context: VersionVector
    future: asyncio.Future[WriteResult]
    #: The key's version set right after this write (set by the commit; its context is the write's result).
    after: VersionSet = field(default=VersionSet())
    timestamp: int = 0


class EpidemicStorage:
    """One DSM node. Create it with `StorageFactory.create_epidemic_storage`.

    Use as `async with` or call `close()`. All operations are coroutines and safe to call concurrently
    from tasks of one event loop.
    """

    def __init__(
        self,
        config: StorageConfig,
        node_info: NodeInfo,
        store: BackingStore,
        wall_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        assert config.node_id, "node_id is checked by the factory"
        self.config = config
        self.node_id = config.node_id
        self.node_info = node_info
        self.store = store
        self._wall_ms = wall_ms
        self._resolution = Resolution(config.conflict_resolution)
        self._hlc = HybridLogicalClock(config.max_clock_offset_ms)
        self._reserved_ms = 0
        self._pending: deque[_Write] = deque()
        # Backpressure: writes in the queue or in a commit, and the writers waiting for room (FIFO).
        # (asyncio.Semaphore wakes waiters in O(n) each on Python 3.11, quadratic with many writers.)
        self._queued = 0
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        # The writer task sleeps on this future while the queue is empty; a submit wakes it.
        self._wake: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._state = "new"

    # --- life cycle ---

    async def start(self) -> None:
        """Opens the store and starts the writer. Called by the factory.

        Raises:
            StorageError: the store cannot be opened or its metadata is unreadable.
        """
        if self._state != "new":
            return
        await self.store.open()
        try:
            reserved = await self.store.read_meta(META_HLC)
            if reserved is not None:
                try:
                    self._reserved_ms = int(reserved.decode("ascii"))
                except (UnicodeDecodeError, ValueError):
                    raise StorageCorruptError(f"{self.store.url}: bad {META_HLC} metadata {reserved!r}") from None
                self._hlc.advance_to(pack(self._reserved_ms))
        except BaseException:
            await self.store.close()
            raise
        self._writer = asyncio.create_task(self._commit_loop(), name=f"dsm-writer-{self.node_id}")
        self._state = "running"
        log.info("node %s started on %s", self.node_id, self.store.url)

    async def close(self) -> None:
        """Stops accepting operations, commits every queued write, closes the store. Idempotent."""
        if self._state in ("closing", "closed"):
            return
        if self._state == "new":
            self._state = "closed"
            return
        self._state = "closing"
        self._wake_writer()
        writer = self._writer
        assert writer is not None
        # The writer commits everything already queued, then returns; it is never cancelled mid-commit,
        # which would leave its batch's writers waiting forever and a transaction half done.
        await asyncio.shield(writer)
        try:
            await self.store.close()
        finally:
            self._state = "closed"
        log.info("node %s closed", self.node_id)

    async def __aenter__(self) -> EpidemicStorage:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._state in ("closing", "closed")

    # --- validation (the caller's mistakes are raised at once) ---

    def _check_open(self) -> None:
        if self._state != "running":
            raise ClosedError(f"node {self.node_id} is {self._state}; no operations are accepted")

    def _check_key(self, key: object) -> str:
        if not isinstance(key, str):
            raise InvalidKeyError(f"a key must be str, not {type(key).__name__}")
        if not key:
            raise InvalidKeyError("a key must not be empty")
        if "\x00" in key:
            raise InvalidKeyError("a key must not contain NUL characters")
        if key.isascii():
            size = len(key)
        else:
            try:
                size = len(key.encode("utf-8"))
            except UnicodeEncodeError:
                raise InvalidKeyError("a key must be valid Unicode (no lone surrogates)") from None
        if size > self.config.max_key_bytes:
            raise InvalidKeyError(f"key is {size} bytes in UTF-8; at most {self.config.max_key_bytes} (max_key_bytes)")
        return key

    def _check_value(self, value: object) -> bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise InvalidValueError(f"a value must be bytes, bytearray or memoryview, not {type(value).__name__}")
        data = bytes(value)
        if len(data) > self.config.max_value_bytes:
            raise InvalidValueError(
                f"value is {len(data)} bytes; at most {self.config.max_value_bytes} (max_value_bytes)"
            )
        return data

    def _check_context(self, context: object) -> VersionVector:
        if context is None:
            return VersionVector()
        if not isinstance(context, str):
            raise InvalidContextError(f"a context must be the str token a read returned, not {type(context).__name__}")
        try:
            vector = decode_context(context, self.config.max_context_bytes)
            self._hlc.check(vector.max_timestamp(), self._wall_ms())
        except DecodeError as exc:
            raise InvalidContextError(str(exc)) from None
        except ClockSkewError as exc:
            raise InvalidContextError(f"context names a timestamp from the future: {exc}") from None
        return vector

    # --- operations ---

    async def get(self, key: str) -> ReadResult | None:
        """Reads a key from this node.

        Args:
            key: the key.

        Returns:
            the value(s) with their version context, or None when the key is absent or deleted.

        Raises:
            InvalidKeyError: the key is not acceptable.
            ClosedError: the node is closed.
            StorageError: the store failed (StorageCorruptError if the stored row is unreadable).
        """
        self._check_open()
        key = self._check_key(key)
        encoded = await self.store.read(key)
        if encoded is None:
            return None
        versions = self._decode(key, encoded)
        for version in versions.versions:
            if version.value is not None:
                return ReadResult(key, versions)
        return None  # only tombstones: deleted

    async def put(self, key: str, value: bytes, *, context: str | None = None) -> WriteResult:
        """Writes a value, durably on this node before returning.

        Args:
            key: the key (str, at most `max_key_bytes` in UTF-8, no NUL).
            value: the bytes (at most `max_value_bytes`).
            context: the context of an earlier read; the write then supersedes what that read returned.
                Without it, the write is blind: in 'lww' mode it wins by timestamp, in 'siblings' mode it
                becomes a sibling of whatever it did not supersede.

        Returns:
            the new version's timestamp and context.

        Raises:
            InvalidKeyError, InvalidValueError, InvalidContextError: bad arguments (nothing is written).
            ClosedError: the node is closed.
            StorageError: the commit failed; the write is not acknowledged (and nothing else is lost).
        """
        self._check_open()
        vector = _NO_CONTEXT if context is None else self._check_context(context)
        return await self._submit(self._check_key(key), self._check_value(value), vector)

    async def delete(self, key: str, *, context: str | None = None) -> WriteResult:
        """Deletes a key by writing a tombstone (durable on this node before returning).

        Args and Raises: as `put`, without a value.
        """
        self._check_open()
        return await self._submit(self._check_key(key), None, self._check_context(context))

    async def count(self) -> int:
        """The number of keys stored on this node, tombstones included."""
        self._check_open()
        return await self.store.count()

    def _decode(self, key: str, encoded: bytes) -> VersionSet:
        try:
            return decode_versions(encoded)
        except DecodeError as exc:
            raise StorageCorruptError(
                f"{self.store.url}: stored versions of key {key!r} are unreadable: {exc}"
            ) from None

    # --- group commit ---

    async def _submit(self, key: str, value: bytes | None, context: VersionVector) -> WriteResult:
        loop = asyncio.get_running_loop()
        if self._queued >= self.config.write_queue_max:
            room = loop.create_future()
            self._room_waiters.append(room)
            try:
                await room
            except asyncio.CancelledError:
                # A cancelled waiter that was already handed room passes it on.
                if room.done() and not room.cancelled():
                    self._release()
                raise
        else:
            self._queued += 1
        try:
            if self._state != "running":
                raise ClosedError(f"node {self.node_id} is {self._state}; no operations are accepted")
            item = _Write(key, value, context, loop.create_future())
            self._pending.append(item)
            self._wake_writer()
            return await item.future
        finally:
            self._release()

    def _wake_writer(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _release(self) -> None:
        """Frees one place in the write queue: hands it to the oldest waiting writer, if any."""
        while self._room_waiters:
            room = self._room_waiters.popleft()
            if not room.done():
                room.set_result(None)  # the place passes to this writer; _queued is unchanged
                return
        self._queued -= 1

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._state != "running":
                    return  # closing, and everything queued is committed
                self._wake = loop.create_future()
                await self._wake
            while self._pending:
                if len(self._pending) <= self.config.write_batch_max:
                    batch = list(self._pending)
                    self._pending.clear()
                else:
                    batch = [self._pending.popleft() for _ in range(self.config.write_batch_max)]
                try:
                    await self._commit(batch)
                except DSMError as exc:
                    log.warning("commit of %d writes failed: %s", len(batch), exc)
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                except Exception as exc:  # a bug: fail the writers loudly rather than hang them
                    log.exception("commit of %d writes failed unexpectedly", len(batch))
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(StorageError(f"commit failed unexpectedly: {exc!r}"))
                    continue
                for item in batch:
                    if not item.future.done():
                        item.future.set_result(WriteResult(item.key, item.timestamp, item.after))

    async def _current(self, keys: Sequence[str]) -> dict[str, VersionSet]:
        found = await self.store.read_many(list(dict.fromkeys(keys)))
        return {k: self._decode(k, v) for k, v in found.items()}

    async def _commit(self, batch: list[_Write]) -> None:
        """Turns a batch of writes into new version sets and commits them in one store transaction."""
        lww = self._resolution is Resolution.LWW
        # In last-writer-wins the new version's timestamp exceeds every stored one (the clock has seen them
        # all), so it replaces the key whatever is stored: no read is needed.
        states = {} if lww else await self._current([item.key for item in batch])
        wall = self._wall_ms()
        hlc, node_id, config = self._hlc, self.node_id, self.config
        for item in batch:
            current = states.get(item.key, _EMPTY)
            if current.versions or item.context.entries:
                hlc.advance_to(max(current.max_timestamp, item.context.max_timestamp()))
            dot = Dot(hlc.now(wall), node_id)
            item.timestamp = dot.timestamp
            item.after = states[item.key] = write(
                current,
                dot,
                item.context,
                item.value,
                self._resolution,
                config.max_siblings,
            )
        rows = []
        for key, versions in states.items():  # every key here is one the batch wrote
            encoded = encode_versions(versions)
            rows.append(StoredKey(key, encoded, digest(key, encoded), versions.max_timestamp))
        # Keep every stored timestamp at or below the reserved clock floor (see the module docstring).
        newest_ms = physical_ms(hlc.last)
        if newest_ms < self._reserved_ms:
            await self.store.write(rows)
            return
        reserved = newest_ms + HLC_RESERVE_MS
        await self.store.write(rows, {META_HLC: str(reserved).encode("ascii")})
        self._reserved_ms = reserved
