"""`Runtime`: runs one node's sans-IO core (`dsm.core.node_core.NodeCore`: the peer, the coordinator of
consistency levels and anti-entropy) on asyncio, over the TCP transport.

It gives the core the time (the event loop's monotonic clock, in ms), calls `tick` when the core's next
deadline comes (one timer handle, re-armed after every call into the core), hands it every message the
transport receives (with the member the connection authenticated), and carries out what the core answers:
- `Send`: the transport queues the message for that member's address (never blocks the loop);
- `Store`: writes other replicas sent (and read repairs of this node) are merged into the local replica
  (`Commits.merge`: the core's merge rule, through the serialized commit queue, as a task; a failed merge is
  logged and left to anti-entropy);
- `LevelDone`: a request at a consistency level ended; its caller (`write_at` / `read_at`) wakes;
- `ReconcileStep`: an anti-entropy step the core decided on (when, with whom, open or answer) runs against
  the store's consistent view off the event loop (`BackingStore.with_range_view`: a worker thread for the
  SQL stores); its reply is sent and the entries it brought are merged. At most MAX_ANSWERS answers run at
  once; more are dropped (counted; the peer's next exchange tries again; an exchange's end, which asks
  nothing, is never dropped). The step's outcome and that of the merge of its entries go back to the core,
  which decides the exchange's sync point (`SyncPoint`);
- `HeldSyncPoint`: a peer's sync point the core accepted is kept (`dsm.node.sync_points`, in the store's
  metadata), for watches resumed from that peer's cursors;
- `Deliver` / `RouteFailure`: routed payloads, handed to `on_deliver` / `on_route_failure` if set.
Other members' requests to the store (a level's `Replicate` and `ReadRequest`, a conditional write's acceptor
messages) are served by `dsm.net.serving.Serving`, bounded. Writes committed locally are published at once
(the runtime listens to the node's commits, `Commits.subscribe`, and hands them to `Peer.publish`).

Identity across restarts: the node's incarnation is kept in the store's metadata and raised by one at
every start, so a restarted node (after a clean stop or `kill -9`) rejoins under its id above anything
the cluster remembers of its previous life, and its data is the store's. The member table is saved in
the store's metadata too (`dsm.core.member_record`; within MEMBERS_SAVE_S of any change, and at a clean
stop), and a restarting node reads it back and rejoins through the members it knew, with or without
bootstrap addresses. Until a member answers its Join the node is *not joined*: it serves `local` reads
and writes, refuses higher levels (`ConsistencyError`), is not `ready`, keeps trying with backoff
(`Peer.join`) and logs a WARNING for every join target it could not reach, with the reason the transport
gives (refused, timeout, wrong secret, TLS, ...). Only a node with neither saved members nor bootstrap
addresses (or `new_cluster`) starts a new cluster. Membership changes are logged with the member's id
(INFO for joined and alive again, WARNING for suspect, dead, left and removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dsm.config import StorageConfig
from dsm.core.anti_entropy import ReconcileStep, run_step
from dsm.core.cas_ops import Operation as CasOperation
from dsm.core.cas_proposer import CasDone
from dsm.core.consistency import Level
from dsm.core.coordinator import LevelDone, LevelEffect
from dsm.core.messages import (
    CasAccept,
    CasCommit,
    CasCommits,
    CasPrepare,
    DataItem,
    Deliver,
    Join,
    ReadRequest,
    Reconcile,
    Replicate,
    RouteFailure,
    Send,
    Store,
)
from dsm.core.node_core import Conditional, NodeCore
from dsm.core.peer import Peer, PeerSettings
from dsm.core.replica import Commit, MergeOp
from dsm.core.ring import MemberInfo, State
from dsm.core.versions import VersionSet
from dsm.core.watch_cursor import HeldSyncPoint
from dsm.errors import StorageCorruptError
from dsm.net import chunks
from dsm.net.looplag import LoopLag
from dsm.net.quietlog import QuietLog
from dsm.net.security import Keyring
from dsm.net.serving import Serving
from dsm.net.tls import contexts
from dsm.net.transport import PeerLimits, Transport
from dsm.node import Commits
from dsm.node.sync_points import SyncPointBook
from dsm.storage.base import BackingStore

log = logging.getLogger("dsm.net")

META_INCARNATION = "incarnation"
#: The saved member table (`dsm.core.member_record`).
META_MEMBERS = "members"
#: How often the member table is saved when it changed (s).
MEMBERS_SAVE_S = 1.0
#: Seconds between two WARNINGs about the same join target failing for the same reason.
JOIN_WARNING_S = 30.0
#: Most anti-entropy answers computed at once (each may scan the store).
MAX_ANSWERS = 4
#: Seconds a write at a level above `local` is held for its level request before it is published anyway.
DEFERRED_S = 0.05


class HeldWrites:
    """The committed writes at a level above `local` (`Commit.deferred`), held until their level request
    starts (`claim`), then published together at the end of the event loop's turn with the members each one's
    `Replicate` went to (`levelled`; `NodeCore.publish_levelled` spares those members the tree's push), as
    the writes of one commit are; published plainly after DEFERRED_S if the request never comes (its caller
    was cancelled between the commit and the request)."""

    def __init__(self, publish: Callable[[list[tuple[DataItem, Sequence[str]]]], None]) -> None:
        self.publish = publish
        self.items: dict[int, DataItem] = {}
        self.started: list[tuple[DataItem, Sequence[str]]] = []

    def hold(self, commit: Commit) -> list[tuple[DataItem, Sequence[str]]]:
        """Holds the commit's deferred items; returns the others (to publish now, sparing nobody)."""
        now_items: list[tuple[DataItem, Sequence[str]]] = []
        held: list[int] = []
        for item in commit.published:
            if item.key in commit.deferred:
                self.items[item.id] = item
                held.append(item.id)
            else:
                now_items.append((item, ()))
        if held:
            asyncio.get_running_loop().call_later(DEFERRED_S, self._unclaimed, held)
        return now_items

    def claim(self, ids: Iterable[int]) -> list[DataItem]:
        """The held items of these ids, no longer held."""
        items = self.items
        return [items.pop(i) for i in ids if i in items]

    def levelled(self, items: Sequence[DataItem], targets: Sequence[str]) -> None:
        """Publishes these (claimed) items at the end of this turn, sparing `targets` the tree's push."""
        if not items:
            return
        if not self.started:
            asyncio.get_running_loop().call_soon(self._flush)
        self.started.extend((item, targets) for item in items)

    def _flush(self) -> None:
        started, self.started = self.started, []
        self.publish(started)

    def _unclaimed(self, ids: list[int]) -> None:
        self.publish([(item, ()) for item in self.claim(ids)])


class MemberSaver:
    """Saves a node's member table in its store's metadata within MEMBERS_SAVE_S of every change, and at once
    when `now` is set (the node joined: killed a moment later, it rejoins the members it joined)."""

    def __init__(self, store: BackingStore, peer: Callable[[], Peer | None]) -> None:
        self.store, self.peer = store, peer
        self.now = asyncio.Event()
        self._saved = -1

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.now.wait(), MEMBERS_SAVE_S)
            self.now.clear()
            try:
                await self.save()
            except Exception as exc:  # the store failed: the next round tries again
                log.warning("saving the member table failed: %s", exc)

    async def save(self) -> None:
        """Saves the member table now if it changed since it was last saved."""
        peer = self.peer()
        if peer is None:
            return
        changes = peer.table.changes
        if changes == self._saved:
            return
        await self.store.write([], {META_MEMBERS: peer.member_record()})
        self._saved = changes


