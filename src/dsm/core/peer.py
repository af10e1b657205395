"""`Peer`: the sans-IO protocol core of one node: membership, failure detection, overlay links and routing,
and (through `Dissemination` and `reconcile`) the spreading of writes.

The runtime (the simulator, later the network runtime) feeds it the time and events and carries out the
effects it returns:
    effects = peer.handle(now_ms, message)   # a message arrived
    effects = peer.tick(now_ms)              # call at peer.next_deadline() (or later)
    effects = peer.join(now_ms, bootstrap) / peer.leave(now_ms) / peer.route(now_ms, target_id, payload)
It never reads a clock, never draws randomness except from the injected `rng`, and does no I/O.

Membership (SWIM with Lifeguard's refinements):
- Every period (probe_interval_ms, stretched by local health) the node probes one of its *linked* members,
  round robin in a shuffled order: a Ping; if no Ack within probe_timeout_ms, PingReq through
  `indirect_probes` other linked members; if still nothing by the end of the period, the member becomes
  suspect. Probing only linked members keeps connections bounded; every member has near links, so every
  member is probed (a crashed one about once per period, by one of its ~48 linked peers).
- A suspicion times out into `dead` after a timeout that grows with log10(n) and shrinks from its maximum
  to its minimum as independent suspicions confirm it (Lifeguard): min = suspicion_mult * max(1, log10 n)
  * probe_interval, max = suspicion_max_mult * min. A suspected member refutes by raising its incarnation.
  Only members whose own probe failed run a suspicion timer (memberlist runs one on every member, which
  after 8,000 crashes in a 10,000-node cluster is 16 million timers): a suspect stays linked, so every
  member linked to it keeps probing it, confirms it and can declare it dead; the others learn the death by
  gossip and anti-entropy. A gossiped suspicion of a linked member moves it to the front of the probe order.
- Local health (Lifeguard): failed probes with missing Nacks from helpers, and having to refute, raise a
  counter (0..max_local_health) that stretches this node's probe period and timeouts; successful probes
  lower it. A slow node thereby stops accusing healthy ones.
- Loss: each node measures how often a member that answered in the end missed the direct probe's
  timeout (a moving average; a crashed member's silence does not count). Under heavy measured loss a
  missed direct probe is retried, helpers retry their ping, and up to indirect_probes_max helpers are
  asked, so that loss alone rarely fails a probe of a live member (`_helper_count`). A probe of a member
  held suspect carries the suspicion first, so the suspect can refute at once (Lifeguard's buddy system).
- Changes spread by piggybacking on Ping, PingReq and Ack (`BroadcastQueue`, each update sent
  retransmit_mult * ceil(log10(n + 1)) times). A join is a push-pull: the joiner sends Join to a bootstrap
  member and receives its whole table. A leave is announced to the node's links and then spread.
- Rule for an update about member m: entries are ordered by (incarnation, state) with alive < suspect <
  dead < left, and the larger wins (so suspect beats alive at the same incarnation, and only a higher
  incarnation, which only m itself issues, brings it back). This order is a join-semilattice, so any
  order of gossip converges. Safety: a member that left never comes back at an incarnation <= the one it
  left with; a node's own incarnation only grows.
- Piggybacking is probabilistic: an update can die out before reaching everyone. Membership anti-entropy
  repairs that: every sync_interval_ms a node sends a linked member the digests of 64 ring arcs of its
  table; for the arcs that differ the other answers with the digests of their 16 sub-arcs; for the
  sub-arcs that differ the first lists the hash of each of its entries (at most SYNC_MAX_LEAVES); the
  other answers with its entries whose hashes are not listed and asks for the listed hashes it does not
  hold, which the first then sends (push-pull, at most SYNC_MAX_ENTRIES entries per message). Only
  entries that differ travel in full: after a mass failure nearly every sub-arc differs somewhere, and
  shipping whole sub-arcs both ways cost more than all the rest of the recovery. The cost follows the
  differences, not the table size, and the period drops to a quarter while rounds keep finding
  differences. The same round sends the digest to one random member believed dead (Serf's reconnect),
  so the two sides of a healed partition find each other again.

The overlay and routing are in `overlay.py`; this class wires them to membership.

Writes: `publish(now, items)` spreads writes this node coordinated; `Dissemination` (dissemination.py)
runs the broadcast tree over the overlay links and the gossip rounds, and answers with `Store` effects for
the runtime to merge. With a `replica` (a `reconcile.RangeView` of the local store), every
anti_entropy_interval_ms the peer also reconciles its whole store with one live linked member.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dsm.core import member_record
from dsm.core.broadcast import BroadcastQueue
from dsm.core.consistency import Group, Level, Tally, groups
from dsm.core.dissemination import Dissemination
from dsm.core.messages import (
    Ack,
    DataItem,
    DataItems,
    Deliver,
    Effect,
    GossipDigest,
    GossipItems,
    GossipReply,
    Graft,
    IHave,
    Join,
    JoinReply,
    Leave,
    Link,
    LinkReply,
    Message,
    Nack,
    Neighbor,
    Ping,
    PingReq,
    Prune,
    Push,
    Reconcile,
    Routed,
    RoutedAck,
    RouteFailed,
    RouteFailure,
    Send,
    Store,
    SyncDigest,
    SyncEntries,
    SyncLeaves,
    SyncSubDigests,
    Unlink,
    Update,
)
from dsm.core.overlay import Overlay, RandomSource
from dsm.core.reconcile import RangeView, answer, opening
from dsm.core.ring import (
    MAX_INCARNATION,
    RING,
    SUB_ARCS,
    SYNC_BUCKETS,
    SYNC_SUB_BUCKETS,
    Directory,
    MemberInfo,
    MemberTable,
    State,
    clockwise,
    position,
    sub_bucket_of,
)

_UNKNOWN = int(State.UNKNOWN)
_ALIVE = int(State.ALIVE)
_SUSPECT = int(State.SUSPECT)
_DEAD = int(State.DEAD)
_LEFT = int(State.LEFT)

# Timer kinds.
_PROBE = 0
_PROBE_TIMEOUT = 1
_PROBE_END = 2
_RELAY_NACK = 3
_RELAY_END = 4
_SUSPICION = 5
_JOIN_RETRY = 6
_ROUTE_RETRY = 7
_SYNC = 8
_ANTI_ENTROPY = 9

#: Join targets one join attempt writes to (the next ones in turn at the next attempt).
JOIN_FANOUT = 3
#: Most member entries in one anti-entropy message (the arcs beyond it wait for the next round).
SYNC_MAX_ENTRIES = 1024
#: Most entry hashes in one SyncLeaves (8 bytes each: four times as many sub-arcs as entries would cover).
SYNC_MAX_LEAVES = 4096
#: Most routed messages a node tracks at once while waiting for the next hop's acknowledgement.
MAX_PENDING_FORWARDS = 4096
#: Most next hops tried for one routed message at one node before it is reported undeliverable.
MAX_HOP_TRIES = 16

#: Weight of each probe in the measured loss (an exponential moving average over about 32 probes).
LOSS_ALPHA = 1 / 32
#: Measured loss from which a missed direct probe is retried, helpers retry their ping and more helpers
#: are asked. Below it 3 helpers already keep loss-made failures rare (at 10 % the estimate is about 0.19;
#: at 5 %, 0.1, with 3 helpers failing together 6 times in 10,000 probes), and the estimate of a node with
#: a few slow links stays under it: retries cannot make a slow member answer sooner, they only load it.
LOSS_RETRY = 0.1
#: Aimed-at chance that loss alone makes a probe of a live member fail, for choosing the number of helpers.
PROBE_MISS_TARGET = 1e-3

#: Most probes in flight at once (the periodic one plus probes of unresponsive next hops).
MAX_PROBES = 8
#: Routed messages remembered by their target, so a retried copy is not delivered twice.
DELIVERED_MEMORY = 4096


@dataclass(frozen=True)
class PeerSettings:
    """The protocol's knobs, taken from `StorageConfig` by `from_config` (see config.py for each one)."""

    probe_interval_ms: int = 1000
    probe_timeout_ms: int = 500
    indirect_probes: int = 3
    indirect_probes_max: int = 8
    suspicion_mult: int = 4
    suspicion_max_mult: int = 6
    retransmit_mult: int = 4
    max_piggyback: int = 32
    max_local_health: int = 8
    near_max: int = 16
    long_max: int = 16
    long_in_max: int = 32
    hop_limit: int = 64
    join_timeout_ms: int = 2000
    join_retry_max_ms: int = 30000
    sync_interval_ms: int = 10000
    # Dissemination of writes (dissemination.py).
    gossip_interval_ms: int = 5000
    gossip_min_ms: int = 200
    gossip_max_ms: int = 30000
    gossip_fanout: int = 3
    gossip_adaptive: bool = True
    gossip_retain_mult: int = 3
    direct_updates: bool = True
    lazy_fanout: int = 3
    graft_timeout_ms: int = 250
    graft_min_ms: int = 20
    max_recent: int = 8192
    max_digest_ids: int = 4096
    seen_max: int = 65536
    anti_entropy_interval_ms: int = 60000
    anti_entropy_max_bytes: int = 1 << 20

    @classmethod
    def from_config(cls, config: Any) -> PeerSettings:
        return cls(
            probe_interval_ms=config.probe_interval_ms,
            probe_timeout_ms=config.probe_timeout_ms,
            indirect_probes=config.indirect_probes,
            indirect_probes_max=config.indirect_probes_max,
            suspicion_mult=config.suspicion_mult,
            suspicion_max_mult=config.suspicion_max_mult,
            retransmit_mult=config.retransmit_mult,
            max_piggyback=config.max_piggyback,
            max_local_health=config.max_local_health,
            near_max=config.max_immediate_neighbors,
            long_max=config.max_long_links,
            long_in_max=config.max_long_links_in or 2 * config.max_long_links,
            hop_limit=config.route_hop_limit,
            sync_interval_ms=config.membership_sync_interval_ms,
            join_retry_max_ms=config.join_retry_max_ms,
            gossip_interval_ms=config.gossip_interval_ms,
            gossip_min_ms=config.gossip_interval_min_ms,
            gossip_max_ms=config.gossip_interval_max_ms,
            gossip_fanout=config.gossip_fanout,
            anti_entropy_interval_ms=config.anti_entropy_interval_ms,
        )


