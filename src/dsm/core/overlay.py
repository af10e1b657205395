"""The small-world overlay: which members a node is linked to, and greedy routing over those links.

A node has three kinds of links, all bidirectional for routing:
- *near links* (neighbors): the `near_max` (setting max_immediate_neighbors) closest alive members on the
  ring, half clockwise and half counter-clockwise, plus the suspect members among them (see `_near_side`).
  They are computed from the member table, so both ends agree without a handshake once their tables
  agree; a joiner tells its new neighbors directly (see `joining.py`).
- *long links out*: `long_max` (max_long_links) members drawn with probability proportional to 1/distance
  (Symphony's harmonic distribution: a distance x * 2^64 with x log-uniform in [1/n, 1/2], on either side),
  each established with a Link request that the target may refuse (`links.py`).
- *long links in*: members that hold a long link to this node. A node accepts at most `in_max`
  (max_long_links_in) of them (Symphony's in-degree cap); without the cap, nodes after large gaps on the
  ring collect hundreds of links.
So a node has at most near_max + long_max + in_max links however large the cluster grows, and keeps
connections only to those.

Greedy routing forwards to the linked member closest (by ring distance) to the target's position, over
all three kinds; using the reverse (incoming) links too is what brings the mean at n = 10,000 under 4 hops
(docs/overlay.md; the probe is bench/overlay_probe.py).

"Usable" means alive or suspect in this node's table: a suspicion does not drop a link (a slow member that
refutes keeps its links, and the links keep probing it so suspicions get confirmed), but routing avoids
suspect members when it has another way forward. Dead and left members are dropped at once and replaced.

Invariant: `refcount[s]` is the number of the three tables holding slot s; `refcount` keys are exactly the
linked members. Every change of that key set is reported to `observer` (added +1 / removed -1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from dsm.core.ring import RING, Directory, MemberTable, State, clockwise, distance

_ALIVE = int(State.ALIVE)
_SUSPECT = int(State.SUSPECT)


class RandomSource(Protocol):
    """The slice of `random.Random` the core uses (injected; the core never draws on its own)."""

    def random(self) -> float: ...
    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int: ...
    def shuffle(self, x: list[int]) -> None: ...


class Overlay:
    """One node's link tables (see the module docstring)."""

    def __init__(
        self,
        directory: Directory,
        table: MemberTable,
        me: int,
        near_max: int,
        long_max: int,
        in_max: int,
        rng: RandomSource,
        observer: Callable[[int, int], None] | None = None,
    ) -> None:
        self.directory = directory
        self.table = table
        self.me = me
        self.position = directory.positions[me]
        self.near_max = near_max
        self.long_max = long_max
        self.in_max = in_max
        self.rng = rng
        self.observer = observer
        self.near: list[int] = []
        self.near_alive = 0
        # Near links added since the owner last looked (it probes them first: a neighbor that replaces a
        # failed one may have failed too).
        self.near_added: list[int] = []
        self.long_out: dict[int, None] = {}
        self.long_in: set[int] = set()
        self.refcount: dict[int, int] = {}
        # Reach of the near links on each side (clockwise distances), to tell cheaply whether a member
        # that changed state can affect them.
        self._cw_reach = 0
        self._ccw_reach = 0

    # --- bookkeeping ---

    def _add(self, slot: int) -> None:
        count = self.refcount.get(slot, 0)
        self.refcount[slot] = count + 1
        if count == 0 and self.observer is not None:
            self.observer(slot, 1)

    def _remove(self, slot: int) -> None:
        count = self.refcount[slot] - 1
        if count:
            self.refcount[slot] = count
        else:
            del self.refcount[slot]
            if self.observer is not None:
                self.observer(slot, -1)

    def usable(self, slot: int) -> bool:
        return slot != self.me and self.table.raw_state(slot) in (_ALIVE, _SUSPECT)

    def linked(self, slot: int) -> bool:
        return slot in self.refcount

    def links(self) -> list[int]:
        return list(self.refcount)

    # --- near links ---

    def _near_side(self, step: int) -> tuple[list[int], int]:
        """The `near_max / 2` nearest alive members on one side, plus the suspect members met before the
        last of them (kept linked so they go on being probed, but not counted: a suspected neighbor is
        replaced at once without waiting for it to be declared dead). Returns the members and how many of
        them are alive."""
        wanted = self.near_max // 2
        found: list[int] = []
        alive = 0
        raw_state = self.table.raw_state
        me = self.me
        for slot in self.directory.walk(self.position, step):
            if slot == me:
                continue
            state = raw_state(slot)
            if state == _ALIVE:
                found.append(slot)
                alive += 1
                if alive == wanted:
                    break
            elif state == _SUSPECT and len(found) - alive < wanted:
                found.append(slot)
        return found, alive

    def recompute_near(self) -> bool:
        """Recomputes the near links from the table; returns whether they changed."""
        cw, cw_alive = self._near_side(1)
        ccw, ccw_alive = self._near_side(-1)
        new: list[int] = []
        for slot in cw + ccw:
            if slot not in new:
                new.append(slot)
        positions = self.directory.positions
        # When the cluster is small, both sides can reach the same members; the reach is then the whole ring.
        half = self.near_max // 2
        self._cw_reach = clockwise(self.position, positions[cw[-1]]) if cw_alive == half else RING
        self._ccw_reach = clockwise(positions[ccw[-1]], self.position) if ccw_alive == half else RING
        self.near_alive = cw_alive + ccw_alive
        if new == self.near:
            return False
        old = set(self.near)
        fresh = set(new)
        for slot in fresh - old:
            self._add(slot)
            self.near_added.append(slot)
        for slot in old - fresh:
            self._remove(slot)
        self.near = new
        return fresh != old

    def in_near_window(self, slot: int) -> bool:
        """Whether a member at this slot's position is within the near links' reach (so a change of its
        state can change them)."""
        pos = self.directory.positions[slot]
        return clockwise(self.position, pos) <= self._cw_reach or clockwise(pos, self.position) <= self._ccw_reach

    # --- long links ---

    def draw_long_target(self, live_count: int, exclude: set[int]) -> int | None:
        """Draws one long-link target by the harmonic distribution, or None if no member qualifies."""
        # The harmonic density over [1/n, 1/2] puts a third of its mass (at n = 10,000) within the reach of
        # the near links, where a long link adds nothing; drawing from past that reach instead shortens
        # greedy routes (mean 4.2 -> under 4 hops at n = 10,000, see docs/overlay.md).
        n = max(live_count, 2)
        low = min(0.25, max(1.0, self.near_max / 2) / n)
        x = math.exp(math.log(low) + self.rng.random() * (math.log(0.5) - math.log(low)))
        offset = int(x * RING)
        point = (self.position + offset) % RING if self.rng.random() < 0.5 else (self.position - offset) % RING
        raw_state = self.table.raw_state
        near = self.near
        for checked, slot in enumerate(self.directory.nearest(point)):
            if checked >= 64:
                return None
            if (
                slot != self.me
                and raw_state(slot) == _ALIVE
                and slot not in self.long_out
                and slot not in exclude
                and slot not in near
            ):
                return slot
        return None

    def add_long_out(self, slot: int) -> None:
        if slot not in self.long_out:
            self.long_out[slot] = None
            self._add(slot)

    def drop_long_out(self, slot: int) -> bool:
        if slot in self.long_out:
            del self.long_out[slot]
            self._remove(slot)
            return True
        return False

    def accept_long_in(self, slot: int) -> bool:
        """Records an incoming long link unless the cap is reached; a repeated request is accepted."""
        if slot in self.long_in:
            return True
        if len(self.long_in) >= self.in_max:
            return False
        self.long_in.add(slot)
        self._add(slot)
        return True

    def drop_long_in(self, slot: int) -> None:
        if slot in self.long_in:
            self.long_in.discard(slot)
            self._remove(slot)

    # --- membership changes ---

    def member_changed(self, slot: int, new: int) -> tuple[bool, bool]:
        """Reacts to a member's new state. Returns (near links changed, a long link out was lost)."""
        lost_long = False
        if new not in (_ALIVE, _SUSPECT):
            lost_long = self.drop_long_out(slot)
            self.drop_long_in(slot)
        near_changed = False
        if slot in self.near or self.near_alive < self.near_max or self.in_near_window(slot):
            near_changed = self.recompute_near()
        return near_changed, lost_long

    # --- routing ---

    def next_hop(self, target_position: int, exclude: set[int], avoid: set[int]) -> int | None:
        """The linked member closest to `target_position`, if closer than this node. Alive members not in
        `avoid` come first; suspect or avoided ones only when nothing else gets closer; `exclude` never."""
        positions = self.directory.positions
        raw_state = self.table.raw_state
        best = None
        best_d = distance(self.position, target_position)
        fallback = None
        fallback_d = best_d
        for slot in self.refcount:
            if slot in exclude:
                continue
            d = distance(positions[slot], target_position)
            if raw_state(slot) == _ALIVE and slot not in avoid:
                if d < best_d:
                    best, best_d = slot, d
            elif d < fallback_d:
                fallback, fallback_d = slot, d
        return best if best is not None else fallback
