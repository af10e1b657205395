"""`Joining`: how a node enters the cluster and how it leaves it: joins with retries, the saved table read
back on a restart, installed clusters, and leaves.

How it works:
- A join is a push-pull: the joiner sends `Join` to bootstrap members and receives a whole table
  (`JoinReply`); it then announces itself alive, tells its new near links directly (`Neighbor`) and asks
  for long links. A Join goes to up to JOIN_FANOUT targets at a time, in turn, again after
  join_timeout_ms, and then with a backoff that doubles up to join_retry_max_ms (with jitter), until one
  answers (Consul's retry_join). The targets are the bootstrap addresses and the members read back from the
  saved table (`restore`), those that were alive first. With neither, the node starts a new cluster.
- A member answering a Join merges the joiner as alive and sends its whole table.
- A leave is announced (`Leave`) to the node's links at its current incarnation and then spread as an
  update; the node then stops (no timers, no handling).

Keeps true: a node is `joined` only once a member answered (or it started a new cluster, or was installed
into a formed one); a left node never rejoins with the same incarnation.
"""

from __future__ import annotations

import enum
from array import array
from collections.abc import Sequence

from dsm.core import member_record
from dsm.core.context import Context
from dsm.core.links import Links
from dsm.core.membership import Membership
from dsm.core.messages import Join, JoinReply, Leave, Neighbor, Send, Update
from dsm.core.overlay import Overlay
from dsm.core.ring import MemberInfo, MemberTable, State

_ALIVE = int(State.ALIVE)
_LEFT = int(State.LEFT)

#: Join targets one join attempt writes to (the next ones in turn at the next attempt).
JOIN_FANOUT = 3


class JoinTimer(enum.Enum):
    """Timer kinds of `Joining`."""

    #: The next join attempt (arg unused).
    RETRY = enum.auto()


