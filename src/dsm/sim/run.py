"""The standard simulation run behind `dsm sim`: one seeded scenario that measures the overlay's claims.

Phases, on virtual time (T = probe_interval_ms, the failure detector's protocol period; R =
gossip_interval_ms, a gossip round):
1. *Form* a cluster of `nodes` members (everyone knows everyone; long links are then requested for real).
   Warm up for 5 T.
2. *Route* `pairs` random pairs greedily: `routing_hops`.
3. *Join* `joins` new members one at a time, each given a window of 2 R: `join_messages` (overlay messages
   to or from the joiner), `links_changed_per_join` (distinct members whose link tables changed during the
   window: an upper bound on what the join caused), `join_settle_ms` (the last link change in the window),
   and how far the join's news spread by piggybacking. Then `leaves` random members leave (announced), one
   at a time, each given a window of 2 R: `leave_messages` (every overlay message sent in the window, by
   anyone), `links_changed_per_leave`, `leave_settle_ms`, `leave_spread`.
4. Mark `slow` of the members slow (from here to the end of the faults; after the joins, so that the
   join figures measure a join, not the near-link churn that slow members' suspicions cause).
   *Crash* `crash` of the members at once: `detection_time_ms` (crash to the first member declaring it dead,
   p50/p99), the times until the survivors' overlay is connected and until every survivor's near links
   are its true nearest survivors, and `routing_after_crash` (survivor pairs routed 3 T and 3 detection
   periods after the crash).
5. *Steady* run for `duration_s` more seconds (slow members still slow): `false_suspicions` and
   `false_deaths` count the whole run (a suspicion or death declared by a member's own detector about a
   member that was up).
6. Faults stop (slow members recover, no more loss or duplication); the liveness checker waits for every
   live member to agree on the membership and on its near links, and (with writes) for every replica to be
   identical and to hold every acknowledged write, within a bound. (The writes phase runs between 3 and 4;
   see docs/sim.md.)
Safety checkers watch every step. The report is a plain dict (JSON-ready); `FORMAT` documents its keys.

Layout: this module keeps the order of the phases, the report's format and the final convergence wait;
`stage.py` the shared simulation, clock and statistics (and `SimParams`); `churn_phase.py` phase 3;
`write_phase.py` the writes and the replicas' convergence; `crash_phase.py` phase 4 and the failure
detector's figures over the whole run.
"""

from __future__ import annotations

import dataclasses
import gc
import resource
import time
from dataclasses import asdict
from typing import Any

from dsm.core.messages import DataItem
from dsm.core.peer import suspicion_bounds
from dsm.sim.checkers import CheckFailed
from dsm.sim.churn_phase import ChurnPhase
from dsm.sim.cluster import Simulation
from dsm.sim.crash_phase import CrashPhase, DetectorWatch
from dsm.sim.network import NetworkModel
from dsm.sim.stage import Progress, SimParams, Stage, hop_histogram, route_summary
from dsm.sim.write_phase import VALUE, WritePhase
from dsm.sim.writes import WriteTracker

__all__ = ["FORMAT", "REPORT_VERSION", "VALUE", "SimParams", "StandardRun"]

REPORT_VERSION = 1

