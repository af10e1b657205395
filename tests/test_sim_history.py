"""Jepsen-style runs in the simulator (`dsm.sim.workload`): clients read-modify-write and delete a few keys
through random nodes of a 3-region cluster while partitions, crashes with restarts, clock skew up to +-60 s
and 2 % message loss happen; the history checker then finds no acknowledged write lost in 'siblings' mode,
and counts in 'lww' mode the writes a concurrent write overwrote (the mode's documented cost)."""

from __future__ import annotations

import pytest

from dsm.core.encoding import decode_versions
from dsm.core.versions import Resolution
from dsm.sim.history import check, held_versions
from dsm.sim.workload import WorkloadParams, run_workload


@pytest.mark.parametrize("seed", range(1, 6))
def test_siblings_mode_loses_no_acknowledged_write_through_faults(seed: int) -> None:
    report, run = run_workload(WorkloadParams(seed=seed, duration_ms=30_000))
    assert run.diverged == [], f"seed {seed}: replicas still differ on {run.diverged}"
    assert run.counts()["writes_ok"] > 1000 and len(run.faults) >= 4
    assert report.ok, f"seed {seed}: {report.summary()}"
    assert report.lost == [] and report.overwritten == []


@pytest.mark.parametrize("seed", [1, 2])
def test_lww_mode_overwrites_concurrent_writes_but_loses_nothing_else(seed: int) -> None:
    report, run = run_workload(WorkloadParams(seed=seed, mode=Resolution.LWW, duration_ms=30_000))
    assert run.diverged == []
    assert report.ok, report.summary()
    # Blind and stale-context writes from 7 clients on skewed clocks: many lose the last-writer-wins race.
    assert len(report.overwritten) > 100


def test_the_checker_catches_lost_writes_in_a_real_run() -> None:
    # The same kind of run in lww mode, judged by the siblings rule: the overwritten writes are losses.
    report, run = run_workload(WorkloadParams(seed=3, mode=Resolution.LWW, duration_ms=15_000))
    assert run.diverged == []
    first = next(n for n in run.sim.nodes if n.up)
    final = {key: held_versions(decode_versions(raw)) for key, raw in first.data.items()}
    judged = check(run.history, final, Resolution.SIBLINGS)
    assert not judged.ok and len(judged.lost) == len(report.overwritten) > 0
