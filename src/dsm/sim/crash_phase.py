"""The failure detector's figures and the mass crash of the standard run (phase 4 of `dsm.sim.run`).

`DetectorWatch` hangs off the simulation's member hook for the whole run and judges every suspicion and
death a member's own detector declares against the truth the simulator knows: a suspicion or death of a
member that was up is false (split by whether a slow member raised it or a slow member was its target);
the first death declared about a crashed member times its detection.

`CrashPhase` crashes `crash` of the live members at once, then steps T / 2 at a time until every crash is
detected and the ring is repaired (or a horizon of 3 detection periods plus the longest suspicion timeout
passes), noting when the survivors' links connect them again and when every near link is right, routing
survivor pairs 3 T and 3 detection periods after the crash, and (with writes) timing one write made 3 T
after it, while most dead members are still only suspected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dsm.core.peer import suspicion_bounds
from dsm.core.ring import State
from dsm.sim.cluster import RouteOutcome, SimNode
from dsm.sim.stage import Stage, pct, route_summary
from dsm.sim.write_phase import WritePhase
from dsm.sim.writes import Track


class DetectorWatch:
    """Counts the failure detector's true and false verdicts and times the detection of crashes."""

    def __init__(self, stage: Stage) -> None:
        self.sim = stage.sim
        self.false_suspicions = 0
        self.false_deaths = 0
        self.false_suspicions_by_slow = 0
        self.false_suspicions_of_slow = 0
        self.true_suspicions = 0
        #: Crashed member's index -> ms from its crash to the first death declared about it.
        self.detected_at: dict[int, float] = {}
        self.sim.member_hooks.append(self._on_member)

    def _on_member(self, observer: int, slot: int, old: int, new: int, incarnation: int, own: bool) -> None:
        if not own:
            return
        sim = self.sim
        member = sim.index_of[sim.directory.infos[slot].node_id]
        target = sim.nodes[member]
        if new == State.SUSPECT:
            if target.up:
                self.false_suspicions += 1
                if sim.nodes[observer].slow_ms:
                    self.false_suspicions_by_slow += 1
                elif target.slow_ms:
                    self.false_suspicions_of_slow += 1
            else:
                self.true_suspicions += 1
        elif new == State.DEAD:
            if target.up:
                self.false_deaths += 1
            elif target.crashed_at is not None and member not in self.detected_at:
                self.detected_at[member] = sim.now - target.crashed_at

    def figures(self) -> dict[str, Any]:
        """The whole run's false suspicions and deaths."""
        return {
            "false_suspicions": self.false_suspicions,
            "false_deaths": self.false_deaths,
            "false_suspicions_split": {
                "by_slow_members": self.false_suspicions_by_slow,
                "of_slow_members_by_healthy": self.false_suspicions_of_slow,
            },
        }


@dataclass
class CrashWatch:
    """What the watch after a mass crash has seen so far."""

    victims: list[SimNode]
    crash_time: float
    survivors: int
    #: The shortest and longest suspicion timeout in the cluster before the crash, ms.
    low: int
    high: int
    connected_ms: float | None = None
    ring_ms: float | None = None
    routing_3t: list[RouteOutcome] = field(default_factory=list)
    routing_3d: list[RouteOutcome] = field(default_factory=list)
    write_track: Track | None = None
    #: Fraction of survivors holding the after-crash write 2 gossip rounds after it was made.
    reached_2r: float | None = None