class Joining:
    """This node's joins and leave (see the module docstring)."""

    def __init__(self, context: Context, overlay: Overlay, membership: Membership, links: Links) -> None:
        self.context = context
        self.overlay = overlay
        self.membership = membership
        self.links = links
        self._bootstrap: list[tuple[str, str]] = []
        self._attempt = 0
        # Members read back from the saved table (`restore`): whom a restarted node rejoins through.
        self._known: list[tuple[str, str]] = []

    def on_timer(self, kind: JoinTimer, arg: int) -> None:
        self._retry()

    def join(self, bootstrap: Sequence[tuple[str, str]]) -> None:
        """Joins through `bootstrap` ((node_id or "", addr) pairs) and the restored members (see the module
        docstring); with none of either, starts a new cluster."""
        context = self.context
        targets: list[tuple[str, str]] = []
        seen: set[str] = set()
        for node_id, addr in [*bootstrap, *self._known]:
            if node_id == context.id or addr == context.info.addr or (addr or node_id) in seen:
                continue
            seen.add(addr or node_id)
            targets.append((node_id, addr))
        self._bootstrap = targets
        if not self._bootstrap:
            context.joined = True
            return
        self._attempt = 0
        self._retry()

    def targets(self) -> list[tuple[str, str]]:
        """Whom an unjoined node tries to join through ((node_id or "", addr)); empty once joined."""
        return [] if self.context.joined else list(self._bootstrap)

    def _retry(self) -> None:
        context = self.context
        if context.joined or not self._bootstrap:
            return
        targets = self._bootstrap
        fanout = min(JOIN_FANOUT, len(targets))
        rounds = self._attempt * fanout // len(targets)
        info = context.info
        directory = context.directory
        for i in range(fanout):
            node_id, addr = targets[(self._attempt * fanout + i) % len(targets)]
            slot = directory.slot(node_id) if node_id else None
            if slot is not None:  # the member's address as last heard (it may have come back elsewhere)
                addr = directory.infos[slot].addr or addr
            context.emit(Send(node_id, addr, Join(context.id, info.addr, info.region, self.membership.incarnation)))
        self._attempt += 1
        settings = context.settings
        delay = min(settings.join_retry_max_ms, settings.join_timeout_ms << min(rounds, 16))
        if rounds:  # jitter on the backoff, so nodes restarted together do not retry in step
            delay = delay // 2 + context.rng.randrange(max(1, delay // 2 + 1))
        context.arm(context.now + max(1, delay), JoinTimer.RETRY, 0)

    def restore(self, record: bytes, exclude: Sequence[str] = ()) -> int:
        """Reads back a saved member table (see `Peer.restore`); returns how many other members it restored.

        Raises:
            ValueError: the record cannot be read (nothing is applied).
        """
        members = member_record.decode(record)
        restored = 0
        context = self.context
        for m in members:
            if m.info.node_id == context.id or m.info.node_id in exclude:
                continue
            update = Update(int(m.state), m.info.node_id, m.incarnation, m.info.addr, m.info.region, "")
            self.membership.apply(update, rebroadcast=False)
            restored += 1
            if m.state != State.LEFT:
                self._known.append((m.info.node_id, m.info.addr))
        # Members that were alive when the table was saved are tried first.
        self._known.sort(key=lambda t: self._state_of(t[0]) != State.ALIVE)
        return restored

    def _state_of(self, node_id: str) -> State:
        slot = self.context.directory.slot(node_id)
        return State.UNKNOWN if slot is None else self.context.table.state(slot)

    def install(self, members: Sequence[tuple[MemberInfo, int]]) -> None:
        """Starts from a formed cluster: every member in `members` (info, incarnation) is known alive."""
        context = self.context
        slots = context.directory.intern_many([info for info, _ in members])
        for slot, (_, incarnation) in zip(slots, members, strict=True):
            if slot != context.me:
                context.table.set(slot, State.ALIVE, incarnation)
        self.overlay.recompute_near()
        context.joined = True

    def install_snapshot(self, states: bytes, incarnations: array[int], template: MemberTable | None = None) -> None:
        """`install` given as per-slot arrays of this node's directory (see `Peer.install_snapshot`)."""
        context = self.context
        context.table.fill(states, incarnations, template)
        context.table.set(context.me, State.ALIVE, self.membership.incarnation)
        self.overlay.recompute_near()
        context.joined = True

    def leave(self) -> None:
        """Leaves for good at the current incarnation: tells every linked member, then stops."""
        context = self.context
        membership = self.membership
        membership.leave()
        message = Leave(context.id, membership.incarnation)
        for slot in self.overlay.links():
            context.send_to_slot(slot, message)
        context.left = True
        context.clear_timers()

    # ------------------------------------------------------------------ messages

    def on_join(self, message: Join) -> None:
        membership = self.membership
        membership.apply(Update(_ALIVE, message.source, message.incarnation, message.addr, message.region, ""))
        infos = self.context.directory.infos
        members = tuple(
            Update(state, infos[slot].node_id, incarnation, infos[slot].addr, infos[slot].region, "")
            for slot, state, incarnation in self.context.table.entries()
        )
        self.context.send_to_id(message.source, JoinReply(self.context.id, members), message.addr)

    def on_join_reply(self, message: JoinReply) -> None:
        context = self.context
        if context.joined:
            return
        membership = self.membership
        for update in message.members:
            membership.apply(update, rebroadcast=False)
        context.joined = True
        membership.announce_self()
        self.overlay.recompute_near()
        info = context.info
        hello = Neighbor(context.id, info.addr, info.region, membership.incarnation)
        for slot in self.overlay.near:
            context.send_to_slot(slot, hello)
        self.links.maintain()

    def on_neighbor(self, message: Neighbor) -> None:
        self.membership.apply(Update(_ALIVE, message.source, message.incarnation, message.addr, message.region, ""))

    def on_leave(self, message: Leave) -> None:
        directory = self.context.directory
        slot = directory.slot(message.source)
        if slot is None:
            return
        info = directory.infos[slot]
        self.membership.apply(Update(_LEFT, message.source, message.incarnation, info.addr, info.region, ""))


__all__ = ["JOIN_FANOUT", "JoinTimer", "Joining"]