def log_member_change(member: str, old: int, new: int, incarnation: int, own: bool) -> None:
    """The log line of another member's change of state (`own`: this node suspected it)."""
    if new == State.ALIVE:
        what = "joined" if old in (State.UNKNOWN, State.LEFT) else "alive again (refuted)"
        log.info("member %s %s (incarnation %d)", member, what, incarnation)
    elif new == State.SUSPECT:
        log.warning("member %s suspect (incarnation %d)%s", member, incarnation, " by this node" if own else "")
    elif new == State.DEAD:
        log.warning("member %s dead (incarnation %d)", member, incarnation)
    elif new == State.LEFT:
        log.warning("member %s left (incarnation %d)", member, incarnation)


class Runtime:
    """One networked node: a `Peer` driven over a `Transport`, replicating into an `EpidemicStorage`."""

    def __init__(
        self,
        commits: Commits,
        settings: PeerSettings,
        listen: str,
        *,
        advertise: str = "",
        keyring: Keyring | None = None,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        seed: int | None = None,
        new_cluster: bool = False,
        limits: PeerLimits | None = None,
        max_message_bytes: int = chunks.MESSAGE_MAX_BYTES,
        reassembly_max_bytes: int = chunks.REASSEMBLY_MAX_BYTES,
    ) -> None:
        #: The node's local replica: what it merges into and reads for others, and whose commits it publishes.
        self.commits = commits
        self.settings = settings
        self.node_id = commits.node_id
        self.advertise = advertise
        self.transport = Transport(
            self.node_id,
            listen,
            self._on_message,
            keyring,
            server_ssl=server_ssl,
            client_ssl=client_ssl,
            on_connect_failure=self._connect_failed,
            limits=limits,
            max_message_bytes=max_message_bytes,
            reassembly_max_bytes=reassembly_max_bytes,
        )
        self._rng = random.Random(seed)
        # Request ids: unique, not secret (peers are authenticated), so a generator seeded once from the OS
        # rather than a system call per id.
        self._ids = random.Random(os.urandom(16))
        self.peer: Peer | None = None
        self.on_deliver: Callable[[Deliver], None] | None = None
        self.on_route_failure: Callable[[RouteFailure], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.merge_failures = 0
        self.anti_entropy_answers = 0
        self.anti_entropy_dropped = 0
        self.anti_entropy_failures = 0
        #: Entries anti-entropy brought here (differences found), and how many of them changed a key (repairs:
        #: writes the direct pushes and gossip had not delivered).
        self.anti_entropy_entries = 0
        self.anti_entropy_repaired = 0
        self._answering = 0
        #: The sync points anti-entropy leaves here, for watches resumed from other nodes' cursors.
        self.sync_points = SyncPointBook(commits, self._background)
        #: Event-loop stalls, measured while the node runs (exported as metrics).
        self.loop_lag = LoopLag()
        #: The node's whole core (peer, coordinator, anti-entropy; made at start), the futures of the callers
        #: of requests at consistency levels, and the count of requests from other coordinators being served.
        self.core: NodeCore | None = None
        self._levels: dict[int, asyncio.Future[LevelDone]] = {}
        #: Items of committed writes at a level, held for their level request (`_on_commit`).
        self.held = HeldWrites(self._publish)
        # Conditional operations waiting for their end: request -> (waiter, key).
        self._cas: dict[int, tuple[asyncio.Future[tuple[CasDone, asyncio.Task[Any] | None]], str]] = {}
        #: Other members' requests to this node's store (levels, acceptor messages), served off the loop.
        self.serving = Serving(commits, self._send_to, self._answer_self, self._background)
        #: Start a new cluster even if the store saved the members of one (`StorageConfig.new_cluster`).
        self.new_cluster = new_cluster
        #: Set once the node has joined (a member answered, or it started a new cluster).
        self.joined = asyncio.Event()
        #: Why the last attempt to reach each join target failed (addr -> reason), while not joined.
        self.join_failures: dict[str, str] = {}
        # WARNINGs about join targets and strangers: at most one per JOIN_WARNING_S per target and reason.
        self._warnings = QuietLog(log, JOIN_WARNING_S)
        self.members = MemberSaver(self.commits.store, lambda: self.peer)
        self._saver: asyncio.Task[None] | None = None
        self._closed = False
        self._restoring = False

    @classmethod
    def from_config(cls, commits: Commits, config: StorageConfig) -> Runtime:
        """The runtime of a node's replica `commits` as `config` describes it (listen and advertise addresses, protocol
        settings, cluster secrets, TLS).

        Raises:
            ConfigError: a TLS file cannot be loaded.
        """
        tls = contexts(config)
        return cls(
            commits,
            PeerSettings.from_config(config),
            config.listen_addr,
            advertise=config.advertise_addr,
            keyring=Keyring(config.cluster_secret or None, config.accepted_secrets),
            server_ssl=tls.peer_server,
            client_ssl=tls.peer_client,
            new_cluster=config.new_cluster,
            limits=PeerLimits.from_config(config),
            max_message_bytes=config.max_message_bytes,
            reassembly_max_bytes=config.reassembly_max_bytes,
        )

    def now(self) -> int:
        assert self._loop is not None
        return int(self._loop.time() * 1000)

    @property
    def addr(self) -> str:
        """The address other members reach this node at."""
        return self.advertise or self.transport.addr

    async def start(self, bootstrap: Sequence[str] = ()) -> None:
        """Listens, takes the next incarnation, reads back the saved member table and joins through
        `bootstrap` (host:port addresses of members) and the saved members; with neither (or with
        `new_cluster`), starts a new cluster. Returns at once: `joined` is set when the join completes.

        Raises:
            StorageCorruptError: the saved member table cannot be read.
        """
        self._loop = asyncio.get_running_loop()
        self.loop_lag.start()
        await self.transport.start()
        store = self.commits.store
        raw = await store.read_meta(META_INCARNATION)
        incarnation = int(raw.decode("ascii")) + 1 if raw else 0
        await store.write([], {META_INCARNATION: str(incarnation).encode("ascii")})
        info = MemberInfo(self.node_id, self.addr, self.commits.config.region)
        self.peer = Peer(
            info, self.settings, self._rng, self.now(), incarnation=incarnation, member_observer=self._member_changed
        )
        # Request ids are random 63-bit numbers: a guessed or replayed id of another request finds nothing.
        replica = self.commits.replica
        settings = replica.settings
        conditional = Conditional(replica.clock, self.commits.cas_run, self.commits.wall_ms, settings.max_siblings)
        ports = await self.sync_points.open()
        self.core = NodeCore(
            self.peer, replica.resolution, lambda: self._ids.getrandbits(63), self.now(), conditional=conditional,
            sync_points=ports,
        )  # fmt: skip
        saved = None if self.new_cluster else await store.read_meta(META_MEMBERS)
        if saved is not None:
            self._restoring = True
            try:
                adopted = self.commits.adopted_from
                restored = self.peer.restore(saved, exclude=(adopted,) if adopted else ())
            except ValueError as exc:
                raise StorageCorruptError(f"{store.url}: the saved member table cannot be read: {exc}") from None
            finally:
                self._restoring = False
            log.info("node %s: %d members read back from the store", self.node_id, restored)
        self.commits.subscribe(self._on_commit)
        self._apply(self.peer.join(self.now(), [("", addr) for addr in bootstrap if addr != self.addr]))
        self._saver = self._loop.create_task(self.members.run(), name=f"dsm-members-{self.node_id}")
        if self.peer.joined:
            log.info("node %s listening on %s (incarnation %d): a new cluster", self.node_id, self.addr, incarnation)
        else:
            targets = ", ".join(addr or node_id for node_id, addr in self.peer.join_targets())
            log.info(
                "node %s listening on %s (incarnation %d): joining through %s", self.node_id, self.addr, incarnation,
                targets,
            )  # fmt: skip

    def join_status(self) -> dict[str, Any]:
        """Whether the node has joined, and if not why: the targets it tries and how each last failed."""
        peer = self.peer
        if peer is None:
            return {"joined": False, "reason": "starting", "targets": {}}
        if peer.joined:
            return {"joined": not peer.left, "reason": "left" if peer.left else "", "targets": {}}
        targets = {
            addr or node_id: self.join_failures.get(addr, "no answer yet") for node_id, addr in peer.join_targets()
        }
        return {"joined": False, "reason": "no member of the cluster reached", "targets": targets}

    def _connect_failed(self, addr: str, node_id: str, reason: str) -> None:
        """The transport could not reach `addr`: remembered, and a WARNING while it is a join target; once
        joined, a WARNING (at most every JOIN_WARNING_S per address and reason) for a member it cannot reach."""
        peer = self.peer
        if peer is None:
            return
        if peer.joined:
            if node_id:  # a member this node cannot reach (its answers to it are lost meanwhile)
                self._warnings.log(
                    logging.WARNING, f"reach {addr} {reason}", "node %s cannot reach member %s at %s (%s)",
                    self.node_id, node_id, addr, reason,
                )  # fmt: skip
            return
        if not any(a == addr for _, a in peer.join_targets()):
            return
        self.join_failures[addr] = reason
        self._warnings.log(
            logging.WARNING, f"join {addr} {reason}", "node %s not joined: joining through %s%s failed (%s); retrying",
            self.node_id, addr, f" ({node_id})" if node_id else "", reason,
        )  # fmt: skip

    def _stranger(self, source: str) -> None:
        """A node alone in the cluster it started hears from a member it does not know, which holds the
        cluster secret and knows this node (it probes or syncs with it): most likely this node lost its store
        (or its saved table) and was started without bootstrap addresses, so it runs a cluster of its own
        beside its real one. Said loudly (the two do not merge by themselves), at most every JOIN_WARNING_S."""
        self._warnings.log(
            logging.WARNING, "stranger",
            "node %s runs a cluster of its own, but member %r of another cluster contacts it: if this node "
            "belongs to that cluster (a lost data directory?), restart it with --bootstrap <a member>",
            self.node_id, source,
        )  # fmt: skip

    def _member_changed(self, peer: Peer, slot: int, old: int, new: int, incarnation: int, own: bool) -> None:
        if not self._restoring and slot != peer.me:
            log_member_change(peer.directory.infos[slot].node_id, old, new, incarnation, own)

    async def close(self, flush_timeout: float = 1.0, leave: bool = False) -> None:
        """Graceful stop: saves the member table, flushes, closes the transport; with `leave`, first
        announces a leave for good to the linked members (see `EpidemicStorage.leave`). Without it the node
        stays a member that the others see fail and still count. The storage is the caller's to close
        (after this). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.loop_lag.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._saver is not None:
            self._saver.cancel()
            await asyncio.gather(self._saver, return_exceptions=True)
        if self.peer is not None and not self.peer.left:
            try:
                await self.members.save()  # before any leave: a restart rejoins through these members
            except Exception as exc:
                log.warning("saving the member table failed: %s", exc)
        self.commits.unsubscribe(self._on_commit)
        self.sync_points.close()
        if self.core is not None:  # callers waiting for a level hear that it was not met
            self._apply(self.core.coordinator.abandon())
        if leave and self.peer is not None and not self.peer.left:
            self._apply(self.peer.leave(self.now()))
            log.info("node %s left the cluster", self.node_id)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=flush_timeout)
        await self.transport.close(flush_timeout)

    # ------------------------------------------------------------------ driving the core

    def _on_message(self, source: str, message: Any) -> None:
        peer = self.peer
        if peer is None:
            return
        # A node that runs a cluster of its own (joined, alone) hearing from an unknown member; not a node still
        # joining, whose join target's first message (its JoinReply) necessarily comes from an unknown member.
        alone = peer.joined and peer.live_count() == 1
        if alone and peer.directory.slot(source) is None and not isinstance(message, Join):
            self._stranger(source)
        kind = type(message)
        if kind is Replicate:
            self._apply(self.core.replicated(self.now(), source, message) if self.core is not None else ())
            self.serving.replicate(source, message)
        elif kind is CasPrepare or kind is CasAccept or kind is CasCommit:
            refusal = self.core.misrouted(message) if self.core is not None else None
            if refusal is None:
                self.serving.acceptor(source, message)
            elif source == self.node_id:
                self._answer_self(refusal)
            else:
                self._send_to(source, refusal)
        elif kind is CasCommits:
            for entry in message.entries:
                self.serving.acceptor(source, CasCommit(message.source, entry.key, entry.ballot, entry.value))
        elif kind is ReadRequest:
            self.serving.read(source, message)
        elif kind is Reconcile and self._answering >= MAX_ANSWERS and (message.runs or message.entries):
            self.anti_entropy_dropped += 1  # the peer's next exchange tries again
            if self.core is not None and self.core.anti_entropy is not None:
                self.core.anti_entropy.failed(source, message.session)
        else:
            assert self.core is not None
            self._apply(self.core.handle(self.now(), source, message))

    def _on_commit(self, commit: Commit) -> None:
        """Publishes the local writes a commit made durable, but for those held for a level request."""
        self._publish(self.held.hold(commit))

    def _publish(self, entries: list[tuple[DataItem, Sequence[str]]]) -> None:
        if entries and self.core is not None and not self.core.peer.left:
            self._apply(self.core.publish_levelled(self.now(), entries))

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.core is not None:
            self._apply(self.core.tick(self.now()))

    def _apply(self, effects: Sequence[Any]) -> None:
        ended: list[CasDone] = []  # conditional operations of this node that ended
        chosen: dict[str, asyncio.Task[Any]] = {}  # the merge of each key's chosen state stored here
        for effect in effects:
            if isinstance(effect, Send):
                if effect.node_id == self.node_id:  # to itself (an acceptor of its own key): no connection
                    asyncio.get_running_loop().call_soon(self._on_message, self.node_id, effect.message)
                else:
                    self.transport.send(effect.node_id, effect.addr, effect.message)
            elif isinstance(effect, Store):
                task = self._background(self._merge(effect.items, effect.source))
                if effect.path == "cas":
                    chosen[effect.items[0].key] = task
            elif isinstance(effect, LevelDone):
                future = self._levels.get(effect.request)
                if future is not None and not future.done():
                    future.set_result(effect)
            elif isinstance(effect, CasDone):
                ended.append(effect)
            elif isinstance(effect, ReconcileStep):
                if effect.message is not None:
                    self._answering += 1
                self._background(self._reconcile(effect))
            elif isinstance(effect, HeldSyncPoint):
                self.sync_points.keep(effect)
            elif isinstance(effect, Deliver):
                if self.on_deliver is not None:
                    self.on_deliver(effect)
            elif self.on_route_failure is not None:
                self.on_route_failure(effect)
        for done in ended:
            # With the merge of the state the round chose here (the round's whole state, which holds the
            # operation's), if the same step stored one: its waiter need not merge the state again.
            entry = self._cas.get(done.request)
            if entry is not None and not entry[0].done():
                entry[0].set_result((done, chosen.get(entry[1])))
        peer = self.peer
        if peer is not None and peer.joined and not self.joined.is_set():
            self.joined.set()
            # The members it joined are saved at once: a node killed a moment after it joined rejoins them.
            self.members.now.set()
            self.join_failures.clear()
            log.info("node %s joined the cluster (%d members alive)", self.node_id, peer.live_count())
        self._rearm()

    def _rearm(self) -> None:
        peer = self.peer
        if peer is None or peer.left:
            return
        assert self.core is not None
        deadline = self.core.next_deadline()
        if deadline is None or deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline / 1000, self._tick)

    def _background(self, work: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _merge(self, items: Sequence[DataItem], source: str) -> MergeOp | None:
        """Merges replicated items into the store; returns the merge with its outcome (None when it failed)."""
        try:
            return await self.commits.merge(items)
        except Exception as exc:  # the store failed or closed: the write comes again by gossip or anti-entropy
            self.merge_failures += 1
            log.warning("merging %d items from %s failed: %s", len(items), source, exc)
            return None

    def remove_member(self, node_id: str) -> None:
        """Removes a member for good (`Peer.remove`); ValueError for an unknown member or this node."""
        if self.peer is None:
            raise ValueError("the node has not started")
        self._apply(self.peer.remove(self.now(), node_id))
        log.warning("member %s removed by the operator", node_id)

    # ------------------------------------------------------------------ consistency levels

    @property
    def ready(self) -> bool:
        """Whether the node has joined: before that its membership view is only itself."""
        return self.peer is not None and self.peer.joined and not self.peer.left

    @property
    def read_repairs(self) -> int:
        """Members (this node included) that reads at a level found stale and repaired."""
        return 0 if self.core is None else self.core.coordinator.stats.read_repairs

    async def write_at(self, level: Level, items: Sequence[DataItem], timeout_ms: int) -> LevelDone:
        """Waits until enough members stored `items` (durable here already) for `level`, or `timeout_ms`."""
        assert self.core is not None
        request, effects, targets = self.core.write_at(self.now(), level, items, timeout_ms)
        self.held.levelled(self.held.claim(item.id for item in items), targets)
        return await self._level((request, effects))

    async def read_at(self, level: Level, key: str, own: VersionSet, timeout_ms: int) -> LevelDone:
        """Reads `key` at `level` (this node's `own` version set first); read repair is sent on."""
        assert self.core is not None
        return await self._level(self.core.coordinator.read(self.now(), level, key, own, timeout_ms))

    async def _level(self, started: tuple[int, Sequence[LevelEffect | Any]]) -> LevelDone:
        request, effects = started
        future: asyncio.Future[LevelDone] = asyncio.get_running_loop().create_future()
        self._levels[request] = future
        try:
            self._apply(effects)
            return await future
        finally:
            del self._levels[request]

    # ------------------------------------------------------------------ conditional writes

    async def cas(self, key: str, operation: CasOperation, timeout_ms: int) -> tuple[CasDone, bool]:
        """Runs a conditional operation on `key` (this node proposes, or its key's home; see
        `dsm.core.node_core`) and waits for its end: applied, failed or read with the chosen state, or refused
        or unknown. Also says whether the chosen state is durable in this node's store already (when this node
        proposed the round, its merge of the round's state is awaited here; else the caller merges it)."""
        assert self.core is not None
        request = self._ids.getrandbits(63)
        future: asyncio.Future[tuple[CasDone, asyncio.Task[Any] | None]] = asyncio.get_running_loop().create_future()
        self._cas[request] = (future, key)
        try:
            self._apply(self.core.cas(self.now(), request, key, operation, timeout_ms))
            done, stored = await future
        finally:
            del self._cas[request]
        if stored is None or done.state is None:
            return done, False
        merge = await asyncio.shield(stored)
        return done, merge is not None and merge.refused == 0

    # ------------------------------------------------------------------ anti-entropy

    def _send_to(self, node_id: str, message: Any) -> None:
        self.transport.send(node_id, self._addr_of(node_id), message)

    def _answer_self(self, message: Any) -> None:
        """An answer this node's store work gives its own core (an acceptor answering its own proposer)."""
        if self.core is not None:
            self._apply(self.core.handle(self.now(), self.node_id, message))

    def _addr_of(self, node_id: str) -> str:
        assert self.peer is not None
        slot = self.peer.directory.slot(node_id)
        return self.peer.directory.infos[slot].addr if slot is not None else ""

    @property
    def anti_entropy_sessions(self) -> int:
        """Exchanges this node opened."""
        return 0 if self.core is None or self.core.anti_entropy is None else self.core.anti_entropy.sessions

    @property
    def anti_entropy_held(self) -> int:
        """Anti-entropy rounds held back by heavy writes (`anti_entropy_busy_writes`)."""
        return 0 if self.core is None or self.core.anti_entropy is None else self.core.anti_entropy.held

    async def _reconcile(self, step: ReconcileStep) -> None:
        """Runs an anti-entropy step the core decided on, against the store's consistent view off the event
        loop; sends its reply and merges the entries it brought."""
        limit = self.settings.anti_entropy_max_bytes
        assert self.core is not None and self.core.anti_entropy is not None
        anti_entropy = self.core.anti_entropy
        try:
            result = await self.commits.store.with_range_view(lambda view: run_step(step, self.node_id, view, limit))
            if step.message is not None:
                self.anti_entropy_answers += 1
            ended = anti_entropy.stepped(step, result)  # before the reply goes: the peer may answer at once
            if result.reply is not None:
                self._send_to(step.node_id, result.reply)
            self._apply(ended)
            if items := result.items:
                self.anti_entropy_entries += len(items)
                merge = await self._merge(items, step.node_id)
                self.anti_entropy_repaired += 0 if merge is None else merge.changed
                self._apply(anti_entropy.merged(step, merge is not None and merge.refused == 0))
        except ValueError as exc:  # a malformed exchange: the sender's fault
            self.anti_entropy_failures += 1
            anti_entropy.failed(step.node_id, step.session)
            log.warning("malformed anti-entropy message from %s: %s", step.node_id, exc)
        except Exception as exc:  # the store failed: the next round tries again
            self.anti_entropy_failures += 1
            anti_entropy.failed(step.node_id, step.session)
            log.warning("anti-entropy step with %s failed: %s", step.node_id, exc)
        finally:
            if step.message is not None:
                self._answering -= 1
