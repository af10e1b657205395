"""The ring: node positions, ring distance, and the directory of members a node has heard of.

Every node sits at a position on a ring of 2^64 points, the first 8 bytes of the BLAKE2b hash of its id, so
positions are uniform, stable across restarts and computed the same way by everyone.

`Directory` holds what never changes for a node id (position) and what changes rarely (addresses, region),
under a dense integer *slot*, plus the slots sorted by ring position. The per-node, fast-changing state
(incarnation, alive/suspect/dead/left) lives in `MemberTable` as two flat arrays indexed by slot: one byte
and four bytes per member, instead of a dict of objects. Tables filled from one formed cluster share those
arrays copy-on-write and keep only their own changes: that is what lets a simulator run 100,000 nodes that
each know 100,000 members (10^10 entries) in a few gigabytes.

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
    """One node's view of every member: state and incarnation per slot.

    Counts per state are kept up to date so the cluster size (for log n timeouts and quorums) costs O(1),
    and so are the digests used by membership anti-entropy: per arc (`digests`) and per sub-arc (`subs`,
    SUB_ARCS per arc). Both are XORs of entry hashes, updated in O(1) per change: computing sub-arc digests
    on demand cost O(n) per anti-entropy exchange and dominated 10,000-node runs.

    Two layouts, one behaviour (tests/core/test_ring.py compares them on random histories):
    - *private*: two flat arrays indexed by slot (one byte of state, four of incarnation) and the 1,024
      sub-arc digests (8 KiB), written in place. A table starts so, and a runtime's table stays so.
    - *shared*: `fill` given a `template` shares the template's arrays and digests, copy-on-write, instead
      of copying them: the table then holds only its own changes since (`_own`, slot -> incarnation << 3 |
      state) and the XOR of their hashes per sub-arc (`_sub_delta`). A simulator whose 100,000 cores start
      from one formed cluster keeps one copy of it, not 100,000 (5 * 10^10 bytes); the cores stay what they
      are. Once a table's own changes outgrow a 32nd of the shared arrays (a dict entry costs about 26
      times an array slot), it folds them into arrays of its own and becomes private.
    The shared arrays are never written; a table tells which layout it has only through memory use.

    `size` is the number of slots the table covers: it grows geometrically past the highest slot set
    (members are learned one by one while a cluster forms) and is the same in both layouts.
    """

    __slots__ = (
        "_digests",
        "_incarnations",
        "_own",
        "_shared",
        "_states",
        "_sub_delta",
        "_subs",
        "changes",
        "counts",
        "directory",
        "size",
    )

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self._states = bytearray()
        self._incarnations = array("I")
        self._digests = [0] * SYNC_BUCKETS
        self._subs = array("Q", bytes(8 * SYNC_SUB_BUCKETS))
        #: The arrays above are shared with other tables (never written); changes go to `_own`.
        self._shared = False
        self._own: dict[int, int] = {}
        self._sub_delta: dict[int, int] = {}
        self.size = 0
        self.counts = [0] * len(State)
        self.changes = 0  # entries changed so far (callers compare it before and after a merge)

    # ------------------------------------------------------------------ reading one entry

    def state(self, slot: int) -> State:
        return State(self.raw_state(slot))

    def raw_state(self, slot: int) -> int:
        """The state as a plain int (hot paths: no enum construction)."""
        own = self._own
        if own:
            packed = own.get(slot)
            if packed is not None:
                return packed & 7
        states = self._states
        return states[slot] if slot < len(states) else 0

    def incarnation(self, slot: int) -> int:
        own = self._own
        if own:
            packed = own.get(slot)
            if packed is not None:
                return packed >> 3
        incarnations = self._incarnations
        return incarnations[slot] if slot < len(incarnations) else 0

    # ------------------------------------------------------------------ changing it

    def _grow(self, slot: int) -> None:
        missing = slot + 1 - self.size
        if missing > 0:
            # Grow geometrically: members are learned one by one while a cluster forms.
            missing = max(missing, self.size // 2, 16)
            self.size += missing
            if not self._shared:
                self._states.extend(bytes(missing))
                self._incarnations.frombytes(bytes(self._incarnations.itemsize * missing))

    def set(self, slot: int, state: State | int, incarnation: int) -> None:
        if not 0 <= incarnation <= MAX_INCARNATION:
            raise ValueError(f"incarnation {incarnation} outside 0..{MAX_INCARNATION}")
        if slot >= self.size:
            self._grow(slot)
        shared = self._shared
        if shared:
            packed = self._own.get(slot)
            if packed is None:
                base = self._states
                old = base[slot] if slot < len(base) else 0
                old_incarnation = self._incarnations[slot] if slot < len(base) else 0
            else:
                old, old_incarnation = packed & 7, packed >> 3
        else:
            old = self._states[slot]
            old_incarnation = self._incarnations[slot]
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
        self.changes += 1
        if old != state:
            self.counts[old] -= 1
            self.counts[state] += 1
        if shared:
            self._set_own(slot, int(state), incarnation, pos >> _SUB_SHIFT, change)
            return
        self._digests[pos >> _BUCKET_SHIFT] ^= change
        self._subs[pos >> _SUB_SHIFT] ^= change
        if old != state:
            self._states[slot] = state
        self._incarnations[slot] = incarnation

    def _set_own(self, slot: int, state: int, incarnation: int, sub: int, change: int) -> None:
        """A change of a shared table: kept in its own entries (dropped when it equals the shared one)."""
        base = self._states
        inside = slot < len(base)
        if (base[slot], self._incarnations[slot]) == (state, incarnation) if inside else not (state or incarnation):
            self._own.pop(slot, None)
        else:
            self._own[slot] = (incarnation << 3) | state
        delta = self._sub_delta.get(sub, 0) ^ change
        if delta:
            self._sub_delta[sub] = delta
        else:
            self._sub_delta.pop(sub, None)
        if len(self._own) > max(64, len(base) >> 5):
            self._unshare()

    def _unshare(self) -> None:
        """Becomes private: the shared arrays and digests copied with this table's own changes applied."""
        states = bytearray(self._states)
        states.extend(bytes(self.size - len(states)))
        incarnations = array("I", self._incarnations)
        incarnations.frombytes(bytes(incarnations.itemsize * (self.size - len(incarnations))))
        for slot, packed in self._own.items():
            states[slot] = packed & 7
            incarnations[slot] = packed >> 3
        subs = array("Q", self._subs)
        digests = list(self._digests)
        for sub, delta in self._sub_delta.items():
            subs[sub] ^= delta
            digests[sub // SUB_ARCS] ^= delta
        self._states, self._incarnations, self._subs, self._digests = states, incarnations, subs, digests
        self._own, self._sub_delta, self._shared = {}, {}, False

    def fill(self, states: bytes, incarnations: array[int], template: MemberTable | None = None) -> None:
        """Replaces the whole table with these per-slot states and incarnations (a formed cluster).
        `template`, a table already holding these entries, lends its digests instead of computing them
        again (many equal tables); when it holds exactly these arrays (as many slots, the same incarnations
        of unknown slots too), this table shares them copy-on-write (see the class docstring)."""
        assert len(states) == len(incarnations)
        self._own, self._sub_delta = {}, {}
        if template is not None and template._own:
            template._unshare()
        if template is not None and template._states == states and template._incarnations == incarnations:
            # From now on neither table writes these arrays: both keep their changes as their own.
            template._shared = self._shared = True
            self._states, self._incarnations = template._states, template._incarnations
            self._subs, self._digests = template._subs, template._digests
            self.size = len(states)
            self.counts = list(template.counts)
            return
        self._shared = False
        self._states = bytearray(states)
        self._incarnations = array("I", incarnations)
        self.size = len(states)
        self.counts = [0] * len(State)
        for state in State:
            if state:
                self.counts[state] = self._states.count(int(state))
        if template is not None:
            self._subs, self._digests = template.subs, template.digests
            return
        self._subs = self.compute_sub_digests()
        self._digests = [0] * SYNC_BUCKETS
        for sub, digest in enumerate(self._subs):
            self._digests[sub // SUB_ARCS] ^= digest

    # ------------------------------------------------------------------ whole-table views

    def entries(self) -> Iterator[tuple[int, int, int]]:
        """(slot, state, incarnation) of every slot holding a state, in slot order."""
        states, incarnations, own = self._states, self._incarnations, self._own
        if not own:
            for slot, state in enumerate(states):
                if state:
                    yield slot, state, incarnations[slot]
            return
        get = own.get
        for slot, state in enumerate(states):
            packed = get(slot)
            if packed is not None:
                if packed & 7:
                    yield slot, packed & 7, packed >> 3
            elif state:
                yield slot, state, incarnations[slot]
        for slot in sorted(s for s in own if s >= len(states)):
            packed = own[slot]
            if packed & 7:
                yield slot, packed & 7, packed >> 3

    @property
    def states(self) -> bytes:
        """Every slot's state, as a copy (O(n): for the edge and tests; the core reads `raw_state`)."""
        return bytes(self._column())

    @property
    def incarnations(self) -> array[int]:
        """Every slot's incarnation, as a copy (O(n), as `states`)."""
        return array("I", self._column(incarnations=True).tobytes())

    @property
    def digests(self) -> list[int]:
        """The arcs' digests (a copy)."""
        digests = list(self._digests)
        for sub, delta in self._sub_delta.items():
            digests[sub // SUB_ARCS] ^= delta
        return digests

    @property
    def subs(self) -> array[int]:
        """The sub-arcs' digests (a copy)."""
        subs = array("Q", self._subs)
        for sub, delta in self._sub_delta.items():
            subs[sub] ^= delta
        return subs

    def find(self, state: int, start: int = 0) -> int:
        """The first slot at or after `start` holding `state` (a known state, not UNKNOWN), or -1."""
        assert state
        base, own = self._states, self._own
        found = base.find(state, start)
        while found >= 0 and found in own:
            found = base.find(state, found + 1)
        for slot, packed in own.items():
            if packed & 7 == state and slot >= start and (found < 0 or slot < found):
                found = slot
        return found

    def _own_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """This table's own entries as (sorted slots, packed entries) arrays."""
        own = self._own
        slots = np.fromiter(own, dtype=np.intp, count=len(own))
        packed = np.fromiter(own.values(), dtype=np.int64, count=len(own))
        order = np.argsort(slots)
        return slots[order], packed[order]

    def _column(self, incarnations: bool = False) -> np.ndarray:
        """Every slot's state (uint8), or incarnation (uint32), as an array of `size`: a view of the private
        array when the table has one."""
        if incarnations:
            base = np.frombuffer(self._incarnations, dtype=np.uint32)
        else:
            base = np.frombuffer(self._states, dtype=np.uint8)
        if not self._shared:
            return base
        out = np.zeros(self.size, dtype=base.dtype)
        out[: len(base)] = base
        if self._own:
            slots, packed = self._own_arrays()
            out[slots] = packed >> 3 if incarnations else packed & 7
        return out

    def compute_sub_digests(self) -> array[int]:
        """The sub-arcs' digests computed from scratch (O(n)); `subs` is kept equal to this."""
        subs = array("Q", bytes(8 * SYNC_SUB_BUCKETS))
        positions = self.directory.positions
        for slot, state, incarnation in self.entries():
            pos = positions[slot]
            subs[pos >> _SUB_SHIFT] ^= entry_hash(pos, state, incarnation)
        return subs

    def compute_digests(self) -> list[int]:
        """The arcs' digests computed from scratch (O(n)); `digests` is kept equal to this."""
        digests = [0] * SYNC_BUCKETS
        for sub, digest in enumerate(self.compute_sub_digests()):
            digests[sub // SUB_ARCS] ^= digest
        return digests

    def sub_digests(self, bucket: int) -> list[int]:
        """The digests of the SUB_ARCS sub-arcs of arc `bucket`."""
        first = bucket * SUB_ARCS
        subs: list[int] = self._subs[first : first + SUB_ARCS].tolist()
        delta = self._sub_delta
        if delta:
            for k in range(SUB_ARCS):
                subs[k] ^= delta.get(first + k, 0)
        return subs

    def hashes_at(self, slots: np.ndarray) -> np.ndarray:
        """The entry hashes (`entry_hash`) of these slots (an index array; each must hold a state)."""
        positions = self.directory.position_array()[slots]
        if not self._shared:
            states = np.frombuffer(self._states, dtype=np.uint8)[slots].astype(np.uint64)
            incarnations = np.frombuffer(self._incarnations, dtype=np.uint32)[slots].astype(np.uint64)
            return entry_hashes(positions, states, incarnations)
        # Shared: the shared arrays where they reach, then this table's own entries over them.
        inside = slots < len(self._states)
        packed = np.zeros(len(slots), dtype=np.uint64)
        base_states = np.frombuffer(self._states, dtype=np.uint8)[slots[inside]].astype(np.uint64)
        base_incarnations = np.frombuffer(self._incarnations, dtype=np.uint32)[slots[inside]].astype(np.uint64)
        packed[inside] = (base_incarnations << np.uint64(3)) | base_states
        if self._own:
            own_slots, own_packed = self._own_arrays()
            at = np.minimum(own_slots.searchsorted(slots), len(own_slots) - 1)
            hit = own_slots[at] == slots
            packed[hit] = own_packed[at[hit]].astype(np.uint64)
        return entry_hashes(positions, packed & np.uint64(7), packed >> np.uint64(3))

    def _known_sub_arcs(self) -> tuple[np.ndarray, np.ndarray]:
        """(sub-arc of every slot of this table, whether the table holds a state for it)."""
        sub_of = self.directory.sub_arc_array()
        states = self._column()
        # The table may cover more slots than the directory (it grows in steps) or, with a shared
        # directory, fewer; slots past either end hold no state here.
        size = min(len(sub_of), len(states))
        known = states[:size] != 0
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
        return self._slots_between(sub << _SUB_SHIFT, (sub + 1) << _SUB_SHIFT)

    def slots_in_bucket(self, bucket: int) -> list[int]:
        """Slots with a state whose position falls in arc `bucket`, in ring order."""
        return self._slots_between(bucket << _BUCKET_SHIFT, (bucket + 1) << _BUCKET_SHIFT)

    def _slots_between(self, low: int, high: int) -> list[int]:
        """Slots with a state whose position is in [low, high), in ring order."""
        directory = self.directory
        lo = bisect.bisect_left(directory.ring_positions, low)
        hi = bisect.bisect_left(directory.ring_positions, high)
        raw_state = self.raw_state
        return [s for s in directory.ring_slots[lo:hi] if raw_state(s)]

    def live_count(self) -> int:
        """Members believed up (alive or suspect), this node included when it is in its own table."""
        return self.counts[State.ALIVE] + self.counts[State.SUSPECT]

    def known_count(self) -> int:
        """Members with any state (including dead and left)."""
        # counts[UNKNOWN] is not meaningful (the arrays grow with zeros without counting them).
        return sum(self.counts[1:])

    def slots_in(self, *states: State) -> list[int]:
        wanted = {int(s) for s in states}
        return [slot for slot, state, _ in self.entries() if state in wanted]
