"""Simulation tests: many seeds with faults, with the safety and liveness checkers on in every run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dsm.core.consistency import Level
from dsm.core.peer import PeerSettings
from dsm.core.ring import State
from dsm.sim.checkers import Checkers, CheckFailed
from dsm.sim.cluster import Simulation
from dsm.sim.network import Partition
from dsm.sim.run import FORMAT, SimParams, StandardRun

SEEDS = range(1, 9)


def _volatile(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("wall_time_s", "phase_wall_s", "peak_memory_mib")}


def test_same_seed_reproduces_the_run_exactly() -> None:
    params = SimParams(nodes=60, seed=7, loss=0.02, duplicate=0.02, crash=0.2, slow=0.1, joins=2, pairs=100)
    first = StandardRun(params).run()
    second = StandardRun(params).run()
    assert _volatile(first) == _volatile(second)
    other = StandardRun(SimParams(nodes=60, seed=8, loss=0.02, crash=0.2, joins=2, pairs=100)).run()
    assert _volatile(other) != _volatile(first)


@pytest.mark.parametrize("seed", SEEDS)
def test_faulty_runs_keep_every_check(seed: int) -> None:
    # Loss, duplication, reordering (jitter), clock skew, 10 % slow members, joins and a 25 % crash.
    params = SimParams(
        nodes=80, seed=seed, loss=0.03, duplicate=0.02, crash=0.25, slow=0.1, joins=2, pairs=200, duration_s=30
    )
    report = StandardRun(params).run()
    assert report["checks"]["passed"], report["checks"]["failure"]
    assert report["false_deaths"] == 0, f"seed {seed}"
    assert report["routing_hops"]["delivered"] == 1.0, report["routing_hops"]
    assert report["detection_time_ms"]["detected_fraction"] == 1.0, f"seed {seed}"
    assert report["routing_after_crash"]["at_3_detection_periods"]["delivered"] >= 0.99, f"seed {seed}"
    assert report["join_spread"]["min_fraction"] >= 0.95, f"seed {seed}"  # all: the convergence check


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_partition_that_heals_converges(seed: int) -> None:
    sim = Simulation(seed=seed)
    checkers = Checkers(sim)
    sim.form(90)
    sim.run_until(sim.now + 5000)
    group = frozenset(sim.rng.sample(range(90), 30))
    sim.network.partitions.append(Partition(group, sim.now, sim.now + 90_000))
    sim.run_until(sim.now + 90_000)
    inside, outside = sim.nodes[min(group)], next(n for n in sim.nodes if n.index not in group)
    assert inside.peer is not None and inside.peer.member_state(outside.info.node_id) == State.DEAD
    checkers.wait_converged(90_000, step_ms=1000)
    checkers.check_incarnations()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_crashed_members_restart_and_rejoin(seed: int) -> None:
    sim = Simulation(seed=seed, skew_max_ms=500)
    checkers = Checkers(sim)
    sim.form(70)
    sim.run_until(sim.now + 5000)
    victims = sim.rng.sample(sim.nodes, 10)
    for node in victims:
        sim.crash(node)
    sim.run_until(sim.now + 60_000)
    live = sim.up_nodes()
    for node in victims:
        sim.restart(node, sim.rng.sample(live, 3))
    checkers.wait_converged(60_000, step_ms=1000)
    checkers.check_incarnations()
    assert all(n.peer is not None and n.peer.incarnation >= 1 for n in victims)


@pytest.mark.parametrize(("seed", "away_ms"), [(5, 2_000), (6, 40_000)])
def test_restarts_that_lost_their_bootstrap_list_rejoin_through_the_members_they_saved(seed: int, away_ms: int) -> None:
    sim = Simulation(seed=seed)
    checkers = Checkers(sim)
    sim.form(40)
    sim.run_until(sim.now + 5000)
    victims = sim.rng.sample(sim.nodes, 4)
    for node in victims:
        sim.crash(node)
    sim.run_until(sim.now + away_ms)
    for node in victims:
        sim.restart(node, [])  # no bootstrap list: only the saved member table
        assert node.peer is not None and not node.peer.joined  # never a cluster of one
    checkers.wait_converged(60_000, step_ms=1000)
    checkers.check_incarnations()
    for node in victims:
        assert node.peer is not None and node.peer.joined and node.peer.live_count() == 40
        # A level is met on the whole cluster, not on a view of itself.
        assert node.peer.level_groups(Level.QUORUM)[0].needed == 21


def test_members_that_leave_are_left_everywhere_and_never_return() -> None:
    sim = Simulation(seed=4)
    checkers = Checkers(sim)
    sim.form(60)
    sim.run_until(sim.now + 5000)
    for node in sim.rng.sample(sim.nodes, 5):
        sim.leave(node)
        checkers.node_left(node)
    checkers.wait_converged(60_000, step_ms=1000)


def test_standard_run_measures_leaves() -> None:
    report = StandardRun(SimParams(nodes=300, seed=5, joins=0, leaves=3, pairs=100)).run()
    assert report["checks"]["passed"], report["checks"]["failure"]
    assert report["leave_spread"]["min_fraction"] == 1.0  # every live member learned of each leave
    settings = PeerSettings()
    # A leaver had at most near + long out + long in links; each of those members repairs its table, and
    # each repair adds one new link: the count stays within twice a member's link budget, whatever n.
    budget = settings.max_immediate_neighbors + settings.max_long_links + 2 * settings.max_long_links
    assert 0 < report["links_changed_per_leave"]["max"] <= 2 * budget, report["links_changed_per_leave"]
    assert len(report["leave_messages"]["per_leave"]) == 3
    assert report["join_messages"] is None


def test_safety_checker_names_the_seed() -> None:
    sim = Simulation(seed=99)
    checkers = Checkers(sim)
    sim.form(5)
    checkers.left_at[2] = 3
    with pytest.raises(CheckFailed, match="seed 99") as caught:
        checkers._on_member(0, 2, int(State.LEFT), int(State.ALIVE), 3, False)
    assert "--seed 99" in str(caught.value)


def test_liveness_checker_fails_with_the_seed_when_a_partition_never_heals() -> None:
    sim = Simulation(seed=5)
    checkers = Checkers(sim)
    sim.form(30)
    sim.network.partitions.append(Partition(frozenset(range(10)), sim.now, float("inf")))
    sim.run_until(sim.now + 60_000)  # long enough for each side to declare the other dead
    with pytest.raises(CheckFailed, match="seed 5: not converged"):
        checkers.wait_converged(30_000, step_ms=1000)


def test_dsm_sim_command_writes_json_and_plot(tmp_path: Path) -> None:
    out, fig = tmp_path / "r.json", tmp_path / "r.png"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dsm.cli",
            "sim",
            "--nodes",
            "50",
            "--joins",
            "1",
            "--pairs",
            "50",
            "--crash",
            "0.1",
            "--writes",
            "3",
            "--bulk",
            "5",
            "--json",
            str(out),
            "--plot",
            str(fig),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    report = json.loads(out.read_text())
    assert set(FORMAT) <= set(report)
    assert report["params"]["nodes"] == 50 and report["routing_hops"]["pairs"] == 50
    assert "routing_hops" in run.stdout and "detection_time_ms" in run.stdout and "time_to_all_ms" in run.stdout
    assert fig.stat().st_size > 10_000


def test_a_core_invariant_failure_is_reported_with_the_seed() -> None:
    sim = Simulation(seed=11)
    sim.form(10)
    node = sim.nodes[3]
    assert node.peer is not None
    node.peer.context.now += 10**9  # this core's clock would now go backwards at its next event
    with pytest.raises(CheckFailed, match=r"seed 11: invariant violated.*time went backwards"):
        sim.run_until(sim.now + 5000)


def test_every_report_key_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "sim.md").read_text()
    for key in FORMAT:
        assert f"`{key}`" in doc, key
