"""`MemberSync`: membership anti-entropy, which repairs what piggybacked gossip missed.

Piggybacking is probabilistic: an update can die out before reaching everyone. Every
membership_sync_interval_ms a node sends a linked member the digests of 64 ring arcs of its table
(`SyncDigest`); for the arcs that differ the other answers with the digests of their 16 sub-arcs
(`SyncSubDigests`); for the sub-arcs that differ the first lists the hash of each of its entries (at most
SYNC_MAX_LEAVES, `SyncLeaves`); the other answers with its entries whose hashes are not listed and asks for
the listed hashes it does not hold, which the first then sends (`SyncEntries`, push-pull, at most
SYNC_MAX_ENTRIES entries per message). Only entries that differ travel in full: after a mass failure
nearly every sub-arc differs somewhere, and shipping whole sub-arcs both ways cost more than all the rest
of the recovery. The cost follows the differences, not the table size, and the period drops to a quarter
while rounds keep finding differences. The same round sends the digest to one random member believed dead
(Serf's reconnect), so the two sides of a healed partition find each other again.

Keeps true: every message is bounded (SYNC_MAX_LEAVES hashes, SYNC_MAX_ENTRIES entries); a malformed step
raises ValueError (the dispatcher counts and drops it); entries are merged by the membership rules only.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np

from dsm.core.context import Context
from dsm.core.membership import Membership
from dsm.core.messages import SyncDigest, SyncEntries, SyncLeaves, SyncSubDigests, Update
from dsm.core.overlay import Overlay
from dsm.core.ring import SUB_ARCS, SYNC_BUCKETS, SYNC_SUB_BUCKETS, State, sub_bucket_of

_ALIVE = int(State.ALIVE)
_DEAD = int(State.DEAD)

#: Most member entries in one anti-entropy message (the arcs beyond it wait for the next round).
SYNC_MAX_ENTRIES = 1024
#: Most entry hashes in one SyncLeaves (8 bytes each: four times as many sub-arcs as entries would cover).
SYNC_MAX_LEAVES = 4096


class SyncTimer(enum.Enum):
    """Timer kinds of `MemberSync`."""

    #: The next sync round (arg unused).
    ROUND = enum.auto()


class MemberSync:
    """This node's membership anti-entropy (see the module docstring)."""

    def __init__(self, context: Context, overlay: Overlay, membership: Membership) -> None:
        self.context = context
        self.overlay = overlay
        self.membership = membership
        self._found_difference = False

    def start(self) -> None:
        """Arms the first round at a random point of the first interval."""
        context = self.context
        interval = context.settings.membership_sync_interval_ms
        context.arm(context.now + context.rng.randrange(max(1, interval)), SyncTimer.ROUND, 0)

    def on_timer(self, kind: SyncTimer, arg: int) -> None:
        self._round()

    def _round(self) -> None:
        # Adaptive: while exchanges keep teaching this node something (after a mass failure, thousands of
        # deaths to spread), sync four times as often; an idle cluster pays one small digest per interval.
        # Digests that merely differ do not count: while news spreads by gossip they differ all the time,
        # and entries that gossip is about to deliver anyway are not worth shipping twice.
        context = self.context
        settings = context.settings
        interval = settings.membership_sync_interval_ms
        if self._found_difference:
            interval = max(settings.probe_interval_ms, interval // 4)
        self._found_difference = False
        context.arm(context.now + interval, SyncTimer.ROUND, 0)
        if not context.joined:
            return
        table = context.table
        digest = SyncDigest(context.id, tuple(table.digests))
        candidates = [s for s in self.overlay.links() if table.raw_state(s) == _ALIVE]
        if candidates:
            context.send_to_slot(candidates[context.rng.randrange(len(candidates))], digest)
        # Reconnect: one member declared dead, at random, gets our digest too. If it was only cut off (a
        # healed partition), it learns it was declared dead, refutes, and both sides merge again; without
        # this, two halves of a healed partition would never speak again.
        dead = self._random_slot_in(_DEAD)
        if dead is not None:
            context.send_to_slot(dead, digest)

    def _random_slot_in(self, state: int) -> int | None:
        table = self.context.table
        if not table.size or not table.counts[state]:
            return None
        start = self.context.rng.randrange(table.size)
        found = table.find(state, start)
        if found < 0:
            found = table.find(state)
        return found if found >= 0 else None

    @staticmethod
    def _sub_arcs(sub_buckets: Sequence[int]) -> list[int]:
        if len(sub_buckets) > SYNC_SUB_BUCKETS or not all(0 <= sub < SYNC_SUB_BUCKETS for sub in sub_buckets):
            raise ValueError("sub-arc out of range")
        return list(sub_buckets)

    def first_entries(self, slots: np.ndarray, subs: list[int]) -> list[int]:
        """At most SYNC_MAX_ENTRIES of these slots, those in the sub-arcs listed first (the two ends of
        the exchange, where "you were declared dead" is learned) before the others."""
        if len(slots) <= SYNC_MAX_ENTRIES:
            return list(slots.tolist())
        rank = np.full(SYNC_SUB_BUCKETS, len(subs))
        rank[subs] = np.arange(len(subs))
        order = np.argsort(rank[self.context.directory.sub_arc_array()[slots]], kind="stable")
        return list(slots[order[:SYNC_MAX_ENTRIES]].tolist())

    def _updates(self, slots: Sequence[int]) -> tuple[Update, ...]:
        infos = self.context.directory.infos
        raw_state, incarnation = self.context.table.raw_state, self.context.table.incarnation
        out: list[Update] = []
        for slot in slots:
            info = infos[slot]
            out.append(Update(raw_state(slot), info.node_id, incarnation(slot), info.addr, info.region, ""))
        return tuple(out)

    # ------------------------------------------------------------------ the four steps

    def on_sync_digest(self, message: SyncDigest) -> None:
        table = self.context.table
        mine = table.digests
        theirs = message.digests
        if len(theirs) != len(mine):
            return
        differ = [b for b in range(len(mine)) if mine[b] != theirs[b]]
        if not differ:
            return
        digests: list[int] = []
        for bucket in differ:
            digests.extend(table.sub_digests(bucket))
        self.context.send_to_id(message.source, SyncSubDigests(self.context.id, tuple(differ), tuple(digests)))

    def on_sync_sub_digests(self, message: SyncSubDigests) -> None:
        context = self.context
        table = context.table
        buckets, theirs = message.buckets, message.digests
        if len(theirs) != SUB_ARCS * len(buckets) or not all(0 <= b < SYNC_BUCKETS for b in buckets):
            return
        differ: list[int] = []
        for i, bucket in enumerate(buckets):
            mine = table.sub_digests(bucket)
            base = i * SUB_ARCS
            differ.extend(bucket * SUB_ARCS + k for k in range(SUB_ARCS) if mine[k] != theirs[base + k])
        if not differ:
            return
        # The sub-arcs holding the two ends go first: that is where "you were declared dead" is learned.
        ends = {sub_bucket_of(self.overlay.position)}
        source = context.directory.slot(message.source)
        if source is not None:
            ends.add(sub_bucket_of(context.directory.positions[source]))
        differ.sort(key=lambda sub: sub not in ends)
        # Whole sub-arcs, in that order, while their entries fit in SYNC_MAX_LEAVES (at least one).
        sizes = np.cumsum(table.sub_arc_counts()[differ])
        subs = differ[: max(1, int(np.searchsorted(sizes, SYNC_MAX_LEAVES, side="right")))]
        hashes = table.hashes_at(table.slots_in_sub_arcs(subs))
        context.send_to_id(message.source, SyncLeaves(context.id, tuple(subs), tuple(hashes.tolist())))

    def on_sync_leaves(self, message: SyncLeaves) -> None:
        """The other side listed the hashes of its entries in these sub-arcs: send ours that it lacks or
        holds differently, and ask for its entries we lack (by hash)."""
        if len(message.hashes) > SYNC_MAX_LEAVES:
            raise ValueError("too many entry hashes")
        table = self.context.table
        subs = self._sub_arcs(message.sub_buckets)
        theirs = _hash_array(message.hashes)
        slots = table.slots_in_sub_arcs(subs)
        mine = table.hashes_at(slots)
        send = self.first_entries(slots[~_within(mine, theirs)], subs)
        want = tuple(theirs[~_within(theirs, mine)].tolist())
        if send or want:
            entries = SyncEntries(self.context.id, tuple(subs), self._updates(send), want)
            self.context.send_to_id(message.source, entries)

    def on_sync_entries(self, message: SyncEntries) -> None:
        table = self.context.table
        before = table.changes
        self.membership.apply_all(message.members)
        if table.changes != before:
            self._found_difference = True
        if not message.want:
            return
        if len(message.want) > SYNC_MAX_LEAVES:
            raise ValueError("too many entry hashes")
        want = _hash_array(message.want)
        # Merged first: an entry the other side sent that beat ours is no longer ours to send back.
        subs = self._sub_arcs(message.sub_buckets)
        slots = table.slots_in_sub_arcs(subs)
        send = self.first_entries(slots[_within(table.hashes_at(slots), want)], subs)
        if send:
            self.context.send_to_id(message.source, SyncEntries(self.context.id, (), self._updates(send), ()))


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


__all__ = ["SYNC_MAX_ENTRIES", "SYNC_MAX_LEAVES", "MemberSync", "SyncTimer"]
