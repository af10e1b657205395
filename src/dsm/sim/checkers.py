"""Checkers: safety properties watched on every state change, liveness properties checked with a bound.

Safety (checked online, the moment a core changes state):
- a member that left never comes back alive or suspect at an incarnation <= the one it left with;
- a node's incarnation never goes down, across restarts too;
- clocks never go backwards (the core asserts it on every call; the simulator turns it into a failure).
Liveness (checked once faults stop, within a bound): every live member's table says alive for every live
member, dead (or left) for every crashed member and left for every member that left, and every live
member's near links are the true nearest live members on the ring.

A failure raises `CheckFailed` whose message starts with the seed; rerunning with that seed reproduces the
run exactly.
"""

from __future__ import annotations

import bisect

from dsm.core.ring import State
from dsm.sim.cluster import CheckFailed, SimNode, Simulation

__all__ = ["CheckFailed", "Checkers"]

_ALIVE = int(State.ALIVE)
_SUSPECT = int(State.SUSPECT)
_DEAD = int(State.DEAD)
_LEFT = int(State.LEFT)


class Checkers:
    """Attaches the safety checks to a simulation and offers the liveness checks."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.left_at: dict[int, int] = {}
        self.highest_incarnation: dict[int, int] = {}
        self.violations: list[str] = []
        sim.member_hooks.append(self._on_member)

    def fail(self, what: str) -> CheckFailed:
        return CheckFailed(self.sim.seed, what)

    def node_left(self, node: SimNode) -> None:
        """Call when `node` has left (its incarnation then is final for that life)."""
        self.left_at[node.index] = node.stored_incarnation

    def _on_member(self, observer: int, slot: int, old: int, new: int, incarnation: int, own: bool) -> None:
        if not self.left_at or new not in (_ALIVE, _SUSPECT):
            return
        member = self.sim.index_of[self.sim.directory.infos[slot].node_id]
        left = self.left_at.get(member)
        if left is not None and new in (_ALIVE, _SUSPECT) and incarnation <= left:
            raise self.fail(
                f"n{observer} saw n{member} come back as {State(new).name} at incarnation {incarnation} "
                f"after it left at {left}"
            )

    def check_incarnations(self) -> None:
        for node in self.sim.nodes:
            current = node.peer.incarnation if node.peer is not None else node.stored_incarnation
            before = self.highest_incarnation.get(node.index, 0)
            if current < before:
                raise self.fail(f"n{node.index}'s incarnation went down from {before} to {current}")
            self.highest_incarnation[node.index] = current

    # ------------------------------------------------------------------ liveness

    def expected_states(self) -> bytes:
        sim = self.sim
        expected = bytearray(len(sim.directory))
        for node in sim.nodes:
            slot = sim.directory.slot(node.info.node_id)
            assert slot is not None
            if node.up:
                expected[slot] = _ALIVE
            elif node.left:
                expected[slot] = _LEFT
            elif node.crashed_at is not None:
                expected[slot] = _DEAD
        return bytes(expected)

    def membership_disagreements(self, sample: int | None = None) -> list[str]:
        """Live members whose table differs from the truth, or that have not joined (at most `sample`
        observers looked at)."""
        sim = self.sim
        expected = self.expected_states()
        observers = sim.up_nodes()
        if sample is not None and len(observers) > sample:
            observers = sorted(sim.rng.sample(observers, sample), key=lambda n: n.index)
        wrong = []
        for node in observers:
            assert node.peer is not None
            if not node.peer.joined:  # a restarted node's saved table is not yet the cluster's word
                wrong.append(f"n{node.index} has not joined")
                continue
            states = node.peer.table.states
            got = bytes(states[: len(expected)]) + bytes(max(0, len(expected) - len(states)))
            if got != expected:
                bad = next(i for i in range(len(expected)) if got[i] != expected[i])
                wrong.append(
                    f"n{node.index} sees {sim.directory.infos[bad].node_id} as {State(got[bad]).name}, "
                    f"truth {State(expected[bad]).name}"
                )
        return wrong

    def ring_disagreements(self) -> list[str]:
        """Live members whose near links are not their true nearest live members."""
        sim = self.sim
        up = sim.up_nodes()
        if len(up) < 2:
            return []
        positions = sim.directory.positions
        ring = sorted((positions[sim.directory.slot(n.info.node_id) or 0], n.index) for n in up)
        keys = [p for p, _ in ring]
        wrong = []
        for node in up:
            peer = node.peer
            assert peer is not None
            half = min(peer.settings.max_immediate_neighbors // 2, len(up) - 1)
            i = bisect.bisect_left(keys, positions[peer.me])
            truth = set()
            for k in range(1, half + 1):
                truth.add(f"n{ring[(i + k) % len(ring)][1]}")
                truth.add(f"n{ring[(i - k) % len(ring)][1]}")
            infos = sim.directory.infos
            raw_state = peer.table.raw_state
            # Suspect members may stay linked as extras while they are being checked; the alive ones must
            # be exactly the true nearest live members.
            got = {infos[s].node_id for s in peer.overlay.near if raw_state(s) == _ALIVE}
            if got != truth:
                wrong.append(f"n{node.index} near links {sorted(got - truth)} instead of {sorted(truth - got)}")
        return wrong

    def wait_converged(self, bound_ms: float, step_ms: float = 500.0, sample: int | None = 200) -> float:
        """Runs the simulation until membership and near links agree with the truth; returns how long that
        took (ms). Raises CheckFailed if they still disagree after `bound_ms`."""
        sim = self.sim
        start = sim.now
        while True:
            members = self.membership_disagreements(sample)
            ring = [] if members else self.ring_disagreements()
            if not members and not ring:
                return sim.now - start
            if sim.now - start >= bound_ms:
                detail = (members or ring)[:3]
                raise self.fail(
                    f"not converged {bound_ms:.0f} ms after faults stopped: "
                    f"{len(members)} members disagree on membership, {len(ring)} on near links; e.g. {detail}"
                )
            sim.run_until(sim.now + step_ms)
