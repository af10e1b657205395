"""Lifeguard's suspicion timers and local health: when a suspect is declared dead, and how much this node
trusts its own judgement.

Suspicion (`Suspicion`): a suspicion times out into `dead` after a timeout that grows with log10(n) and
shrinks from its maximum to its minimum as independent suspicions confirm it (Lifeguard):
min = suspicion_mult * max(1, log10 n) * probe_interval, max = suspicion_max_mult * min
(`suspicion_bounds`, also quoted by the simulator's reports). A suspected member refutes by raising its
incarnation. Only members whose own probe failed run a suspicion timer (memberlist runs one on every
member, which after 8,000 crashes in a 10,000-node cluster is 16 million timers): a suspect stays linked,
so every member linked to it keeps probing it, confirms it and can declare it dead; the others learn the
death by gossip and anti-entropy. A confirmation that brings the deadline forward arms a new timer; the
old one finds the deadline later than itself and does nothing.

Local health (`LocalHealth`, Lifeguard): failed probes with missing Nacks from helpers, and having to
refute, raise a counter (0..max_local_health) that stretches this node's probe period and timeouts;
successful probes lower it. A slow node thereby stops accusing healthy ones.

Keeps true: at most one suspicion per member; a suspicion declares a member dead only while the table
still holds it suspect at the incarnation it was raised for (a refutation or a newer state voids it).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from dsm.core.context import Context
from dsm.core.ring import State
from dsm.core.settings import PeerSettings

_SUSPECT = int(State.SUSPECT)


class SuspicionTimer(enum.Enum):
    """Timer kinds of `Suspicion`."""

    #: A suspicion's deadline (arg: the member's slot).
    TIMEOUT = enum.auto()


def suspicion_bounds(settings: PeerSettings, members: int) -> tuple[int, int]:
    """Lifeguard's suspicion timeout in a cluster of `members` live members, ms: (min, max) = (suspicion_mult
    x max(1, log10 n) x probe_interval_ms, suspicion_max_mult times that); confirmations move a suspicion
    from the max towards the min. The one formula the core uses and the simulator's reports quote."""
    low = int(settings.suspicion_mult * max(1.0, math.log10(max(1, members))) * settings.probe_interval_ms)
    return low, low * settings.suspicion_max_mult


@dataclass(slots=True)
class SuspicionEntry:
    """One running suspicion: raised at `incarnation` at `start`, due at `deadline`, confirmed by these."""

    incarnation: int
    start: int
    deadline: int
    confirmers: set[str] = field(default_factory=set)


class LocalHealth:
    """Lifeguard's local health score (see the module docstring)."""

    __slots__ = ("maximum", "value")

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.value = 0

    def scale(self) -> int:
        """The factor stretching this node's probe period and timeouts."""
        return self.value + 1

    def adjust(self, delta: int) -> None:
        self.value = min(self.maximum, max(0, self.value + delta))


class Suspicion:
    """The suspicion timers this node runs (see the module docstring).

    `expired(slot, incarnation)` is called when a suspicion runs out while the member is still suspect at
    that incarnation: the owner (membership) declares it dead.
    """

    def __init__(self, context: Context, expired: Callable[[int, int], None]) -> None:
        self.context = context
        self.expired = expired
        self.suspicions: dict[int, SuspicionEntry] = {}

    def bounds(self) -> tuple[int, int]:
        return suspicion_bounds(self.context.settings, self.context.table.live_count())

    def _deadline(self, suspicion: SuspicionEntry) -> int:
        low, high = self.bounds()
        k = self.context.settings.indirect_probes
        confirmations = len(suspicion.confirmers) - 1
        if k < 1 or confirmations <= 0:
            timeout = high
        else:
            frac = math.log(confirmations + 1) / math.log(k + 1)
            timeout = max(low, int(high - (high - low) * frac))
        return suspicion.start + timeout

    def start(self, slot: int, incarnation: int, origin: str) -> None:
        """Starts timing a suspicion of `slot` raised at `incarnation` (by `origin`, if not empty)."""
        suspicion = SuspicionEntry(incarnation, self.context.now, 0, {origin} if origin else set())
        suspicion.deadline = self._deadline(suspicion)
        self.suspicions[slot] = suspicion
        self.context.arm(suspicion.deadline, SuspicionTimer.TIMEOUT, slot)

    def confirm(self, slot: int, origin: str) -> None:
        """`origin` suspects `slot` too: an independent confirmation brings the deadline forward."""
        suspicion = self.suspicions.get(slot)
        if suspicion is None or not origin or origin in suspicion.confirmers:
            return
        suspicion.confirmers.add(origin)
        deadline = self._deadline(suspicion)
        if deadline < suspicion.deadline:
            suspicion.deadline = deadline
            self.context.arm(deadline, SuspicionTimer.TIMEOUT, slot)

    def on_timer(self, kind: SuspicionTimer, slot: int) -> None:
        suspicion = self.suspicions.get(slot)
        context = self.context
        if suspicion is None or suspicion.deadline > context.now:
            return
        table = context.table
        if table.raw_state(slot) != _SUSPECT or table.incarnation(slot) != suspicion.incarnation:
            return
        self.expired(slot, suspicion.incarnation)


__all__ = ["LocalHealth", "Suspicion", "SuspicionEntry", "SuspicionTimer", "suspicion_bounds"]
