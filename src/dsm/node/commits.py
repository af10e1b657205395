"""`Commits`: a node's local replica: its store, the write and merge rule with its clock
(`dsm.core.replica`), and the group-commit queue every write and merge goes through.

Group commit: writes (`submit`) and merges (`merge`) queue and wait; one writer task takes every queued
item (up to `write_batch_max`, and `write_batch_max_bytes` of values), asks the replica what the batch
stores (`Replica.apply`, on the rows it needs) and commits that in one store transaction, then wakes the
callers. A single writer therefore pays one commit per write, and many concurrent writers share one commit.
A merge of many items (an anti-entropy answer) is queued in parts, one after the other, so it never holds
the writes queued behind it for longer than one part's commit.
A call returns only after its commit: an acknowledged write is durable to the configured level. At most
`write_queue_max` items wait at once; further callers wait for room (backpressure). A merge and a local
write of one key never interleave (a write computed on a row a merge is rewriting would be lost).

Queue accounting: an item holds one of `write_queue_max` places from the moment it is queued until its
commit has finished (or it is dropped), whatever happens to its caller. A caller cancelled before its item
is taken into a batch drops it; one cancelled later leaves it to commit (its outcome is then unknown to
that caller, as with any timeout).

After each commit its listeners (`subscribe`) receive the `Commit`: the network runtime publishes the local
writes, watches report the changes. Opening checks the store (`dsm.node.startup`); closing commits
everything queued and leaves the exact clock floor, so the next start needs no scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dsm.config import StorageConfig
from dsm.core.cas_acceptor import AcceptorMessage, ServedBatch, serve_all
from dsm.core.messages import CasAccept, CasAccepted, CasCommit, CasPromise, DataItem
from dsm.core.replica import Commit, MergeOp, Replica, ReplicaSettings, WriteOp
from dsm.core.vclock import VersionVector
from dsm.errors import ClosedError, DSMError, StorageError
from dsm.node import startup
from dsm.storage.base import BackingStore, paxos_key
from dsm.types import WriteResult

log = logging.getLogger("dsm.node")

Listener = Callable[[Commit], None]

#: Most remote items one queued merge holds (`Commits.merge` queues a larger one in parts).
MERGE_PART = 256


@dataclass(slots=True)
class AcceptorOp:
    """A message to this node as an acceptor of conditional writes (`dsm.core.cas_acceptor`): served in its
    batch, in queue order, its new state stored in the batch's transaction; `reply` is what to answer once
    that is durable (None: nothing)."""

    message: AcceptorMessage
    reply: CasPromise | CasAccepted | None = None


@dataclass(slots=True)
class _Queued:
    """A write, merge or acceptor message waiting in the queue (`size`: its value bytes, for the batch byte
    bound)."""

    op: WriteOp | MergeOp | AcceptorOp
    future: asyncio.Future[Any]
    size: int


class Commits:
    """The local replica and its commit queue (see the module docstring).

    Args:
        config: the node's configuration.
        store: its backing store (opened by `open`).
        wall_ms: the wall clock, Unix ms.
    """

    def __init__(self, config: StorageConfig, store: BackingStore, wall_ms: Callable[[], int]) -> None:
        assert config.node_id, "node_id is checked by the factory"
        self.config = config
        self.node_id = config.node_id
        self.store = store
        self.wall_ms = wall_ms
        #: The write and merge rule with this node's clock (`dsm.core.replica`).
        self.replica = Replica(self.node_id, ReplicaSettings.from_config(config), store.url)
        #: The node id whose store this node adopted at start (`adopt_store`), else None.
        self.adopted_from: str | None = None
        self._listeners: list[Listener] = []
        self._pending: deque[_Queued] = deque()
        # Backpressure: items in the queue or in a commit, and the callers waiting for room (FIFO).
        # (asyncio.Semaphore wakes waiters in O(n) each on Python 3.11, quadratic with many writers.)
        self._queued = 0
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        # The writer task sleeps on this future while the queue is empty; a submit wakes it.
        self._wake: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._open = False
        #: This start's run number (conditional writes' ballots), counted when the store opens.
        self.cas_run = 0
        self.acceptor_restored = False

    def subscribe(self, listener: Listener) -> None:
        """Calls `listener` with every later `Commit`, once durable (it must not raise; it is logged if it does)."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    @property
    def waiting(self) -> int:
        """Items holding a place in the queue (queued or in a commit)."""
        return self._queued

    # --- life cycle

    async def open(self, networked: bool) -> None:
        """Opens the store, checks it (`startup`) and starts the writer.

        Raises:
            StorageError, StaleReplicaError, ForeignStoreError: see `EpidemicStorage.start`.
        """
        await self.store.open()
        try:
            self.adopted_from = await startup.check_owner(self.store, self.config)
            await startup.restore_clock(self.store, self.replica, self.wall_ms())
            self.replica.member_since_ms = await startup.check_absence(
                self.store, self.config, self.wall_ms(), networked
            )
            self.cas_run = await startup.next_run(self.store)
            #: A store restored from a snapshot: no acceptor state, so no acceptor answers (`dsm.net.serving`).
            self.acceptor_restored = await self.store.read_meta(startup.META_ACCEPTOR_RESTORED) is not None
        except BaseException:
            await self.store.close()
            raise
        self._open = True
        self._writer = asyncio.create_task(self._commit_loop(), name=f"dsm-writer-{self.node_id}")

    async def close(self, meta: dict[str, bytes]) -> None:
        """Refuses new items, commits everything queued, stores the exact clock floor and `meta`, closes the
        store. The writer is never cancelled mid-commit, which would leave its batch's callers waiting
        forever and a transaction half done."""
        self._open = False
        self._wake_writer()
        writer = self._writer
        try:
            if writer is not None:
                await writer
            with contextlib.suppress(StorageError):
                await self.store.write([], {**self.replica.closing_meta(), **meta})
        finally:
            await self.store.close()

    # --- what the network runtime asks of the replica

    async def store_replicated(self, items: Sequence[DataItem]) -> bool:
        """Merges items a coordinator sent for a consistency level; True when every item is durable here
        (False when one was refused: clock skew, undecodable, expired)."""
        return (await self.merge(items)).refused == 0

    async def read_raw(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The stored (encoded) version sets of `keys` that this node holds (for a coordinator's read)."""
        if not self._open:
            raise ClosedError(f"node {self.node_id} is closed")
        return await self.store.read_many(list(keys))

    # --- queueing

    async def submit(
        self, key: str, value: bytes | None, context: VersionVector, ttl_ms: int = 0, deferred: bool = False
    ) -> WriteResult:
        """Commits a local write (expiring `ttl_ms` after its timestamp; 0: never); returns its result once
        durable. `deferred`: published by the level request that follows (`WriteOp.deferred`)."""
        await self._take_place()
        op = WriteOp(key, value, context, ttl_ms, deferred)
        item = _Queued(op, asyncio.get_running_loop().create_future(), len(value or b""))
        self._admit(item)
        # The place is given back by the writer when the item leaves the queue (committed, failed or
        # dropped because this caller was cancelled first), never here: see "Queue accounting".
        result: WriteResult = await item.future
        return result

    async def merge(self, items: Sequence[DataItem]) -> MergeOp:
        """Merges remote version sets; returns the op with its outcome (summed over its parts) once durable.

        More than MERGE_PART items are queued in parts of that many, each after the one before has committed,
        so writes queued meanwhile commit between them: an anti-entropy answer of thousands of entries in one
        queued item took one commit of hundreds of milliseconds, which every write queued behind it waited
        out (BENCHMARKS "Issue 21, part 1")."""
        if len(items) <= MERGE_PART:
            return await self.enqueue(MergeOp(items))
        total = MergeOp(items)
        for start in range(0, len(items), MERGE_PART):
            part = await self.enqueue(MergeOp(items[start : start + MERGE_PART]))
            total.changed += part.changed
            total.refused += part.refused
        return total

    async def serve_acceptor(self, message: AcceptorMessage) -> CasPromise | CasAccepted | None:
        """Serves an acceptor message (prepare, accept, commit of a conditional write's round): its new state
        is durable before the answer is returned (None: nothing to answer)."""
        await self._take_place()
        op = AcceptorOp(message)
        size = len(message.value) if isinstance(message, (CasAccept, CasCommit)) else 0
        item = _Queued(op, asyncio.get_running_loop().create_future(), size)
        self._admit(item)
        await item.future
        return op.reply

    def serve_acceptor_soon(
        self, message: AcceptorMessage, done: Callable[[CasPromise | CasAccepted | None, BaseException | None], None]
    ) -> bool:
        """As `serve_acceptor`, without a task of its own: `done(reply, error)` is called once the state is
        durable (or the commit failed). False, and nothing queued, when the queue is full: the caller then
        waits for a place with `serve_acceptor`. (Every acceptor message of a conditional write came through
        a task before: its cost showed in profiles of the conditional-write benchmark.)

        Raises:
            ClosedError: the replica is closed."""
        if self._queued >= self.config.write_queue_max:
            return False
        self._queued += 1
        op = AcceptorOp(message)
        size = len(message.value) if isinstance(message, (CasAccept, CasCommit)) else 0
        item = _Queued(op, asyncio.get_running_loop().create_future(), size)
        self._admit(item)

        def settled(future: asyncio.Future[Any]) -> None:
            error = None if future.cancelled() else future.exception()
            done(op.reply if error is None and not future.cancelled() else None, error)

        item.future.add_done_callback(settled)
        return True

    async def enqueue(self, op: MergeOp) -> MergeOp:
        """Queues a merge (or a purge) and waits for its commit."""
        await self._take_place()
        item = _Queued(op, asyncio.get_running_loop().create_future(), sum(len(i.versions) for i in op.items))
        self._admit(item)
        await item.future
        return op

    async def _take_place(self) -> None:
        if self._queued < self.config.write_queue_max:
            self._queued += 1  # the common case, without the cost of another coroutine
            return
        room = asyncio.get_running_loop().create_future()
        self._room_waiters.append(room)
        try:
            await room
        except asyncio.CancelledError:
            # A cancelled waiter that was already handed a place passes it on.
            if room.done() and not room.cancelled():
                self._release()
            raise

    def _admit(self, item: _Queued) -> None:
        """Queues an item that holds a place (released here if the replica closed while it waited)."""
        if not self._open:
            self._release()
            raise ClosedError(f"node {self.node_id} is closed; no operations are accepted")
        self._pending.append(item)
        self._wake_writer()

    def _wake_writer(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _release(self) -> None:
        """Frees one place in the queue: hands it to the oldest waiting caller, if any."""
        while self._room_waiters:
            room = self._room_waiters.popleft()
            if not room.done():
                room.set_result(None)  # the place passes to this caller; _queued is unchanged
                return
        self._queued -= 1

    # --- the writer

    def _next_batch(self) -> list[_Queued]:
        """Takes up to `write_batch_max` queued items (and `write_batch_max_bytes` of values), dropping those
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
                if not self._open:
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
                except Exception as exc:  # a bug: fail the callers loudly rather than hang them
                    log.exception("commit of %d writes failed unexpectedly", len(batch))
                    failure = StorageError(f"commit failed unexpectedly: {exc!r}")
                for item in batch:
                    self._release()
                    if not item.future.done():
                        _settle(item, failure)
                if self._pending:
                    # An inline store (SQLite) never suspends in a commit, so without this the loop would
                    # run every queued batch back to back; yielding bounds a stall to one batch.
                    await asyncio.sleep(0)

    async def _commit(self, batch: list[_Queued]) -> None:
        """Commits a batch in one store transaction, in queue order: the replica decides what to store, this
        stores it and tells the listeners. A write whose key's stored row is unreadable fails alone."""
        replica = self.replica
        ops: list[WriteOp | MergeOp] = []
        acceptor: list[AcceptorOp] = []
        for item in batch:
            (acceptor if isinstance(item.op, AcceptorOp) else ops).append(item.op)  # type: ignore[arg-type]
        wanted = replica.reads(ops)
        served = None
        if acceptor:
            # One read for both: the rows the replica needs, and those of the acceptor messages' keys (a promise
            # carries the key's row; a commit's chosen state merges into it).
            keys = list(dict.fromkeys(op.message.key for op in acceptor))
            rows = await self.store.read_many(list(dict.fromkeys([*wanted, *keys])))
            served = await self._serve(acceptor, keys, rows)
            if served.chosen:  # states the rounds chose, merged like any replicated write
                ops.append(MergeOp(tuple(DataItem(0, key, value) for key, value in served.chosen)))
                wanted = replica.reads(ops)
            found = {key: rows[key] for key in wanted if key in rows}
        else:
            found = await self.store.read_many(wanted) if wanted else {}
        commit = replica.apply(ops, found, self.wall_ms())
        for key, reason in commit.refusals:
            log.warning("refusing remote versions of %r: %s", key, reason)
        paxos = [(paxos_key(key), state) for key, state in served.states.items()] if served else []
        if commit.rows or commit.deletes or commit.meta or paxos:
            await self.store.write(commit.rows, commit.meta, commit.deletes, paxos)
        replica.stored(commit)
        if served is not None:
            for op, reply in zip(acceptor, served.replies, strict=True):
                op.reply = reply
        for listener in self._listeners:
            try:
                listener(commit)
            except Exception:  # the commit is durable; a failing listener must not fail it
                log.exception("a commit listener failed")

    async def _serve(self, acceptor: list[AcceptorOp], keys: list[str], rows: dict[str, bytes]) -> ServedBatch:
        """The acceptor's answers to a batch's messages, from their keys' stored states and data rows (a
        promise carries the key's row, for the proposer to absorb plain writes)."""
        states = await self.store.read_paxos([paxos_key(key) for key in keys])
        return serve_all(
            [op.message for op in acceptor],
            {key: states[paxos_key(key)] for key in keys if paxos_key(key) in states},
            rows, self.node_id, self.wall_ms(), self.config.max_clock_offset_ms,
        )  # fmt: skip


def _settle(item: _Queued, failure: DSMError | None) -> None:
    """Gives a committed (or failed) write or merge its outcome."""
    op = item.op
    error = failure or (op.error if isinstance(op, WriteOp) else None)
    if error is not None:
        item.future.set_exception(error)
    elif isinstance(op, WriteOp):
        item.future.set_result(WriteResult(op.key, op.timestamp, op.after))
    elif isinstance(op, AcceptorOp):
        item.future.set_result(op.reply)
    else:
        item.future.set_result(op.changed)
