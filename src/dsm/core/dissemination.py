"""How a write reaches every node: direct updates over a broadcast tree, gossip rounds, adaptive period.

Part of the sans-IO core: `Dissemination` belongs to one node's core; the dispatcher (`Peer`) hands it the
data messages, its timers (`DisseminationTimer`) and the changes of its overlay links; it answers through
the node's `Context` (sends, timers) and with `Store` effects (merge these writes into the local replica).
It never touches the replica itself: what it keeps is bounded and in memory: the ids of writes seen lately
and the payloads of the most recent ones.

Direct updates (an epidemic broadcast tree, after Plumtree, Leitão et al. 2007):
- Every overlay link is *eager* (carries payloads) or *lazy* (carries ids). New links start eager.
- A node that receives a write for the first time stores it and pushes it at once to its eager links
  (except the one it came from), and announces its id (`IHave`) to `lazy_fanout` lazy links at random.
  With `announce_delay_ms` above 0 (default 0: at once), announcements are held, for at most that long,
  until the end of a window that the first held one opens (Plumtree leaves the lazy push policy open;
  riak_core's broadcast sends them on a 1 s tick): those to one link in a window go in one message, one the
  link announced or pushed here meanwhile is left out (a link owed MAX_IDS is told at once), and they no
  longer compete with the wave of pushes for the CPU. A node that lacks a write hears of it up to that much
  later, so the tree repairs later; and announcements that arrive apart from the pushes cost their receivers
  wake-ups of their own (BENCHMARKS "Issue 21, part 6" has both sides).
- A node that receives a write it already has makes that link lazy and tells the sender (`Prune`). The
  eager links thereby thin out to a spanning tree, and each node receives each payload about once.
- Across regions the tree is region-aware (for a node with links into another region). A link into another
  region is pruned at its first duplicate, except the node's last eager link into that region (its
  bridge), which a duplicate or a `Prune` leaves eager; a link within the region only after
  INTRA_REGION_DUPLICATES duplicates in a row (a write it delivers first starts the count again). With
  writers all over a region, the first arrival comes by a different path for each writer, and pruning
  at the first duplicate kept pruning and grafting the same links again: at 50 writes/s the writes reached
  the other region after 300-450 ms (p50) instead of one wide-area hop (measured in the simulated two-region
  cluster, BENCHMARKS "Issue 21, part 4").
- A node that hears an announcement of a write it lacks waits for the tree to deliver it: 3 smoothed
  round-trip times of its gossip exchanges (a few network hops), at least graft_min_ms and at most
  graft_timeout_ms (also the wait before any round trip was measured). If the write does not come, it
  asks the announcer (`Graft`), which sends it and makes the link eager again; a dead announcer is
  followed by the next one. This is how the tree repairs itself after crashes and when links change.
- Direct pushes (`direct_push_max`, default 8): in a small cluster whose members this node all links to,
  it pushes its own writes to every one of them itself (`DirectPush`), and they keep them without passing
  them on (they announce them, as any first receipt, so a lost copy is grafted). A single tree is shaped by
  whichever writers pushed first: with writers on every node some writer's copies take two hops, and on a
  saturated machine the second hop lost to the announcement's graft wait, over and over (on 3 real
  processes under wrk, up to 15,000 grafts in 10 s and a write p99 of 385 ms; BENCHMARKS "Issue 21, part
  1"). A member the writer does not know of yet (a join) is reached by gossip or anti-entropy, as a node
  the tree misses is. The receiver of a level request's `Replicate` from such a writer does not pass it on
  either (`on_replicate`). A node not linked to every member it knows, or in a larger cluster, uses the
  tree; the two mix (a node's eager and lazy links are shaped by the tree's pushes only).
- Gossip leaves a write alone for two graft waits after a node received it (it is listed as `fresh`:
  neither pulled nor sent back), so the tree delivers it first and gossip does not race it. Where gossip
  still brings a write before the tree (a loaded machine, a slow hop), the tree's copy that follows is not
  a duplicate to prune: it goes on to the node's eager links as if it had come first (a write gossip
  brings is not pushed on), and the node holds writes out of gossip longer (up to HOLD_FACTOR_MAX graft
  waits, easing back each round). Pruning there cut the node's subtree off the tree at every such race and
  kept the tree grafting and pruning (1.7 pushed copies per write per node on 30 real processes).

Gossip (push-pull over linked members): every round a node sends the ids of its recent writes to
`gossip_fanout` linked members. The receiver answers with the ids it lacks (which the first node then
sends) and with its own recent writes that the digest did not list and that are in the first half of
their time in its list (an older one not listed was most likely had and dropped from the list): 3
messages, and a payload moves only to a node that did not list it. A recent write stays in the digest for
`gossip_retain_mult * ceil(log10(n + 1))` rounds, enough for gossip alone to reach everyone with high
probability; anti-entropy repairs what outlives that.
Writes marked non-urgent take this path only (bulk loads: fewer messages, no tree traffic).

Adaptive period (between gossip_interval_min_ms and gossip_interval_max_ms, starting at gossip_interval_ms):
- A round in which this node lacked a write (a partner's digest listed it, or gossip brought it new), or a
  write written non-urgent since the last round, halves the period; a round that found nothing stretches
  it by half. Writes a node sends unasked in a reply do not count for it (the partner most often had
  them and only stopped listing them; counting them kept every node at the minimum period while writes
  flowed: 3-4 rounds per second each, two thirds of a node's messages). An idle cluster settles at the
  maximum. A write arriving at an idle node brings its next round forward: to the minimum when gossip is
  what spreads it, to gossip_interval_ms when the broadcast tree carries it, a write grafted after an
  announcement included (gossip then only repairs what the tree missed; rounds at the minimum period
  would cost 15 digests per node per second for nothing). The tree is not trusted, and the minimum
  applies, when more than 10 % of this node's exchanges go unanswered.
- Each round is scheduled at a random point between 3/4 and 5/4 of the period, so nodes woken by the same
  wave of writes do not gossip in lock step.
- The period never drops below 4 smoothed round-trip times of the exchanges, so rounds do not overlap.
- A digest with no reply by the next round counts as lost; with a loss rate p the node contacts
  ceil(fanout / (1 - p)) members (at most twice the fanout), so about `gossip_fanout` exchanges complete.

Message size: a message carrying writes (`Push`, `GossipReply`, `GossipItems`) holds at most
`ITEMS_MAX_BYTES` of keys and version sets, or one write alone when it is larger; more writes go in further
messages (a reply's surplus as `GossipItems`). So no message is larger than one key's largest version set
plus a little, which the transport carries whatever its size (`dsm.net.chunks`).
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from dsm.core.context import Context
from dsm.core.messages import (
    DataItem,
    DataItems,
    DirectPush,
    GossipDigest,
    GossipItems,
    GossipReply,
    Graft,
    IHave,
    Message,
    Prune,
    Push,
    Store,
)
from dsm.core.overlay import Overlay, RandomSource
from dsm.core.ring import State

#: Measured loss rate of gossip exchanges above which the broadcast tree is not trusted to deliver alone.
LOSSY = 0.1

#: Duplicates in a row after which a link within the node's region is pruned, in a cluster of several regions.
INTRA_REGION_DUPLICATES = 3

#: Graft waits a write received by the tree stays out of gossip, at least and at most (`Dissemination._hold`).
HOLD_FACTOR = 2
HOLD_FACTOR_MAX = 16

#: Most ids of one announcement considered, and most writes one Graft is answered with.
MAX_IDS = 4096
MAX_GRAFT = 256
#: Most bytes of keys and version sets one message carries (a single larger write goes alone).
ITEMS_MAX_BYTES = 1 << 20


class DisseminationTimer(enum.Enum):
    """Timer kinds of `Dissemination`."""

    #: A gossip round (arg: the schedule's generation; a round rescheduled since is ignored).
    GOSSIP = enum.auto()
    #: An announced write is still missing (arg: the write's id).
    GRAFT = enum.auto()
    #: The writes level requests brought since the last one go on down the tree (arg: unused).
    FORWARD = enum.auto()
    #: The announcements held for `announce_delay_ms` go out (arg: unused).
    ANNOUNCE = enum.auto()


def update_id(key: str, timestamp: int, node: str) -> int:
    """The 64-bit id of the write of `key` with dot (timestamp, node): what announcements carry."""
    h = hashlib.blake2b(digest_size=8)
    h.update(key.encode())
    h.update(b"\0")
    h.update(timestamp.to_bytes(8, "big", signed=False))
    h.update(node.encode())
    return int.from_bytes(h.digest(), "big")


def batches(items: DataItems, max_bytes: int = ITEMS_MAX_BYTES) -> Iterator[DataItems]:
    """`items` in order, in runs of at most `max_bytes` of keys and version sets (a larger item alone)."""
    start = size = 0
    for i, item in enumerate(items):
        n = len(item.key) + len(item.versions) + 16
        if i > start and size + n > max_bytes:
            yield items[start:i]
            start = i
            size = 0
        size += n
    if start < len(items):
        yield items[start:]


def sample(rng: RandomSource, slots: set[int], count: int, exclude: int) -> list[int]:
    """`count` of `slots` but `exclude` at random (all of them when there are no more)."""
    pool = [s for s in slots if s != exclude]
    if len(pool) <= count:
        return pool
    for i in range(count):
        j = rng.randrange(i, len(pool))
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:count]


def send_items(
    context: Context,
    slots: Sequence[int],
    items: DataItems,
    skips: Sequence[frozenset[int]] | None,
    message: Callable[[DataItems], Message],
) -> None:
    """Sends `items` to each of `slots` in messages `message(batch)` of `batches` of them: the same messages to
    all without `skips`, otherwise each slot its own, leaving out per item the slots of `skips`."""
    send = context.send_to_slot
    if skips is None:
        for batch in batches(items):
            one = message(batch)
            for slot in slots:
                send(slot, one)
        return
    for slot in slots:
        mine = tuple(item for item, skip in zip(items, skips, strict=True) if slot not in skip)
        for batch in batches(mine):
            send(slot, message(batch))


@dataclass(slots=True)
class _Recent:
    item: DataItem
    rounds_left: int
    hops: int
    since: int
    #: Held out of gossip while fresh (`_held`): the broadcast tree carries it (pushed, or published urgent with
    #: direct updates on), or a level request is delivering it (`on_replicate`).
    tree: bool
    #: It came off the tree (by gossip, or by a level request from a member whose tree push would not have
    #: reached this node): the tree's own copy, when it follows, is passed on rather than pruned (`_raced`).
    off_tree: bool = False


def _held(entry: _Recent, now: int, hold: int) -> bool:
    """Whether a recent write is still held out of gossip (the tree carries it, and it is younger than `hold`)."""
    return entry.tree and now - entry.since < hold


def _split_listed(
    recent: dict[int, _Recent], listed: tuple[int, ...], now: int, hold: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ids of a digest: (settled, fresh), the fresh ones held out of gossip for the tree (`_held`)."""
    if not hold:
        return listed, ()
    settled: list[int] = []
    fresh: list[int] = []
    for i in listed:
        (fresh if _held(recent[i], now, hold) else settled).append(i)
    return tuple(settled), tuple(fresh)


