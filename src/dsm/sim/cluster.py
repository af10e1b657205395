"""`Simulation`: many `Peer` cores on virtual time over a simulated network, with faults.

One seeded `random.Random` decides everything: latencies, losses, which nodes crash, each core's own RNG
(seeded from it in creation order). Events are kept in one heap ordered by (time, sequence number), so
equal times resolve in a fixed order and a seed reproduces a run exactly.

Per node the simulator keeps what survives a crash (the node's id, address, region and the incarnation its
storage holds) and the fault knobs: up or crashed, slow (every message it receives waits an extra random
delay before it is processed, mean `slow_ms`) and clock skew (the core's clock reads virtual time plus a
constant offset). A crashed node's in-flight messages are dropped; a restarted node gets a new core with its
stored incarnation plus one and joins again through live members.

Observers see every member-state change and every link change of every core; checkers and measurements
hang off them (see `checkers.py` and `run.py`).
"""

from __future__ import annotations

import heapq
import math
import random
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dsm.core import member_record
from dsm.core.anti_entropy import ReconcileStep, SyncPorts, run_step
from dsm.core.cas_acceptor import serve_all
from dsm.core.cas_ops import Operation as CasOperation
from dsm.core.cas_proposer import CasDone
from dsm.core.consistency import Level, Tally
from dsm.core.coordinator import Coordinator, LevelDone, read_reply, stored_reply
from dsm.core.encoding import decode_versions, encode_versions
from dsm.core.messages import (
    OVERLAY_MESSAGES,
    CasAccept,
    CasCommit,
    CasCommits,
    CasPrepare,
    DataItem,
    Deliver,
    ReadReply,
    ReadRequest,
    Replicate,
    Replicated,
    RouteFailure,
    Send,
    Store,
)
from dsm.core.node_core import Conditional, CoreEffect, NodeCore
from dsm.core.peer import Peer, PeerSettings
from dsm.core.reconcile import SortedReplica
from dsm.core.replica import Commit, MergeOp, Op, Replica, ReplicaSettings, WriteOp
from dsm.core.ring import Directory, MemberInfo, MemberTable, State
from dsm.core.vclock import VersionVector
from dsm.core.versions import Resolution, VersionSet
from dsm.core.watch_cursor import HeldSyncPoint, SyncPoints
from dsm.sim.network import NetworkModel
from dsm.storage.base import paxos_key
from dsm.storage.memory import MemoryStore

_BLIND = VersionVector()

_DELIVER = 0
_WAKE = 1
_ACTION = 2

MemberHook = Callable[[int, int, int, int, int, bool], None]
LinkHook = Callable[[int, int, int], None]


class CheckFailed(AssertionError):
    """A safety or liveness property of the simulated cluster was violated (or a core's own invariant
    assertion fired). The message starts with the seed that reproduces it."""

    def __init__(self, seed: int, what: str) -> None:
        super().__init__(f"seed {seed}: {what} (rerun with --seed {seed} to reproduce)")
        self.seed = seed
        self.what = what


@dataclass(slots=True, eq=False)
class SimNode:
    """A simulated machine: identity and storage survive crashes; the core does not."""

    index: int
    info: MemberInfo
    #: The node's store and its write and merge rule with its clock (the product's, `core/replica.py`):
    #: both survive crashes, as a disk and a clock floor do.
    store: MemoryStore
    replica: Replica
    peer: Peer | None = None
    #: Its whole core (the peer above, its coordinator and anti-entropy; lost in a crash).
    core: NodeCore | None = None
    #: Read repairs its coordinators of earlier lives (before crashes) sent.
    read_repairs_before: int = 0
    up: bool = False
    stored_incarnation: int = 0
    generation: int = 0
    slow_ms: float = 0.0
    skew_ms: int = 0
    wake: float = math.inf
    crashed_at: float | None = None
    left: bool = False
    #: The member table the node had saved when it crashed: its lost core's own table, which nothing
    #: writes any more (encoded as the runtime's saved record only when a restart reads it back).
    saved_table: MemberTable | None = None
    #: Its store's epoch, the stamp of its last commit, and the sync points it keeps (they survive crashes, as
    #: the runtime's do in the store's metadata).
    epoch: int = 0
    last_stamp: int = 0
    sync_points: SyncPoints = field(default_factory=lambda: SyncPoints(0))

    @property
    def data(self) -> SortedReplica:
        """The node's stored rows: key -> encoded version set (a live view of its store)."""
        return self.store.view()

    def commit(self, ops: list[Op], wall_ms: int) -> Commit:
        """Commits `ops` to this node's store through the product's rule (`Replica.apply`), as the node's
        commit loop does; returns what was stored."""
        store, replica = self.store, self.replica
        commit = replica.apply(ops, store.read_many_now(replica.reads(ops)), wall_ms)
        store.write_now(commit.rows, commit.meta, commit.deletes)
        replica.stored(commit)
        if commit.stamp:
            self.last_stamp = commit.stamp
        return commit

    @property
    def coordinator(self) -> Coordinator | None:
        """Its requests at consistency levels (the product's coordinator)."""
        return None if self.core is None else self.core.coordinator

    def saved_members(self, directory: Directory) -> bytes:
        """The member table this node saved, as the runtime saves it (`Peer.member_record`)."""
        if self.saved_table is None:
            return b""
        return member_record.of_table(directory.infos, self.saved_table)


