"""`Peer`: the sans-IO protocol core of one node, as a thin dispatcher over its parts.

The runtime (the simulator, the network runtime) feeds it the time and events and carries out the effects
it returns:
    effects = peer.handle(now_ms, message)   # a message arrived
    effects = peer.tick(now_ms)              # call at peer.next_deadline() (or later)
    effects = peer.join(now_ms, bootstrap) / peer.leave(now_ms) / peer.route(now_ms, target_id, payload)
It never reads a clock, never draws randomness except from the injected `rng`, and does no I/O.

The parts, each in its own module, share the node's `Context` (context.py: time, rng, sequence numbers,
timers, outbox, directory and member table) and talk to each other through public methods only:
- `Membership` (membership.py): the table's merge rules, refutation, piggybacked updates; it owns the
  Lifeguard suspicion timers (`Suspicion`, suspicion.py). `LocalHealth` (suspicion.py) is shared with
  probing.
- `Probing` (probing.py): SWIM probes, indirect probes, relays, measured loss.
- `MemberSync` (member_sync.py): membership anti-entropy.
- `Joining` (joining.py): joins with retries, the saved table, installed clusters, leaves.
- `Links` (links.py): long-link requests and the overlay's upkeep (the link tables are `Overlay`'s,
  overlay.py).
- `Routing` (routing.py): greedy routing with acknowledgements and retries.
- `Dissemination` (dissemination.py): writes over the broadcast tree and gossip rounds.

The data path's parts (the coordinator of consistency levels and the store's anti-entropy) sit beside the
peer, in `node_core.py`, which drivers feed.

Dispatch: `handle` looks the message's type up in one table of part methods; `tick` pops each due timer
and hands it to the part owning the enum type of its kind (every part defines its own timer-kind enum).
A malformed message (ValueError/TypeError in a part) is the sender's fault: counted in
`stats.bad_messages` and dropped. Once the node left, it handles nothing and runs no timers.

Writes: `publish(now, items)` spreads writes this node coordinated; `Dissemination` answers with `Store`
effects for the runtime to merge.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable, Collection, Mapping, Sequence
from enum import Enum
from functools import partial
from typing import Any

from dsm.core import member_record
from dsm.core.consistency import Group, Level, Tally, groups
from dsm.core.context import Context, PeerStats
from dsm.core.dissemination import Dissemination, DisseminationTimer
from dsm.core.joining import JOIN_FANOUT, Joining, JoinTimer
from dsm.core.links import Links
from dsm.core.member_sync import SYNC_MAX_ENTRIES, SYNC_MAX_LEAVES, MemberSync, SyncTimer
from dsm.core.membership import Membership
from dsm.core.messages import (
    Ack,
    DataItems,
    DirectPush,
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
    Routed,
    RoutedAck,
    RouteFailed,
    SyncDigest,
    SyncEntries,
    SyncLeaves,
    SyncSubDigests,
    Unlink,
)
from dsm.core.overlay import Overlay, RandomSource
from dsm.core.probing import LOSS_RETRY, ProbeTimer, Probing
from dsm.core.ring import Directory, MemberInfo, MemberTable, State
from dsm.core.routing import RouteTimer, Routing
from dsm.core.settings import PeerSettings
from dsm.core.suspicion import LocalHealth, SuspicionEntry, SuspicionTimer, suspicion_bounds

_LEFT = int(State.LEFT)


class Peer:
    """One node's protocol state machine: wires the parts and dispatches events to them (see the module
    docstring).

    Args:
        info: this node's id, address and region.
        settings: the protocol's knobs.
        rng: the injected randomness (the core never draws its own).
        now: the runtime's clock at creation, ms.
        directory: the member directory to share (the simulator shares one); a new one by default.
        incarnation: this node's incarnation to start with (a restarted node's is higher than its last).
        member_observer: told (peer, slot, old, new, incarnation, own) of every member state change.
        link_observer: told (peer, slot, +1/-1) of every link added or removed.
    """

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
    ) -> None:
        context = Context(info, settings, rng, now, directory if directory is not None else Directory())
        self.context = context
        self.info = info
        self.id = info.node_id
        self.settings = settings
        self.rng = rng
        self.directory = context.directory
        self.me = context.me
        self.table = context.table
        self.stats = context.stats
        self.member_observer = member_observer
        self.link_observer = link_observer
        self.health = LocalHealth(settings.max_local_health)
        self.membership = Membership(
            context,
            self.health,
            incarnation,
            self._member_changed,
            self._suspect_reported,
            None if member_observer is None else partial(member_observer, self),
        )
        self.overlay = Overlay(
            context.directory,
            context.table,
            context.me,
            settings.max_immediate_neighbors,
            settings.max_long_links,
            settings.max_long_links_in,
            rng,
            observer=self._link_changed,
        )
        self.links = Links(context, self.overlay, self.membership)
        self.probing = Probing(context, self.overlay, self.membership, self.links, self.health)
        self.routing = Routing(context, self.overlay, self.probing)
        self.member_sync = MemberSync(context, self.overlay, self.membership)
        self.joining = Joining(context, self.overlay, self.membership, self.links)
        self.data = Dissemination(context, self.overlay)
        self.broadcasts = self.membership.broadcasts
        self.suspicions: dict[int, SuspicionEntry] = self.membership.suspicions
        self._heard = self.probing.heard
        self._timer_owners: dict[type[Enum], Callable[[Any, int], None]] = {
            ProbeTimer: self.probing.on_timer,
            SuspicionTimer: self.membership.suspicion.on_timer,
            JoinTimer: self.joining.on_timer,
            RouteTimer: self.routing.on_timer,
            SyncTimer: self.member_sync.on_timer,
            DisseminationTimer: self.data.on_timer,
        }
        self._handlers = self._message_handlers()
        # The first timers, in this order (each draws its random start from the rng).
        self.probing.start()
        self.member_sync.start()
        self.data.start()

    def _message_handlers(self) -> dict[type, Callable[[Any], None]]:
        probing, joining, links, sync = self.probing, self.joining, self.links, self.member_sync
        routing, data = self.routing, self.data
        return {
            Ping: probing.on_ping,
            PingReq: probing.on_ping_req,
            Ack: probing.on_ack,
            Nack: probing.on_nack,
            Join: joining.on_join,
            JoinReply: joining.on_join_reply,
            Neighbor: joining.on_neighbor,
            Leave: joining.on_leave,
            Link: links.on_link,
            LinkReply: links.on_link_reply,
            Unlink: links.on_unlink,
            SyncDigest: sync.on_sync_digest,
            SyncSubDigests: sync.on_sync_sub_digests,
            SyncLeaves: sync.on_sync_leaves,
            SyncEntries: sync.on_sync_entries,
            Routed: routing.on_routed,
            RoutedAck: routing.on_routed_ack,
            RouteFailed: routing.on_route_failed,
            Push: data.on_push,
            DirectPush: data.on_direct_push,
            IHave: data.on_ihave,
            Graft: data.on_graft,
            Prune: data.on_prune,
            GossipDigest: data.on_digest,
            GossipReply: data.on_reply,
            GossipItems: data.on_items,
        }

    # ------------------------------------------------------------------ runtime interface

    def next_deadline(self) -> int | None:
        """When `tick` must next be called (ms, the runtime's clock), or None if nothing is armed."""
        timers = self.context.timers
        return timers[0][0] if timers else None

    def tick(self, now: int) -> list[Effect]:
        """Runs every timer due at `now`, each by the part owning its kind."""
        context = self.context
        context.advance(now)
        owners = self._timer_owners
        timers = context.timers
        while timers and timers[0][0] <= now and not context.left:
            _, _, kind, arg = heapq.heappop(timers)
            owners[type(kind)](kind, arg)
        return context.flush()

    def handle(self, now: int, message: Message) -> list[Effect]:
        """Processes one incoming message."""
        context = self.context
        context.advance(now)
        if context.left:
            return []
        handler = self._handlers.get(type(message))
        if handler is not None:
            slot = context.directory.slot(message.source)
            if slot is not None:
                self._heard[slot] = now
            try:
                handler(message)
            except (ValueError, TypeError):
                # A malformed message (the sender's fault): dropped and counted; the node keeps serving.
                context.stats.bad_messages += 1
        return context.flush()

    def join(self, now: int, bootstrap: Sequence[tuple[str, str]]) -> list[Effect]:
        """Joins the cluster through `bootstrap` ((node_id or "", addr) pairs) and the members read back
        by `restore`: a Join goes to up to JOIN_FANOUT of them at a time, in turn, again after
        join_timeout_ms, and then with a backoff that doubles up to join_retry_max_ms, until one answers
        (Consul's retry_join). Only with neither bootstrap addresses nor restored members does the node
        start a new cluster (`joined` at once)."""
        self.context.advance(now)
        self.joining.join(bootstrap)
        return self.context.flush()

    @property
    def last_heard(self) -> Mapping[int, int]:
        """When each member (by slot) last sent this node a message, in this node's time (ms)."""
        return self._heard

    def join_targets(self) -> list[tuple[str, str]]:
        """Whom an unjoined node tries to join through ((node_id or "", addr)); empty once joined."""
        return self.joining.targets()

    def member_record(self) -> bytes:
        """The member table as the runtime saves it (see `member_record.py`)."""
        return member_record.of_table(self.directory.infos, self.table)

    def restore(self, record: bytes, exclude: Sequence[str] = ()) -> int:
        """Reads back a saved member table before `join` (a restarted node): the members become known with
        their saved states (merged by the usual rules) and, unless they left, targets of the join. This node
        is not joined until one of them (or a bootstrap address) answers. Returns how many other members it
        restored.

        `exclude`: ids left out (the previous owner of a store this node adopted: its former self).

        Raises:
            ValueError: the record cannot be read (nothing is applied).
        """
        return self.joining.restore(record, exclude)

    def install(self, members: Sequence[tuple[MemberInfo, int]]) -> None:
        """Starts from a formed cluster: every member in `members` (info, incarnation) is known alive.

        For simulations and static clusters: equivalent to a join whose news has fully spread, without
        simulating the spreading. Long links are then requested at the first tick."""
        self.joining.install(members)

    def install_snapshot(self, states: bytes, incarnations: array[int], template: MemberTable | None = None) -> None:
        """`install` given as per-slot arrays of this node's directory (the simulator forms 10,000-node
        clusters this way: a bytes copy per node instead of 10^8 updates). `template`: see MemberTable.fill."""
        self.joining.install_snapshot(states, incarnations, template)

    def leave(self, now: int) -> list[Effect]:
        """Leaves for good at the current incarnation: tells every linked member, then stops."""
        self.context.advance(now)
        self.joining.leave()
        return self.context.flush()

    def remove(self, now: int, node_id: str) -> list[Effect]:
        """An operator removes member `node_id` for good (Serf's force-leave, Cassandra's removenode): it is
        recorded as left at the incarnation this node knows, and spread like a leave, so it stops counting
        in the denominators of consistency levels. A member that is in fact running refutes it and comes
        back (at a higher incarnation).

        Raises:
            ValueError: an unknown member, or this node itself (it leaves with `leave`).
        """
        self.context.advance(now)
        self.membership.remove(node_id)
        return self.context.flush()

    def route(self, now: int, target: str, payload: Any) -> tuple[int, list[Effect]]:
        """Sends `payload` greedily over the overlay to the member `target`; returns the route id that
        the eventual `Deliver` (at the target) or `RouteFailure` (here) carries, and the effects."""
        self.context.advance(now)
        route_id = self.routing.route(target, payload)
        return route_id, self.context.flush()

    def publish(
        self, now: int, items: DataItems, urgent: bool = True, skips: Sequence[Collection[str]] | None = None
    ) -> list[Effect]:
        """Spreads writes this node coordinated (already in its replica): pushed at once along the
        broadcast tree, or with `urgent=False` only by gossip rounds (see dissemination.py). With `skips`
        (member ids, one collection per item), an item's push leaves out the members a level request's
        `Replicate` carries it to."""
        self.context.advance(now)
        if not self.context.left:
            slot_of = self.directory.slot
            slots = None
            if skips is not None:
                slots = [frozenset(s for s in map(slot_of, ids) if s is not None) for ids in skips]
            self.data.publish(items, urgent, slots)
        return self.context.flush()

    def replicated(self, now: int, source: str, items: DataItems) -> list[Effect]:
        """A level request of `source` brought these writes (`Replicate`; the driver stores them): the
        broadcast tree takes them from here (`Dissemination.on_replicate`)."""
        self.context.advance(now)
        if not self.context.left:
            self.data.on_replicate(items, source)
        return self.context.flush()

    # ------------------------------------------------------------------ state of the parts

    @property
    def joined(self) -> bool:
        return self.context.joined

    @property
    def left(self) -> bool:
        return self.context.left

    @property
    def incarnation(self) -> int:
        return self.membership.incarnation

    @property
    def local_health(self) -> int:
        return self.health.value

    @property
    def loss_estimate(self) -> float:
        return self.probing.loss_estimate

    @loss_estimate.setter
    def loss_estimate(self, value: float) -> None:
        self.probing.loss_estimate = value

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
        members = ((infos[slot].node_id, infos[slot].region, raw != _LEFT) for slot, raw, _ in self.table.entries())
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

    # ------------------------------------------------------------------ wiring between the parts

    def _member_changed(self, slot: int, state: int) -> None:
        self.links.member_changed(slot, state)

    def _suspect_reported(self, slot: int) -> None:
        self.probing.probe_soon(slot)

    def _link_changed(self, slot: int, delta: int) -> None:
        self.data.link_changed(slot, delta)
        if self.link_observer is not None:
            self.link_observer(self, slot, delta)


__all__ = [
    "JOIN_FANOUT",
    "LOSS_RETRY",
    "SYNC_MAX_ENTRIES",
    "SYNC_MAX_LEAVES",
    "Peer",
    "PeerSettings",
    "PeerStats",
    "suspicion_bounds",
]