def _age_recent(recent: dict[int, _Recent], now: int, hold: int) -> None:
    """One gossip round older: each write stays a bounded number of rounds (counted whether or not it fitted in
    the digest; not while it is held for the tree), and those whose rounds are over leave `recent`."""
    expired = []
    for item_id, entry in recent.items():
        if hold and _held(entry, now, hold):
            continue
        entry.rounds_left -= 1
        if entry.rounds_left <= 0:
            expired.append(item_id)
    for item_id in expired:
        del recent[item_id]


def _holders_of(missing: dict[int, list[tuple[int, int]]], items: DataItems) -> frozenset[int]:
    """The links that announced every one of `items` here before they arrived (they hold them)."""
    holders: set[int] | None = None
    for item in items:
        announcers = {slot for slot, _ in missing.get(item.id, ())}
        holders = announcers if holders is None else holders & announcers
        if not holders:
            return frozenset()
    return frozenset(holders or ())


class DirectPushes:
    """Direct pushes in a small, fully linked cluster (module docstring, "Direct pushes"): whether this node
    pushes its own writes to every member itself, those pushes, and the links that push theirs so."""

    def __init__(self, context: Context, overlay: Overlay) -> None:
        self.context = context
        self.overlay = overlay
        #: Links whose latest pushes of their own writes were direct (`Dissemination.on_direct_push`): their
        #: level requests' writes are not passed on from here either (`Dissemination.on_replicate`).
        self.sources: set[int] = set()

    def active(self) -> bool:
        """Whether at most `direct_push_max` members are up and this node links to every one of them."""
        table = self.context.table
        live = table.live_count()
        if live > self.context.settings.direct_push_max or live < 2:
            return False
        up = (State.ALIVE, State.SUSPECT)
        others = live - (table.state(self.context.me) in up)
        return sum(table.state(slot) in up for slot in self.overlay.links()) >= others

    def push(self, items: DataItems, skips: Sequence[frozenset[int]] | None) -> None:
        """Pushes `items` to every link (leaving out, per item, the slots of `skips`), to be kept there and not
        passed on; this node announces nothing (its receivers do)."""
        source = self.context.id
        send_items(self.context, self.overlay.links(), items, skips, lambda batch: DirectPush(source, batch))