@dataclass
class RouteOutcome:
    source: int
    target: int
    started_ms: float
    delivered: bool | None = None
    hops: int = 0
    reason: str = ""


@dataclass
class LevelRequest:
    """A write or read at a consistency level that a simulated node coordinates with the product's
    `dsm.core.coordinator.Coordinator`, and what to call when it ends (`done(outcome, request)`, outcome
    "ok", "fail" (not met in time, or refused before the node joined) or "unknown" (the coordinator crashed
    first: its client never hears back)). `item` is the write as replicated, or the merge a read returned."""

    node: int
    generation: int
    key: str
    started_ms: float
    done: Callable[[str, LevelRequest], None]
    item: DataItem | None = None
    finished: bool = False
    seq: int = 0
    tally: Tally | None = None


@dataclass
class Simulation:
    """See the module docstring. Create, then `form` or `add_node` + `join`, then `run_until`."""

    seed: int
    settings: PeerSettings = field(default_factory=PeerSettings)
    network: NetworkModel = field(default_factory=NetworkModel)
    regions: tuple[str, ...] = ("default",)
    skew_max_ms: int = 0
    start_ms: float = 1_000_000.0
    #: The nodes' write and merge rule (`ReplicaSettings`): set before nodes are added. Clocks that differ
    #: by more than max_clock_offset_ms make nodes refuse each other's writes, as in the product.
    resolution: Resolution = Resolution.LWW
    max_siblings: int = 1
    max_clock_offset_ms: int = 10_000

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.now = self.start_ms
        self.directory = Directory()
        self.nodes: list[SimNode] = []
        self.index_of: dict[str, int] = {}
        self.index_of_addr: dict[str, int] = {}
        self._heap: list[tuple[float, int, int, int, Any]] = []
        self._seq = 0
        self.sent: Counter[str] = Counter()
        self.messages_total = 0
        self.events = 0
        self.member_hooks: list[MemberHook] = []
        self.link_hooks: list[LinkHook] = []
        self.send_hooks: list[Callable[[int, int, Any], None]] = []
        self.routes: dict[tuple[int, int], RouteOutcome] = {}
        #: Called for every write stored at a node: (node index, item, path, hops, changed).
        self.store_hooks: list[Callable[[int, DataItem, str, int], None]] = []
        #: Requests at consistency levels in flight, by (coordinator index, request number).
        self.level_requests: dict[tuple[int, int], LevelRequest] = {}
        self._level_seq = 0
        #: Callers of conditional operations in flight, by (coordinator index, request id).
        self._cas_callbacks: dict[tuple[int, int], Callable[[CasDone], None]] = {}

    # ------------------------------------------------------------------ building the cluster

    def add_node(self, region: str | None = None) -> SimNode:
        """Creates a machine (not started). Ids are n0, n1, ...; regions round-robin unless given."""
        index = len(self.nodes)
        node_id = f"n{index}"
        info = MemberInfo(node_id, f"sim://{node_id}", region or self.regions[index % len(self.regions)])
        settings = ReplicaSettings(self.resolution, self.max_siblings, self.max_clock_offset_ms)
        node = SimNode(index, info, MemoryStore(opened=True), Replica(node_id, settings, info.addr))
        node.epoch = index + 1  # a fixed epoch per node (no draw from the run's random source)
        node.sync_points = SyncPoints(node.epoch)
        if self.skew_max_ms:
            node.skew_ms = self.rng.randint(-self.skew_max_ms, self.skew_max_ms)
        self.nodes.append(node)
        self.index_of[node_id] = index
        self.index_of_addr[info.addr] = index
        self.directory.intern(info)
        return node

    def _new_peer(self, node: SimNode) -> Peer:
        peer = Peer(
            node.info,
            self.settings,
            random.Random(self.rng.getrandbits(64)),
            self._peer_now(node),
            directory=self.directory,
            incarnation=node.stored_incarnation,
            member_observer=self._on_member if self.member_hooks else None,
            link_observer=self._on_link if self.link_hooks else None,
        )
        node.peer = peer
        node.generation += 1  # also the run number of its ballots: a restart never reuses one
        conditional = Conditional(node.replica.clock, node.generation, lambda: self._peer_now(node), self.max_siblings)
        ports = SyncPorts(node.epoch, lambda: node.last_stamp)
        node.core = NodeCore(
            peer, self.resolution, self._next_level_id, self._peer_now(node), conditional=conditional, sync_points=ports
        )
        node.up = True
        node.wake = math.inf
        return peer

    def form(self, count: int) -> None:
        """Creates `count` nodes that start as a formed cluster (everyone knows everyone alive)."""
        first = len(self.nodes)
        for _ in range(count):
            self.add_node()
        size = len(self.directory)
        states = bytes([int(State.ALIVE)]) * size
        incarnations = array("I", bytes(4 * size))
        template = MemberTable(self.directory)
        template.fill(states, incarnations)
        for node in self.nodes[first:]:
            peer = self._new_peer(node)
            peer.install_snapshot(states, incarnations, template)
            self._reschedule(node)

    def join(self, node: SimNode, bootstrap: list[SimNode], restore: bool = False) -> None:
        """Starts `node` (new or restarted) and joins it through `bootstrap` and, with `restore`, through the
        members it had saved (as a restarted `dsm node run` does)."""
        peer = self._new_peer(node)
        record = node.saved_members(self.directory) if restore else b""
        if record:
            peer.restore(record)
        effects = peer.join(self._peer_now(node), [(b.info.node_id, b.info.addr) for b in bootstrap])
        self._apply_effects(node, effects)
        self._reschedule(node)

    def crash(self, node: SimNode) -> None:
        """Stops the node at once, without a word; its in-flight messages are lost."""
        assert node.up and node.peer is not None
        node.stored_incarnation = max(node.stored_incarnation, node.peer.incarnation)
        # Kept, not copied: the core it belonged to is dropped here and never runs again.
        node.saved_table = node.peer.table
        node.peer = None
        self._drop_coordinator(node)
        node.up = False
        node.crashed_at = self.now
        node.wake = math.inf

    def restart(self, node: SimNode, bootstrap: list[SimNode] | None = None) -> None:
        """Starts a crashed node again with its stored identity, a higher incarnation and the member table it
        had saved; it rejoins through `bootstrap` (may be empty: a restart that lost its bootstrap list) and
        the members it knew."""
        assert not node.up
        node.stored_incarnation += 1
        node.crashed_at = None
        self.join(node, bootstrap or [], restore=True)

    def leave(self, node: SimNode) -> None:
        assert node.up and node.peer is not None
        effects = node.peer.leave(self._peer_now(node))
        node.stored_incarnation = node.peer.incarnation
        self._apply_effects(node, effects)
        node.left = True
        node.up = False
        node.peer = None
        self._drop_coordinator(node)

    def route(self, source: SimNode, target: SimNode) -> RouteOutcome:
        """Routes a probe payload from source to target over the overlay; the outcome fills in later."""
        assert source.peer is not None
        route_id, effects = source.peer.route(self._peer_now(source), target.info.node_id, None)
        outcome = RouteOutcome(source.index, target.index, self.now)
        self.routes[(source.index, route_id)] = outcome
        self._apply_effects(source, effects)
        self._reschedule(source)
        return outcome

    def write(
        self,
        node: SimNode,
        key: str,
        value: bytes | None,
        urgent: bool = True,
        before_publish: Callable[[DataItem], None] | None = None,
        context: VersionVector = _BLIND,
    ) -> DataItem:
        """`node` coordinates a write of `key` (committed to its store by the product's rule, then published);
        returns the write as replicated. Blind unless `context` (a read's) is given. `before_publish` sees the
        write before its first message is sent (to start watching it)."""
        assert node.up and node.peer is not None
        now = self._peer_now(node)
        commit = node.commit([WriteOp(key, value, context)], now)
        (item,) = commit.published
        if before_publish is not None:
            before_publish(item)
        for hook in self.store_hooks:
            hook(node.index, item, "write", 0)
        effects = node.peer.publish(now, (item,), urgent)
        self._apply_effects(node, effects)
        self._reschedule(node)
        return item

    def _store(self, node: SimNode, effect: Store) -> bool:
        """Merges replicated items into `node`'s store (the product's merge rule, refusals included); returns
        whether every item was taken."""
        commit = node.commit([MergeOp(effect.items)], self._peer_now(node))
        refused = commit.refused
        for item in effect.items:
            if refused and item.key in refused:
                continue
            for hook in self.store_hooks:
                hook(node.index, item, effect.path, effect.hops)
        return not refused

    # ------------------------------------------------------------------ consistency levels

    def write_at(
        self,
        node: SimNode,
        key: str,
        value: bytes | None,
        level: Level,
        done: Callable[[str, LevelRequest], None],
        context: VersionVector = _BLIND,
        timeout_ms: float = 2000.0,
    ) -> LevelRequest:
        """`node` coordinates a write at `level`: committed, then its coordinator asks the level's members to
        store it and the tree takes it to the others; `done("ok", request)` runs once enough members stored it,
        `done("fail", ...)` after `timeout_ms`. A write that fails its level stays where it landed and spreads."""
        assert node.up and node.peer is not None and node.core is not None
        now = self._peer_now(node)
        (item,) = node.commit([WriteOp(key, value, context, deferred=True)], now).published
        for hook in self.store_hooks:
            hook(node.index, item, "write", 0)
        rid, effects, targets = node.core.write_at(now, level, (item,), int(timeout_ms))
        effects += node.core.publish_levelled(now, [(item, targets)])  # as the runtime does at the turn's end
        return self._level_started(node, key, done, timeout_ms, rid, effects, item)

    def read_at(
        self,
        node: SimNode,
        key: str,
        level: Level,
        done: Callable[[str, LevelRequest], None],
        timeout_ms: float = 2000.0,
    ) -> LevelRequest:
        """`node` reads `key` at `level` through its coordinator: its own version set and those of enough
        members, merged into `request.item` when met (read repair then sends the merge to the stale ones)."""
        assert node.up and node.coordinator is not None
        raw = node.data.get(key)
        own = VersionSet() if raw is None else decode_versions(raw)
        rid, effects = node.coordinator.read(self._peer_now(node), level, key, own, int(timeout_ms))
        return self._level_started(node, key, done, timeout_ms, rid, effects, None)

    def _level_started(
        self,
        node: SimNode,
        key: str,
        done: Callable[[str, LevelRequest], None],
        timeout_ms: float,
        rid: int,
        effects: Sequence[CoreEffect],
        item: DataItem | None,
    ) -> LevelRequest:
        request = LevelRequest(node.index, node.generation, key, self.now, done, item, seq=rid)
        self.level_requests[(node.index, rid)] = request

        def crashed() -> None:  # the coordinator crashed first: its client never hears back
            if not request.finished and (not node.up or node.generation != request.generation):
                request.finished = True
                self.level_requests.pop((request.node, rid), None)
                done("unknown", request)

        self.at(self.now + timeout_ms, crashed)
        self._apply_effects(node, effects)
        self._reschedule(node)
        return request

    def _level_done(self, node: SimNode, effect: LevelDone) -> None:
        request = self.level_requests.pop((node.index, effect.request), None)
        if request is None or request.finished:
            return
        request.finished = True
        request.tally = effect.tally
        if effect.versions is not None and effect.versions.versions:
            request.item = DataItem(0, request.key, encode_versions(effect.versions))
        request.done("ok" if effect.ok else "fail", request)

    def _reconcile(self, node: SimNode, step: ReconcileStep) -> None:
        """Runs an anti-entropy step its core decided on against the node's store, as the runtime does."""
        assert node.peer is not None and node.core is not None and node.core.anti_entropy is not None
        anti_entropy = node.core.anti_entropy
        try:
            result = run_step(step, node.info.node_id, node.store.view(), node.peer.settings.anti_entropy_max_bytes)
        except ValueError:  # a malformed exchange: the sender's fault, dropped (as the runtime does)
            node.peer.stats.bad_messages += 1
            anti_entropy.failed(step.node_id, step.session)
            return
        effects: list[CoreEffect] = list(anti_entropy.stepped(step, result))
        if result.items:
            took_all = self._store(node, Store(result.items, step.node_id, "anti-entropy", 0))
            effects.extend(anti_entropy.merged(step, took_all))
        if result.reply is not None:
            effects.insert(0, Send(step.node_id, "", result.reply))
        self._apply_effects(node, effects)

    def cas_at(
        self,
        node: SimNode,
        key: str,
        operation: CasOperation,
        done: Callable[[CasDone], None],
        timeout_ms: int = 2000,
    ) -> int:
        """`node` runs a conditional operation on `key` through its core's proposer (the product's CASPaxos);
        `done(CasDone)` runs when it ends (never, if the node crashes first: its client hears nothing).
        Returns the request id."""
        assert node.up and node.core is not None
        self._level_seq += 1
        request = self._level_seq
        self._cas_callbacks[(node.index, request)] = done
        self._apply_effects(node, node.core.cas(self._peer_now(node), request, key, operation, timeout_ms))
        self._reschedule(node)
        return request

    def _cas_done(self, node: SimNode, effect: CasDone) -> None:
        callback = self._cas_callbacks.pop((node.index, effect.request), None)
        if callback is not None:
            callback(effect)

    def _serve_cas(self, node: SimNode, message: CasPrepare | CasAccept | CasCommit) -> None:
        """An acceptor's store work, as the runtime does it: its state durable before its answer."""
        store = node.store
        hkey = paxos_key(message.key)
        raw = store.read_paxos_now([hkey]).get(hkey)
        row = store.read_many_now([message.key]).get(message.key)
        served = serve_all(
            [message], {} if raw is None else {message.key: raw}, {} if row is None else {message.key: row},
            node.info.node_id, self._peer_now(node), self.max_clock_offset_ms,
        )  # fmt: skip
        if served.states:
            store.write_now([], None, (), [(hkey, served.states[message.key])])
        if served.chosen:
            items = tuple(DataItem(0, key, value) for key, value in served.chosen)
            self._store(node, Store(items, message.source, "cas", 0))
        reply = served.replies[0]
        if reply is not None:
            self._apply_effects(node, [Send(message.source, "", reply)])

    def _serve_level(self, node: SimNode, message: Replicate | ReadRequest) -> None:
        """A member asked to store or read for a level: the store work the runtime does, then the answer."""
        me = node.info.node_id
        reply: Replicated | ReadReply | None
        if isinstance(message, Replicate):
            assert node.core is not None
            self._apply_effects(node, node.core.replicated(self._peer_now(node), message.source, message))
            self._reschedule(node)  # the tree takes the writes on at its next tick
            reply = stored_reply(message, me, self._store(node, Store(message.items, message.source, "level", 0)))
        else:
            reply = read_reply(message, me, list(node.store.read_many_now(message.keys).items()), True)
        if reply is not None:
            self._apply_effects(node, [Send(message.source, "", reply)])

    @staticmethod
    def _drop_coordinator(node: SimNode) -> None:
        if node.coordinator is not None:
            node.read_repairs_before += node.coordinator.stats.read_repairs
        node.core = None

    @property
    def read_repairs(self) -> int:
        """Members that reads at a level found stale and repaired, over every node's coordinators."""
        return sum(
            n.read_repairs_before + (n.coordinator.stats.read_repairs if n.coordinator else 0) for n in self.nodes
        )

    def _next_level_id(self) -> int:
        self._level_seq += 1
        return self._level_seq

    def at(self, when_ms: float, action: Callable[[], None]) -> None:
        """Runs `action` at virtual time `when_ms`."""
        self._push(when_ms, _ACTION, -1, action)

    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes if n.up]

    # ------------------------------------------------------------------ the event loop

    def _peer_now(self, node: SimNode) -> int:
        return int(self.now) + node.skew_ms

    def _push(self, when: float, kind: int, index: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, index, payload))

    def _reschedule(self, node: SimNode) -> None:
        core = node.core
        if core is None:
            return
        deadline = core.next_deadline()
        if deadline is None:
            return
        when = max(float(deadline - node.skew_ms), self.now)
        if when < node.wake:
            node.wake = when
            self._push(when, _WAKE, node.index, node.generation)

    def run_until(self, end_ms: float, progress: Callable[[float], None] | None = None) -> None:
        """Processes every event up to virtual time `end_ms` (inclusive), then sets the time to it.
        A core's invariant assertion (its clock going backwards, for one) becomes a `CheckFailed`."""
        try:
            self._run_until(end_ms, progress)
        except CheckFailed:
            raise
        except AssertionError as exc:
            raise CheckFailed(self.seed, f"invariant violated at {self.now:.0f} ms: {exc}") from exc

    def _run_until(self, end_ms: float, progress: Callable[[float], None] | None) -> None:
        heap = self._heap
        nodes = self.nodes
        pop = heapq.heappop
        events = 0
        while heap and heap[0][0] <= end_ms:
            when, _, kind, index, payload = pop(heap)
            self.now = when
            events += 1
            if kind == _ACTION:
                payload()
                continue
            node = nodes[index]
            peer = node.peer
            if peer is None:
                continue
            now = int(when) + node.skew_ms
            effects: Sequence[CoreEffect]
            if kind == _DELIVER:
                kind_of = type(payload)
                if kind_of is Replicate or kind_of is ReadRequest:
                    self._serve_level(node, payload)
                    continue
                if kind_of is CasPrepare or kind_of is CasAccept or kind_of is CasCommit:
                    assert node.core is not None
                    refusal = node.core.misrouted(payload)
                    if refusal is None:
                        self._serve_cas(node, payload)
                    else:
                        self._apply_effects(node, [Send(payload.source, "", refusal)])
                    continue
                if kind_of is CasCommits:
                    for entry in payload.entries:
                        self._serve_cas(node, CasCommit(payload.source, entry.key, entry.ballot, entry.value))
                    continue
                assert node.core is not None
                effects = node.core.handle(now, payload.source, payload)
            else:
                if payload != node.generation or when != node.wake:
                    continue
                node.wake = math.inf
                assert node.core is not None
                effects = node.core.tick(now)
            if effects:
                self._apply_effects(node, effects)
            self._reschedule(node)
            if progress is not None and not events & 0x3FFF:
                progress(when)
        self.events += events
        self.now = max(self.now, end_ms)
        if progress is not None:
            progress(self.now)

    def _apply_effects(self, node: SimNode, effects: Sequence[CoreEffect]) -> None:
        nodes = self.nodes
        network = self.network
        rng = self.rng
        for effect in effects:
            if type(effect) is Send:
                message = effect.message
                self.sent[type(message).__name__] += 1
                self.messages_total += 1
                target_index = self.index_of.get(effect.node_id)
                if target_index is None:
                    target_index = self.index_of_addr.get(effect.addr)
                    if target_index is None:
                        continue
                for hook in self.send_hooks:
                    hook(node.index, target_index, message)
                if network.partitions and network.cut(node.index, target_index, self.now):
                    continue
                target = nodes[target_index]
                for delay in network.delays(rng, node.info.region, target.info.region):
                    if target.slow_ms:
                        delay += target.slow_ms * (0.5 + rng.random())
                    self._push(self.now + delay, _DELIVER, target_index, message)
            elif type(effect) is Store:
                self._store(node, effect)
            elif type(effect) is Deliver:
                outcome = self.routes.get((self.index_of[effect.source], effect.route_id))
                if outcome is not None and outcome.delivered is None:
                    outcome.delivered = True
                    outcome.hops = effect.hops
            elif type(effect) is LevelDone:
                self._level_done(node, effect)
            elif type(effect) is CasDone:
                self._cas_done(node, effect)
            elif type(effect) is ReconcileStep:
                self._reconcile(node, effect)
            elif type(effect) is HeldSyncPoint:
                node.sync_points.add(effect)
            elif type(effect) is RouteFailure:
                outcome = self.routes.get((node.index, effect.route_id))
                if outcome is not None and outcome.delivered is None:
                    outcome.delivered = False
                    outcome.hops = effect.hops
                    outcome.reason = effect.reason

    # ------------------------------------------------------------------ observers

    def _on_member(self, peer: Peer, slot: int, old: int, new: int, incarnation: int, own: bool) -> None:
        observer = self.index_of[peer.id]
        for hook in self.member_hooks:
            hook(observer, slot, old, new, incarnation, own)

    def _on_link(self, peer: Peer, slot: int, delta: int) -> None:
        observer = self.index_of[peer.id]
        for hook in self.link_hooks:
            hook(observer, slot, delta)

    def node_of_slot(self, slot: int) -> SimNode:
        return self.nodes[self.index_of[self.directory.infos[slot].node_id]]


def is_overlay_message(message: Any) -> bool:
    return isinstance(message, OVERLAY_MESSAGES)
