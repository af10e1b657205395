"""`Probing`: SWIM's failure detector with Lifeguard's refinements: probes, indirect probes through helpers,
the relays this node runs for others, and the measured loss.

How it works:
- Every period (probe_interval_ms, stretched by local health) the node probes one of its *linked* members,
  round robin in a shuffled order: a Ping; if no Ack within probe_timeout_ms, PingReq through
  `indirect_probes` other linked members; if still nothing by the end of the period, the member becomes
  suspect (`Membership.suspect`). Probing only linked members keeps connections bounded; every member has
  near links, so every member is probed (a crashed one about once per period, by one of its ~48 linked
  peers). New near links and members gossip says are suspect go to the front of the order.
- Helpers are alive linked members, those heard from recently first; only those are expected to Nack. A
  failed probe with missing Nacks raises local health (suspicion.py); an answered one lowers it.
- Loss: each node measures how often a member that answered in the end missed the direct probe's
  timeout (a moving average; a crashed member's silence does not count). Under heavy measured loss a
  missed direct probe is retried, helpers retry their ping, and up to indirect_probes_max helpers are
  asked, so that loss alone rarely fails a probe of a live member (`helper_count`).
- Routing reports a next hop that did not acknowledge (`distrust`): it is avoided as a helper and as a
  next hop until a probe of it succeeds, and it is probed at once.

Keeps true: at most MAX_PROBES probes in flight and at most one per member; a probe ends (answered or
not) one period after it started; only probes the target answered move the loss estimate.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from dsm.core.context import Context
from dsm.core.links import Links
from dsm.core.membership import Membership
from dsm.core.messages import Ack, Nack, Ping, PingReq, Send
from dsm.core.overlay import Overlay
from dsm.core.ring import State
from dsm.core.suspicion import LocalHealth

_ALIVE = int(State.ALIVE)

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


class ProbeTimer(enum.Enum):
    """Timer kinds of `Probing`."""

    #: The next probe period (arg unused).
    PERIOD = enum.auto()
    #: A probe's direct answer is late: ask helpers (arg: the probe's seq).
    TIMEOUT = enum.auto()
    #: A probe's period is over: the target answered or is suspected (arg: the probe's seq).
    END = enum.auto()
    #: A relayed ping is late: Nack the asker (arg: the relay's seq).
    RELAY_NACK = enum.auto()
    #: A relay is forgotten (arg: the relay's seq).
    RELAY_END = enum.auto()


@dataclass(slots=True)
class _Probe:
    target: int
    acked: bool = False
    timed_out: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(frozen=True, slots=True)
class _Relay:
    asker: str
    asker_seq: int
    target: str
    target_addr: str


class Probing:
    """This node's probes and relays (see the module docstring)."""

    def __init__(
        self, context: Context, overlay: Overlay, membership: Membership, links: Links, health: LocalHealth
    ) -> None:
        self.context = context
        self.overlay = overlay
        self.membership = membership
        self.links = links
        self.health = health
        # Measured chance that a direct probe of a live member gets no answer within probe_timeout_ms
        # (its Ping or Ack lost, or the member slow): the moving average, over probes that the target
        # answered in the end, of whether the direct answer came too late.
        # It starts at 1/2 as if one of two probes had missed (Laplace's rule), so that a node that
        # starts into heavy loss is careful from its first probe; a few answered probes bring it down.
        self.loss_estimate = 0.5
        self._loss_samples = 2
        # When each member was last heard from (any message from it; the dispatcher records it): helpers
        # heard from recently are trusted to answer a PingReq, so their missing Nack counts against this
        # node's own health.
        self.heard: dict[int, int] = {}
        self._probes: dict[int, _Probe] = {}
        self._probing: set[int] = set()
        self._relays: dict[int, _Relay] = {}
        self._order: list[int] = []
        # Members whose last routed message went unacknowledged and that no probe has cleared since: until.
        self._avoid: dict[int, int] = {}
        self._on_timer = {
            ProbeTimer.PERIOD: self._period,
            ProbeTimer.TIMEOUT: self._timeout,
            ProbeTimer.END: self._end,
            ProbeTimer.RELAY_NACK: self._relay_nack,
            ProbeTimer.RELAY_END: self._relay_end,
        }

    def start(self) -> None:
        """Arms the first period at a random point of one, so nodes started together do not probe in
        lock step."""
        context = self.context
        context.arm(
            context.now + context.rng.randrange(max(1, context.settings.probe_interval_ms)), ProbeTimer.PERIOD, 0
        )

    def on_timer(self, kind: ProbeTimer, arg: int) -> None:
        self._on_timer[kind](arg)

    def probing(self, slot: int) -> bool:
        """Whether a probe of `slot` is in flight."""
        return slot in self._probing

    # ------------------------------------------------------------------ what other parts report

    def probe_soon(self, slot: int) -> None:
        """Gossip says `slot` is suspect: if it is linked, probe it next (our own failed probe would be an
        independent confirmation)."""
        if self.overlay.linked(slot):
            self._order.append(slot)

    def distrust(self, slot: int) -> None:
        """`slot` did not take a routed message: avoid it until a probe says otherwise, and probe it now
        (a dead hop is then suspected within a period)."""
        context = self.context
        self._avoid[slot] = context.now + context.settings.probe_interval_ms * 4
        if self.overlay.usable(slot):
            self.start_probe(slot)

    def avoided(self) -> set[int]:
        """Members whose last routed message went unacknowledged and that no probe has cleared since."""
        now = self.context.now
        expired = [slot for slot, until in self._avoid.items() if until <= now]
        for slot in expired:
            del self._avoid[slot]
        return set(self._avoid)

    # ------------------------------------------------------------------ probes

    def _next_target(self) -> int | None:
        order = self._order
        overlay = self.overlay
        rng = self.context.rng
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
            rng.shuffle(far)
            close = list(overlay.near)
            rng.shuffle(close)
            order.extend(far)
            order.extend(close)
        return None

    def _period(self, _: int) -> None:
        context = self.context
        interval = context.settings.probe_interval_ms * self.health.scale()
        context.arm(context.now + interval, ProbeTimer.PERIOD, 0)
        if not context.joined:
            return
        self.links.maintain()
        target = self._next_target()
        if target is not None:
            self.start_probe(target)

    def start_probe(self, target: int) -> None:
        """Pings `target`; indirect probes after the timeout; suspicion if nothing by the period's end."""
        if target in self._probing or len(self._probes) >= MAX_PROBES:
            return
        context = self.context
        scale = self.health.scale()
        seq = context.next_seq()
        self._probes[seq] = _Probe(target)
        self._probing.add(target)
        context.stats.probes += 1
        node_id = context.directory.infos[target].node_id
        context.send_to_slot(target, Ping(seq, context.id, node_id, self.membership.piggyback_for(target)))
        context.arm(context.now + context.settings.probe_timeout_ms * scale, ProbeTimer.TIMEOUT, seq)
        context.arm(context.now + context.settings.probe_interval_ms * scale, ProbeTimer.END, seq)

    def helper_count(self) -> int:
        """How many helpers to ask after a missed direct probe: indirect_probes, more under measured loss.

        With p the measured chance that a direct probe misses (and so that its retry misses too), one
        helper fails with about q = 1 - (1 - p)^2 (two round trips); enough helpers are asked that
        p^2 * q^k stays under PROBE_MISS_TARGET, up to indirect_probes_max."""
        settings = self.context.settings
        low, high = settings.indirect_probes, settings.indirect_probes_max
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

    def _timeout(self, seq: int) -> None:
        probe = self._probes.get(seq)
        if probe is None or probe.acked:
            return
        probe.timed_out = True
        context = self.context
        membership = self.membership
        target_info = context.directory.infos[probe.target]
        if self.loss_estimate >= LOSS_RETRY:
            # Under heavy loss the first Ping or its Ack was most likely just lost: ask once more.
            ping = Ping(seq, context.id, target_info.node_id, membership.piggyback_for(probe.target))
            context.send_to_slot(probe.target, ping)
        # Helpers: alive linked members, those heard from recently first. Only those are expected to Nack:
        # after a mass failure most links are dead, and blaming ourselves for their silence (as counting
        # every helper would) would stretch our period exactly when detection matters most.
        recent = context.now - 2 * context.settings.probe_interval_ms
        heard = self.heard
        table = context.table
        fresh: list[int] = []
        stale: list[int] = []
        for slot in self.overlay.links():
            if slot != probe.target and table.raw_state(slot) == _ALIVE and slot not in self._avoid:
                (fresh if heard.get(slot, -1) >= recent else stale).append(slot)
        context.rng.shuffle(fresh)
        context.rng.shuffle(stale)
        helpers = (fresh + stale)[: self.helper_count()]
        for slot in helpers:
            ask = PingReq(seq, context.id, target_info.node_id, target_info.addr, membership.piggyback())
            context.send_to_slot(slot, ask)
        probe.expected_nacks = min(len(fresh), len(helpers))

    def _end(self, seq: int) -> None:
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
        self.context.stats.probes_failed += 1
        self.health.adjust(max(0, probe.expected_nacks - probe.nacks) if probe.expected_nacks else 1)
        if self.overlay.usable(probe.target):
            self.membership.suspect(probe.target)
        if probe.expected_nacks and probe.nacks >= probe.expected_nacks and self.health.value == 0:
            # Helpers confirmed the failure and this node is healthy: failures are often correlated (a
            # rack, a region), so probe the next link now instead of waiting for the next period.
            target = self._next_target()
            if target is not None:
                self.start_probe(target)

    # ------------------------------------------------------------------ messages

    def on_ping(self, message: Ping) -> None:
        self.membership.apply_all(message.updates)
        if message.target != self.context.id:
            return  # meant for a previous holder of this address
        self.context.send_to_id(message.source, Ack(message.seq, self.context.id, self.membership.piggyback()))

    def on_ping_req(self, message: PingReq) -> None:
        self.membership.apply_all(message.updates)
        context = self.context
        seq = context.next_seq()
        self._relays[seq] = _Relay(message.source, message.seq, message.target, message.target_addr)
        ping = Ping(seq, context.id, message.target, self.membership.piggyback())
        context.emit(Send(message.target, message.target_addr, ping))
        context.arm(context.now + context.settings.probe_timeout_ms * 4 // 5, ProbeTimer.RELAY_NACK, seq)
        context.arm(context.now + context.settings.probe_interval_ms, ProbeTimer.RELAY_END, seq)

    def on_ack(self, message: Ack) -> None:
        self.membership.apply_all(message.updates)
        probe = self._probes.get(message.seq)
        if probe is not None:
            if not probe.acked:
                probe.acked = True
                self._avoid.pop(probe.target, None)
                self.health.adjust(-1)
            return
        relay = self._relays.pop(message.seq, None)
        if relay is not None:
            self.context.send_to_id(relay.asker, Ack(relay.asker_seq, message.source, ()))

    def on_nack(self, message: Nack) -> None:
        probe = self._probes.get(message.seq)
        if probe is not None:
            probe.nacks += 1

    def _relay_nack(self, seq: int) -> None:
        relay = self._relays.get(seq)
        if relay is None:
            return
        context = self.context
        context.send_to_id(relay.asker, Nack(relay.asker_seq, context.id))
        if self.loss_estimate >= LOSS_RETRY:
            # Heavy loss: our Ping or its Ack was most likely lost; try once more.
            ping = Ping(seq, context.id, relay.target, self.membership.piggyback())
            context.emit(Send(relay.target, relay.target_addr, ping))

    def _relay_end(self, seq: int) -> None:
        self._relays.pop(seq, None)


__all__ = ["LOSS_ALPHA", "LOSS_RETRY", "MAX_PROBES", "PROBE_MISS_TARGET", "ProbeTimer", "Probing"]