class WriteRate:
    """The writes a node sees per second (its own and the others', each once, by any path), over the last
    whole second or so: the count of the current window of at least a second, rolled over at the first note
    or look after it ends. What anti-entropy holds its rounds back by (`anti_entropy_busy_writes`)."""

    __slots__ = ("_count", "_last", "_start")

    def __init__(self, now: int) -> None:
        self._start = now
        self._count = 0
        self._last = 0

    def note(self, now: int, n: int) -> None:
        if now - self._start >= 1000:
            self._roll(now)
        self._count += n

    def per_second(self, now: int) -> int:
        """The rate of the last window that ended (0 before one has)."""
        if now - self._start >= 1000:
            self._roll(now)
        return self._last

    def _roll(self, now: int) -> None:
        self._last = self._count * 1000 // (now - self._start)
        self._start = now
        self._count = 0


class DisseminationStats:
    """Counters of one node's dissemination work (the simulator sums them)."""

    __slots__ = ("duplicates", "gossip_pulled", "gossip_rounds", "grafts", "lost_exchanges", "prunes", "raced")

    def __init__(self) -> None:
        self.duplicates = 0
        self.grafts = 0
        self.prunes = 0
        self.raced = 0  # pushed duplicates of writes gossip brought first (links left eager)
        self.gossip_rounds = 0
        self.gossip_pulled = 0
        self.lost_exchanges = 0


