"""`EpidemicStorage`: one DSM node as a library object (the object behind the front door), a small façade
over the node's parts:
- `checks.py`: every argument is validated first; a caller's mistake is raised at once;
- `commits.py`: the local replica (the store, the core's write and merge rule with the node's clock, the
  group-commit queue); a call returns only after its commit, so an acknowledged write is durable;
- `levels.py`: reads and writes at consistency levels above `local`, coordinated by the core through the
  network runtime (`network`), and read repair;
- `sweeps.py`: the tombstone sweep; `startup.py`: the checks of a store when it opens;
- `watches.py`: the committed changes of a prefix, for readers that follow them.

The factory (`dsm.factory.StorageFactory`) builds the parts and passes them in: the same `Commits` goes to
the network runtime, which merges what other replicas send through it and publishes the local writes it
commits (`Commits.subscribe`). A standalone node has no network and builds its own `Commits`.

Internal records are replicated like data, under keys no client can use (client keys never hold NUL): a
member's free metadata (`NodeInfo.metadata`, JSON), so every member can show every member's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Protocol

from dsm.config import StorageConfig
from dsm.core import watch_cursor
from dsm.core.cas_ops import IfAbsent, IfMatch, Put
from dsm.core.consistency import Level
from dsm.core.encoding import DecodeError, decode_versions
from dsm.core.messages import DataItem
from dsm.core.replica import USER_KEYS_START, MergeStats
from dsm.core.vclock import VersionVector
from dsm.core.versions import Resolution, VersionSet
from dsm.errors import ClosedError, InvalidInputError
from dsm.node import checks
from dsm.node.commits import Commits
from dsm.node.conditional import LINEARIZABLE, CasNetwork, Conditionals
from dsm.node.features import FeatureGate, Members
from dsm.node.lag import ReplicationDelay
from dsm.node.levels import LevelRequests, Levels
from dsm.node.startup import META_LAST_SEEN
from dsm.node.sweeps import Sweeper
from dsm.node.watches import Watch, Watches
from dsm.storage.base import BackingStore
from dsm.types import NodeInfo, ReadResult, Sibling, WriteResult

log = logging.getLogger("dsm.node")

#: Internal records: a member's metadata, under this prefix and its node id.
MEMBER_KEY_PREFIX = "\x00member/"
#: The metadata entry a node advertises its HTTP API under (`advertise_http`).
HTTP_METADATA = "http"
_EMPTY = VersionSet()

#: A conflict resolver (siblings mode): given a key and its concurrent values (newest first, at least two),
#: the one value that replaces them all, or None to leave them as they are. Called on reads; it should be
#: deterministic (the same siblings give the same value on every node), fast and free of I/O.
Resolver = Callable[[str, Sequence[Sibling]], bytes | None]


def wall_clock_ms() -> int:
    """The system wall clock in Unix milliseconds."""
    return time.time_ns() // 1_000_000


class Network(Levels, CasNetwork, Members, Protocol):
    """What a node needs of its network runtime (`dsm.net.runtime.Runtime`): levels, its address, and a stop."""

    @property
    def addr(self) -> str:
        """The address other members reach this node at."""
        ...

    async def close(self, flush_timeout: float = 1.0, leave: bool = False) -> None: ...


class EpidemicStorage:
    """One DSM node. Create it with `StorageFactory.create_epidemic_storage`.

    Use as `async with` or call `close()`. All operations are coroutines and safe to call concurrently
    from tasks of one event loop.

    Args:
        config: the node's configuration.
        node_info: what it advertises.
        store: its backing store (opened by `start`).
        wall_ms: the wall clock, Unix ms.
        commits: its local replica, shared with the network runtime (default: its own, standalone).
        network: the network runtime (None: a standalone node, the only member of its cluster).
        resolver: the conflict resolver (siblings mode), see `resolver`.
    """

    def __init__(
        self,
        config: StorageConfig,
        node_info: NodeInfo,
        store: BackingStore,
        wall_ms: Callable[[], int] = wall_clock_ms,
        *,
        commits: Commits | None = None,
        network: Network | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        assert config.node_id, "node_id is checked by the factory"
        self.config = config
        self.node_id = config.node_id
        self.node_info = node_info
        self.store = store
        self.commits = commits if commits is not None else Commits(config, store, wall_ms)
        assert self.commits.store is store
        self.replica = self.commits.replica
        #: The network runtime driving this node (None: a standalone node).
        self.network = network
        self.levels = LevelRequests(self.node_id, config.consistency_timeout_ms, network)
        #: Conditional writes and linearizable reads (`dsm.node.conditional`).
        self.conditionals = Conditionals(self.commits, config.consistency_timeout_ms, network)
        # The region's default levels (write, read), parsed once.
        self._default_levels = tuple(checks.check_level(level) for level in config.levels())
        #: The features this node publishes, and the check that the whole cluster has one (`features.py`).
        self.features = FeatureGate(self.commits, network)
        self.watches = Watches(store, self.replica, self.commits.wall_ms, config.tombstone_grace_ms)
        self.commits.subscribe(self.watches.on_commit)
        #: How long after their write replicated versions became durable here (`dsm.node.lag`).
        self.replication_delay = ReplicationDelay(self.commits.wall_ms)
        self.commits.subscribe(self.replication_delay.on_commit)
        self.sweeper = Sweeper(self.commits)
        #: In 'siblings' mode, a read that finds several values passes them to this function and writes
        #: back what it returns, with the read's context: the siblings are resolved for every later reader
        #: (Riak's resolve-on-read). Two nodes that resolve the same siblings at once write two versions
        #: of the same value (with a deterministic resolver), which the next read resolves again.
        self.resolver = resolver
        #: Reads whose siblings the resolver replaced, and resolver calls that raised (siblings returned).
        self.resolved = 0
        self.resolver_failures = 0
        self._closing: asyncio.Task[None] | None = None
        self._leaving = False
        self._state = "new"

    # --- counters (the status snapshot reads them)

    @property
    def merge_stats(self) -> MergeStats:
        """What merges of remote writes did (refusals included)."""
        return self.replica.stats

    @property
    def tombstones_purged(self) -> int:
        """Tombstones purged by the sweep (see docs/consistency.md, "Safe deletes")."""
        return self.replica.tombstones_purged

    @property
    def level_stats(self) -> Counter[tuple[str, str, str]]:
        """Requests above `local`, by (operation, level, outcome "ok" / "unmet")."""
        return self.levels.stats

    @property
    def read_repairs(self) -> int:
        """Members (this node included) that reads at a level found stale and repaired."""
        return self.levels.read_repairs

    @property
    def adopted_from(self) -> str | None:
        """The node id whose store this node adopted at start (`adopt_store`), else None."""
        return self.commits.adopted_from

    # --- life cycle

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
        await self.commits.open(networked)
        await self.watches.start()
        self._state = "running"
        self.sweeper.start()
        log.info("node %s started on %s", self.node_id, self.store.url)

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
        await self.sweeper.stop()
        if self.network is not None:
            # Stop the network first (a leave announced and flushed, if leaving), while merges still commit.
            try:
                await self.network.close(leave=self._leaving)
            except Exception:  # the network's stop is a courtesy; the local shutdown must still happen
                log.exception("stopping the network of node %s failed", self.node_id)
        try:
            await self.commits.close({META_LAST_SEEN: str(self.commits.wall_ms()).encode("ascii")})
        finally:
            self.watches.end_all()
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

    def _check_open(self) -> None:
        if self._state != "running":
            raise ClosedError(f"node {self.node_id} is {self._state}; no operations are accepted")

    # --- operations

    async def get(self, key: str, *, consistency: str | Level | None = None) -> ReadResult | None:
        """Reads a key.

        Args:
            key: the key.
            consistency: the level (`dsm.core.consistency`; default: the region's `read_consistency`).
                Above `local`, the versions of enough members are merged, and the members (this one
                included) whose versions differed are repaired in the background (read repair).
                "linearizable": a round of the key's acceptor group (see `dsm.node.conditional`): the
                state the last conditional write left, ordered with them in real time.

        Returns:
            the value(s) with their version context, or None when the key is absent, deleted or expired
            (by this node's wall clock; the values that expired are left out, see `ReadResult`).

        Raises:
            InvalidKeyError: the key is not acceptable; InvalidInputError: an unknown level.
            ConsistencyError: too few members answered within `consistency_timeout_ms`.
            ClosedError: the node is closed.
            StorageError: the store failed (StorageCorruptError if the stored row is unreadable).
        """
        self._check_open()
        key = checks.check_key(key, self.config)
        if consistency == LINEARIZABLE:
            versions = await self.conditionals.read(key)
            now_ms = self.commits.wall_ms()
            return ReadResult(key, versions, now_ms) if versions.live_at(now_ms) else None
        level = self._default_levels[1] if consistency is None else checks.check_level(consistency)
        encoded = await self.store.read(key)
        if level is not Level.LOCAL:
            versions = await self.levels.read(level, key, self._decode(key, encoded))
        elif encoded is None:
            return None
        else:
            versions = self._decode(key, encoded)
        now_ms = self.commits.wall_ms()
        if not versions.live_at(now_ms):
            return None  # absent, or only tombstones and expired values: deleted or expired
        result = ReadResult(key, versions, now_ms)
        if self.resolver is not None and result.conflict and self.replica.resolution is Resolution.SIBLINGS:
            return await self._resolve(result, versions)
        return result

    async def _resolve(self, result: ReadResult, versions: VersionSet) -> ReadResult:
        """Replaces the siblings of `result` by the resolver's value, written back with the read's context
        (durable here, then spread like any write)."""
        assert self.resolver is not None
        try:
            value = self.resolver(result.key, result.siblings)
            if value is None:
                return result
            value = checks.check_value(value, self.config)
        except Exception as exc:  # the user's function failed: the reader gets the siblings, nothing is lost
            self.resolver_failures += 1
            log.warning("the conflict resolver failed on %r: %r", result.key, exc)
            return result
        written = await self.commits.submit(result.key, value, versions.context())
        self.resolved += 1
        return ReadResult(result.key, written.versions, self.commits.wall_ms())  # holds the value just written

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        context: str | None = None,
        consistency: str | Level | None = None,
        if_absent: bool = False,
        if_match: str | None = None,
        ttl_ms: int | None = None,
    ) -> WriteResult:
        """Writes a value, durably on this node (and on the members the level asks for) before returning.

        Args:
            key: the key (str, at most `max_key_bytes` in UTF-8, no NUL).
            value: the bytes (at most `max_value_bytes`).
            context: the context of an earlier read; the write then supersedes what that read returned.
                Without it, the write is blind: in 'lww' mode it wins by timestamp, in 'siblings' mode it
                becomes a sibling of whatever it did not supersede.
            consistency: the level (`dsm.core.consistency`; default: the region's `write_consistency`).
                Above `local`, the write returns once enough members stored it durably. "linearizable":
                an unconditional write ordered with the conditional ones (`dsm.node.conditional`).
            if_absent: write only if the key holds no live value (linearizable, see docs/consistency.md).
            if_match: the context of a read: write only if the key is still exactly what it returned.
            ttl_ms: the value expires this long after the write (1 to `max_ttl_ms`; None: never): from then
                on the key reads as absent on every node (within the clocks' offset, see
                docs/consistency.md). A later write with the context of a read renews (with `ttl_ms`) or
                removes (without) the expiry. Refused while a member does not support expiry yet.

        Returns:
            the new version's timestamp and context.

        Raises:
            InvalidKeyError, InvalidValueError, InvalidContextError, InvalidInputError (an unknown level):
                bad arguments (nothing is written).
            ConsistencyError: too few members stored it within `consistency_timeout_ms`. The write is
                durable here (and wherever else it landed) and keeps spreading; it is not rolled back.
                For a conditional write: its acceptor group was not reached, and nothing was written
                (`OutcomeUnknownError`: it may or may not have been).
            PreconditionFailedError: a conditional write's condition was false (nothing was written).
            FeatureUnavailableError: `ttl_ms` while a member that has not left does not advertise the `ttl`
                feature (during a rolling upgrade; nothing was written).
            ClosedError: the node is closed.
            StorageError: the commit failed; the write is not acknowledged (and nothing else is lost).
        """
        self._check_open()
        key = checks.check_key(key, self.config)
        value = checks.check_value(value, self.config)
        ttl = checks.check_ttl(ttl_ms, self.config)
        operation = self._conditional(key, value, context, consistency, if_absent, if_match, ttl)
        if ttl:
            await self.features.require("ttl")
        if operation is not None:
            return await self.conditionals.write(key, operation)
        vector = self._context(context, key)
        level = self._default_levels[0] if consistency is None else checks.check_level(consistency)
        return await self._write(level, key, value, vector, ttl)

    async def delete(
        self,
        key: str,
        *,
        context: str | None = None,
        consistency: str | Level | None = None,
        if_match: str | None = None,
    ) -> WriteResult:
        """Deletes a key by writing a tombstone (durable on this node, and on the members the level asks
        for, before returning).

        Args and Raises: as `put`, without a value.
        """
        self._check_open()
        key = checks.check_key(key, self.config)
        operation = self._conditional(key, None, context, consistency, False, if_match)
        if operation is not None:
            return await self.conditionals.write(key, operation)
        vector = self._context(context, key)
        level = self._default_levels[0] if consistency is None else checks.check_level(consistency)
        return await self._write(level, key, None, vector)

    def _context(self, context: object, key: str) -> VersionVector:
        return checks.check_context(context, key, self.config, self.replica, self.commits.wall_ms())

    def _conditional(
        self,
        key: str,
        value: bytes | None,
        context: object,
        consistency: object,
        if_absent: object,
        if_match: object,
        ttl_ms: int = 0,
    ) -> IfAbsent | IfMatch | Put | None:
        """The conditional operation a write asks for (None: a plain write)."""
        if if_absent is not False and if_absent is not True:
            raise InvalidInputError("if_absent must be a bool")
        if not if_absent and if_match is None and consistency != LINEARIZABLE:
            return None
        if if_absent and if_match is not None:
            raise InvalidInputError("if_absent and if_match cannot be combined")
        if context is not None:
            raise InvalidInputError("a conditional write takes no context: pass the read's context as if_match")
        if if_absent:
            if value is None:
                raise InvalidInputError("a delete cannot be conditional on the key being absent")
            return IfAbsent(value, ttl_ms)
        if if_match is not None:
            return IfMatch(self._context(if_match, key), value, ttl_ms)
        return Put(value, ttl_ms)

    async def _write(
        self, level: Level, key: str, value: bytes | None, context: VersionVector, ttl_ms: int = 0
    ) -> WriteResult:
        # Above `local`, the level request publishes the write (its tree push then skips the members its
        # `Replicate` reaches), unless the runtime publishes it first because that request never came.
        levelled = level is not Level.LOCAL and self.levels.network is not None
        result = await self.commits.submit(key, value, context, ttl_ms, levelled)
        if level is not Level.LOCAL:
            await self.levels.write(level, result)
        return result

    async def list_keys(self, prefix: str = "", after: str = "", limit: int = 100) -> tuple[list[str], bool]:
        """Keys holding a value (deleted and expired ones left out) that start with `prefix` and sort after
        `after`, in order, at most `limit`; and whether more may follow.

        Raises:
            InvalidKeyError / InvalidInputError: bad arguments; ClosedError; StorageError.
        """
        self._check_open()
        checks.check_listing(prefix, after, limit)
        start = max(prefix, after + "\x00") if after else prefix
        start = max(start, USER_KEYS_START)  # internal records (member metadata) are not listed
        end = checks.prefix_end(prefix)
        keys: list[str] = []
        while len(keys) < limit:
            page = await self.store.scan(start, end, limit + 1)
            if not page:
                return keys, False
            found = await self.store.read_many([key for key, _ in page])
            now_ms = self.commits.wall_ms()
            for key, _ in page:
                encoded = found.get(key)
                if encoded is not None and self._decode(key, encoded).live_at(now_ms):
                    keys.append(key)
                    if len(keys) == limit:
                        return keys, True
            if len(page) <= limit:
                return keys, False
            start = page[-1][0] + "\x00"
        return keys, True

    def watch(self, prefix: str = "", limit: int = 10_000, since: str | None = None, values: bool = False) -> Watch:
        """Follows the committed changes (local writes and replicated ones) of the keys under `prefix`.

        Args:
            prefix: only keys starting with it ("" for all).
            limit: how many changes may wait for the reader before the watch ends with `End("overflow")`.
            since: a cursor of an earlier watch (of this node or any other): the watch first delivers every
                change after it (on this node: the keys changed since, replayed; elsewhere: a resync of
                every key under the prefix), then goes live. None: from now on.
            values: events carry the key's readable value.

        Returns:
            a `Watch`: `async for item in watch: ...` gives `Event`s (each with its `cursor`), `Resync` bounds
            and, when the node ends the watch (overflow, shutdown), a last `End` with the cursor to resume
            from; `watch.cursor` is where the reader stands; `watch.close()` stops it.

        Raises:
            ClosedError: the node is not running.
            InvalidInputError: prefix not a string, limit not a positive int, or `since` not a cursor.
        """
        self._check_open()
        checks.check_watch(prefix, limit)
        cursor = None
        if since is not None:
            try:
                cursor = watch_cursor.decode(since)
            except watch_cursor.CursorError as exc:
                raise InvalidInputError(f"since: {exc}") from None
        return self.watches.open(prefix, limit, cursor, bool(values))

    async def count(self) -> int:
        """The number of client keys stored on this node, tombstones included (the internal records below
        USER_KEYS_START, the members' metadata, are not counted)."""
        self._check_open()
        return (await self.store.range_digest(USER_KEYS_START)).count

    def _decode(self, key: str, encoded: bytes | None) -> VersionSet:
        return _EMPTY if encoded is None else self.replica.decode(key, encoded)

    # --- replication (the network runtime calls these)

    async def merge(self, items: Sequence[DataItem]) -> int:
        """Merges version sets sent by other replicas into this one, durably; returns how many keys changed.

        Raises:
            ClosedError: the node is closed.
            StorageError: the commit failed (the items are not merged; anti-entropy brings them again).
        """
        self._check_open()
        if not items:
            return 0
        return (await self.commits.merge(items)).changed

    async def sweep(self) -> int:
        """Runs the tombstone sweep now (see `sweeps.py`); returns how many keys were purged."""
        self._check_open()
        return await self.sweeper.sweep()

    # --- member metadata

    async def publish_metadata(self) -> None:
        """Stores this node's `NodeInfo.metadata` as its member record (replicated like a write, so every
        member learns it), superseding its previous record; nothing is written when it is unchanged."""
        key = MEMBER_KEY_PREFIX + self.node_id
        current = self._decode(key, await self.store.read(key))
        value = checks.metadata_bytes(self.node_info.metadata)
        live = [v for v in current.versions if v.value is not None]
        if len(live) == 1 and len(current.versions) == 1 and live[0].value == value:
            return
        if not self.node_info.metadata and not live:
            return
        await self.commits.submit(key, value, current.context())

    async def advertise_http(self, url: str) -> None:
        """Adds this node's HTTP API (`url`, scheme://host:port) to its metadata as `http` and publishes it,
        so that a member's dashboard can reach every node (`GET /v1/overlay`); a `http` tag the operator set
        stays."""
        if HTTP_METADATA in self.node_info.metadata:
            return
        metadata = {**self.node_info.metadata, HTTP_METADATA: url}
        self.node_info = dataclasses.replace(self.node_info, metadata=metadata)
        await self.publish_metadata()

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
