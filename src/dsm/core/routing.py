"""`Routing`: greedy routing of application payloads over the overlay, hop by hop, with acknowledgements,
retries and failure reports.

How it works: a routed message goes to the linked member closest (by ring distance) to the target's
position (`Overlay.next_hop`; the target itself when linked). When no link gets closer (the near links
towards the target are down) the nearest usable member in the target's direction from the table is tried
(`_ring_fallback`: what the near link becomes once repaired). Each hop acknowledges its copy to the one
that sent it (`RoutedAck`); a hop that does not acknowledge in time is reported to probing (`distrust`:
avoided and probed at once) and the next best hop is tried, with a wait that doubles at every attempt (a
slow member acknowledges late rather than never). Once every way forward was tried, the best is tried
again. A message that reaches the hop limit, a target known dead or left, or MAX_HOP_TRIES attempts is
reported undeliverable to its source (`RouteFailed`, a `RouteFailure` effect there).

Keeps true: at most MAX_PENDING_FORWARDS messages wait for an acknowledgement; the target delivers each
(source, route id) at most once among its last DELIVERED_MEMORY deliveries, however often a hop retried.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from dsm.core.context import Context
from dsm.core.messages import Deliver, Routed, RoutedAck, RouteFailed, RouteFailure
from dsm.core.overlay import Overlay
from dsm.core.probing import Probing
from dsm.core.ring import RING, State, clockwise, position

_ALIVE = int(State.ALIVE)
_DEAD = int(State.DEAD)
_LEFT = int(State.LEFT)

#: Most routed messages a node tracks at once while waiting for the next hop's acknowledgement.
MAX_PENDING_FORWARDS = 4096
#: Most next hops tried for one routed message at one node before it is reported undeliverable.
MAX_HOP_TRIES = 16
#: Routed messages remembered by their target, so a retried copy is not delivered twice.
DELIVERED_MEMORY = 4096


class RouteTimer(enum.Enum):
    """Timer kinds of `Routing`."""

    #: A hop did not acknowledge a forwarded message in time (arg: the forward's seq).
    RETRY = enum.auto()


@dataclass(slots=True)
class _Forward:
    message: Routed
    hop: int
    attempts: list[int]


class Routing:
    """This node's routed messages (see the module docstring)."""

    def __init__(self, context: Context, overlay: Overlay, probing: Probing) -> None:
        self.context = context
        self.overlay = overlay
        self.probing = probing
        self._forwards: dict[int, _Forward] = {}
        self._forward_seq: dict[tuple[str, int], int] = {}
        self._delivered: dict[tuple[str, int], None] = {}

    def route(self, target: str, payload: Any) -> int:
        """Sends `payload` towards the member `target`; returns the route id."""
        context = self.context
        route_id = context.next_seq()
        self._forward(Routed(route_id, context.id, context.info.addr, target, 0, payload, ""))
        return route_id

    def on_timer(self, kind: RouteTimer, seq: int) -> None:
        self._retry(seq)

    def _deliver(self, message: Routed) -> None:
        key = (message.source, message.route_id)
        if key in self._delivered:
            return  # a copy retried by a hop that missed our acknowledgement
        self._delivered[key] = None
        if len(self._delivered) > DELIVERED_MEMORY:
            del self._delivered[next(iter(self._delivered))]
        self.context.emit(Deliver(message.route_id, message.source, message.hops, message.payload))

    def _forward(self, message: Routed, attempts: list[int] | None = None) -> None:
        """Sends a routed message one hop on (or delivers it here), tracking it until the hop acknowledges."""
        context = self.context
        if message.target == context.id:
            self._deliver(message)
            return
        table = context.table
        target_slot = context.directory.slot(message.target)
        if target_slot is not None and table.raw_state(target_slot) in (_DEAD, _LEFT):
            self._failed(message, f"target is {State(table.raw_state(target_slot)).name.lower()}")
            return
        hop_limit = context.settings.route_hop_limit
        if message.hops >= hop_limit:
            self._failed(message, f"hop limit {hop_limit} reached")
            return
        attempt = len(attempts) if attempts is not None else 0
        attempts = attempts if attempts is not None else []
        if attempt >= MAX_HOP_TRIES:
            self._failed(message, f"{attempt} attempts at {len(set(attempts))} next hops went unanswered")
            return
        hop = self._next_hop(message, target_slot, attempts)
        if hop is None:
            self._failed(message, "no member closer to the target answers (it is down or unknown)")
            return
        sent = Routed(
            message.route_id,
            message.source,
            message.source_addr,
            message.target,
            message.hops + 1,
            message.payload,
            context.id,
        )
        context.send_to_slot(hop, sent)
        if len(self._forwards) < MAX_PENDING_FORWARDS:
            seq = context.next_seq()
            attempts.append(hop)
            self._forwards[seq] = _Forward(message, hop, attempts)
            self._forward_seq[(message.source, message.route_id)] = seq
            # Back off on retries: a slow member acknowledges late rather than never.
            settings = context.settings
            wait = min(settings.probe_timeout_ms << attempt, 4 * settings.probe_interval_ms)
            context.arm(context.now + wait, RouteTimer.RETRY, seq)

    def _next_hop(self, message: Routed, target_slot: int | None, attempts: list[int]) -> int | None:
        """The hop to try next: the target when linked, else the closest link, else the ring fallback; once
        every way was tried, the best one again."""
        overlay = self.overlay
        tried = set(attempts)
        directory = self.context.directory
        target_pos = directory.positions[target_slot] if target_slot is not None else position(message.target)
        if target_slot is not None and overlay.linked(target_slot) and target_slot not in tried:
            return target_slot
        avoid = self.probing.avoided()
        hop = overlay.next_hop(target_pos, tried, avoid)
        if hop is None:
            hop = self._ring_fallback(target_pos, tried, avoid)
        if hop is None and attempts:
            # Every way forward was tried once: try again the best one (a lost message or a slow
            # member, not necessarily a dead one), with a longer wait.
            if target_slot is not None and overlay.linked(target_slot):
                hop = target_slot
            else:
                hop = overlay.next_hop(target_pos, set(), set())
        return hop

    def _ring_fallback(self, target_pos: int, tried: set[int], avoid: set[int]) -> int | None:
        """When no link gets closer (the near links towards the target are down), the nearest usable
        member in the target's direction from the table: what the near link becomes once repaired."""
        me_pos = self.overlay.position
        ahead = clockwise(me_pos, target_pos)
        step = 1 if ahead <= RING // 2 else -1
        span = ahead if step == 1 else RING - ahead
        directory = self.context.directory
        table = self.context.table
        positions = directory.positions
        for checked, slot in enumerate(directory.walk(me_pos, step)):
            if checked >= 64:
                break
            gone = clockwise(me_pos, positions[slot]) if step == 1 else clockwise(positions[slot], me_pos)
            if gone > span:
                break
            if slot not in tried and slot not in avoid and table.raw_state(slot) == _ALIVE:
                return slot
        return None

    def on_routed(self, message: Routed) -> None:
        if message.via:
            self.context.send_to_id(message.via, RoutedAck(message.route_id, message.source, self.context.id))
        self._forward(message)

    def on_routed_ack(self, message: RoutedAck) -> None:
        seq = self._forward_seq.pop((message.source, message.route_id), None)
        if seq is not None:
            self._forwards.pop(seq, None)

    def _retry(self, seq: int) -> None:
        forward = self._forwards.pop(seq, None)
        if forward is None:
            return
        key = (forward.message.source, forward.message.route_id)
        if self._forward_seq.get(key) == seq:
            del self._forward_seq[key]
        # The hop did not take the message: avoid it for routing until a probe says otherwise, probe it
        # now, and try the next best hop.
        self.probing.distrust(forward.hop)
        self._forward(forward.message, forward.attempts)

    def _failed(self, message: Routed, reason: str) -> None:
        context = self.context
        context.stats.routes_failed += 1
        if message.source == context.id:
            context.emit(RouteFailure(message.route_id, message.target, message.hops, reason))
        else:
            context.send_to_id(
                message.source,
                RouteFailed(message.route_id, context.id, message.target, message.hops, reason),
                message.source_addr,
            )

    def on_route_failed(self, message: RouteFailed) -> None:
        self.context.emit(RouteFailure(message.route_id, message.target, message.hops, message.reason))


__all__ = ["DELIVERED_MEMORY", "MAX_HOP_TRIES", "MAX_PENDING_FORWARDS", "RouteTimer", "Routing"]
