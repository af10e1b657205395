"""Simulation tests of write dissemination: every acknowledged write reaches every live replica, over many
seeds with loss, duplication, reordering (jitter), clock skew and crashes; the lost-write checker fails
when a write is lost."""

from __future__ import annotations

import pytest

from dsm.core.encoding import decode_versions
from dsm.core.peer import PeerSettings
from dsm.sim.cluster import CheckFailed, Simulation
from dsm.sim.network import Partition
from dsm.sim.run import SimParams, StandardRun


@pytest.mark.parametrize("seed", range(1, 7))
def test_writes_reach_every_replica_through_faults(seed: int) -> None:
    params = SimParams(
        nodes=120, seed=seed, loss=0.03, duplicate=0.02, crash=0.25, joins=1, pairs=50, writes=6, bulk=20
    )
    report = StandardRun(params).run()
    assert report["checks"]["passed"], report["checks"]["failure"]
    assert report["converged"] is True
    assert report["time_to_all_ms"]["reached_all"] == 1.0
    after = report["write_after_crash"]
    assert after["fraction_at_end"] == 1.0, after


@pytest.mark.parametrize("seed", [1, 2])
def test_direct_updates_settle_on_a_tree(seed: int) -> None:
    report = StandardRun(SimParams(nodes=200, seed=seed, joins=0, pairs=50, writes=12)).run()
    assert report["checks"]["passed"], report["checks"]["failure"]
    copies = report["payload_copies_per_update"]
    assert copies["first"] > 5  # the first write floods the overlay...
    assert copies["steady_mean"] <= 1.2  # ...and later ones travel about once per node (the tree forms
    assert copies["steady_max"] <= 2.0  # over the first few writes)
    assert report["delivery_hops"]["max"] <= 12
    assert report["idle_gossip_period_ms"]["p50"] == params_max()


def params_max() -> int:
    return SimParams().settings.gossip_interval_max_ms


@pytest.mark.parametrize("loss", [0.0, 0.2])
def test_gossip_alone_reaches_everyone(loss: float) -> None:
    report = StandardRun(SimParams(nodes=150, seed=3, loss=loss, joins=0, pairs=20, writes=4, gossip_only=True)).run()
    assert report["checks"]["passed"], report["checks"]["failure"]
    assert report["time_to_all_ms"]["reached_all"] == 1.0
    assert report["payload_copies_per_update"]["first"] < 3  # no flood: pulls move payloads
    assert report["messages"].get("Push", 0) == 0


def test_lost_write_is_reported_with_the_seed() -> None:
    run = StandardRun(SimParams(nodes=30, seed=5, joins=0, pairs=10, writes=2))
    report = run.run()
    assert report["converged"] is True
    lost = run.acknowledged[0]
    for node in run.sim.nodes:
        node.data.pop(lost.key, None)
    with pytest.raises(CheckFailed, match=r"seed 5.*lost"):
        run._replicas_converged(1000)


def test_diverging_replicas_fail_the_liveness_check() -> None:
    run = StandardRun(SimParams(nodes=30, seed=6, joins=0, pairs=10, writes=1))
    run.run()
    run.sim.nodes[3].data["stray"] = b"only here"
    with pytest.raises(CheckFailed, match=r"seed 6.*still differ"):
        run._replicas_converged(2000)


def _converged(sim: Simulation) -> bool:
    up = [n for n in sim.nodes if n.up]
    return all(n.data == up[0].data for n in up)


FAST_AE = PeerSettings(anti_entropy_interval_ms=5000)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_partition_with_writes_on_both_sides_heals_and_converges(seed: int) -> None:
    sim = Simulation(seed=seed, settings=FAST_AE)
    sim.form(80)
    sim.run_until(sim.now + 5000)
    group = frozenset(sim.rng.sample(range(80), 25))
    sim.network.partitions.append(Partition(group, sim.now, sim.now + 200_000))
    written = []
    for i in range(30):
        node = sim.nodes[sim.rng.randrange(80)]
        written.append(sim.write(node, f"p{i % 20}", f"v{i}".encode()))  # some keys written on both sides
        sim.run_until(sim.now + 2000)
    sim.run_until(sim.now + 120_000)
    assert not _converged(sim)  # the two sides did not hear each other
    for _ in range(60):
        if _converged(sim):
            break
        sim.run_until(sim.now + 5000)
    assert _converged(sim), f"seed {seed}"
    data = sim.nodes[0].data
    assert len(data) == 20
    for item in written:  # last writer wins everywhere: nothing newer was lost
        mine = decode_versions(item.versions).winner
        held = decode_versions(data[item.key]).winner
        assert mine is not None and held is not None and held.dot >= mine.dot


@pytest.mark.parametrize("seed", [4, 5])
def test_restarted_node_catches_up_on_what_it_missed(seed: int) -> None:
    sim = Simulation(seed=seed, settings=FAST_AE)
    sim.form(60)
    sim.run_until(sim.now + 5000)
    victim = sim.nodes[7]
    sim.crash(victim)
    for i in range(15):
        sim.write(sim.nodes[sim.rng.choice([i for i in range(60) if i != 7])], f"k{i}", b"x")
        sim.run_until(sim.now + 1000)
    sim.run_until(sim.now + 60_000)  # the writes' gossip is over before the node returns
    assert len(victim.data) == 0
    sim.restart(victim, [sim.nodes[0]])
    for _ in range(40):
        if len(victim.data) == 15 and _converged(sim):
            break
        sim.run_until(sim.now + 2000)
    assert len(victim.data) == 15 and _converged(sim)