class Announcements:
    """The announcements (`IHave`) a node owes its lazy links: sent at once with `announce_delay_ms` 0 (the
    default), otherwise held to the end of a window the first held one opens, one message per link for all it
    is owed, leaving out those the link announced or pushed here meanwhile (see the module docstring)."""

    def __init__(self, context: Context, overlay: Overlay) -> None:
        self.context = context
        self.overlay = overlay
        # lazy slot -> {write id: hops}, until the window ends.
        self.held: dict[int, dict[int, int]] = {}
        self.armed = False

    def announce(self, slots: list[int], items: DataItems, hops: int) -> None:
        """Tells `slots` the ids of `items`, at once or at the end of the window (at most `announce_delay_ms`
        from now). A link owed MAX_IDS ids is told at once (what is held stays bounded)."""
        if not slots:
            return
        context = self.context
        delay = context.settings.announce_delay_ms
        if delay <= 0:
            announce = IHave(context.id, hops, tuple(item.id for item in items))
            for slot in slots:
                context.send_to_slot(slot, announce)
            return
        held = self.held
        if not self.armed:
            self.armed = True
            context.arm(context.now + delay, DisseminationTimer.ANNOUNCE, 0)
        for slot in slots:
            ids = held.get(slot)
            if ids is None:
                ids = held[slot] = {}
            for item in items:
                ids.setdefault(item.id, hops)
            if len(ids) >= MAX_IDS:
                del held[slot]
                self._tell(slot, ids)

    def window_ended(self) -> None:
        held, self.held = self.held, {}
        self.armed = False
        for slot, ids in held.items():
            if ids and self.overlay.linked(slot):
                self._tell(slot, ids)

    def has(self, slot: int, ids: Iterable[int]) -> None:
        """`slot` has the writes `ids` (it announced or pushed them here): they are not announced to it. (`ids`
        is only read when announcements to `slot` are held.)"""
        held = self.held.get(slot)
        if held:
            for item_id in ids:
                held.pop(item_id, None)

    def unlinked(self, slot: int) -> None:
        self.held.pop(slot, None)

    def _tell(self, slot: int, ids: dict[int, int]) -> None:
        """One `IHave` per MAX_IDS of `ids` (write id -> hops) to `slot` (its hops: the least of its writes')."""
        order = list(ids)
        for start in range(0, len(order), MAX_IDS):
            part = tuple(order[start : start + MAX_IDS])
            self.context.send_to_slot(slot, IHave(self.context.id, min(ids[i] for i in part), part))