FORMAT = {
    "version": "format version of this report (integer, bumped on incompatible changes)",
    "params": "the run's parameters (nodes, seed, loss, crash, slow, ...)",
    "routing_hops": "greedy routing over random pairs: mean, p50, p99, max hops, delivered fraction, pairs",
    "hop_histogram": "number of delivered pairs by hop count",
    "join_messages": "overlay messages to or from each joiner in its window: mean, max, per-join list",
    "links_changed_per_join": "members whose links changed during each join window: mean, max, per-join list",
    "join_settle_ms": "time of the last link change in each join window: max, and max in gossip rounds",
    "join_spread": "fraction of members knowing each joiner at the end of its window (min) and piggybacked copies",
    "leave_messages": "overlay messages sent by any member in each leave window (upper bound): mean, max, per-leave",
    "links_changed_per_leave": "members whose links changed during each leave window: mean, max, per-leave list",
    "leave_settle_ms": "time of the last link change in each leave window: max, and max in gossip rounds",
    "leave_spread": "fraction of live members that know of each leave at the end of its window (min)",
    "rounds_to_all": "writes: time until every live node held each write, in gossip rounds (p50, p99, max, samples)",
    "time_to_all_ms": "writes: time until every live node held each write: p50, p99, max, fraction reaching all",
    "delivery_hops": "writes: overlay hops of the last node's copy (p50 and max over writes)",
    "payload_copies_per_update": "writes: payload copies sent per write, in units of n - 1 (first, mean, steady)",
    "messages_per_update": "writes: data messages per write (a message about k writes counts 1/k)",
    "bytes_per_update": "writes: bytes of those messages per write (msgpack + 4-byte frame header)",
    "write_curves": "writes: live nodes (population) and, for the first 8 writes, the sorted times (ms) they stored it",
    "bulk_time_to_all_ms": "bulk: time from the first non-urgent write until every node held all of them",
    "bulk_payload_copies_per_update": "bulk (non-urgent, gossip only) writes: as payload_copies_per_update",
    "bulk_messages_per_update": "bulk writes: as messages_per_update",
    "bulk_bytes_per_update": "bulk writes: as bytes_per_update",
    "after_burst_bytes_per_node_per_s": "data bytes per node per second, burst until a round after",
    "idle_bytes_per_node_per_s": "data bytes per node per second in 12 idle rounds (after 20 rounds of backing off)",
    "idle_messages_per_node_per_s": "data messages per node per second in the same window",
    "idle_gossip_period_ms": "adaptive gossip period of the live nodes at the end of the idle window (p50, min, max)",
    "replicas_converged_ms": "after faults stop: time until every live replica was identical",
    "converged": "every live replica identical and holding every acknowledged write at the end",
    "write_after_crash": (
        "a write 3 T after the mass crash: fraction of survivors holding it 2 rounds later and at the end, "
        "time to 99.9 % and to all, the sorted times (ms) at which survivors stored it (curve)"
    ),
    "detection_time_ms": "crash to first dead declaration, over crashed members: p50, p99, max, detected fraction",
    "detection_samples_ms": "every crashed member's detection time, sorted (for the plot)",
    "crash_recovery": "after the mass crash: connected_ms, ring_repaired_ms (null if not within the run)",
    "routing_after_crash": "survivor pairs routed at 3 probe periods and 3 detection periods after the crash",
    "false_suspicions": "suspicions raised by a member's own detector about members that were up",
    "false_deaths": "deaths declared by a member's own detector about members that were up",
    "false_suspicions_split": "false suspicions raised by slow members, and raised by healthy ones about slow ones",
    "converged_after_ms": "time from the end of faults until every live member agrees (liveness check)",
    "checks": "passed (bool) and the first failure's message, which starts with the seed",
    "messages": "messages sent over the whole run, by type",
    "virtual_time_s": "simulated time covered by the run, s",
    "events": "events processed (message deliveries and timer firings)",
    "wall_time_s": "wall-clock duration of the run",
    "phase_wall_s": "wall-clock seconds per phase (start, routing, joins, leaves, writes, crash, steady, converge)",
    "peak_memory_mib": "peak resident memory of the process",
    "curves": "per-join cumulative link changes and overlay messages against time (for the plot)",
}