class CrashPhase:
    """Crashes a fraction of the members at once and measures detection, repair and routing after it."""

    def __init__(self, stage: Stage, detector: DetectorWatch, writes: WritePhase) -> None:
        self.stage = stage
        self.detector = detector
        self.writes = writes

    def run(self) -> dict[str, Any]:
        """Runs the crash phase; returns its figures (None where there was no crash)."""
        stage, sim = self.stage, self.stage.sim
        count = round(stage.p.crash * len(sim.up_nodes()))
        if count == 0:
            return {
                "write_after_crash": None,
                "detection_time_ms": None,
                "crash_recovery": None,
                "detection_samples_ms": [],
                "routing_after_crash": None,
            }
        victims = stage.random_up(count)
        crash_time = sim.now
        for node in victims:
            sim.crash(node)
        survivors = len(sim.up_nodes())
        low, high = suspicion_bounds(stage.p.settings, survivors + count)
        watch = CrashWatch(victims, crash_time, survivors, low, high)
        self._watch(watch)
        return self._figures(watch)

    def _watch(self, watch: CrashWatch) -> None:
        """Steps until every crash is detected and the ring is repaired, or 3 detection periods plus the
        longest suspicion timeout have passed."""
        stage, sim, T = self.stage, self.stage.sim, self.stage.T
        crash_time = watch.crash_time
        detection_period = T + watch.low
        horizon = crash_time + max(3 * detection_period, watch.high + 10 * T) + 4 * T
        next_route_3t = crash_time + 3 * T
        next_route_3d = crash_time + 3 * detection_period
        pairs = min(stage.p.pairs, 2000)
        while sim.now < horizon:
            self._write_after_crash(watch, next_route_3t)
            if not watch.routing_3t and sim.now >= next_route_3t:
                watch.routing_3t = stage.route_pairs(pairs, "crash", 0)
            if not watch.routing_3d and sim.now >= next_route_3d:
                watch.routing_3d = stage.route_pairs(pairs, "crash", 0)
            if watch.connected_ms is None and self._survivors_connected():
                watch.connected_ms = sim.now - crash_time
            if watch.ring_ms is None and not stage.checkers.ring_disagreements():
                watch.ring_ms = sim.now - crash_time
            done = watch.ring_ms is not None and len(self.detector.detected_at) == len(watch.victims)
            if done and watch.routing_3d and sim.now >= next_route_3d + 4 * T:
                break
            stage.run("crash", sim.now + T / 2)

    def _write_after_crash(self, watch: CrashWatch, at: float) -> None:
        """Makes the next write at `at` (with writes), and notes how far it spread 2 gossip rounds later."""
        sim = self.stage.sim
        if self.writes.tracker is not None and watch.write_track is None and sim.now >= at:
            watch.write_track = self.writes.write(self.stage.random_up(1)[0], "after-crash")
        track = watch.write_track
        if track is not None and watch.reached_2r is None and sim.now >= track.start_ms + 2 * self.stage.R:
            watch.reached_2r = len(track.holders) / watch.survivors

    def _figures(self, watch: CrashWatch) -> dict[str, Any]:
        T = self.stage.T
        count = len(watch.victims)
        detected_at = self.detector.detected_at
        detected = [detected_at[n.index] for n in watch.victims if n.index in detected_at]
        return {
            "write_after_crash": self._write_figures(watch),
            "detection_time_ms": {
                "crashed": count,
                "detected_fraction": len(detected) / count,
                "p50": pct(detected, 0.5) if detected else None,
                "p99": pct(detected, 0.99) if detected else None,
                "max": max(detected) if detected else None,
                "suspicion_timeout_ms": {"min": watch.low, "max": watch.high},
            },
            "crash_recovery": {
                "survivors": watch.survivors,
                "connected_ms": watch.connected_ms,
                "ring_repaired_ms": watch.ring_ms,
                "probe_period_ms": T,
                "detection_period_ms": T + watch.low,
            },
            "detection_samples_ms": sorted(round(d, 1) for d in detected),
            "routing_after_crash": {
                "at_3_probe_periods": route_summary(watch.routing_3t) if watch.routing_3t else None,
                "at_3_detection_periods": route_summary(watch.routing_3d) if watch.routing_3d else None,
            },
        }

    def _write_figures(self, watch: CrashWatch) -> dict[str, Any] | None:
        track = watch.write_track
        if track is None:
            return None
        assert self.writes.tracker is not None
        self.writes.tracker.forget(track)
        survivors = watch.survivors
        return {
            "written_after_ms": round(track.start_ms - watch.crash_time, 1),
            "fraction_at_2_rounds": watch.reached_2r,
            "fraction_at_end": len(track.holders) / survivors,
            "time_to_99_9_ms": track.time_to_fraction(0.999, survivors),
            "time_to_all_ms": track.time_to_fraction(1.0, survivors),
            "payload_copies": round(track.payload_copies / max(1, survivors - 1), 3),
            "curve": sorted(round(t - track.start_ms, 1) for t, _, _ in track.holders.values()),
        }

    def _survivors_connected(self) -> bool:
        """Whether the links between live members (as the live members hold them) connect them all."""
        sim = self.stage.sim
        up = sim.up_nodes()
        if not up:
            return True
        index_of = sim.index_of
        infos = sim.directory.infos
        nodes = sim.nodes
        adjacency: dict[int, set[int]] = {n.index: set() for n in up}
        for node in up:
            assert node.peer is not None
            for slot in node.peer.overlay.refcount:
                other = index_of[infos[slot].node_id]
                if nodes[other].up:
                    adjacency[node.index].add(other)
                    adjacency[other].add(node.index)
        seen = {up[0].index}
        stack = [up[0].index]
        while stack:
            for other in adjacency[stack.pop()]:
                if other not in seen:
                    seen.add(other)
                    stack.append(other)
        return len(seen) == len(up)
