"""`Context`: what the parts of one node's core share: the time, randomness, sequence numbers, timers and
the outbox, and the node's own identity, directory and member table.

Owns the ports of a node's sans-IO core. Each part (membership, suspicion, probing, member sync, joining,
links, routing, dissemination, store sync) is built with the one `Context` of its node and asks it for the
current time, the injected rng, a fresh sequence number, a timer or a send; the parts never reach into
each other's state and never read a clock or draw randomness of their own.

How it works:
- `now` is set by the dispatcher (`Peer`) at every event through `advance`, which asserts that time never
  goes backwards; the parts only read it.
- One counter hands out sequence numbers: probe and relay ids, routed-message ids, link requests, gossip
  exchanges, anti-entropy sessions, and the tie-breaker of every timer. One counter for all of them keeps
  the numbering (and so the order of equal-time timers) independent of how the core is split into parts.
- Timers are a heap of (when, seq, kind, arg). A kind is a member of an `Enum` owned by the part that arms
  it; the dispatcher hands each due timer to the part that owns the kind's enum type. Timers are never
  cancelled: a part checks, when one fires, whether it still matters.
- The outbox collects effects in the order the parts produce them; the dispatcher `flush`es it after every
  event and returns the list to the runtime.

Keeps true: time is monotonic; sequence numbers are unique and increasing; timers fire in (when, seq)
order; effects leave in the order they were produced.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from enum import Enum

from dsm.core.messages import Effect, Message, Send
from dsm.core.overlay import RandomSource
from dsm.core.ring import Directory, MemberInfo, MemberTable
from dsm.core.settings import PeerSettings


@dataclass
class PeerStats:
    """Counters of what this node did (the simulator sums them); each part counts its own."""

    probes: int = 0
    probes_failed: int = 0
    suspicions_raised: int = 0
    deaths_declared: int = 0
    refutations: int = 0
    routes_failed: int = 0
    link_refusals: int = 0
    bad_updates: int = 0
    bad_messages: int = 0


class Context:
    """The shared ports of one node's core (see the module docstring)."""

    __slots__ = (
        "directory",
        "id",
        "info",
        "joined",
        "left",
        "me",
        "now",
        "out",
        "rng",
        "seq",
        "settings",
        "stats",
        "table",
        "timers",
    )

    def __init__(
        self, info: MemberInfo, settings: PeerSettings, rng: RandomSource, now: int, directory: Directory
    ) -> None:
        self.info = info
        self.id = info.node_id
        self.settings = settings
        self.rng = rng
        self.directory = directory
        #: This node's slot in the directory.
        self.me = directory.intern(info)
        self.table = MemberTable(directory)
        self.stats = PeerStats()
        self.now = now
        #: The node got the cluster's table (or started a new cluster); a part that talks to members waits
        #: for it.
        self.joined = False
        #: The node left for good: it handles nothing more.
        self.left = False
        self.seq = 0
        #: The timer heap: (when, seq, kind, arg); the dispatcher pops the due ones.
        self.timers: list[tuple[int, int, Enum, int]] = []
        self.out: list[Effect] = []

    # ------------------------------------------------------------------ time and sequence numbers

    def advance(self, now: int) -> None:
        """The dispatcher's clock reading for the event being handled.

        Raises:
            AssertionError: `now` is earlier than the previous reading (a runtime bug).
        """
        assert now >= self.now, f"time went backwards at {self.id}: {now} < {self.now}"
        self.now = now

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # ------------------------------------------------------------------ timers

    def arm(self, when: int, kind: Enum, arg: int) -> None:
        """Asks for `kind` (with `arg`) to be handed to the part owning `type(kind)` at `when` (ms)."""
        heapq.heappush(self.timers, (when, self.next_seq(), kind, arg))

    def next_deadline(self) -> int | None:
        return self.timers[0][0] if self.timers else None

    def clear_timers(self) -> None:
        self.timers.clear()

    # ------------------------------------------------------------------ outbox

    def send_to_slot(self, slot: int, message: Message) -> None:
        info = self.directory.infos[slot]
        self.out.append(Send(info.node_id, info.addr, message))

    def send_to_id(self, node_id: str, message: Message, addr: str = "") -> None:
        """Sends to `node_id` at `addr`, or at its address in the directory when `addr` is empty."""
        slot = self.directory.slot(node_id)
        if slot is not None and not addr:
            addr = self.directory.infos[slot].addr
        self.out.append(Send(node_id, addr, message))

    def emit(self, effect: Effect) -> None:
        self.out.append(effect)

    def flush(self) -> list[Effect]:
        """The effects produced since the last flush, in order; the outbox is then empty."""
        out, self.out = self.out, []
        return out


__all__ = ["Context", "PeerStats"]
