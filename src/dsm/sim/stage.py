"""The stage the standard run's phases share: the simulation, its parameters and checkers, and how time moves.

`Stage` owns advancing virtual time by named phase (feeding the progress callback), choosing random live
members and routing random pairs; each phase (`churn_phase`, `write_phase`, `crash_phase`) is handed the
same `Stage` and never touches another phase's state. Every random choice goes through `sim.rng`, in the
order the phases make it, so a seed reproduces the run. The small statistics helpers (`pct`,
`route_summary`, `hop_histogram`) live here too, as every phase reports with them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dsm.core.peer import PeerSettings
from dsm.sim.checkers import Checkers
from dsm.sim.cluster import RouteOutcome, SimNode, Simulation

#: progress(phase, virtual ms done in the phase, virtual ms the phase is planned to last).
Progress = Callable[[str, float, float], None]


@dataclass
class SimParams:
    """Parameters of the standard run (`dsm sim` flags)."""

    nodes: int = 1000
    seed: int = 1
    loss: float = 0.0
    duplicate: float = 0.0
    crash: float = 0.0
    slow: float = 0.0
    slow_ms: float = 1000.0
    joins: int = 5
    leaves: int = 0
    pairs: int = 2000
    duration_s: float = 0.0
    regions: int = 1
    skew_ms: int = 100
    converge_bound_s: float = 0.0
    writes: int = 0
    bulk: int = 0
    gossip_only: bool = False
    idle: bool = True
    settings: PeerSettings = field(default_factory=PeerSettings)


def pct(values: Sequence[float], q: float) -> float:
    """The `q` quantile of `values` (nearest rank, no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def hop_histogram(outcomes: list[RouteOutcome]) -> dict[str, int]:
    """Delivered pairs by hop count (keys are strings, for JSON)."""
    counts: dict[str, int] = {}
    for o in outcomes:
        if o.delivered:
            counts[str(o.hops)] = counts.get(str(o.hops), 0) + 1
    return counts


def route_summary(outcomes: list[RouteOutcome]) -> dict[str, Any]:
    """Hops of the delivered pairs (mean, p50, p99, max), the delivered fraction and the failures by reason."""
    hops = [float(o.hops) for o in outcomes if o.delivered]
    failures: dict[str, int] = {}
    for o in outcomes:
        if not o.delivered:
            reason = o.reason or "lost (no answer)"
            failures[reason] = failures.get(reason, 0) + 1
    return {
        "pairs": len(outcomes),
        "delivered": len(hops) / len(outcomes) if outcomes else None,
        "mean": round(statistics.mean(hops), 3) if hops else None,
        "p50": pct(hops, 0.50) if hops else None,
        "p99": pct(hops, 0.99) if hops else None,
        "max": max(hops) if hops else None,
        "failures": failures,
    }


class Stage:
    """The simulation of one standard run with its checkers, and the phase-aware clock every phase advances."""

    def __init__(self, params: SimParams, sim: Simulation, progress: Progress | None) -> None:
        self.p = params
        self.sim = sim
        self.progress = progress
        self.checkers = Checkers(sim)
        #: The failure detector's protocol period, ms.
        self.T = params.settings.probe_interval_ms
        #: A gossip round, ms.
        self.R = params.settings.gossip_interval_ms
        self._phase = ""
        self._phase_start = 0.0
        self._phase_end = 0.0

    def enter(self, phase: str) -> None:
        """Names the current phase without restarting its progress (for waits the checkers run themselves)."""
        self._phase = phase

    def run(self, phase: str, until: float) -> None:
        """Runs the simulation to virtual time `until`; a new phase name starts a new progress bar span."""
        if phase != self._phase:
            self._phase, self._phase_start, self._phase_end = phase, self.sim.now, until
        progress = self.progress
        if progress is None:
            self.sim.run_until(until)
            return

        def report(now: float) -> None:
            progress(phase, now - self._phase_start, self._phase_end - self._phase_start)

        self.sim.run_until(until, report)

    def random_up(self, count: int, exclude: set[int] | None = None) -> list[SimNode]:
        """Up to `count` distinct live members, drawn from the simulation's random generator."""
        up = [n for n in self.sim.nodes if n.up and (exclude is None or n.index not in exclude)]
        return self.sim.rng.sample(up, min(count, len(up)))

    def route_pairs(self, count: int, phase: str, wait_ms: float) -> list[RouteOutcome]:
        """Routes `count` random pairs of live members, then runs `wait_ms` for the answers to arrive."""
        sim = self.sim
        up = sim.up_nodes()
        outcomes = []
        for _ in range(count):
            source, target = sim.rng.sample(up, 2) if len(up) > 1 else (up[0], up[0])
            outcomes.append(sim.route(source, target))
        self.run(phase, sim.now + wait_ms)
        return outcomes
