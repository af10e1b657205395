"""`EpidemicStorage`: one DSM node as a library object (the object behind the front door).

It owns the node's hybrid logical clock, validates every request, turns writes into versions with the
pure core (`dsm.core.versions`) and commits them to the backing store.

Group commit: `put` and `delete` queue their write and wait; one writer task takes every queued write (up
to `write_batch_max`), computes the new version sets and commits them in one store transaction, then wakes
the writers. A single writer therefore pays one commit per write, and many concurrent writers share one
commit. A call returns only after its commit: an acknowledged write is durable to the configured level.
At most `write_queue_max` writes wait at once; further writers wait for room (backpressure).

Clock floor: the store's metadata holds `hlc_reserved` (Unix ms), and every stored timestamp is at most
that; the writer moves it ahead (by `HLC_RESERVE_MS`) in the same transaction as the write that needs it, and
a clean close sets it to just above the last timestamp. On start, if the reservation is not behind the wall
clock (a crash within the reservation window, or a wall clock that went back), the exact newest stored
timestamp is read (`max_timestamp`, a scan) and the clock starts above it. So a reopened node never issues a
timestamp at or below one it stored, and never jumps ahead of the wall clock further than it must.

Queue accounting: a write holds one of `write_queue_max` places from the moment it is queued until its
commit has finished (or it is dropped), whatever happens to its caller. A caller cancelled before its write
is taken into a batch drops the write; one cancelled later leaves the write to commit (its outcome is then
unknown to that caller, as with any timeout).

Replication: `merge(items)` takes version sets other replicas sent (`DataItem`s) through the same queue
and commits, so a merge and a local write of one key never interleave (a write computed on a row a merge
is rewriting would be lost). A merge reads the stored set, joins the remote one into it (the same merge on
every replica) and writes back only what changed; the clock observes the remote timestamps, so a later
local write is newer than everything stored. An item whose newest timestamp is more than
`max_clock_offset_ms` ahead of the wall clock is refused (counted in `stats`), as the configuration
documents. After each commit, `on_committed` (if set) receives the committed local writes as `DataItem`s,
one per key with its whole version set, for the network runtime to publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from dsm.config import StorageConfig
from dsm.core.consistency import Level, parse_level
from dsm.core.coordinator import LevelDone
from dsm.core.dissemination import update_id
from dsm.core.encoding import (
    DecodeError,
    decode_context,
    decode_versions,
    encode_versions,
)
from dsm.core.hlc import MAX_TIMESTAMP, physical_ms
from dsm.core.messages import DataItem
from dsm.core.replica import (
    HLC_RESERVE_MS,
    META_HLC,
    USER_KEYS_START,
    Change,
    MergeOp,
    MergeStats,
    Replica,
    ReplicaSettings,
    WriteOp,
)
from dsm.core.vclock import VersionVector
from dsm.core.versions import Resolution, VersionSet
from dsm.errors import (
    ClockSkewError,
    ClosedError,
    ConsistencyError,
    DSMError,
    ForeignStoreError,
    InvalidContextError,
    InvalidInputError,
    InvalidKeyError,
    InvalidValueError,
    StaleReplicaError,
    StorageCorruptError,
    StorageError,
    WatchOverflowError,
)
from dsm.storage.base import BackingStore
from dsm.types import NodeInfo, ReadResult, Sibling, WriteResult

log = logging.getLogger("dsm.node")

__all__ = ["HLC_RESERVE_MS", "META_HLC", "Change", "EpidemicStorage", "MergeStats", "Watch"]

#: Unix ms: when this store started taking part in the cluster (set when the store is new or was emptied),
#: and the last time the node was running (written by the tombstone sweep, and on a clean close).
META_MEMBER_SINCE = "member_since_ms"
META_LAST_SEEN = "last_seen_ms"
#: The id of the node that owns the store (written at its first start; see `ForeignStoreError`).
META_NODE_ID = "node_id"
#: Internal records replicated like data, under keys no client can use (client keys never hold NUL): a
#: member's free metadata (`NodeInfo.metadata`, JSON), so every member can show every member's.
MEMBER_KEY_PREFIX = "\x00member/"
#: Bounds of a node's metadata: pairs, and bytes of its JSON.
METADATA_MAX_PAIRS = 64
METADATA_MAX_BYTES = 4096
#: Most rows the tombstone sweep looks at per step (each step is one commit of the purgeable ones).
SWEEP_PAGE = 1000
#: Longest period of the tombstone sweep (it is also the heartbeat that dates a node's absence), ms.
SWEEP_MAX_MS = 3_600_000
_EMPTY = VersionSet()
_NO_CONTEXT = VersionVector()


def _prefix_end(prefix: str) -> str | None:
    """The smallest key above every key starting with `prefix` (None: no bound)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1 if last + 1 != 0xD800 else 0xE000)
        prefix = prefix[:-1]
    return None