class Dissemination:
    """One node's broadcast tree, recent-write buffers and gossip rounds (see the module docstring)."""

    def __init__(self, context: Context, overlay: Overlay) -> None:
        self.context = context
        self.overlay = overlay
        s = context.settings
        self.settings = s
        self.eager: set[int] = set()
        self.lazy: set[int] = set()
        # Duplicates in a row each eager link within the region delivered (region-aware tree only).
        self.duplicate_runs: dict[int, int] = {}
        # Ids of writes seen (any path), oldest first, bounded: what makes a push a duplicate. OrderedDicts:
        # evicting the oldest of a plain dict (`del d[next(iter(d))]`) walks over the slots freed before it,
        # which grew to tens of microseconds per write once the bound was reached.
        self.seen: OrderedDict[int, None] = OrderedDict()
        # Recent writes, oldest first (payloads for grafts and pulls; ids for digests).
        self.recent: OrderedDict[int, _Recent] = OrderedDict()
        # Announced but not received: id -> announcers [(slot, hops)], tried in order.
        self.missing: dict[int, list[tuple[int, int]]] = {}
        self.period = s.gossip_interval_ms
        self.srtt = 0.0
        self.loss = 0.0
        self.stats = DisseminationStats()
        self.rate = WriteRate(context.now)
        self._exchanges: dict[int, tuple[int, int]] = {}
        self._useful = False
        # Writes level requests brought, to pass on down the tree (`on_replicate`): source slot -> writes.
        self._forwards: dict[int, list[DataItem]] = {}
        self.direct = DirectPushes(context, overlay)
        self.announcements = Announcements(context, overlay)
        # Graft waits a write received by the tree stays out of gossip (`_hold`): HOLD_FACTOR, raised while
        # gossip brings writes ahead of the tree (`_raced`), eased back by each round.
        self.hold_factor = float(HOLD_FACTOR)
        self._generation = 0
        self._next_round = 0

    # ------------------------------------------------------------------ dispatcher interface

    def start(self) -> None:
        """Arms the first gossip round at a random point of the first period."""
        self._schedule(self.context.now + self.context.rng.randrange(max(1, self.period)))

    def link_changed(self, slot: int, delta: int) -> None:
        if delta > 0:
            self._make_eager(slot)
        else:
            self.eager.discard(slot)
            self.lazy.discard(slot)
            self.duplicate_runs.pop(slot, None)
            self.direct.sources.discard(slot)
            self.announcements.unlinked(slot)
            self._keep_one_eager()

    def publish(self, items: DataItems, urgent: bool = True, skips: Sequence[frozenset[int]] | None = None) -> None:
        """This node coordinated these writes (already in its replica): spread them. With `skips` (one set
        of slots per item), the tree's push of each item leaves out those eager links: members a level
        request's `Replicate` carries it to, which pass it on down the tree themselves (`on_replicate`). In a
        small cluster whose members this node all links to, it pushes them to every member itself (direct
        pushes, see the module docstring)."""
        retain = self._retain()
        tree = urgent and self.settings.direct_updates
        self.rate.note(self.context.now, len(items))
        for item in items:
            self._remember(item.id)
            self.recent[item.id] = _Recent(item, retain, 0, self.context.now, tree)
        self._trim_recent()
        self._became_busy(tree)
        if tree:
            if self.direct.active():
                self.direct.push(items, skips)
            else:
                self._push_out(items, 0, -1, skips)

    def on_replicate(self, items: DataItems, source: str) -> None:
        """A level request's `Replicate` brought `source`'s writes (the driver stores them and answers). When
        `source` is an eager link, its tree push left this node out (`publish`'s `skips`): the writes go on
        down the tree from here as if pushed, so the payload crosses that link once; not when `source` pushes
        its writes directly (it sent them to every other member itself). Otherwise they are only
        remembered: the tree's copy that follows is passed on, not pruned (`_raced`). Either way they stay
        out of gossip for the hold, as pushed writes do."""
        seen = self.seen
        new = tuple(item for item in items if item.id and item.id not in seen)
        if not new:
            return
        slot = self._link_slot(source)
        direct = slot is not None and slot in self.direct.sources
        tree = slot is not None and slot in self.eager and not direct
        retain = self._retain()
        self.rate.note(self.context.now, len(new))
        for item in new:
            self._remember(item.id)
            # Held out of gossip either way (the level request is delivering it to others as well).
            self.recent[item.id] = _Recent(item, retain, 1, self.context.now, True, not tree and not direct)
            self.missing.pop(item.id, None)
        self._trim_recent()
        self._became_busy(True)
        if tree and self.settings.direct_updates:
            assert slot is not None
            # Passed on together with the others that arrive in the same moment (a timer due now fires once
            # the messages at hand are handled): a coordinator under load sends a `Replicate` per write, and
            # one push per write down the tree would cost a message per write where its own push carried many.
            forwards = self._forwards
            if not forwards:
                self.context.arm(self.context.now, DisseminationTimer.FORWARD, 0)
            forwards.setdefault(slot, []).extend(new)

    def on_timer(self, kind: DisseminationTimer, arg: int) -> None:
        if kind is DisseminationTimer.GOSSIP:
            if arg == self._generation:
                self._gossip_round()
        elif kind is DisseminationTimer.FORWARD:
            forwards, self._forwards = self._forwards, {}
            for source, items in forwards.items():
                self._push_out(tuple(items), 1, source)
        elif kind is DisseminationTimer.ANNOUNCE:
            self.announcements.window_ended()
        else:
            self._graft_due(arg)

    # ------------------------------------------------------------------ helpers

    def _retain(self) -> int:
        n = self.context.table.live_count()
        return self.settings.gossip_retain_mult * max(1, math.ceil(math.log10(n + 1)))

    def _remember(self, item_id: int) -> None:
        seen = self.seen
        seen[item_id] = None
        if len(seen) > self.settings.seen_max:
            seen.popitem(last=False)

    def _trim_recent(self) -> None:
        recent = self.recent
        for _ in range(len(recent) - self.settings.max_recent):
            recent.popitem(last=False)  # the oldest

    def _make_eager(self, slot: int) -> None:
        self.lazy.discard(slot)
        self.eager.add(slot)

    def _make_lazy(self, slot: int) -> None:
        self.eager.discard(slot)
        self.lazy.add(slot)
        self.duplicate_runs.pop(slot, None)

    def _push_out(
        self,
        items: DataItems,
        hops: int,
        exclude: int,
        skips: Sequence[frozenset[int]] | None = None,
        holders: frozenset[int] = frozenset(),
    ) -> None:
        """Pushes `items` on every eager link but `exclude`'s (leaving out, per item, the slots of `skips`),
        and announces them to `lazy_fanout` lazy links, not to `holders` (lazy links that announced them
        here: they have them)."""
        context = self.context
        source = context.id
        slots = [slot for slot in self.eager if slot != exclude]
        send_items(context, slots, items, skips, lambda batch: Push(source, hops, batch))
        if self.settings.lazy_fanout and self.lazy:
            lazy = self.lazy - holders if holders else self.lazy
            self.announcements.announce(sample(context.rng, lazy, self.settings.lazy_fanout, exclude), items, hops)

    def _accept(self, items: DataItems, source: str, path: str, hops: int) -> DataItems:
        """Remembers the writes among `items` not seen before, asks the runtime to store them and returns
        them."""
        seen = self.seen
        new = tuple(item for item in items if item.id not in seen)
        if not new:
            return new
        retain = self._retain()
        recent = self.recent
        missing = self.missing
        self.rate.note(self.context.now, len(new))
        for item in new:
            self._remember(item.id)
            recent[item.id] = _Recent(item, retain, hops, self.context.now, path == "push", path != "push")
            missing.pop(item.id, None)
        self._trim_recent()
        self.context.emit(Store(new, source, path, hops))
        # Pushed, or sent in answer to a graft (a write announced and missing): the tree delivered it, or
        # repaired itself to; gossip is not what spread it.
        self._became_busy(path == "push")
        return new

    def _became_busy(self, tree: bool) -> None:
        """A write arrived or was written here. If the broadcast tree carries it (`tree`), gossip has only
        to repair what the tree misses: the period comes down to gossip_interval_ms at most. Otherwise
        gossip is what spreads it: the next round counts as useful and comes at the minimum period."""
        s = self.settings
        if tree and self.loss > LOSSY:
            tree = False  # digests go unanswered (a crash, a lossy network): do not count on the tree
        if not tree:
            self._useful = True
        if not s.gossip_adaptive:
            return
        target = min(
            s.gossip_interval_max_ms, max(s.gossip_interval_ms if tree else s.gossip_interval_min_ms, self._rtt_floor())
        )
        if self.period > target:
            self.period = target
            now = self.context.now
            if self._next_round > now + self.period:
                self._schedule(now + self._jittered(self.period))

    def _graft_wait(self) -> int:
        s = self.settings
        if self.srtt <= 0.0:
            return s.graft_timeout_ms
        return min(s.graft_timeout_ms, max(s.graft_min_ms, int(3 * self.srtt)))

    def _rtt_floor(self) -> int:
        return int(4 * self.srtt)

    def _jittered(self, period: int) -> int:
        """A period between 3/4 and 5/4 of `period`: nodes woken by the same wave of writes do not gossip
        in lock step (which makes several partners send the same writes to one node at once)."""
        return max(1, period * 3 // 4 + self.context.rng.randrange(max(1, period // 2 + 1)))

    def _schedule(self, when: int) -> None:
        self._generation += 1
        self._next_round = when
        self.context.arm(when, DisseminationTimer.GOSSIP, self._generation)

    def _link_slot(self, node_id: str) -> int | None:
        slot = self.context.directory.slot(node_id)
        if slot is None or not self.overlay.linked(slot):
            return None
        return slot

    # ------------------------------------------------------------------ broadcast tree

    def on_push(self, message: Push) -> None:
        slot = self._link_slot(message.source)
        hops = message.hops + 1
        if message.hops == 0 and slot is not None:
            self.direct.sources.discard(slot)  # its own writes come down the tree now
        holders = _holders_of(self.missing, message.items) if self.missing else frozenset()
        new = self._accept(message.items, message.source, "push", hops)
        if not new:
            self.stats.duplicates += 1
            if slot is not None:
                self.announcements.has(slot, (item.id for item in message.items))
            if self._raced(message.items):
                # Gossip brought them first, and a write gossip brings is not pushed on: the tree's copy
                # goes on now, to this node's eager links, as it would have had it come first.
                if self.settings.direct_updates:
                    self._push_out(message.items, hops, -1 if slot is None else slot)
                return
            if slot is not None and slot in self.eager and self._prunable(slot, duplicate=True):
                self._make_lazy(slot)
                self.stats.prunes += 1
                self.context.send_to_slot(slot, Prune(self.context.id))
                self._keep_one_eager()
            return
        if slot is not None and slot in self.duplicate_runs:
            self.duplicate_runs[slot] = 0  # it delivered first: its run of duplicates starts again
        if slot is not None and slot in self.lazy:
            self._make_eager(slot)
        if self.settings.direct_updates:
            self._push_out(new, hops, -1 if slot is None else slot, holders=holders)

    def on_direct_push(self, message: DirectPush) -> None:
        """Writes their coordinator pushed to every member itself (`publish`): kept here and announced to
        `lazy_fanout` other links, not passed on; a duplicate (gossip or a level request brought them first)
        prunes nothing."""
        slot = self._link_slot(message.source)
        if slot is not None:
            self.direct.sources.add(slot)
        new = self._accept(message.items, message.source, "push", 1)
        if not new:
            self.stats.duplicates += 1
            if slot is not None:
                self.announcements.has(slot, (item.id for item in message.items))
            return
        if self.settings.lazy_fanout:
            # Announced on, as a first receipt down the tree is: a member whose copy was lost (a connection that
            # broke) grafts it from here rather than wait for gossip (simulator, 6 nodes, 5 % of messages lost:
            # time to all p99 48 ms with the announcements, 749 ms without).
            others = set(self.overlay.links())
            self.announcements.announce(
                sample(self.context.rng, others, self.settings.lazy_fanout, -1 if slot is None else slot), new, 1
            )

    def _raced(self, items: DataItems) -> bool:
        """Whether a pushed duplicate is the tree's first copy of writes gossip (or a level request, see
        `on_replicate`) brought here before it: the link is then not pruned (it is the tree working, later
        than gossip; pruning it would cut this node off the tree and cost a graft at the next write), the
        writes go on down the tree from here, and, after gossip, the writes this node offers to gossip are
        held longer (`hold_factor`), since gossip runs ahead of the tree here."""
        recent = self.recent
        entries = [recent.get(item.id) for item in items]
        if not entries or any(e is None or not e.off_tree for e in entries):
            return False
        gossip = False
        for entry in entries:
            assert entry is not None
            gossip = gossip or not entry.tree
            entry.tree, entry.off_tree = True, False  # a second pushed copy is a plain duplicate
        self.stats.raced += 1
        if gossip:
            self.hold_factor = min(HOLD_FACTOR_MAX, self.hold_factor * 1.5)
        return True

    def on_prune(self, message: Prune) -> None:
        slot = self._link_slot(message.source)
        if slot is not None and slot in self.eager and self._prunable(slot, duplicate=False):
            self._make_lazy(slot)
            self._keep_one_eager()

    def _prunable(self, slot: int, duplicate: bool) -> bool:
        """Whether an eager link that delivered a duplicate (or whose far end sent `Prune`) goes lazy: always
        in a node whose links are all in its own region; in one with links into other regions, a link into
        another region unless it is the last eager one into it (the bridge), and a link within the region at
        its INTRA_REGION_DUPLICATES-th duplicate in a row (see the module docstring)."""
        infos = self.context.directory.infos
        mine = infos[self.context.me].region
        region = infos[slot].region
        if region != mine:
            return any(other != slot and infos[other].region == region for other in self.eager)
        if all(infos[other].region == mine for other in itertools.chain(self.eager, self.lazy)):
            return True  # one region: the plain tree
        if not duplicate:
            return True
        runs = self.duplicate_runs
        runs[slot] = runs.get(slot, 0) + 1
        return runs[slot] >= INTRA_REGION_DUPLICATES

    def _keep_one_eager(self) -> None:
        """A node whose links have all become lazy is cut off from the tree until an announcement reaches
        it: it grafts one lazy link at once instead."""
        if self.eager or not self.lazy:
            return
        slot = sample(self.context.rng, self.lazy, 1, -1)[0]
        self._make_eager(slot)
        self.context.send_to_slot(slot, Graft(self.context.id, ()))

    def on_ihave(self, message: IHave) -> None:
        slot = self._link_slot(message.source)
        if slot is None:
            slot = self.context.directory.slot(message.source)
            if slot is None:
                return
        self.announcements.has(slot, itertools.islice(message.ids, MAX_IDS))
        seen = self.seen
        missing = self.missing
        due = self.context.now + self._graft_wait()
        for item_id in message.ids[:MAX_IDS]:
            if len(missing) >= self.settings.seen_max:
                break
            if item_id in seen:
                continue
            announcers = missing.get(item_id)
            if announcers is None:
                missing[item_id] = [(slot, message.hops)]
                self.context.arm(due, DisseminationTimer.GRAFT, item_id)
            elif len(announcers) < 8:
                announcers.append((slot, message.hops))

    def _graft_due(self, item_id: int) -> None:
        announcers = self.missing.get(item_id)
        if announcers is None:
            return
        if item_id in self.seen or not announcers:
            del self.missing[item_id]
            return
        slot, _ = announcers.pop(0)
        self.stats.grafts += 1
        if self.overlay.linked(slot):
            self._make_eager(slot)
        self.context.send_to_slot(slot, Graft(self.context.id, (item_id,)))
        # If that announcer does not answer, the next one is asked; with none left the entry stays (empty)
        # one more timeout, so a late announcement does not start the wait over.
        self.context.arm(self.context.now + self._graft_wait(), DisseminationTimer.GRAFT, item_id)

    def on_graft(self, message: Graft) -> None:
        slot = self._link_slot(message.source)
        if slot is not None:
            self._make_eager(slot)
        recent = self.recent
        found = [recent[i] for i in message.ids[:MAX_GRAFT] if i in recent]
        if found:
            hops = min(entry.hops for entry in found)
            for batch in batches(tuple(e.item for e in found)):
                self.context.send_to_id(message.source, Push(self.context.id, hops, batch))

    # ------------------------------------------------------------------ gossip rounds

    def _gossip_round(self) -> None:
        s = self.settings
        context = self.context
        now = context.now
        if self._exchanges:
            self.stats.lost_exchanges += len(self._exchanges)
            for _ in self._exchanges:
                self.loss = 0.9 * self.loss + 0.1
            self._exchanges.clear()
        if s.gossip_adaptive:
            period = self.period // 2 if self._useful else self.period * 3 // 2
            self.period = min(s.gossip_interval_max_ms, max(s.gossip_interval_min_ms, self._rtt_floor(), period))
        else:
            self.period = s.gossip_interval_ms
        self._useful = False
        self.hold_factor = max(HOLD_FACTOR, self.hold_factor * 0.95)
        self._schedule(now + (self._jittered(self.period) if s.gossip_adaptive else self.period))
        if not context.joined:
            return
        self.stats.gossip_rounds += 1
        fanout = s.gossip_fanout
        if s.gossip_adaptive and self.loss > 0.0:
            fanout = min(2 * fanout, math.ceil(fanout / max(0.5, 1.0 - self.loss)))
        links = self.overlay.links()
        if not links:
            return
        targets = sample(self.context.rng, set(links), fanout, -1)
        recent = self.recent
        listed = tuple(itertools.islice(reversed(recent), s.max_digest_ids)) if recent else ()
        hold = self._hold()
        ids, fresh = _split_listed(recent, listed, now, hold)
        for slot in targets:
            seq = context.next_seq()
            self._exchanges[seq] = (slot, now)
            context.send_to_slot(slot, GossipDigest(seq, context.id, ids, fresh))
        _age_recent(recent, now, hold)

    def _hold(self) -> int:
        """How long a write just received stays out of gossip, so the broadcast tree delivers it first:
        `hold_factor` graft waits (2 at rest, up to HOLD_FACTOR_MAX while gossip races the tree), at most 4
        graft timeouts; 0 without direct updates."""
        if not self.settings.direct_updates:
            return 0
        return min(self.settings.graft_timeout_ms * HOLD_FACTOR_MAX // 4, int(self.hold_factor * self._graft_wait()))

    def on_digest(self, message: GossipDigest) -> None:
        seen = self.seen
        want = tuple(i for i in message.ids if i not in seen)
        listed = set(message.ids)
        listed.update(message.fresh)
        hold = self._hold()
        now = self.context.now
        # Only writes in the first half of their time in the digest are sent unasked: a node that does not
        # list an older one most likely had it and let it out of its own list (the nodes' lists are of
        # equal length, and a write reaches everyone within a few rounds); it is still pulled if missing.
        half = self._retain() / 2
        # Only among this node's newest max_digest_ids writes: the digest lists no more than that, so an
        # older one missing from it says nothing about the partner.
        recent = self.recent
        items = tuple(
            entry.item
            for entry in (recent[i] for i in itertools.islice(reversed(recent), self.settings.max_digest_ids))
            if entry.item.id not in listed and entry.rounds_left > half and not _held(entry, now, hold)
        )
        if want:
            # This node lacked writes. Sending the partner writes it did not list is not counted here: most
            # often it had them and only stopped listing them; if they are new there, its own period comes
            # down (`_pulled`). Counted here, they kept every node at the minimum period while writes flowed.
            self._useful = True
        parts = batches(items)
        context = self.context
        context.send_to_id(message.source, GossipReply(message.seq, context.id, want, next(parts, ())))
        for rest in parts:
            context.send_to_id(message.source, GossipItems(context.id, rest))

    def on_reply(self, message: GossipReply) -> None:
        exchange = self._exchanges.get(message.seq)
        # Only the member the digest went to closes the exchange: a reply from anyone else (a stale or
        # forged seq) would skew the measured round-trip time and loss.
        if exchange is not None and self.context.directory.slot(message.source) == exchange[0]:
            del self._exchanges[message.seq]
            rtt = self.context.now - exchange[1]
            self.srtt = rtt if self.srtt == 0.0 else 0.875 * self.srtt + 0.125 * rtt
            self.loss *= 0.9
        if message.items:
            self._pulled(message.items, message.source)
        recent = self.recent
        items = tuple(recent[i].item for i in message.want if i in recent)
        if items:
            self._useful = True
            for batch in batches(items):
                self.context.send_to_id(message.source, GossipItems(self.context.id, batch))

    def on_items(self, message: GossipItems) -> None:
        self._pulled(message.items, message.source)

    def _pulled(self, items: DataItems, source: str) -> None:
        new = self._accept(items, source, "gossip", 0)
        self.stats.gossip_pulled += len(new)


__all__ = ["DataItem", "Dissemination", "DisseminationTimer", "WriteRate", "update_id"]
