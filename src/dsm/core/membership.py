"""`Membership`: the member table's rules: how an update about a member is merged, refuted or spread.

Owns this node's incarnation, the queue of updates waiting to be piggybacked (`BroadcastQueue`) and the
Lifeguard suspicion timers (`Suspicion`, suspicion.py). Every other part changes the member table only
through `apply` / `apply_all` (an update heard from someone), `suspect` (this node's own probe failed) and
`set_state` (this node's own decision).

Rule for an update about member m: entries are ordered by (incarnation, state) with alive < suspect <
dead < left, and the larger wins (so suspect beats alive at the same incarnation, and only a higher
incarnation, which only m itself issues, brings it back). This order is a join-semilattice, so any order
of gossip converges. An update about this node itself that says anything but alive at an older
incarnation is refuted: the node takes an incarnation above it and announces that it is alive.

Changes spread by piggybacking on Ping, PingReq and Ack (`BroadcastQueue`, each update sent
retransmit_mult * ceil(log10(n + 1)) times). A probe of a member held suspect carries the suspicion first,
so the suspect can refute at once (Lifeguard's buddy system). A gossiped suspicion of a linked member is
reported (`suspect_reported`) so that probing checks it soon: our own failed probe is an independent
confirmation.

Keeps true: a member that left never comes back at an incarnation <= the one it left with; this node's
own incarnation only grows; a suspicion is dropped whenever its member leaves the suspect state.
Changes of another member's state are reported to `member_changed` (the overlay and the link upkeep
follow them), and every change to the optional `observer` (the simulator's checkers).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from dsm.core.broadcast import BroadcastQueue
from dsm.core.context import Context
from dsm.core.messages import Update
from dsm.core.ring import MAX_INCARNATION, MemberInfo, State
from dsm.core.suspicion import LocalHealth, Suspicion

_UNKNOWN = int(State.UNKNOWN)
_ALIVE = int(State.ALIVE)
_SUSPECT = int(State.SUSPECT)
_DEAD = int(State.DEAD)
_LEFT = int(State.LEFT)

#: Called on every state change: (slot, old state, new state, incarnation, decided by this node's detector).
MemberObserver = Callable[[int, int, int, int, bool], None]


class Membership:
    """This node's membership rules (see the module docstring).

    Args:
        context: the node's shared ports.
        health: this node's local health (refutations count against it).
        incarnation: this node's incarnation to start with.
        member_changed: told (slot, new state) when another member's state changed.
        suspect_reported: told the slot of a member that gossip (not this node) says is suspect.
        observer: told of every state change (see `MemberObserver`).
    """

    def __init__(
        self,
        context: Context,
        health: LocalHealth,
        incarnation: int,
        member_changed: Callable[[int, int], None],
        suspect_reported: Callable[[int], None],
        observer: MemberObserver | None = None,
    ) -> None:
        self.context = context
        self.health = health
        self.incarnation = incarnation
        self.member_changed = member_changed
        self.suspect_reported = suspect_reported
        self.observer = observer
        self.broadcasts = BroadcastQueue()
        self.suspicion = Suspicion(context, self._declare_dead)
        # The running suspicions by slot (the suspicion part's table, read on the hot paths below).
        self.suspicions = self.suspicion.suspicions
        context.table.set(context.me, State.ALIVE, incarnation)

    # ------------------------------------------------------------------ piggybacking

    def retransmit_limit(self) -> int:
        settings = self.context.settings
        return settings.retransmit_mult * max(1, math.ceil(math.log10(self.context.table.live_count() + 1)))

    def piggyback(self) -> tuple[Update, ...]:
        """The updates to carry on the next probe message."""
        return self.broadcasts.take(self.context.settings.max_piggyback, self.retransmit_limit())

    def piggyback_for(self, slot: int) -> tuple[Update, ...]:
        """The piggyback for a probe of `slot`; a suspect is told first that it is suspected (Lifeguard's
        buddy system), so it can refute at once instead of waiting for gossip to reach it."""
        updates = self.piggyback()
        table = self.context.table
        if table.raw_state(slot) != _SUSPECT:
            return updates
        node_id = self.context.directory.infos[slot].node_id
        told = self.update_for(slot, _SUSPECT, table.incarnation(slot))
        rest = tuple(update for update in updates if update.node_id != node_id)
        return (told, *rest[: self.context.settings.max_piggyback - 1])

    def announce_self(self) -> None:
        """Queues "this node is alive at its incarnation" for spreading (after a join)."""
        self.broadcasts.put(self.context.me, self.update_for(self.context.me, _ALIVE, self.incarnation))

    # ------------------------------------------------------------------ state changes

    def update_for(self, slot: int, state: int, incarnation: int, origin: str = "") -> Update:
        info = self.context.directory.infos[slot]
        return Update(state, info.node_id, incarnation, info.addr, info.region, origin)

    def set_state(self, slot: int, state: int, incarnation: int, own: bool = False) -> None:
        """Sets a member's state; `own` tells observers that this node's own detector decided it."""
        table = self.context.table
        old = table.raw_state(slot)
        table.set(slot, state, incarnation)
        if old == state:
            return
        if state != _SUSPECT:
            self.suspicions.pop(slot, None)
        if self.observer is not None:
            self.observer(slot, old, state, incarnation, own)
        if slot == self.context.me:
            return
        self.member_changed(slot, state)

    def apply(self, update: Update, rebroadcast: bool = True, own: bool = False) -> None:
        """Merges one membership update into the table (rules in the module docstring)."""
        context = self.context
        state, node_id, incarnation = update.state, update.node_id, update.incarnation
        if not (0 <= incarnation < MAX_INCARNATION and _ALIVE <= state <= _LEFT):
            context.stats.bad_updates += 1  # the sender's fault: ignore it, keep serving
            return
        if node_id == context.id:
            self._about_me(update)
            return
        slot = context.directory.slot(node_id)
        if slot is None:
            slot = context.directory.intern(MemberInfo(node_id, update.addr, update.region))
            self._accept(slot, update, rebroadcast, own)
            return
        table = context.table
        current = table.raw_state(slot)
        if current == _UNKNOWN:
            self._accept(slot, update, rebroadcast, own)
        else:
            self._merge(slot, current, table.incarnation(slot), update, rebroadcast, own)

    def apply_all(self, updates: tuple[Update, ...]) -> None:
        """Merges piggybacked updates (`apply` for each, with the known ones skipped first)."""
        # Most piggybacked updates are already known (each member hears each update from several peers):
        # skip those before any other work. A repeated suspicion we time ourselves still goes through
        # (it may confirm).
        context = self.context
        slot_of = context.directory.slot_of
        table = context.table
        raw_state = table.raw_state
        incarnation_of = table.incarnation
        size = table.size
        suspicions = self.suspicions
        me = context.me
        max_incarnation, alive, suspect, left = MAX_INCARNATION, _ALIVE, _SUSPECT, _LEFT
        for update in updates:
            slot = slot_of.get(update.node_id)
            if slot is None or slot >= size or slot == me:
                self.apply(update)
                continue
            current = raw_state(slot)
            if not current:
                self.apply(update)
                continue
            state, incarnation = update.state, update.incarnation
            if not (0 <= incarnation < max_incarnation and alive <= state <= left):
                self.apply(update)  # counted there
                continue
            known_inc = incarnation_of(slot)
            if incarnation < known_inc:
                continue
            # Known entries win over older or equal updates (after a mass failure most of what arrives
            # is suspicions of members already known dead).
            if incarnation == known_inc and (
                state < current or (state == current and (state != suspect or slot not in suspicions))
            ):
                continue
            self._merge(slot, current, known_inc, update)

    def _merge(
        self, slot: int, current: int, current_inc: int, update: Update, rebroadcast: bool = True, own: bool = False
    ) -> None:
        """Merges a valid update about a known member other than this node."""
        state, incarnation = update.state, update.incarnation
        if incarnation == current_inc and state == current:
            if state == _SUSPECT:
                self.suspicion.confirm(slot, update.origin)
            return
        # Entries are ordered by (incarnation, state) with alive < suspect < dead < left, and the larger
        # wins: a join-semilattice, so gossip and anti-entropy converge in any order.
        if incarnation > current_inc or (incarnation == current_inc and state > current):
            directory = self.context.directory
            if state == _ALIVE and directory.infos[slot].addr != update.addr:
                directory.intern(MemberInfo(update.node_id, update.addr, update.region))
            self._accept(slot, update, rebroadcast, own)

    def _accept(self, slot: int, update: Update, rebroadcast: bool = True, own: bool = False) -> None:
        state = update.state
        self.set_state(slot, state, update.incarnation, own)
        if state == _SUSPECT:
            if own:
                self.suspicion.start(slot, update.incarnation, self.context.id)
            else:
                self.suspect_reported(slot)
        if rebroadcast:
            self.broadcasts.put(slot, update)

    def _about_me(self, update: Update) -> None:
        """Someone says something about this node: refute anything but alive at an older incarnation, or at
        this one with this node's own address and region. (A node restarted at a new address takes the
        incarnation after the one it saved, but refutations of its previous life were not saved: the cluster
        may already hold that very incarnation with the old address, and would never take the new one.)"""
        if update.state == _ALIVE and update.incarnation < self.incarnation:
            return
        if update.state == _ALIVE and update.incarnation == self.incarnation:
            me = self.context.directory.infos[self.context.me]
            if (update.addr, update.region) == (me.addr, me.region):
                return
        if update.state == _LEFT and self.context.left:
            return
        # Suspect, dead or left at >= our incarnation, or alive at a higher one (a previous life of this
        # node): take an incarnation above it and announce that we are alive.
        if update.state != _ALIVE and update.incarnation < self.incarnation:
            return
        self.incarnation = max(self.incarnation, update.incarnation) + 1
        self.context.table.set(self.context.me, State.ALIVE, self.incarnation)
        self.announce_self()
        if update.state != _ALIVE:
            self.context.stats.refutations += 1
            self.health.adjust(1)

    # ------------------------------------------------------------------ this node's decisions

    def suspect(self, slot: int) -> None:
        """This node's own probe of `slot` failed."""
        table = self.context.table
        state = table.raw_state(slot)
        incarnation = table.incarnation(slot)
        update = self.update_for(slot, _SUSPECT, incarnation, self.context.id)
        if state == _ALIVE:
            self.context.stats.suspicions_raised += 1
            self.apply(update, own=True)
        elif state == _SUSPECT and slot not in self.suspicions:
            # Suspected by others already (we heard it by gossip); our failed probe confirms it, and from
            # now on this node also runs a suspicion timer for it.
            self.context.stats.suspicions_raised += 1
            self.suspicion.start(slot, incarnation, self.context.id)
            self.broadcasts.put(slot, update)

    def _declare_dead(self, slot: int, incarnation: int) -> None:
        """A suspicion this node timed ran out: the member is dead."""
        self.context.stats.deaths_declared += 1
        update = self.update_for(slot, _DEAD, incarnation, self.context.id)
        self.set_state(slot, _DEAD, incarnation, own=True)
        self.broadcasts.put(slot, update)

    def leave(self) -> None:
        """This node leaves for good at its current incarnation."""
        self.set_state(self.context.me, _LEFT, self.incarnation)

    def remove(self, node_id: str) -> None:
        """An operator removes member `node_id` for good: recorded as left at the incarnation this node
        knows, and spread like a leave.

        Raises:
            ValueError: an unknown member, or this node itself.
        """
        context = self.context
        slot = context.directory.slot(node_id)
        if slot is None or context.table.raw_state(slot) == _UNKNOWN:
            raise ValueError(f"no member {node_id!r}")
        if slot == context.me:
            raise ValueError("a node cannot remove itself; stop it (SIGTERM) to leave")
        info = context.directory.infos[slot]
        self.apply(Update(_LEFT, node_id, context.table.incarnation(slot), info.addr, info.region, context.id))


__all__ = ["MemberObserver", "Membership"]