def metadata_bytes(metadata: object) -> bytes:
    """The canonical JSON of a node's metadata, checked: a mapping of str to str, at most
    METADATA_MAX_PAIRS pairs and METADATA_MAX_BYTES bytes (InvalidInputError otherwise)."""
    if not isinstance(metadata, Mapping):
        raise InvalidInputError(f"metadata must be a mapping of str to str, not {type(metadata).__name__}")
    if len(metadata) > METADATA_MAX_PAIRS:
        raise InvalidInputError(f"metadata holds {len(metadata)} pairs; at most {METADATA_MAX_PAIRS}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise InvalidInputError("metadata keys and values must be str")
    encoded = json.dumps(dict(sorted(metadata.items())), separators=(",", ":")).encode()
    if len(encoded) > METADATA_MAX_BYTES:
        raise InvalidInputError(f"metadata is {len(encoded)} bytes as JSON; at most {METADATA_MAX_BYTES}")
    return encoded


def wall_clock_ms() -> int:
    """The system wall clock in Unix milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Queued:
    """A write or merge waiting in the commit queue (`size`: its value bytes, for the batch byte bound)."""

    op: WriteOp | MergeOp
    future: asyncio.Future[Any]
    size: int


class Watch:
    """The committed changes of the keys under a prefix, in commit order, from the moment of `watch()`.

    An async iterator of `Change`s. Its queue is bounded (`limit`): a reader that falls that far behind is
    not allowed to hold the node's memory, its watch ends with `WatchOverflowError` (start a new one and
    re-read what it needs). `close()` ends it; iteration then stops.
    """

    def __init__(self, owner: EpidemicStorage, prefix: str, limit: int) -> None:
        self.prefix = prefix
        self._owner = owner
        self._limit = limit
        self._queue: deque[Change] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._end: BaseException | None = None
        self.closed = False

    def offer(self, change: Change) -> None:
        if self.closed:
            return
        if len(self._queue) >= self._limit:
            self.finish(WatchOverflowError(f"watch of {self.prefix!r} fell {self._limit} changes behind"))
            return
        self._queue.append(change)
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def finish(self, end: BaseException | None) -> None:
        if not self.closed:
            self.closed = True
            self._end = end
            self._owner._watches.discard(self)
            self._notify()

    def close(self) -> None:
        """Ends the watch; changes already queued are dropped."""
        self._queue.clear()
        self.finish(None)

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Change:
        while not self._queue:
            if self.closed:
                if self._end is not None:
                    end, self._end = self._end, None
                    raise end
                raise StopAsyncIteration
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
            self._wake = None
        return self._queue.popleft()


class Network(Protocol):
    """What a node needs of the runtime that networks it (`dsm.net.runtime.Runtime`)."""

    @property
    def addr(self) -> str:
        """The host:port other nodes reach this one at."""
        ...

    async def close(self, flush_timeout: float = 1.0, leave: bool = False) -> None: ...


#: A conflict resolver (siblings mode): given a key and its concurrent values (newest first, at least two),
#: the one value that replaces them all, or None to leave them as they are. Called on reads; it should be
#: deterministic (the same siblings give the same value on every node), fast and free of I/O.
Resolver = Callable[[str, Sequence[Sibling]], bytes | None]


class Levels(Protocol):
    """What consistency levels above `local` need of the runtime (`dsm.net.runtime.Runtime`, which drives
    the core's `dsm.core.coordinator.Coordinator`)."""

    @property
    def read_repairs(self) -> int:
        """Members (this node included) that reads at a level found stale and repaired."""
        ...

    async def write_at(self, level: Level, items: Sequence[DataItem], timeout_ms: int) -> LevelDone:
        """Waits until enough members stored `items` (durable here already), or `timeout_ms`."""
        ...

    async def read_at(self, level: Level, key: str, own: VersionSet, timeout_ms: int) -> LevelDone:
        """Reads `key` at `level` with this node's `own` version set first (repairs the stale)."""
        ...


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
        #: The write and merge rule with this node's clock (`dsm.core.replica`).
        self.replica = Replica(self.node_id, ReplicaSettings.from_config(config), store.url)
        self._resolution = self.replica.resolution
        self._pending: deque[_Queued] = deque()
        #: Called after each commit with the local writes it made durable (see the module docstring).
        self.on_committed: Callable[[list[DataItem]], None] | None = None
        # Backpressure: writes in the queue or in a commit, and the writers waiting for room (FIFO).
        # (asyncio.Semaphore wakes waiters in O(n) each on Python 3.11, quadratic with many writers.)
        self._queued = 0
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        # The writer task sleeps on this future while the queue is empty; a submit wakes it.
        self._wake: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._leaving = False
        #: The node id whose store this node adopted at start (`adopt_store`), else None.
        self.adopted_from: str | None = None
        self._state = "new"
        self._watches: set[Watch] = set()
        #: The network runtime driving this node, when the factory started one (None: a standalone node).
        self.network: Network | None = None
        #: Consistency levels above `local` go through it (set by the runtime; None: this node alone).
        self.coordinator: Levels | None = None
        #: Requests above `local`, by (operation, level, outcome "ok" / "unmet"); read repairs sent (members
        #: that were stale, this node included).
        self.level_stats: Counter[tuple[str, str, str]] = Counter()
        self._sweeper: asyncio.Task[None] | None = None
        #: In 'siblings' mode, a read that finds several values passes them to this function and writes
        #: back what it returns, with the read's context: the siblings are resolved for every later reader
        #: (Riak's resolve-on-read). Two nodes that resolve the same siblings at once write two versions
        #: of the same value (with a deterministic resolver), which the next read resolves again.
        self.resolver: Resolver | None = None
        #: Reads whose siblings the resolver replaced, and resolver calls that raised (siblings returned).
        self.resolved = 0
        self.resolver_failures = 0

    @property
    def merge_stats(self) -> MergeStats:
        """What merges of remote writes did (refusals included)."""
        return self.replica.stats

    @property
    def tombstones_purged(self) -> int:
        """Tombstones purged by the sweep (see docs/consistency.md, "Safe deletes")."""
        return self.replica.tombstones_purged

    # --- life cycle ---

    async def start(self, networked: bool = False) -> None:
        """Opens the store and starts the writer and the tombstone sweep. Called by the factory.

        Args:
            networked: the node is (or will be) a member of a cluster: a store last seen longer ago than
                `tombstone_grace_ms` is refused or emptied (`stale_replica`).

        Raises:
            StorageError: the store cannot be opened or its metadata is unreadable.
            StaleReplicaError: a networked node's data is older than the grace period ('refuse').
            ForeignStoreError: the store belongs to another node id (and `adopt_store` is off).
        """
        if self._state != "new":
            return
        await self.store.open()
        try:
            await self._check_owner()
            await self._restore_clock()
            await self._check_absence(networked)
        except BaseException:
            await self.store.close()
            raise
        self._writer = asyncio.create_task(self._commit_loop(), name=f"dsm-writer-{self.node_id}")
        self._state = "running"
        self._sweeper = asyncio.create_task(self._sweep_loop(), name=f"dsm-sweep-{self.node_id}")
        log.info("node %s started on %s", self.node_id, self.store.url)

    async def _check_owner(self) -> None:
        """Refuses a store another node id wrote, unless `adopt_store` (see `ForeignStoreError`); records
        this node's id in a store that has none yet (a new store, or one from before ids were recorded)."""
        raw = await self.store.read_meta(META_NODE_ID)
        owner = raw.decode("utf-8", "replace") if raw is not None else None
        if owner == self.node_id:
            return
        if owner is not None and not self.config.adopt_store:
            raise ForeignStoreError(owner, self.node_id, self.store.url)
        if owner is not None:
            log.warning("node %s adopts the store %s of node %s (adopt_store)", self.node_id, self.store.url, owner)
            self.adopted_from = owner
        await self.store.write([], {META_NODE_ID: self.node_id.encode("utf-8")})

    async def _restore_clock(self) -> None:
        """Starts the clock above every stored timestamp (see "Clock floor" in the module docstring)."""
        raw = await self.store.read_meta(META_HLC)
        if raw is None:
            return
        try:
            reserved = int(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            reserved = -1
        if not 0 <= reserved <= physical_ms(MAX_TIMESTAMP) - HLC_RESERVE_MS:
            raise StorageCorruptError(f"{self.store.url}: bad {META_HLC} metadata {raw[:40]!r}")
        if self.replica.restore_floor(reserved, self._wall_ms()):
            self.replica.clock.advance_to(await self.store.max_timestamp())

    async def _meta_ms(self, name: str) -> int | None:
        raw = await self.store.read_meta(name)
        if raw is None:
            return None
        try:
            return int(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise StorageCorruptError(f"{self.store.url}: bad {name} metadata {raw[:40]!r}") from None

    async def _check_absence(self, networked: bool) -> None:
        """Dates this store's membership, and refuses (or empties) one that was away longer than the grace
        period (see docs/consistency.md, "Safe deletes")."""
        now = self._wall_ms()
        since = await self._meta_ms(META_MEMBER_SINCE)
        last = await self._meta_ms(META_LAST_SEEN)
        grace = self.config.tombstone_grace_ms
        if networked and last is not None and now - last > grace:
            if self.config.stale_replica != "discard":
                raise StaleReplicaError(now - last, grace)
            log.warning(
                "node %s: data last seen %.1f h ago, beyond tombstone_grace_ms: emptying the store to rejoin",
                self.node_id, (now - last) / 3_600_000,
            )  # fmt: skip
            while keys := [key for key, _ in await self.store.scan("", None, 10_000)]:
                await self.store.write([], None, keys)
            since = None
        if since is None:
            since = now
        self.replica.member_since_ms = since
        stamp = str(now).encode("ascii")
        await self.store.write([], {META_MEMBER_SINCE: str(since).encode("ascii"), META_LAST_SEEN: stamp})

    async def _sweep_loop(self) -> None:
        """Every min(grace / 4, SWEEP_MAX_MS): purges tombstones older than the grace period and dates the
        node's presence (META_LAST_SEEN)."""
        period_s = min(self.config.tombstone_grace_ms / 4, SWEEP_MAX_MS) / 1000
        while True:
            await asyncio.sleep(period_s)
            try:
                await self.sweep()
            except ClosedError:
                return
            except DSMError as exc:  # the store failed: try again next period
                log.warning("tombstone sweep failed: %s", exc)

    async def sweep(self) -> int:
        """Purges the keys that hold only tombstones older than `tombstone_grace_ms` (each checked again in
        the commit that deletes it, so a write that arrived meanwhile wins) and records that this node is
        running; returns how many keys were purged."""
        self._check_open()
        now = self._wall_ms()
        before = self.replica.purge_bound(now)
        purged = 0
        after = ""
        while page := await self.store.older_than(before, after, SWEEP_PAGE):
            after = page[-1][0]
            keys = self.replica.purge_candidates(page, before)
            if keys:
                purged += (await self._queue_purge(keys, before, None)).changed
            if len(page) < SWEEP_PAGE:
                break
            await asyncio.sleep(0)
        await self._queue_purge((), before, {META_LAST_SEEN: str(now).encode("ascii")})
        return purged

    async def _queue_purge(self, keys: Sequence[str], before: int, meta: dict[str, bytes] | None) -> MergeOp:
        return await self._enqueue_merge(MergeOp((), keys, before, meta))

    async def close(self) -> None:
        """Stops accepting operations, commits every queued write, closes the store. Idempotent.

        The node stays a member of its cluster: the others see it fail, keep counting it for consistency
        levels, and take it back when it restarts with its store (a rolling restart must not shrink a
        quorum's denominator; Consul's servers do not leave on terminate for the same reason). To leave
        for good, `leave()`.

        Safe to cancel and to call again: the shutdown runs as one task that every call awaits.
        """
        if self._closing is None:
            if self._state == "new":
                self._state = "closed"
                return
            self._state = "closing"
            self._closing = asyncio.create_task(self._shutdown(), name=f"dsm-close-{self.node_id}")
        await asyncio.shield(self._closing)

    async def leave(self) -> None:
        """Leaves the cluster for good, then closes like `close()`: the leave is announced to this node's
        links and spreads, and the others stop counting it for consistency levels (as `dsm remove-member`
        does). A node that left and starts again comes back as a member, at a higher incarnation."""
        self._leaving = True
        await self.close()

    async def _shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self.network is not None:
            # Stop the network first (a leave announced and flushed, if leaving), while merges still commit.
            try:
                await self.network.close(leave=self._leaving)
            except Exception:  # the network's stop is a courtesy; the local shutdown must still happen
                log.exception("stopping the network of node %s failed", self.node_id)
        self._wake_writer()
        writer = self._writer
        assert writer is not None
        try:
            # The writer commits everything already queued, then returns; it is never cancelled mid-commit,
            # which would leave its batch's writers waiting forever and a transaction half done.
            await writer
            # A clean close leaves the exact clock floor, so the next start needs no scan.
            with contextlib.suppress(StorageError):
                meta = self.replica.closing_meta()
                await self.store.write([], {**meta, META_LAST_SEEN: str(self._wall_ms()).encode("ascii")})
        finally:
            for watch in list(self._watches):
                watch.finish(None)
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
        try:
            data = bytes(value)
        except (ValueError, TypeError) as exc:  # a released memoryview, for one
            raise InvalidValueError(f"the value cannot be read as bytes: {exc}") from None
        if len(data) > self.config.max_value_bytes:
            raise InvalidValueError(
                f"value is {len(data)} bytes; at most {self.config.max_value_bytes} (max_value_bytes)"
            )
        return data

    def _check_context(self, context: object, key: str) -> VersionVector:
        if context is None:
            return _NO_CONTEXT
        if not isinstance(context, str):
            raise InvalidContextError(f"a context must be the str token a read returned, not {type(context).__name__}")
        try:
            vector = decode_context(context, self.config.max_context_bytes, key)
            self.replica.check_context(vector, self._wall_ms())
        except DecodeError as exc:
            raise InvalidContextError(str(exc)) from None
        except ClockSkewError as exc:
            raise InvalidContextError(f"context names a timestamp from the future: {exc}") from None
        return vector

    # --- operations ---

    async def get(self, key: str, *, consistency: str | Level | None = None) -> ReadResult | None:
        """Reads a key.

        Args:
            key: the key.
            consistency: the level (`dsm.core.consistency`; default: the region's `read_consistency`).
                Above `local`, the versions of enough members are merged, and the members (this one
                included) whose versions differed are repaired in the background (read repair).

        Returns:
            the value(s) with their version context, or None when the key is absent or deleted.

        Raises:
            InvalidKeyError: the key is not acceptable; InvalidInputError: an unknown level.
            ConsistencyError: too few members answered within `consistency_timeout_ms`.
            ClosedError: the node is closed.
            StorageError: the store failed (StorageCorruptError if the stored row is unreadable).
        """
        self._check_open()
        key = self._check_key(key)
        level = self._level(consistency, 1)
        encoded = await self.store.read(key)
        if level is not Level.LOCAL:
            versions = await self._read_at(level, key, encoded)
        elif encoded is None:
            return None
        else:
            versions = self._decode(key, encoded)
        for version in versions.versions:
            if version.value is not None:
                result = ReadResult(key, versions)
                if self.resolver is not None and result.conflict and self._resolution is Resolution.SIBLINGS:
                    return await self._resolve(result, versions)
                return result
        return None  # absent, or only tombstones: deleted

    async def _resolve(self, result: ReadResult, versions: VersionSet) -> ReadResult:
        """Replaces the siblings of `result` by the resolver's value, written back with the read's context
        (durable here, then spread like any write)."""
        assert self.resolver is not None
        try:
            value = self.resolver(result.key, result.siblings)
            if value is None:
                return result
            value = self._check_value(value)
        except Exception as exc:  # the user's function failed: the reader gets the siblings, nothing is lost
            self.resolver_failures += 1
            log.warning("the conflict resolver failed on %r: %r", result.key, exc)
            return result
        written = await self._submit(result.key, value, versions.context())
        self.resolved += 1
        return ReadResult(result.key, written._versions)  # holds the value just written

    async def put(
        self, key: str, value: bytes, *, context: str | None = None, consistency: str | Level | None = None
    ) -> WriteResult:
        """Writes a value, durably on this node (and on the members the level asks for) before returning.

        Args:
            key: the key (str, at most `max_key_bytes` in UTF-8, no NUL).
            value: the bytes (at most `max_value_bytes`).
            context: the context of an earlier read; the write then supersedes what that read returned.
                Without it, the write is blind: in 'lww' mode it wins by timestamp, in 'siblings' mode it
                becomes a sibling of whatever it did not supersede.
            consistency: the level (`dsm.core.consistency`; default: the region's `write_consistency`).
                Above `local`, the write returns once enough members stored it durably.

        Returns:
            the new version's timestamp and context.

        Raises:
            InvalidKeyError, InvalidValueError, InvalidContextError, InvalidInputError (an unknown level):
                bad arguments (nothing is written).
            ConsistencyError: too few members stored it within `consistency_timeout_ms`. The write is
                durable here (and wherever else it landed) and keeps spreading; it is not rolled back.
            ClosedError: the node is closed.
            StorageError: the commit failed; the write is not acknowledged (and nothing else is lost).
        """
        self._check_open()
        key = self._check_key(key)
        vector = _NO_CONTEXT if context is None else self._check_context(context, key)
        level = self._level(consistency, 0)
        result = await self._submit(key, self._check_value(value), vector)
        if level is not Level.LOCAL:
            await self._write_at(level, result)
        return result

    async def delete(
        self, key: str, *, context: str | None = None, consistency: str | Level | None = None
    ) -> WriteResult:
        """Deletes a key by writing a tombstone (durable on this node, and on the members the level asks
        for, before returning).

        Args and Raises: as `put`, without a value.
        """
        self._check_open()
        key = self._check_key(key)
        vector = self._check_context(context, key)
        level = self._level(consistency, 0)
        result = await self._submit(key, None, vector)
        if level is not Level.LOCAL:
            await self._write_at(level, result)
        return result

    # --- consistency levels ---

    def _level(self, consistency: str | Level | None, which: int) -> Level:
        if consistency is None:
            consistency = self.config.levels()[which]
        try:
            return parse_level(consistency)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None

    @property
    def read_repairs(self) -> int:
        """Members (this node included) that reads at a level found stale and repaired."""
        return 0 if self.coordinator is None else self.coordinator.read_repairs

    def _unmet(self, operation: str, done: LevelDone) -> ConsistencyError:
        tally = done.tally
        self.level_stats[(operation, tally.level.value, "unmet")] += 1
        # Until a member answered its join, this node's view is a new node's (itself only) or the one it saved
        # before a restart, and nobody may hear its requests: the coordinator refuses rather than meet a level
        # on a view that may be its own alone. The counts say what the level would need.
        detail = f"this node has not joined its cluster yet ({tally.required} members needed)"
        return ConsistencyError(
            tally.level.value, operation, tally.received, tally.required, tally.shortfall(),
            detail if done.reason == "not_joined" else "",
        )  # fmt: skip

    async def _write_at(self, level: Level, result: WriteResult) -> None:
        """Waits until enough members stored the write `result` acknowledged here (a standalone node is
        every level's only member: its own commit meets it)."""
        if self.coordinator is not None:
            encoded = encode_versions(result._versions)
            item = DataItem(update_id(result.key, result.timestamp, self.node_id), result.key, encoded)
            done = await self.coordinator.write_at(level, [item], self.config.consistency_timeout_ms)
            if not done.ok:
                raise self._unmet("write", done)
        self.level_stats[("write", level.value, "ok")] += 1

    async def _read_at(self, level: Level, key: str, encoded: bytes | None) -> VersionSet:
        """The merge of the versions of enough members (this node's first, `encoded`); the coordinator repairs
        the stale ones."""
        own = _EMPTY if encoded is None else self._decode(key, encoded)
        if self.coordinator is not None:
            done = await self.coordinator.read_at(level, key, own, self.config.consistency_timeout_ms)
            if not done.ok:
                raise self._unmet("read", done)
            assert done.versions is not None
            own = done.versions
        self.level_stats[("read", level.value, "ok")] += 1
        return own

    async def publish_metadata(self) -> None:
        """Stores this node's `NodeInfo.metadata` as its member record (replicated like a write, so every
        member learns it), superseding its previous record; nothing is written when it is unchanged."""
        key = MEMBER_KEY_PREFIX + self.node_id
        encoded_now = await self.store.read(key)
        current = _EMPTY if encoded_now is None else self._decode(key, encoded_now)
        value = metadata_bytes(self.node_info.metadata)
        live = [v for v in current.versions if v.value is not None]
        if len(live) == 1 and len(current.versions) == 1 and live[0].value == value:
            return
        if not self.node_info.metadata and not live:
            return
        await self._submit(key, value, current.context())

    async def member_metadata(self, node_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The metadata of those members whose record this node holds (the newest record wins)."""
        found = await self.store.read_many([MEMBER_KEY_PREFIX + node_id for node_id in node_ids])
        out: dict[str, dict[str, str]] = {}
        for key, encoded in found.items():
            try:
                versions = decode_versions(encoded)
                newest = next((v.value for v in versions.versions if v.value is not None), None)
                if newest is not None:
                    parsed = json.loads(newest)
                    if isinstance(parsed, dict):
                        out[key[len(MEMBER_KEY_PREFIX) :]] = {str(k): str(v) for k, v in parsed.items()}
            except (DecodeError, ValueError):
                continue  # an unreadable record shows as no metadata
        return out

    async def store_replicated(self, items: Sequence[DataItem]) -> bool:
        """Merges items a coordinator sent for a consistency level; True when every item is durable here
        (False when one was refused: clock skew, undecodable). Raises as `merge`."""
        merge = await self._merge_item(items)
        return merge.refused == 0

    async def read_raw(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The stored (encoded) version sets of `keys` that this node holds (for a coordinator's read)."""
        self._check_open()
        return await self.store.read_many(list(keys))

    async def merge(self, items: Sequence[DataItem]) -> int:
        """Merges version sets sent by other replicas into this one, durably; returns how many keys changed.

        Raises:
            ClosedError: the node is closed.
            StorageError: the commit failed (the items are not merged; anti-entropy brings them again).
        """
        if not items:
            self._check_open()
            return 0
        return (await self._merge_item(items)).changed

    async def _merge_item(self, items: Sequence[DataItem]) -> MergeOp:
        self._check_open()
        return await self._enqueue_merge(MergeOp(items))

    async def _enqueue_merge(self, op: MergeOp) -> MergeOp:
        """Queues a merge (or a purge) for the writer and waits for its commit."""
        if self._queued < self.config.write_queue_max:
            self._queued += 1
        else:
            await self._wait_for_place()
        size = sum(len(i.versions) for i in op.items)
        queued = _Queued(op, asyncio.get_running_loop().create_future(), size)
        self._admit(queued)
        await queued.future
        return op

    async def list_keys(self, prefix: str = "", after: str = "", limit: int = 100) -> tuple[list[str], bool]:
        """Keys holding a value (deleted ones left out) that start with `prefix` and sort after `after`,
        in order, at most `limit`; and whether more may follow.

        Raises:
            InvalidInputError: a prefix or start key that is not a str, or a limit below 1.
            ClosedError, StorageError: as `get`.
        """
        self._check_open()
        if not isinstance(prefix, str) or not isinstance(after, str) or "\x00" in prefix + after:
            raise InvalidKeyError("prefix and after must be strings without NUL characters")
        if not isinstance(limit, int) or limit < 1:
            raise InvalidInputError("limit must be an integer of at least 1")
        start = max(prefix, after + "\x00") if after else prefix
        start = max(start, USER_KEYS_START)  # internal records (member metadata) are not listed
        end = _prefix_end(prefix)
        keys: list[str] = []
        while len(keys) < limit:
            page = await self.store.scan(start, end, limit + 1)
            if not page:
                return keys, False
            found = await self.store.read_many([key for key, _ in page])
            for key, _ in page:
                encoded = found.get(key)
                if encoded is not None and self._decode(key, encoded).live:
                    keys.append(key)
                    if len(keys) == limit:
                        return keys, True
            if len(page) <= limit:
                return keys, False
            start = page[-1][0] + "\x00"
        return keys, True

    def watch(self, prefix: str = "", limit: int = 10_000) -> Watch:
        """Follows the committed changes (local writes and replicated ones) of the keys under `prefix`.

        Args:
            prefix: only keys starting with it ("" for all).
            limit: how many changes may wait for the reader before the watch ends with
                `WatchOverflowError`.

        Returns:
            a `Watch`: `async for change in watch: ...`; `watch.close()` ends it. It also ends (without
            error) when the node closes.

        Raises:
            ClosedError: the node is not running.
            InvalidInputError: prefix not a string or limit not a positive int.
        """
        self._check_open()
        if not isinstance(prefix, str):
            raise InvalidInputError(f"prefix must be a str, not {type(prefix).__name__}")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidInputError(f"limit must be a positive int, not {limit!r}")
        watch = Watch(self, prefix, limit)
        self._watches.add(watch)
        return watch

    def _tell_watches(self, changes: list[Change]) -> None:
        for change in changes:
            for watch in [w for w in self._watches if change.key.startswith(w.prefix)]:
                watch.offer(change)

    async def count(self) -> int:
        """The number of keys stored on this node, tombstones included."""
        self._check_open()
        return await self.store.count()

    def _decode(self, key: str, encoded: bytes) -> VersionSet:
        return self.replica.decode(key, encoded)

    # --- group commit ---

    async def _submit(self, key: str, value: bytes | None, context: VersionVector) -> WriteResult:
        if self._queued < self.config.write_queue_max:
            self._queued += 1  # the common case, without the cost of another coroutine
        else:
            await self._wait_for_place()
        item = _Queued(WriteOp(key, value, context), asyncio.get_running_loop().create_future(), len(value or b""))
        self._admit(item)
        # The place is given back by the writer when the write leaves the queue (committed, failed or
        # dropped because this caller was cancelled first), never here: see "Queue accounting".
        result: WriteResult = await item.future
        return result

    def _admit(self, item: _Queued) -> None:
        """Queues an item that holds a place (released here if the node closed while it waited)."""
        if self._state != "running":
            self._release()
            raise ClosedError(f"node {self.node_id} is {self._state}; no operations are accepted")
        self._pending.append(item)
        self._wake_writer()

    async def _wait_for_place(self) -> None:
        room = asyncio.get_running_loop().create_future()
        self._room_waiters.append(room)
        try:
            await room
        except asyncio.CancelledError:
            # A cancelled waiter that was already handed a place passes it on.
            if room.done() and not room.cancelled():
                self._release()
            raise

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

    def _next_batch(self) -> list[_Queued]:
        """Takes up to `write_batch_max` queued writes (and `write_batch_max_bytes` of values), dropping those
        whose callers were cancelled."""
        pending = self._pending
        if len(pending) == 1 and not pending[0].future.cancelled():
            return [pending.popleft()]  # the single-writer case
        batch: list[_Queued] = []
        limit, byte_limit, size = self.config.write_batch_max, self.config.write_batch_max_bytes, 0
        while pending and len(batch) < limit:
            item = pending[0]
            if item.future.cancelled():
                pending.popleft()
                self._release()
                continue
            size += item.size
            if batch and size > byte_limit:
                break  # the next batch starts with it
            batch.append(pending.popleft())
        return batch

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._state != "running":
                    return  # closing, and everything queued is committed
                self._wake = loop.create_future()
                await self._wake
            while self._pending:
                batch = self._next_batch()
                failure: DSMError | None = None
                try:
                    if batch:
                        await self._commit(batch)
                except DSMError as exc:
                    log.warning("commit of %d writes failed: %s", len(batch), exc)
                    failure = exc
                except Exception as exc:  # a bug: fail the writers loudly rather than hang them
                    log.exception("commit of %d writes failed unexpectedly", len(batch))
                    failure = StorageError(f"commit failed unexpectedly: {exc!r}")
                for item in batch:
                    self._release()
                    if not item.future.done():
                        self._settle(item, failure)
                if self._pending:
                    # An inline store (SQLite) never suspends in a commit, so without this the loop would
                    # run every queued batch back to back; yielding bounds a stall to one batch.
                    await asyncio.sleep(0)

    @staticmethod
    def _settle(item: _Queued, failure: DSMError | None) -> None:
        """Gives a committed (or failed) write or merge its outcome."""
        op = item.op
        error = failure or (op.error if isinstance(op, WriteOp) else None)
        if error is not None:
            item.future.set_exception(error)
        elif isinstance(op, WriteOp):
            item.future.set_result(WriteResult(op.key, op.timestamp, op.after))
        else:
            item.future.set_result(op.changed)

    async def _commit(self, batch: list[_Queued]) -> None:
        """Commits a batch of writes and merges in one store transaction, in queue order: the replica
        (`dsm.core.replica`) decides what to store; this stores it and tells watches and the network.

        A write whose key's stored row is unreadable fails alone (`WriteOp.error`); the others commit.
        """
        replica = self.replica
        ops = [item.op for item in batch]
        wanted = replica.reads(ops)
        found = await self.store.read_many(wanted) if wanted else {}
        commit = replica.apply(ops, found, self._wall_ms())
        for key, reason in commit.refusals:
            log.warning("refusing remote versions of %r: %s", key, reason)
        if commit.rows or commit.deletes or commit.meta:
            await self.store.write(commit.rows, commit.meta, commit.deletes)
        replica.stored(commit)
        if self._watches and commit.rows:
            self._tell_watches(commit.changes())
        if commit.published and self.on_committed is not None:
            try:
                self.on_committed(commit.published)
            except Exception:  # the writes are durable; a failing publisher must not fail them
                log.exception("publishing %d committed writes failed", len(commit.published))