class StandardRun:
    """Runs the phases of the module docstring and builds the report.

    A thin conductor: the phases are `ChurnPhase` (joins, leaves), `WritePhase` (writes, bulk, idle,
    replica convergence) and `CrashPhase` (with the run-long `DetectorWatch`), all on one `Stage`.
    """

    def __init__(self, params: SimParams, progress: Progress | None = None) -> None:
        if params.gossip_only:
            params = dataclasses.replace(
                params, settings=dataclasses.replace(params.settings, direct_updates=False, gossip_adaptive=False)
            )
        self.p = params
        self.progress = progress
        network = NetworkModel(loss=params.loss, duplicate=params.duplicate)
        regions = tuple(f"r{i}" for i in range(max(1, params.regions)))
        self.sim = Simulation(
            seed=params.seed, settings=params.settings, network=network, regions=regions, skew_max_ms=params.skew_ms
        )
        # The order of construction is the order of the simulation's hooks: checkers first, then the writes'
        # tracker, the failure detector's watch and the churn windows.
        self.stage = Stage(params, self.sim, progress)
        self.checkers = self.stage.checkers
        self.T = self.stage.T
        self.R = self.stage.R
        self.writes = WritePhase(self.stage)
        self.detector = DetectorWatch(self.stage)
        self.churn = ChurnPhase(self.stage)
        self.crash = CrashPhase(self.stage, self.detector, self.writes)

    @property
    def tracker(self) -> WriteTracker | None:
        """The writes' `WriteTracker` (None when the run makes no writes)."""
        return self.writes.tracker

    @property
    def acknowledged(self) -> list[DataItem]:
        """Every write the run made (and the simulated cluster acknowledged), in order."""
        return self.writes.acknowledged

    def run(self) -> dict[str, Any]:
        """Runs every phase; returns the report (see FORMAT)."""
        # A simulation holds millions of long-lived objects; with the default thresholds the collector
        # rescans them all over and over (it took a third of the time of a 3,000-node run). The cores make
        # no reference cycles per message (peak memory is the same with the collector off), so it is off
        # for the run, and the formed cluster is frozen out of its sight for the collections between
        # phases.
        thresholds = gc.get_threshold()
        gc.set_threshold(0)
        try:
            return self._run_all()
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()

    def _run_all(self) -> dict[str, Any]:
        wall = time.perf_counter()
        p, sim, stage = self.p, self.sim, self.stage
        phase_wall: dict[str, float] = {}
        mark = wall

        def lap(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            phase_wall[name] = round(now - mark, 2)
            mark = now

        sim.form(p.nodes)
        gc.collect()
        gc.freeze()
        stage.run("warm-up", sim.now + 5 * self.T)
        lap("start")
        routed = stage.route_pairs(p.pairs, "routing", 4 * self.T)
        # Summarised now: an answer arriving later still updates its outcome (the histogram is taken at the end).
        routing = route_summary(routed)
        lap("routing")
        joins = self.churn.joins()
        lap("joins")
        leaves = self.churn.leaves()
        lap("leaves")
        writes = self.writes.measure()
        gc.collect()
        lap("writes")
        for node in sim.rng.sample(sim.nodes, round(p.slow * p.nodes)):
            node.slow_ms = p.slow_ms
        crash = self.crash.run()
        gc.collect()
        lap("crash")
        if p.duration_s > 0:
            stage.run("steady", sim.now + p.duration_s * 1000)
        lap("steady")
        converged, failure = self._converge(writes)
        lap("converge")
        report = {
            "version": REPORT_VERSION,
            "params": {k: v for k, v in asdict(p).items() if k != "settings"} | {"settings": asdict(p.settings)},
            "routing_hops": routing,
            "hop_histogram": hop_histogram(routed),
            **joins,
            **leaves,
            **writes,
            **crash,
            **self.detector.figures(),
            "converged_after_ms": converged,
            "checks": {"passed": failure is None, "failure": failure},
        }
        return report | self._totals(wall, phase_wall)

    def _converge(self, writes: dict[str, Any]) -> tuple[float | None, str | None]:
        """Stops the faults and waits for the membership (and, with writes, the replicas, whose figures go
        into `writes`) to converge; returns the membership's wait and the first check failure, if any."""
        p, sim = self.p, self.sim
        # Faults stop: slow members recover and the network stops losing and duplicating.
        for node in sim.nodes:
            node.slow_ms = 0.0
        sim.network.loss = sim.network.duplicate = 0.0
        self.checkers.check_incarnations()
        _, high = suspicion_bounds(p.settings, len(sim.up_nodes()))
        bound = p.converge_bound_s * 1000 or (high + 60 * self.T)
        self.stage.enter("converge")
        converged = None
        try:
            converged = self.checkers.wait_converged(bound, step_ms=self.T, sample=200)
            if self.acknowledged:
                replicas = self.writes.replicas_converged(bound)
                writes["replicas_converged_ms"] = replicas
                writes["converged"] = replicas is not None
        except CheckFailed as exc:
            return converged, str(exc)
        return converged, None

    def _totals(self, wall: float, phase_wall: dict[str, float]) -> dict[str, Any]:
        """The run's totals: messages by type, virtual and wall-clock time, events, peak memory."""
        sim = self.sim
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "messages": dict(sorted(sim.sent.items())),
            "virtual_time_s": round((sim.now - sim.start_ms) / 1000, 1),
            "events": sim.events,
            "wall_time_s": round(time.perf_counter() - wall, 2),
            "phase_wall_s": phase_wall,
            "peak_memory_mib": round(usage.ru_maxrss / 1024, 1),
        }

    def _replicas_converged(self, bound: float) -> float | None:
        """`WritePhase.replicas_converged` (kept for the tests that break a finished run's replicas)."""
        return self.writes.replicas_converged(bound)
