"""The ring: node positions, ring distance, and the directory of members a node has heard of.

Every node sits at a position on a ring of 2^64 points, the first 8 bytes of the BLAKE2b hash of its id, so
positions are uniform, stable across restarts and computed the same way by everyone.

`Directory` holds what never changes for a node id (position) and what changes rarely (addresses, region),
under a dense integer *slot*, plus the slots sorted by ring position. The per-node, fast-changing state
(incarnation, alive/suspect/dead/left) lives in `MemberTable` as two flat arrays indexed by slot: one byte
and four bytes per member, instead of a dict of objects. That is what lets a simulator hold 10,000 nodes
that each know 10,000 members (10^8 entries) in about half a gigabyte.

A directory may be shared by many cores in one process (the simulator does that): it only says "if you know
of this id, here is its slot and position"; a core knows of a member only when its own table has a state for
the slot. Interning an id is idempotent, so sharing it changes nothing a core can observe.

Invariants: a slot, once given to an id, is never reused; `ring_positions` is sorted and `ring_slots[i]` is
the slot at `ring_positions[i]`.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

RING_BITS = 64
#: Incarnations are stored in 32 bits; larger values from the network are refused.
MAX_INCARNATION = (1 << 32) - 1
RING = 1 << RING_BITS
HALF_RING = RING >> 1


@functools.lru_cache(maxsize=1 << 16)
def position(node_id: str) -> int:
    """The ring position of a node id (or key): the first 8 bytes of its BLAKE2b hash, as an unsigned
    integer. Remembered for the most recent ids: a conditional write asks for its key's position at every
    step (the proposer's group, each acceptor's check of it, the commit)."""
    return int.from_bytes(hashlib.blake2b(node_id.encode(), digest_size=8).digest(), "big")


def clockwise(source: int, target: int) -> int:
    """Distance from `source` to `target` going clockwise (increasing positions, wrapping)."""
    return (target - source) % RING


def distance(a: int, b: int) -> int:
    """Ring distance: the shorter way round, from 0 to 2^63."""
    d = (b - a) % RING
    return d if d <= HALF_RING else RING - d


class State(IntEnum):
    """A member's state as one node sees it. UNKNOWN is the table's "no entry"."""

    UNKNOWN = 0
    ALIVE = 1
    SUSPECT = 2
    DEAD = 3
    LEFT = 4


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """What identifies a member: id, the address peers reach it at, and its region."""

    node_id: str
    addr: str
    region: str


class Directory:
    """Slots, positions and infos of every node id heard of (see the module docstring)."""

    __slots__ = ("_position_array", "_sub_arc_array", "infos", "positions", "ring_positions", "ring_slots", "slot_of")

    def __init__(self) -> None:
        self.infos: list[MemberInfo] = []
        self.positions: list[int] = []
        self.ring_positions: list[int] = []
        self.ring_slots: list[int] = []
        self.slot_of: dict[str, int] = {}
        self._position_array = np.zeros(0, dtype=np.uint64)
        self._sub_arc_array = np.zeros(0, dtype=np.intp)

    def position_array(self) -> np.ndarray:
        """`positions` as a uint64 array (rebuilt only when slots were added: positions never change)."""
        if len(self._position_array) != len(self.positions):
            self._position_array = np.array(self.positions, dtype=np.uint64)
            self._sub_arc_array = (self._position_array >> np.uint64(_SUB_SHIFT)).astype(np.intp)
        return self._position_array

    def sub_arc_array(self) -> np.ndarray:
        """The anti-entropy sub-arc (`sub_bucket_of`) of every slot, as an array."""
        self.position_array()
        return self._sub_arc_array

    def __len__(self) -> int:
        return len(self.infos)

    def slot(self, node_id: str) -> int | None:
        """The slot of `node_id`, or None if it was never interned."""
        return self.slot_of.get(node_id)

    def intern(self, info: MemberInfo) -> int:
        """Returns the slot of `info.node_id`, giving it one if new. A changed address or region replaces
        the old one (a member that restarted elsewhere); the position never changes."""
        slot = self.slot_of.get(info.node_id)
        if slot is not None:
            if self.infos[slot] != info:
                self.infos[slot] = info
            return slot
        slot = len(self.infos)
        self.slot_of[info.node_id] = slot
        self.infos.append(info)
        pos = position(info.node_id)
        self.positions.append(pos)
        i = bisect.bisect_left(self.ring_positions, pos)
        self.ring_positions.insert(i, pos)
        self.ring_slots.insert(i, slot)
        return slot

    def intern_many(self, infos: list[MemberInfo]) -> list[int]:
        """Interns many ids at once (one sort instead of one insertion each); returns their slots."""
        slots = []
        for info in infos:
            slot = self.slot_of.get(info.node_id)
            if slot is not None and self.infos[slot] != info:
                self.infos[slot] = info
            if slot is None:
                slot = len(self.infos)
                self.slot_of[info.node_id] = slot
                self.infos.append(info)
                self.positions.append(position(info.node_id))
            slots.append(slot)
        order = sorted(range(len(self.positions)), key=self.positions.__getitem__)
        self.ring_positions = [self.positions[s] for s in order]
        self.ring_slots = order
        return slots

    def walk(self, start: int, step: int) -> Iterator[int]:
        """Slots in ring order starting just past position `start`, clockwise (step 1) or counter-clockwise
        (step -1), once round the ring."""
        n = len(self.ring_slots)
        if step > 0:
            i = bisect.bisect_right(self.ring_positions, start)
        else:
            i = bisect.bisect_left(self.ring_positions, start) - 1
        ring_slots = self.ring_slots
        for _ in range(n):
            yield ring_slots[i % n]
            i += step

    def nearest(self, point: int) -> Iterator[int]:
        """Slots ordered by ring distance from `point`, nearest first (alternating sides), once round."""
        n = len(self.ring_slots)
        if n == 0:
            return
        positions = self.ring_positions
        hi = bisect.bisect_left(positions, point)
        lo = hi - 1
        taken = 0
        while taken < n:
            d_hi = distance(point, positions[hi % n])
            d_lo = distance(point, positions[lo % n])
            if d_hi <= d_lo:
                yield self.ring_slots[hi % n]
                hi += 1
            else:
                yield self.ring_slots[lo % n]
                lo -= 1
            taken += 1


#: The ring is cut into this many arcs for membership anti-entropy; each arc's entries hash to one digest.
SYNC_BUCKETS = 64
_BUCKET_SHIFT = RING_BITS - 6
assert 1 << (RING_BITS - _BUCKET_SHIFT) == SYNC_BUCKETS
_MASK64 = (1 << 64) - 1


#: Each arc is cut into this many sub-arcs for the second step of anti-entropy (1,024 sub-arcs in all).
SUB_ARCS = 16
_SUB_SHIFT = _BUCKET_SHIFT - 4
assert 1 << (_BUCKET_SHIFT - _SUB_SHIFT) == SUB_ARCS
SYNC_SUB_BUCKETS = SYNC_BUCKETS * SUB_ARCS


def bucket_of(pos: int) -> int:
    """The anti-entropy arc of a ring position."""
    return pos >> _BUCKET_SHIFT


def sub_bucket_of(pos: int) -> int:
    """The anti-entropy sub-arc of a ring position (arc * SUB_ARCS + index within the arc)."""
    return pos >> _SUB_SHIFT


_H0 = 0x9E3779B97F4A7C15
_H1 = 0xFF51AFD7ED558CCD
_H2 = 0xC4CEB9FE1A85EC53


def entry_hash(pos: int, state: int, incarnation: int) -> int:
    """A 64-bit hash of one table entry (member position, state, incarnation); XOR-combined per arc, so an
    arc's digest is updated in O(1) when one entry changes. Uses the position, not the slot, because slots
    are local to a process while positions are the same everywhere."""
    x = (pos ^ (((incarnation << 3) | state) * _H0)) & _MASK64
    x = ((x ^ (x >> 33)) * _H1) & _MASK64
    x = ((x ^ (x >> 33)) * _H2) & _MASK64
    return x ^ (x >> 33)


def entry_hashes(positions: np.ndarray, states: np.ndarray, incarnations: np.ndarray) -> np.ndarray:
    """`entry_hash` over uint64 arrays (numpy wraps modulo 2**64 where the scalar version masks)."""
    shift = np.uint64(33)
    x = positions ^ (((incarnations << np.uint64(3)) | states) * np.uint64(_H0))
    x = (x ^ (x >> shift)) * np.uint64(_H1)
    x = (x ^ (x >> shift)) * np.uint64(_H2)
    out: np.ndarray = x ^ (x >> shift)
    return out


class MemberTable:
    """One node's view of every member: state and incarnation per slot, in two flat arrays.

    Counts per state are kept up to date so the cluster size (for log n timeouts and quorums) costs O(1),
    and so are the digests used by membership anti-entropy: per arc (`digests`) and per sub-arc (`subs`,
    SUB_ARCS per arc, 8 KiB per table). Both are XORs of entry hashes, updated in O(1) per change: computing
    sub-arc digests on demand cost O(n) per anti-entropy exchange and dominated 10,000-node runs.
    """

    __slots__ = ("changes", "counts", "digests", "directory", "incarnations", "states", "subs")

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self.states = bytearray()
        self.incarnations = array("I")
        self.counts = [0] * len(State)
        self.digests = [0] * SYNC_BUCKETS
        self.subs = array("Q", bytes(8 * SYNC_SUB_BUCKETS))
        self.changes = 0  # entries changed so far (callers compare it before and after a merge)

    def _grow(self, slot: int) -> None:
        missing = slot + 1 - len(self.states)
        if missing > 0:
            # Grow geometrically: members are learned one by one while a cluster forms.
            missing = max(missing, len(self.states) // 2, 16)
            self.states.extend(bytes(missing))
            self.incarnations.frombytes(bytes(self.incarnations.itemsize * missing))

    def state(self, slot: int) -> State:
        return State(self.states[slot]) if slot < len(self.states) else State.UNKNOWN

    def raw_state(self, slot: int) -> int:
        """The state as a plain int (hot paths: no enum construction)."""
        return self.states[slot] if slot < len(self.states) else 0

    def incarnation(self, slot: int) -> int:
        return self.incarnations[slot] if slot < len(self.incarnations) else 0

    def set(self, slot: int, state: State | int, incarnation: int) -> None:
        if not 0 <= incarnation <= MAX_INCARNATION:
            raise ValueError(f"incarnation {incarnation} outside 0..{MAX_INCARNATION}")
        if slot >= len(self.states):
            self._grow(slot)
        old = self.states[slot]
        old_incarnation = self.incarnations[slot]
        if old == state and old_incarnation == incarnation:
            return
        pos = self.directory.positions[slot]
        # entry_hash of the old and the new entry, inlined (this runs for every change a member learns).
        change = 0
        if old:
            x = (pos ^ (((old_incarnation << 3) | old) * _H0)) & _MASK64
            x = ((x ^ (x >> 33)) * _H1) & _MASK64
            x = ((x ^ (x >> 33)) * _H2) & _MASK64
            change = x ^ (x >> 33)
        if state:
            x = (pos ^ (((incarnation << 3) | state) * _H0)) & _MASK64
            x = ((x ^ (x >> 33)) * _H1) & _MASK64
            x = ((x ^ (x >> 33)) * _H2) & _MASK64
            change ^= x ^ (x >> 33)
        self.digests[pos >> _BUCKET_SHIFT] ^= change
        self.subs[pos >> _SUB_SHIFT] ^= change
        self.changes += 1
        if old != state:
            self.counts[old] -= 1
            self.counts[state] += 1
            self.states[slot] = state
        self.incarnations[slot] = incarnation

    def fill(self, states: bytes, incarnations: array[int], template: MemberTable | None = None) -> None:
        """Replaces the whole table with these per-slot states and incarnations (a formed cluster).
        `template`, a table already holding exactly these entries, lends its digests instead of computing
        them again (many equal tables)."""
        assert len(states) == len(incarnations)
        self.states = bytearray(states)
        self.incarnations = array("I", incarnations)
        self.counts = [0] * len(State)
        for state in State:
            if state:
                self.counts[state] = self.states.count(int(state))
        if template is not None:
            self.digests = list(template.digests)
            self.subs = array("Q", template.subs)
        else:
            self.subs = self.compute_sub_digests()
            self.digests = [0] * SYNC_BUCKETS
            for sub, digest in enumerate(self.subs):
                self.digests[sub // SUB_ARCS] ^= digest

    def compute_sub_digests(self) -> array[int]:
        """The sub-arcs' digests computed from scratch (O(n)); `subs` is kept equal to this."""
        subs = array("Q", bytes(8 * SYNC_SUB_BUCKETS))
        positions = self.directory.positions
        incarnations = self.incarnations
        for slot, state in enumerate(self.states):
            if state:
                pos = positions[slot]
                subs[pos >> _SUB_SHIFT] ^= entry_hash(pos, state, incarnations[slot])
        return subs

    def compute_digests(self) -> list[int]:
        """The arcs' digests computed from scratch (O(n)); `digests` is kept equal to this."""
        digests = [0] * SYNC_BUCKETS
        for sub, digest in enumerate(self.compute_sub_digests()):
            digests[sub // SUB_ARCS] ^= digest
        return digests

    def sub_digests(self, bucket: int) -> list[int]:
        """The digests of the SUB_ARCS sub-arcs of arc `bucket`."""
        return self.subs[bucket * SUB_ARCS : (bucket + 1) * SUB_ARCS].tolist()

    def hashes_at(self, slots: np.ndarray) -> np.ndarray:
        """The entry hashes (`entry_hash`) of these slots (an index array; each must hold a state)."""
        positions = self.directory.position_array()[slots]
        states = np.frombuffer(self.states, dtype=np.uint8)[slots].astype(np.uint64)
        incarnations = np.frombuffer(self.incarnations, dtype=np.uint32)[slots].astype(np.uint64)
        return entry_hashes(positions, states, incarnations)

    def _known_sub_arcs(self) -> tuple[np.ndarray, np.ndarray]:
        """(sub-arc of every slot of this table, whether the table holds a state for it)."""
        sub_of = self.directory.sub_arc_array()
        # The state array may be longer than the directory (it grows in steps) or, with a shared
        # directory, shorter; slots past either end hold no state here.
        size = min(len(sub_of), len(self.states))
        known = np.frombuffer(self.states, dtype=np.uint8)[:size] != 0
        return sub_of[:size], known

    def sub_arc_counts(self) -> np.ndarray:
        """How many members this table holds in each sub-arc."""
        sub_of, known = self._known_sub_arcs()
        counts: np.ndarray = np.bincount(sub_of[known], minlength=SYNC_SUB_BUCKETS)
        return counts

    def slots_in_sub_arcs(self, subs: list[int]) -> np.ndarray:
        """Slots holding a state whose positions fall in any of these sub-arcs (in slot order), as an index
        array: membership anti-entropy lists hundreds of sub-arcs at once, so this is one vectorised pass
        over the table rather than a search per sub-arc."""
        sub_of, known = self._known_sub_arcs()
        wanted = np.zeros(SYNC_SUB_BUCKETS, dtype=bool)
        wanted[subs] = True
        slots: np.ndarray = np.flatnonzero(wanted[sub_of] & known)
        return slots

    def slots_in_sub_bucket(self, sub: int) -> list[int]:
        """Slots with a state whose position falls in sub-arc `sub`, in ring order."""
        directory = self.directory
        lo = bisect.bisect_left(directory.ring_positions, sub << _SUB_SHIFT)
        hi = bisect.bisect_left(directory.ring_positions, (sub + 1) << _SUB_SHIFT)
        states = self.states
        size = len(states)
        return [s for s in directory.ring_slots[lo:hi] if s < size and states[s]]

    def slots_in_bucket(self, bucket: int) -> list[int]:
        """Slots with a state whose position falls in arc `bucket`, in ring order."""
        directory = self.directory
        lo = bisect.bisect_left(directory.ring_positions, bucket << _BUCKET_SHIFT)
        hi = bisect.bisect_left(directory.ring_positions, (bucket + 1) << _BUCKET_SHIFT)
        states = self.states
        size = len(states)
        return [s for s in directory.ring_slots[lo:hi] if s < size and states[s]]

    def live_count(self) -> int:
        """Members believed up (alive or suspect), this node included when it is in its own table."""
        return self.counts[State.ALIVE] + self.counts[State.SUSPECT]

    def known_count(self) -> int:
        """Members with any state (including dead and left)."""
        # counts[UNKNOWN] is not meaningful (the arrays grow with zeros without counting them).
        return sum(self.counts[1:])

    def slots_in(self, *states: State) -> list[int]:
        wanted = {int(s) for s in states}
        return [slot for slot, s in enumerate(self.states) if s in wanted]