def suspicion_bounds(settings: PeerSettings, members: int) -> tuple[int, int]:
    """Lifeguard's suspicion timeout in a cluster of `members` live members, ms: (min, max) = (suspicion_mult
    x max(1, log10 n) x probe_interval_ms, suspicion_max_mult times that); confirmations move a suspicion
    from the max towards the min. The one formula the core uses and the simulator's reports quote."""
    low = int(settings.suspicion_mult * max(1.0, math.log10(max(1, members))) * settings.probe_interval_ms)
    return low, low * settings.suspicion_max_mult


@dataclass
class PeerStats:
    """Counters of what this node did (the simulator sums them)."""

    probes: int = 0
    probes_failed: int = 0
    suspicions_raised: int = 0
    deaths_declared: int = 0
    refutations: int = 0
    routes_failed: int = 0
    link_refusals: int = 0
    bad_updates: int = 0
    bad_messages: int = 0


@dataclass(slots=True)
class _Probe:
    target: int
    acked: bool = False
    timed_out: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Forward:
    message: Routed
    hop: int
    attempts: list[int]


@dataclass(slots=True)
class _Suspicion:
    incarnation: int
    start: int
    deadline: int
    confirmers: set[str] = field(default_factory=set)


class Peer:
    """One node's protocol state machine (see the module docstring)."""

    def __init__(
        self,
        info: MemberInfo,
        settings: PeerSettings,
        rng: RandomSource,
        now: int,
        *,
        directory: Directory | None = None,
        incarnation: int = 0,
        member_observer: Callable[[Peer, int, int, int, int, bool], None] | None = None,
        link_observer: Callable[[Peer, int, int], None] | None = None,
        replica: RangeView | None = None,
    ) -> None:
        self.info = info
        self.id = info.node_id
        self.settings = settings
        self.rng = rng
        self.directory = directory if directory is not None else Directory()
        self.me = self.directory.intern(info)
        self.table = MemberTable(self.directory)
        self.incarnation = incarnation
        self.table.set(self.me, State.ALIVE, incarnation)
        self.member_observer = member_observer
        self.link_observer = link_observer
        self.data = Dissemination(self)
        # The local store as anti-entropy reads it (reconcile.py); None: no anti-entropy.
        self.replica = replica
        self.anti_entropy_sessions = 0
        self.overlay = Overlay(
            self.directory,
            self.table,
            self.me,
            settings.near_max,
            settings.long_max,
            settings.long_in_max,
            rng,
            observer=self._link_changed,
        )
        self.broadcasts = BroadcastQueue()
        self.suspicions: dict[int, _Suspicion] = {}
        self.stats = PeerStats()
        self.local_health = 0
        # Measured chance that a direct probe of a live member gets no answer within probe_timeout_ms
        # (its Ping or Ack lost, or the member slow): the moving average, over probes that the target
        # answered in the end, of whether the direct answer came too late.
        # It starts at 1/2 as if one of two probes had missed (Laplace's rule), so that a node that
        # starts into heavy loss is careful from its first probe; a few answered probes bring it down.
        self.loss_estimate = 0.5
        self._loss_samples = 2
        self.joined = False
        self.left = False
        self._now = now
        self._seq = 0
        self._timers: list[tuple[int, int, int, int]] = []
        self._probes: dict[int, _Probe] = {}
        self._probing: set[int] = set()
        self._forwards: dict[int, _Forward] = {}
        self._forward_seq: dict[tuple[str, int], int] = {}
        self._avoid: dict[int, int] = {}
        # When each member was last heard from (any message from it): helpers heard from recently are
        # trusted to answer a PingReq, so their missing Nack counts against this node's own health.
        self._heard: dict[int, int] = {}
        self._sync_found_difference = False
        self._delivered: dict[tuple[str, int], None] = {}
        self._relays: dict[int, tuple[str, int, str, str]] = {}
        self._probe_order: list[int] = []
        self._pending_links: dict[int, tuple[int, int]] = {}
        self._refused: dict[int, int] = {}
        self._bootstrap: list[tuple[str, str]] = []
        self._join_attempt = 0
        # Members read back from the saved table (`restore`): whom a restarted node rejoins through.
        self._known: list[tuple[str, str]] = []
        self._out: list[Effect] = []
        # Start probing at a random point of the first period, so nodes started together do not probe in
        # lock step.
        self._arm(now + rng.randrange(max(1, settings.probe_interval_ms)), _PROBE, 0)
        self._arm(now + rng.randrange(max(1, settings.sync_interval_ms)), _SYNC, 0)
        self.data.start(now)
        if replica is not None:
            self._arm(now + rng.randrange(max(1, settings.anti_entropy_interval_ms)), _ANTI_ENTROPY, 0)

    # ------------------------------------------------------------------ runtime interface

    def next_deadline(self) -> int | None:
        """When `tick` must next be called (ms, the runtime's clock), or None if nothing is armed."""
        return self._timers[0][0] if self._timers else None

    def tick(self, now: int) -> list[Effect]:
        """Runs every timer due at `now`."""
        self._set_now(now)
        timers = self._timers
        while timers and timers[0][0] <= now and not self.left:
            _, _, kind, arg = heapq.heappop(timers)
            if kind == _PROBE:
                self._probe_tick()
            elif kind == _PROBE_TIMEOUT:
                self._probe_timeout(arg)
            elif kind == _PROBE_END:
                self._probe_end(arg)
            elif kind == _RELAY_NACK:
                relay = self._relays.get(arg)
                if relay is not None:
                    self._send_to_id(relay[0], Nack(relay[1], self.id))
                    if self.loss_estimate >= LOSS_RETRY:
                        # Heavy loss: our Ping or its Ack was most likely lost; try once more.
                        self._out.append(Send(relay[2], relay[3], Ping(arg, self.id, relay[2], self._piggyback())))
            elif kind == _RELAY_END:
                self._relays.pop(arg, None)
            elif kind == _SUSPICION:
                self._suspicion_timeout(arg)
            elif kind == _JOIN_RETRY:
                self._join_retry()
            elif kind == _ROUTE_RETRY:
                self._route_retry(arg)
            elif kind == _SYNC:
                self._sync_tick()
            elif kind == _ANTI_ENTROPY:
                self._anti_entropy_tick()
            else:
                self.data.timer(kind, arg)
        return self._flush()

    def handle(self, now: int, message: Message) -> list[Effect]:
        """Processes one incoming message."""
        self._set_now(now)
        if self.left:
            return []
        handler = _HANDLERS.get(type(message))
        if handler is not None:
            slot = self.directory.slot(message.source)
            if slot is not None:
                self._heard[slot] = now
            try:
                handler(self, message)
            except (ValueError, TypeError):
                # A malformed message (the sender's fault): dropped and counted; the node keeps serving.
                self.stats.bad_messages += 1
        return self._flush()

    def join(self, now: int, bootstrap: Sequence[tuple[str, str]]) -> list[Effect]:
        """Joins the cluster through `bootstrap` ((node_id or "", addr) pairs) and the members read back
        by `restore`: a Join goes to up to JOIN_FANOUT of them at a time, in turn, again after
        join_timeout_ms, and then with a backoff that doubles up to join_retry_max_ms, until one answers
        (Consul's retry_join). Only with neither bootstrap addresses nor restored members does the node
        start a new cluster (`joined` at once)."""
        self._set_now(now)
        targets: list[tuple[str, str]] = []
        seen: set[str] = set()
        for node_id, addr in [*bootstrap, *self._known]:
            if node_id == self.id or addr == self.info.addr or (addr or node_id) in seen:
                continue
            seen.add(addr or node_id)
            targets.append((node_id, addr))
        self._bootstrap = targets
        if not self._bootstrap:
            self.joined = True
            return self._flush()
        self._join_attempt = 0
        self._join_retry()
        return self._flush()

    def join_targets(self) -> list[tuple[str, str]]:
        """Whom an unjoined node tries to join through ((node_id or "", addr)); empty once joined."""
        return [] if self.joined else list(self._bootstrap)

    def member_record(self) -> bytes:
        """The member table as the runtime saves it (see `member_record.py`)."""
        return member_record.of_table(self.directory.infos, self.table.states, self.table.incarnations)

    def restore(self, record: bytes, exclude: Sequence[str] = ()) -> int:
        """Reads back a saved member table before `join` (a restarted node): the members become known with
        their saved states (merged by the usual rules) and, unless they left, targets of the join. This node
        is not joined until one of them (or a bootstrap address) answers. Returns how many other members it
        restored.

        `exclude`: ids left out (the previous owner of a store this node adopted: its former self).

        Raises:
            ValueError: the record cannot be read (nothing is applied).
        """
        members = member_record.decode(record)
        restored = 0
        for m in members:
            if m.info.node_id == self.id or m.info.node_id in exclude:
                continue
            self._apply(
                Update(int(m.state), m.info.node_id, m.incarnation, m.info.addr, m.info.region, ""), rebroadcast=False
            )
            restored += 1
            if m.state != State.LEFT:
                self._known.append((m.info.node_id, m.info.addr))
        # Members that were alive when the table was saved are tried first.
        self._known.sort(key=lambda t: self.member_state(t[0]) != State.ALIVE)
        return restored

    def install(self, members: Sequence[tuple[MemberInfo, int]]) -> None:
        """Starts from a formed cluster: every member in `members` (info, incarnation) is known alive.

        For simulations and static clusters: equivalent to a join whose news has fully spread, without
        simulating the spreading. Long links are then requested at the first tick."""
        slots = self.directory.intern_many([info for info, _ in members])
        for slot, (_, incarnation) in zip(slots, members, strict=True):
            if slot != self.me:
                self.table.set(slot, State.ALIVE, incarnation)
        self.overlay.recompute_near()
        self.joined = True

    def install_snapshot(self, states: bytes, incarnations: array[int], template: MemberTable | None = None) -> None:
        """`install` given as per-slot arrays of this node's directory (the simulator forms 10,000-node
        clusters this way: a bytes copy per node instead of 10^8 updates). `template`: see MemberTable.fill."""
        self.table.fill(states, incarnations, template)
        self.table.set(self.me, State.ALIVE, self.incarnation)
        self.overlay.recompute_near()
        self.joined = True

    def leave(self, now: int) -> list[Effect]:
        """Leaves for good at the current incarnation: tells every linked member, then stops."""
        self._set_now(now)
        self._set_state(self.me, _LEFT, self.incarnation)
        message = Leave(self.id, self.incarnation)
        for slot in self.overlay.links():
            self._send_to_slot(slot, message)
        self.left = True
        self._timers.clear()
        return self._flush()

    def remove(self, now: int, node_id: str) -> list[Effect]:
        """An operator removes member `node_id` for good (Serf's force-leave, Cassandra's removenode): it is
        recorded as left at the incarnation this node knows, and spread like a leave, so it stops counting
        in the denominators of consistency levels. A member that is in fact running refutes it and comes
        back (at a higher incarnation).

        Raises:
            ValueError: an unknown member, or this node itself (it leaves with `leave`).
        """
        self._set_now(now)
        slot = self.directory.slot(node_id)
        if slot is None or self.table.raw_state(slot) == _UNKNOWN:
            raise ValueError(f"no member {node_id!r}")
        if slot == self.me:
            raise ValueError("a node cannot remove itself; stop it (SIGTERM) to leave")
        info = self.directory.infos[slot]
        self._apply(Update(_LEFT, node_id, self.table.incarnation(slot), info.addr, info.region, self.id))
        return self._flush()

    def route(self, now: int, target: str, payload: Any) -> tuple[int, list[Effect]]:
        """Sends `payload` greedily over the overlay to the member `target`; returns the route id that
        the eventual `Deliver` (at the target) or `RouteFailure` (here) carries, and the effects."""
        self._set_now(now)
        route_id = self._next_seq()
        self._forward(Routed(route_id, self.id, self.info.addr, target, 0, payload, ""))
        return route_id, self._flush()

    def publish(self, now: int, items: DataItems, urgent: bool = True) -> list[Effect]:
        """Spreads writes this node coordinated (already in its replica): pushed at once along the
        broadcast tree, or with `urgent=False` only by gossip rounds (see dissemination.py)."""
        self._set_now(now)
        if not self.left:
            self.data.publish(items, urgent)
        return self._flush()

    # ------------------------------------------------------------------ views

    def member_state(self, node_id: str) -> State:
        slot = self.directory.slot(node_id)
        return State.UNKNOWN if slot is None else self.table.state(slot)

    def live_count(self) -> int:
        return self.table.live_count()

    def level_groups(self, level: Level) -> tuple[Group, ...]:
        """The groups a request at consistency `level` coordinated here must satisfy (consistency.py), from
        this node's view: every member it knows of counts unless it left."""
        infos = self.directory.infos
        members = (
            (infos[slot].node_id, infos[slot].region, raw != _LEFT) for slot, raw in enumerate(self.table.states) if raw
        )
        return groups(level, self.id, self.info.region, members)

    def level_hedge_ms(self) -> int:
        """How long a request waits for its first wave of members before asking the rest: three measured
        round trips (the gossip exchanges' smoothed RTT), 10 ms to 1 s; 50 ms before any is measured."""
        srtt = self.data.srtt
        return 50 if srtt <= 0.0 else min(1000, max(10, int(3 * srtt)))

    def level_targets(self, tally: Tally) -> tuple[list[str], list[str]]:
        """Whom to ask for a request's answers, in two waves: first the fewest members that can meet the
        level (per group, as many as it still needs), preferring alive over suspect members and linked over
        others (an open connection); then, if the first wave has not met it after a short wait, the rest.
        Members believed dead are never asked (they still count in the denominator, but asking them would
        only wait for a connection to fail)."""

        def rank(node: str) -> tuple[int, int, str]:
            slot = self.directory.slot(node)
            state = self.member_state(node)
            linked = slot is not None and self.overlay.linked(slot)
            return (0 if state == State.ALIVE else 1, 0 if linked else 1, node)

        candidates = sorted(
            (node for node in tally.members if node != self.id and self.member_state(node) != State.DEAD),
            key=rank,
        )
        first: list[str] = []
        for group in tally.groups:
            have = len(tally.answered & group.members) + sum(1 for node in first if node in group.members)
            for node in candidates:
                if have >= group.needed:
                    break
                if node in group.members and node not in first:
                    first.append(node)
                    have += 1
        chosen = set(first)
        return first, [node for node in candidates if node not in chosen]

    def link_ids(self) -> list[str]:
        infos = self.directory.infos
        return [infos[s].node_id for s in self.overlay.links()]

    # ------------------------------------------------------------------ plumbing

    def _set_now(self, now: int) -> None:
        assert now >= self._now, f"time went backwards at {self.id}: {now} < {self._now}"
        self._now = now

    def _flush(self) -> list[Effect]:
        out, self._out = self._out, []
        return out

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _arm(self, when: int, kind: int, arg: int) -> None:
        heapq.heappush(self._timers, (when, self._next_seq(), kind, arg))

    def _health_scale(self) -> int:
        return self.local_health + 1

    def _adjust_health(self, delta: int) -> None:
        self.local_health = min(self.settings.max_local_health, max(0, self.local_health + delta))

    def _retransmit_limit(self) -> int:
        return self.settings.retransmit_mult * max(1, math.ceil(math.log10(self.table.live_count() + 1)))

    def _piggyback(self) -> tuple[Update, ...]:
        return self.broadcasts.take(self.settings.max_piggyback, self._retransmit_limit())

    def _piggyback_for(self, slot: int) -> tuple[Update, ...]:
        """The piggyback for a probe of `slot`; a suspect is told first that it is suspected (Lifeguard's
        buddy system), so it can refute at once instead of waiting for gossip to reach it."""
        updates = self._piggyback()
        if self.table.raw_state(slot) != _SUSPECT:
            return updates
        node_id = self.directory.infos[slot].node_id
        told = self._update_for(slot, _SUSPECT, self.table.incarnation(slot))
        rest = tuple(update for update in updates if update.node_id != node_id)
        return (told, *rest[: self.settings.max_piggyback - 1])

    def _helper_count(self) -> int:
        """How many helpers to ask after a missed direct probe: indirect_probes, more under measured loss.

        With p the measured chance that a direct probe misses (and so that its retry misses too), one
        helper fails with about q = 1 - (1 - p)^2 (two round trips); enough helpers are asked that
        p^2 * q^k stays under PROBE_MISS_TARGET, up to indirect_probes_max."""
        low, high = self.settings.indirect_probes, self.settings.indirect_probes_max
        p = self.loss_estimate
        if high <= low or p < LOSS_RETRY:
            return low
        q = 1.0 - (1.0 - p) ** 2
        miss = p * p
        if miss <= PROBE_MISS_TARGET:
            return low
        if q >= 1.0:
            return high
        need = math.ceil(math.log(PROBE_MISS_TARGET / miss) / math.log(q))
        return min(high, max(low, need))

    def _send_to_slot(self, slot: int, message: Message) -> None:
        info = self.directory.infos[slot]
        self._out.append(Send(info.node_id, info.addr, message))

    def _send_to_id(self, node_id: str, message: Message, addr: str = "") -> None:
        slot = self.directory.slot(node_id)
        if slot is not None and not addr:
            addr = self.directory.infos[slot].addr
        self._out.append(Send(node_id, addr, message))

    def _link_changed(self, slot: int, delta: int) -> None:
        self.data.link_changed(slot, delta)
        if self.link_observer is not None:
            self.link_observer(self, slot, delta)

    # ------------------------------------------------------------------ membership state

    def _update_for(self, slot: int, state: int, incarnation: int, origin: str = "") -> Update:
        info = self.directory.infos[slot]
        return Update(state, info.node_id, incarnation, info.addr, info.region, origin)

    def _set_state(self, slot: int, state: int, incarnation: int, own: bool = False) -> None:
        """Sets a member's state; `own` tells observers that this node's own detector decided it."""
        table = self.table
        old = table.states[slot] if slot < len(table.states) else _UNKNOWN
        table.set(slot, state, incarnation)
        if old == state:
            return
        if state != _SUSPECT:
            self.suspicions.pop(slot, None)
        if self.member_observer is not None:
            self.member_observer(self, slot, old, state, incarnation, own)
        if slot == self.me:
            return
        _, lost_long = self.overlay.member_changed(slot, state)
        if state in (_DEAD, _LEFT):
            self._pending_links.pop(slot, None)
        if lost_long:
            self._send_to_slot(slot, Unlink(self.id))
            self._maintain_links()

    def _apply(self, update: Update, rebroadcast: bool = True, own: bool = False) -> None:
        """Merges one membership update into the table (rules in the module docstring)."""
        state, node_id, incarnation = update.state, update.node_id, update.incarnation
        if not (0 <= incarnation < MAX_INCARNATION and _ALIVE <= state <= _LEFT):
            self.stats.bad_updates += 1  # the sender's fault: ignore it, keep serving
            return
        if node_id == self.id:
            self._about_me(update)
            return
        slot = self.directory.slot(node_id)
        if slot is None:
            slot = self.directory.intern(MemberInfo(node_id, update.addr, update.region))
            self._accept(slot, update, rebroadcast, own)
            return
        table = self.table
        current = table.states[slot] if slot < len(table.states) else _UNKNOWN
        if current == _UNKNOWN:
            self._accept(slot, update, rebroadcast, own)
        else:
            self._merge(slot, current, table.incarnations[slot], update, rebroadcast, own)

    def _merge(
        self, slot: int, current: int, current_inc: int, update: Update, rebroadcast: bool = True, own: bool = False
    ) -> None:
        """Merges a valid update about a known member other than this node."""
        state, incarnation = update.state, update.incarnation
        if incarnation == current_inc and state == current:
            if state == _SUSPECT:
                self._confirm(slot, update.origin)
            return
        # Entries are ordered by (incarnation, state) with alive < suspect < dead < left, and the larger
        # wins: a join-semilattice, so gossip and anti-entropy converge in any order.
        if incarnation > current_inc or (incarnation == current_inc and state > current):
            if state == _ALIVE and self.directory.infos[slot].addr != update.addr:
                self.directory.intern(MemberInfo(update.node_id, update.addr, update.region))
            self._accept(slot, update, rebroadcast, own)

    def _accept(self, slot: int, update: Update, rebroadcast: bool = True, own: bool = False) -> None:
        state = update.state
        self._set_state(slot, state, update.incarnation, own)
        if state == _SUSPECT:
            if own:
                self._start_suspicion(slot, update.incarnation, self.id)
            elif self.overlay.linked(slot):
                # Check it ourselves soon: our own failed probe is an independent confirmation.
                self._probe_order.append(slot)
        if rebroadcast:
            self.broadcasts.put(slot, update)

    def _about_me(self, update: Update) -> None:
        """Someone says something about this node: refute anything but alive at an older incarnation."""
        if update.state == _ALIVE and update.incarnation <= self.incarnation:
            return
        if update.state == _LEFT and self.left:
            return
        # Suspect, dead or left at >= our incarnation, or alive at a higher one (a previous life of this
        # node): take an incarnation above it and announce that we are alive.
        if update.state != _ALIVE and update.incarnation < self.incarnation:
            return
        self.incarnation = max(self.incarnation, update.incarnation) + 1
        self.table.set(self.me, State.ALIVE, self.incarnation)
        self.broadcasts.put(self.me, self._update_for(self.me, _ALIVE, self.incarnation))
        if update.state != _ALIVE:
            self.stats.refutations += 1
            self._adjust_health(1)

    def _suspicion_bounds(self) -> tuple[int, int]:
        return suspicion_bounds(self.settings, self.table.live_count())

    def _suspicion_deadline(self, suspicion: _Suspicion) -> int:
        low, high = self._suspicion_bounds()
        k = self.settings.indirect_probes
        confirmations = len(suspicion.confirmers) - 1
        if k < 1 or confirmations <= 0:
            timeout = high
        else:
            frac = math.log(confirmations + 1) / math.log(k + 1)
            timeout = max(low, int(high - (high - low) * frac))
        return suspicion.start + timeout

    def _start_suspicion(self, slot: int, incarnation: int, origin: str) -> None:
        suspicion = _Suspicion(incarnation, self._now, 0, {origin} if origin else set())
        suspicion.deadline = self._suspicion_deadline(suspicion)
        self.suspicions[slot] = suspicion
        self._arm(suspicion.deadline, _SUSPICION, slot)

    def _confirm(self, slot: int, origin: str) -> None:
        suspicion = self.suspicions.get(slot)
        if suspicion is None or not origin or origin in suspicion.confirmers:
            return
        suspicion.confirmers.add(origin)
        deadline = self._suspicion_deadline(suspicion)
        if deadline < suspicion.deadline:
            suspicion.deadline = deadline
            self._arm(deadline, _SUSPICION, slot)

    def _suspicion_timeout(self, slot: int) -> None:
        suspicion = self.suspicions.get(slot)
        if suspicion is None or suspicion.deadline > self._now:
            return
        if self.table.raw_state(slot) != _SUSPECT or self.table.incarnation(slot) != suspicion.incarnation:
            return
        self.stats.deaths_declared += 1
        update = self._update_for(slot, _DEAD, suspicion.incarnation, self.id)
        self._set_state(slot, _DEAD, suspicion.incarnation, own=True)
        self.broadcasts.put(slot, update)

    def _suspect(self, slot: int) -> None:
        """This node's own probe of `slot` failed."""
        state = self.table.raw_state(slot)
        incarnation = self.table.incarnation(slot)
        update = self._update_for(slot, _SUSPECT, incarnation, self.id)
        if state == _ALIVE:
            self.stats.suspicions_raised += 1
            self._apply(update, own=True)
        elif state == _SUSPECT and slot not in self.suspicions:
            # Suspected by others already (we heard it by gossip); our failed probe confirms it, and from
            # now on this node also runs a suspicion timer for it.
            self.stats.suspicions_raised += 1
            self._start_suspicion(slot, incarnation, self.id)
            self.broadcasts.put(slot, update)

    # ------------------------------------------------------------------ probing

    def _next_probe_target(self) -> int | None:
        order = self._probe_order
        overlay = self.overlay
        if overlay.near_added:
            # New near links go first (pop takes from the end); they are probed again in the normal turn.
            order.extend(overlay.near_added)
            overlay.near_added.clear()
        for _ in range(2):
            while order:
                slot = order.pop()
                if overlay.linked(slot) and overlay.usable(slot):
                    return slot
            # Each cycle probes every link once: long links in random order, near links first (pop takes
            # from the end), since the ring's correctness rests on the near links.
            near = set(overlay.near)
            far = [slot for slot in overlay.links() if slot not in near]
            self.rng.shuffle(far)
            close = list(overlay.near)
            self.rng.shuffle(close)
            order.extend(far)
            order.extend(close)
        return None

    def _probe_tick(self) -> None:
        interval = self.settings.probe_interval_ms * self._health_scale()
        self._arm(self._now + interval, _PROBE, 0)
        if not self.joined:
            return
        self._maintain_links()
        target = self._next_probe_target()
        if target is not None:
            self._start_probe(target)

    def _start_probe(self, target: int) -> None:
        """Pings `target`; indirect probes after the timeout; suspicion if nothing by the period's end."""
        if target in self._probing or len(self._probes) >= MAX_PROBES:
            return
        scale = self._health_scale()
        seq = self._next_seq()
        self._probes[seq] = _Probe(target)
        self._probing.add(target)
        self.stats.probes += 1
        node_id = self.directory.infos[target].node_id
        self._send_to_slot(target, Ping(seq, self.id, node_id, self._piggyback_for(target)))
        self._arm(self._now + self.settings.probe_timeout_ms * scale, _PROBE_TIMEOUT, seq)
        self._arm(self._now + self.settings.probe_interval_ms * scale, _PROBE_END, seq)

    def _probe_timeout(self, seq: int) -> None:
        probe = self._probes.get(seq)
        if probe is None or probe.acked:
            return
        probe.timed_out = True
        target_info = self.directory.infos[probe.target]
        if self.loss_estimate >= LOSS_RETRY:
            # Under heavy loss the first Ping or its Ack was most likely just lost: ask once more.
            self._send_to_slot(probe.target, Ping(seq, self.id, target_info.node_id, self._piggyback_for(probe.target)))
        # Helpers: alive linked members, those heard from recently first. Only those are expected to Nack:
        # after a mass failure most links are dead, and blaming ourselves for their silence (as counting
        # every helper would) would stretch our period exactly when detection matters most.
        recent = self._now - 2 * self.settings.probe_interval_ms
        heard = self._heard
        fresh: list[int] = []
        stale: list[int] = []
        for slot in self.overlay.links():
            if slot != probe.target and self.table.raw_state(slot) == _ALIVE and slot not in self._avoid:
                (fresh if heard.get(slot, -1) >= recent else stale).append(slot)
        self.rng.shuffle(fresh)
        self.rng.shuffle(stale)
        helpers = (fresh + stale)[: self._helper_count()]
        for slot in helpers:
            self._send_to_slot(slot, PingReq(seq, self.id, target_info.node_id, target_info.addr, self._piggyback()))
        probe.expected_nacks = min(len(fresh), len(helpers))

    def _probe_end(self, seq: int) -> None:
        probe = self._probes.pop(seq, None)
        if probe is None:
            return
        self._probing.discard(probe.target)
        if probe.acked:
            self._avoid.pop(probe.target, None)
            # Only probes the target answered measure loss: a crashed member's silence is not loss.
            # A plain mean over the first probes, then the moving average.
            self._loss_samples += 1
            weight = max(LOSS_ALPHA, 1.0 / self._loss_samples)
            self.loss_estimate += (probe.timed_out - self.loss_estimate) * weight
            return
        self.stats.probes_failed += 1
        self._adjust_health(max(0, probe.expected_nacks - probe.nacks) if probe.expected_nacks else 1)
        if self.overlay.usable(probe.target):
            self._suspect(probe.target)
        if probe.expected_nacks and probe.nacks >= probe.expected_nacks and self.local_health == 0:
            # Helpers confirmed the failure and this node is healthy: failures are often correlated (a
            # rack, a region), so probe the next link now instead of waiting for the next period.
            target = self._next_probe_target()
            if target is not None:
                self._start_probe(target)

    def _on_ping(self, message: Ping) -> None:
        self._apply_all(message.updates)
        if message.target != self.id:
            return  # meant for a previous holder of this address
        self._send_to_id(message.source, Ack(message.seq, self.id, self._piggyback()))

    def _on_ping_req(self, message: PingReq) -> None:
        self._apply_all(message.updates)
        seq = self._next_seq()
        self._relays[seq] = (message.source, message.seq, message.target, message.target_addr)
        self._out.append(
            Send(message.target, message.target_addr, Ping(seq, self.id, message.target, self._piggyback()))
        )
        self._arm(self._now + self.settings.probe_timeout_ms * 4 // 5, _RELAY_NACK, seq)
        self._arm(self._now + self.settings.probe_interval_ms, _RELAY_END, seq)

    def _on_ack(self, message: Ack) -> None:
        self._apply_all(message.updates)
        probe = self._probes.get(message.seq)
        if probe is not None:
            if not probe.acked:
                probe.acked = True
                self._avoid.pop(probe.target, None)
                self._adjust_health(-1)
            return
        relay = self._relays.pop(message.seq, None)
        if relay is not None:
            self._send_to_id(relay[0], Ack(relay[1], message.source, ()))

    def _on_nack(self, message: Nack) -> None:
        probe = self._probes.get(message.seq)
        if probe is not None:
            probe.nacks += 1

    def _apply_all(self, updates: tuple[Update, ...]) -> None:
        # Most piggybacked updates are already known (each member hears each update from several peers):
        # skip those before any other work. A repeated suspicion we time ourselves still goes through
        # (it may confirm).
        slot_of = self.directory.slot_of
        table = self.table
        states = table.states
        incarnations = table.incarnations
        size = len(states)
        suspicions = self.suspicions
        me = self.me
        max_incarnation, alive, suspect, left = MAX_INCARNATION, _ALIVE, _SUSPECT, _LEFT
        for update in updates:
            slot = slot_of.get(update.node_id)
            if slot is None or slot >= size or slot == me or not states[slot]:
                self._apply(update)
                continue
            state, incarnation = update.state, update.incarnation
            if not (0 <= incarnation < max_incarnation and alive <= state <= left):
                self._apply(update)  # counted there
                continue
            known_inc = incarnations[slot]
            if incarnation < known_inc:
                continue
            current = states[slot]
            # Known entries win over older or equal updates (after a mass failure most of what arrives
            # is suspicions of members already known dead).
            if incarnation == known_inc and (
                state < current or (state == current and (state != suspect or slot not in suspicions))
            ):
                continue
            self._merge(slot, current, known_inc, update)

    # ------------------------------------------------------------------ membership anti-entropy

    def _sync_tick(self) -> None:
        # Adaptive: while exchanges keep teaching this node something (after a mass failure, thousands of
        # deaths to spread), sync four times as often; an idle cluster pays one small digest per interval.
        # Digests that merely differ do not count: while news spreads by gossip they differ all the time,
        # and entries that gossip is about to deliver anyway are not worth shipping twice.
        interval = self.settings.sync_interval_ms
        if self._sync_found_difference:
            interval = max(self.settings.probe_interval_ms, interval // 4)
        self._sync_found_difference = False
        self._arm(self._now + interval, _SYNC, 0)
        if not self.joined:
            return
        digest = SyncDigest(self.id, tuple(self.table.digests))
        candidates = [s for s in self.overlay.links() if self.table.raw_state(s) == _ALIVE]
        if candidates:
            self._send_to_slot(candidates[self.rng.randrange(len(candidates))], digest)
        # Reconnect: one member declared dead, at random, gets our digest too. If it was only cut off (a
        # healed partition), it learns it was declared dead, refutes, and both sides merge again; without
        # this, two halves of a healed partition would never speak again.
        dead = self._random_slot_in(_DEAD)
        if dead is not None:
            self._send_to_slot(dead, digest)

    # ------------------------------------------------------------------ anti-entropy of the store

    def _anti_entropy_tick(self) -> None:
        """Every anti_entropy_interval_ms: reconcile the whole store with one live linked member."""
        self._arm(self._now + self.settings.anti_entropy_interval_ms, _ANTI_ENTROPY, 0)
        if not self.joined or self.replica is None:
            return
        candidates = [s for s in self.overlay.links() if self.table.raw_state(s) == _ALIVE]
        if not candidates:
            return
        self.anti_entropy_sessions += 1
        target = candidates[self.rng.randrange(len(candidates))]
        self._send_to_slot(target, opening(self._next_seq(), self.id, self.replica))

    def _on_reconcile(self, message: Reconcile) -> None:
        if self.replica is None:
            return
        reply, entries = answer(message, self.id, self.replica, self.settings.anti_entropy_max_bytes)
        if entries:
            items = tuple(DataItem(0, key, versions) for key, versions in entries)
            self._out.append(Store(items, message.source, "anti-entropy", 0))
        if reply is not None:
            self._send_to_id(message.source, reply)

    def _random_slot_in(self, state: int) -> int | None:
        states = self.table.states
        if not states or not self.table.counts[state]:
            return None
        start = self.rng.randrange(len(states))
        found = states.find(state, start)
        if found < 0:
            found = states.find(state, 0, start)
        return found if found >= 0 else None

    def _sub_arcs(self, sub_buckets: Sequence[int]) -> list[int]:
        if len(sub_buckets) > SYNC_SUB_BUCKETS or not all(0 <= sub < SYNC_SUB_BUCKETS for sub in sub_buckets):
            raise ValueError("sub-arc out of range")
        return list(sub_buckets)

    def _first_entries(self, slots: np.ndarray, subs: list[int]) -> list[int]:
        """At most SYNC_MAX_ENTRIES of these slots, those in the sub-arcs listed first (the two ends of
        the exchange, where "you were declared dead" is learned) before the others."""
        if len(slots) <= SYNC_MAX_ENTRIES:
            return list(slots.tolist())
        rank = np.full(SYNC_SUB_BUCKETS, len(subs))
        rank[subs] = np.arange(len(subs))
        order = np.argsort(rank[self.directory.sub_arc_array()[slots]], kind="stable")
        return list(slots[order[:SYNC_MAX_ENTRIES]].tolist())

    def _updates(self, slots: Sequence[int]) -> tuple[Update, ...]:
        infos = self.directory.infos
        states, incarnations = self.table.states, self.table.incarnations
        out: list[Update] = []
        for slot in slots:
            info = infos[slot]
            out.append(Update(states[slot], info.node_id, incarnations[slot], info.addr, info.region, ""))
        return tuple(out)

    def _on_sync_digest(self, message: SyncDigest) -> None:
        mine = self.table.digests
        theirs = message.digests
        if len(theirs) != len(mine):
            return
        differ = [b for b in range(len(mine)) if mine[b] != theirs[b]]
        if not differ:
            return
        digests: list[int] = []
        for bucket in differ:
            digests.extend(self.table.sub_digests(bucket))
        self._send_to_id(message.source, SyncSubDigests(self.id, tuple(differ), tuple(digests)))

    def _on_sync_sub_digests(self, message: SyncSubDigests) -> None:
        buckets, theirs = message.buckets, message.digests
        if len(theirs) != SUB_ARCS * len(buckets) or not all(0 <= b < SYNC_BUCKETS for b in buckets):
            return
        differ: list[int] = []
        for i, bucket in enumerate(buckets):
            mine = self.table.sub_digests(bucket)
            base = i * SUB_ARCS
            differ.extend(bucket * SUB_ARCS + k for k in range(SUB_ARCS) if mine[k] != theirs[base + k])
        if not differ:
            return
        # The sub-arcs holding the two ends go first: that is where "you were declared dead" is learned.
        ends = {sub_bucket_of(self.overlay.position)}
        source = self.directory.slot(message.source)
        if source is not None:
            ends.add(sub_bucket_of(self.directory.positions[source]))
        differ.sort(key=lambda sub: sub not in ends)
        # Whole sub-arcs, in that order, while their entries fit in SYNC_MAX_LEAVES (at least one).
        sizes = np.cumsum(self.table.sub_arc_counts()[differ])
        subs = differ[: max(1, int(np.searchsorted(sizes, SYNC_MAX_LEAVES, side="right")))]
        hashes = self.table.hashes_at(self.table.slots_in_sub_arcs(subs))
        self._send_to_id(message.source, SyncLeaves(self.id, tuple(subs), tuple(hashes.tolist())))

    def _on_sync_leaves(self, message: SyncLeaves) -> None:
        """The other side listed the hashes of its entries in these sub-arcs: send ours that it lacks or
        holds differently, and ask for its entries we lack (by hash)."""
        if len(message.hashes) > SYNC_MAX_LEAVES:
            raise ValueError("too many entry hashes")
        subs = self._sub_arcs(message.sub_buckets)
        theirs = _hash_array(message.hashes)
        slots = self.table.slots_in_sub_arcs(subs)
        mine = self.table.hashes_at(slots)
        send = self._first_entries(slots[~_within(mine, theirs)], subs)
        want = tuple(theirs[~_within(theirs, mine)].tolist())
        if send or want:
            self._send_to_id(message.source, SyncEntries(self.id, tuple(subs), self._updates(send), want))

    def _on_sync_entries(self, message: SyncEntries) -> None:
        before = self.table.changes
        self._apply_all(message.members)
        if self.table.changes != before:
            self._sync_found_difference = True
        if not message.want:
            return
        if len(message.want) > SYNC_MAX_LEAVES:
            raise ValueError("too many entry hashes")
        want = _hash_array(message.want)
        # Merged first: an entry the other side sent that beat ours is no longer ours to send back.
        subs = self._sub_arcs(message.sub_buckets)
        slots = self.table.slots_in_sub_arcs(subs)
        send = self._first_entries(slots[_within(self.table.hashes_at(slots), want)], subs)
        if send:
            self._send_to_id(message.source, SyncEntries(self.id, (), self._updates(send), ()))

    # ------------------------------------------------------------------ join and leave

    def _join_retry(self) -> None:
        if self.joined or not self._bootstrap:
            return
        targets = self._bootstrap
        fanout = min(JOIN_FANOUT, len(targets))
        rounds = self._join_attempt * fanout // len(targets)
        for i in range(fanout):
            node_id, addr = targets[(self._join_attempt * fanout + i) % len(targets)]
            slot = self.directory.slot(node_id) if node_id else None
            if slot is not None:  # the member's address as last heard (it may have come back elsewhere)
                addr = self.directory.infos[slot].addr or addr
            self._out.append(Send(node_id, addr, Join(self.id, self.info.addr, self.info.region, self.incarnation)))
        self._join_attempt += 1
        settings = self.settings
        delay = min(settings.join_retry_max_ms, settings.join_timeout_ms << min(rounds, 16))
        if rounds:  # jitter on the backoff, so nodes restarted together do not retry in step
            delay = delay // 2 + self.rng.randrange(max(1, delay // 2 + 1))
        self._arm(self._now + max(1, delay), _JOIN_RETRY, 0)

    def _on_join(self, message: Join) -> None:
        self._apply(Update(_ALIVE, message.source, message.incarnation, message.addr, message.region, ""))
        infos = self.directory.infos
        table = self.table
        states = table.states
        members = tuple(
            Update(state, infos[slot].node_id, table.incarnations[slot], infos[slot].addr, infos[slot].region, "")
            for slot, state in enumerate(states)
            if state
        )
        self._send_to_id(message.source, JoinReply(self.id, members), message.addr)

    def _on_join_reply(self, message: JoinReply) -> None:
        if self.joined:
            return
        for update in message.members:
            self._apply(update, rebroadcast=False)
        self.joined = True
        self.broadcasts.put(self.me, self._update_for(self.me, _ALIVE, self.incarnation))
        self.overlay.recompute_near()
        hello = Neighbor(self.id, self.info.addr, self.info.region, self.incarnation)
        for slot in self.overlay.near:
            self._send_to_slot(slot, hello)
        self._maintain_links()

    def _on_neighbor(self, message: Neighbor) -> None:
        self._apply(Update(_ALIVE, message.source, message.incarnation, message.addr, message.region, ""))

    def _on_leave(self, message: Leave) -> None:
        slot = self.directory.slot(message.source)
        if slot is None:
            return
        info = self.directory.infos[slot]
        self._apply(Update(_LEFT, message.source, message.incarnation, info.addr, info.region, ""))

    # ------------------------------------------------------------------ long links

    def _maintain_links(self) -> None:
        """Requests long links until `long_max` are held or pending; forgets requests left unanswered."""
        if not self.joined:
            return
        now = self._now
        expiry = 2 * self.settings.probe_interval_ms
        for slot, (_, sent) in list(self._pending_links.items()):
            if now - sent > expiry:
                del self._pending_links[slot]
        for slot, when in list(self._refused.items()):
            if now - when > 30 * self.settings.probe_interval_ms:
                del self._refused[slot]
        overlay = self.overlay
        missing = self.settings.long_max - len(overlay.long_out) - len(self._pending_links)
        exclude = set(self._pending_links) | set(self._refused)
        live = self.table.live_count()
        for _ in range(max(0, missing)):
            target = overlay.draw_long_target(live, exclude)
            if target is None:
                break
            exclude.add(target)
            seq = self._next_seq()
            self._pending_links[target] = (seq, now)
            self._send_to_slot(target, Link(seq, self.id, self.info.addr, self.info.region, self.incarnation))

    def _on_link(self, message: Link) -> None:
        self._apply(Update(_ALIVE, message.source, message.incarnation, message.addr, message.region, ""))
        slot = self.directory.slot(message.source)
        if slot is None:
            return  # the request carried an invalid entry (counted in bad_updates)
        accepted = self.overlay.usable(slot) and self.overlay.accept_long_in(slot)
        self._send_to_slot(slot, LinkReply(message.seq, self.id, accepted))

    def _on_link_reply(self, message: LinkReply) -> None:
        slot = self.directory.slot(message.source)
        if slot is None:
            return
        pending = self._pending_links.get(slot)
        if pending is None or pending[0] != message.seq:
            if message.accepted and slot not in self.overlay.long_out:
                self._send_to_slot(slot, Unlink(self.id))  # a late answer we no longer wait for
            return
        del self._pending_links[slot]
        if message.accepted and self.overlay.usable(slot) and len(self.overlay.long_out) < self.settings.long_max:
            self.overlay.add_long_out(slot)
            return
        if message.accepted:
            self._send_to_slot(slot, Unlink(self.id))
        else:
            self.stats.link_refusals += 1
            self._refused[slot] = self._now
        self._maintain_links()

    def _on_unlink(self, message: Unlink) -> None:
        slot = self.directory.slot(message.source)
        if slot is not None:
            self.overlay.drop_long_in(slot)

    # ------------------------------------------------------------------ routing

    def _forward(self, message: Routed, attempts: list[int] | None = None) -> None:
        """Sends a routed message one hop on (or delivers it here), tracking it until the hop acknowledges."""
        if message.target == self.id:
            key = (message.source, message.route_id)
            if key in self._delivered:
                return  # a copy retried by a hop that missed our acknowledgement
            self._delivered[key] = None
            if len(self._delivered) > DELIVERED_MEMORY:
                del self._delivered[next(iter(self._delivered))]
            self._out.append(Deliver(message.route_id, message.source, message.hops, message.payload))
            return
        target_slot = self.directory.slot(message.target)
        if target_slot is not None and self.table.raw_state(target_slot) in (_DEAD, _LEFT):
            self._route_failed(message, f"target is {State(self.table.raw_state(target_slot)).name.lower()}")
            return
        if message.hops >= self.settings.hop_limit:
            self._route_failed(message, f"hop limit {self.settings.hop_limit} reached")
            return
        attempt = len(attempts) if attempts is not None else 0
        attempts = attempts if attempts is not None else []
        if attempt >= MAX_HOP_TRIES:
            self._route_failed(message, f"{attempt} attempts at {len(set(attempts))} next hops went unanswered")
            return
        tried = set(attempts)
        target_pos = self.directory.positions[target_slot] if target_slot is not None else position(message.target)
        if target_slot is not None and self.overlay.linked(target_slot) and target_slot not in tried:
            hop: int | None = target_slot
        else:
            avoid = self._avoided()
            hop = self.overlay.next_hop(target_pos, tried, avoid)
            if hop is None:
                hop = self._ring_fallback(target_pos, tried, avoid)
            if hop is None and attempts:
                # Every way forward was tried once: try again the best one (a lost message or a slow
                # member, not necessarily a dead one), with a longer wait.
                if target_slot is not None and self.overlay.linked(target_slot):
                    hop = target_slot
                else:
                    hop = self.overlay.next_hop(target_pos, set(), set())
        if hop is None:
            self._route_failed(message, "no member closer to the target answers (it is down or unknown)")
            return
        self._send_to_slot(hop, message._replace(hops=message.hops + 1, via=self.id))
        if len(self._forwards) < MAX_PENDING_FORWARDS:
            seq = self._next_seq()
            attempts.append(hop)
            self._forwards[seq] = _Forward(message, hop, attempts)
            self._forward_seq[(message.source, message.route_id)] = seq
            # Back off on retries: a slow member acknowledges late rather than never.
            wait = min(self.settings.probe_timeout_ms << attempt, 4 * self.settings.probe_interval_ms)
            self._arm(self._now + wait, _ROUTE_RETRY, seq)

    def _avoided(self) -> set[int]:
        """Members whose last routed message went unacknowledged and that no probe has cleared since."""
        now = self._now
        expired = [slot for slot, until in self._avoid.items() if until <= now]
        for slot in expired:
            del self._avoid[slot]
        return set(self._avoid)

    def _ring_fallback(self, target_pos: int, tried: set[int], avoid: set[int]) -> int | None:
        """When no link gets closer (the near links towards the target are down), the nearest usable
        member in the target's direction from the table: what the near link becomes once repaired."""
        me_pos = self.overlay.position
        ahead = clockwise(me_pos, target_pos)
        step = 1 if ahead <= RING // 2 else -1
        span = ahead if step == 1 else RING - ahead
        positions = self.directory.positions
        for checked, slot in enumerate(self.directory.walk(me_pos, step)):
            if checked >= 64:
                break
            gone = clockwise(me_pos, positions[slot]) if step == 1 else clockwise(positions[slot], me_pos)
            if gone > span:
                break
            if slot not in tried and slot not in avoid and self.table.raw_state(slot) == _ALIVE:
                return slot
        return None

    def _on_routed(self, message: Routed) -> None:
        if message.via:
            self._send_to_id(message.via, RoutedAck(message.route_id, message.source, self.id))
        self._forward(message)

    def _on_routed_ack(self, message: RoutedAck) -> None:
        seq = self._forward_seq.pop((message.source, message.route_id), None)
        if seq is not None:
            self._forwards.pop(seq, None)

    def _route_retry(self, seq: int) -> None:
        forward = self._forwards.pop(seq, None)
        if forward is None:
            return
        key = (forward.message.source, forward.message.route_id)
        if self._forward_seq.get(key) == seq:
            del self._forward_seq[key]
        # The hop did not take the message: avoid it for routing until a probe says otherwise, probe it
        # now (a dead hop is then suspected within a period), and try the next best hop.
        hop = forward.hop
        self._avoid[hop] = self._now + self.settings.probe_interval_ms * 4
        if self.overlay.usable(hop):
            self._start_probe(hop)
        self._forward(forward.message, forward.attempts)

    def _route_failed(self, message: Routed, reason: str) -> None:
        self.stats.routes_failed += 1
        if message.source == self.id:
            self._out.append(RouteFailure(message.route_id, message.target, message.hops, reason))
        else:
            self._send_to_id(
                message.source,
                RouteFailed(message.route_id, self.id, message.target, message.hops, reason),
                message.source_addr,
            )

    def _on_route_failed(self, message: RouteFailed) -> None:
        self._out.append(RouteFailure(message.route_id, message.target, message.hops, message.reason))


def _hash_array(values: Sequence[int]) -> np.ndarray:
    """Entry hashes from a message as a uint64 array; ValueError if they are not a flat list of them."""
    try:
        array_ = np.array(values, dtype=np.uint64)
    except OverflowError as exc:
        raise ValueError("entry hash out of range") from exc
    if array_.ndim != 1:
        raise ValueError("entry hashes must be a flat list")
    return array_


def _within(values: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Whether each of `values` is in `pool`, as a bool array (a sort and a binary search: np.isin sorts
    both arrays together and cost four times as much here)."""
    if len(pool) == 0:
        return np.zeros(len(values), dtype=bool)
    pool = pool.copy()
    pool.sort()
    index = pool.searchsorted(values)  # the array methods skip numpy's dispatch wrappers
    np.minimum(index, len(pool) - 1, out=index)
    found: np.ndarray = pool[index] == values
    return found


_HANDLERS: dict[type, Callable[[Peer, Any], None]] = {
    Ping: Peer._on_ping,
    PingReq: Peer._on_ping_req,
    Ack: Peer._on_ack,
    Nack: Peer._on_nack,
    Join: Peer._on_join,
    JoinReply: Peer._on_join_reply,
    Neighbor: Peer._on_neighbor,
    Leave: Peer._on_leave,
    Link: Peer._on_link,
    LinkReply: Peer._on_link_reply,
    Unlink: Peer._on_unlink,
    SyncDigest: Peer._on_sync_digest,
    SyncSubDigests: Peer._on_sync_sub_digests,
    SyncLeaves: Peer._on_sync_leaves,
    SyncEntries: Peer._on_sync_entries,
    Routed: Peer._on_routed,
    RoutedAck: Peer._on_routed_ack,
    RouteFailed: Peer._on_route_failed,
    Reconcile: Peer._on_reconcile,
    Push: lambda peer, message: peer.data.on_push(message),
    IHave: lambda peer, message: peer.data.on_ihave(message),
    Graft: lambda peer, message: peer.data.on_graft(message),
    Prune: lambda peer, message: peer.data.on_prune(message),
    GossipDigest: lambda peer, message: peer.data.on_digest(message),
    GossipReply: lambda peer, message: peer.data.on_reply(message),
    GossipItems: lambda peer, message: peer.data.on_items(message),
}
