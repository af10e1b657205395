"""The sync-point lemma on the simulator (the product's anti-entropy, `dsm.core.reconcile` "Sync points",
driven by `dsm.sim.cluster`): with loss, duplication, partitions, a crash and restart, and answers cut by a
small `anti_entropy_max_bytes`, a watch cursor taken on node A at stamp s (its reader then holds A's rows as
of s) and resumed on another node B through a sync point misses nothing: every version B holds is in a row B
replays (seq > the sync point's own stamp b) or is held or dominated by what A held at s. Checked for every
cursor against every other live node, several times during the run, over several seeds."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from dsm.core.anti_entropy import Exchanges, ReconcileStep
from dsm.core.encoding import decode_versions
from dsm.core.messages import Send, SyncPoint
from dsm.core.peer import PeerSettings
from dsm.core.versions import Resolution
from dsm.core.watch_cursor import Cursor, HeldSyncPoint, Plan, choose
from dsm.sim.cluster import CheckFailed, SimNode, Simulation
from dsm.sim.network import Latency, NetworkModel, Partition

NODES = 5
KEYS = 40
GRACE_MS = 7 * 24 * 3_600_000
SETTINGS = PeerSettings(anti_entropy_interval_ms=2000, anti_entropy_max_bytes=3000)


@dataclass
class Taken:
    """A cursor taken on node `node` and what its reader holds: that node's rows as of the cursor."""

    node: int
    cursor: Cursor
    rows: dict[str, bytes]


@dataclass
class Tally:
    sync_point: int = 0
    resync: int = 0
    missed: int = 0
    #: What a resume that replayed nothing at all (the cursor's stamp read as B's) would have missed.
    missed_without_replay: int = 0


def dominated(theirs: bytes, mine: bytes | None) -> bool:
    """Whether the versions `mine` hold or dominate every version of `theirs`."""
    if mine is None:
        return False
    held = decode_versions(mine)
    return held.merge(decode_versions(theirs), Resolution.LWW) == held


def check(sim: Simulation, taken: list[Taken], tally: Tally) -> None:
    """Resumes every cursor on every other live node, as `dsm.node.watches` does, and checks the lemma."""
    for t in taken:
        for b in sim.up_nodes():
            if b.index == t.node:
                continue
            resume = choose(t.cursor, b.info.node_id, b.epoch, int(sim.now), GRACE_MS, b.sync_points.of(t.cursor.node))
            if resume.plan is Plan.RESYNC:
                tally.resync += 1
                continue
            assert resume.plan is Plan.SYNC_POINT
            tally.sync_point += 1
            replayed = {key for key, _, _ in b.store.changed_since_now(resume.after, limit=1 << 30)}
            for key, versions in b.data.items():
                if key not in replayed and not dominated(versions, t.rows.get(key)):
                    tally.missed += 1
                    raise CheckFailed(sim.seed, f"a resume on {b.info.node_id} from {t.cursor} misses {key!r}")
                if not dominated(versions, t.rows.get(key)):
                    tally.missed_without_replay += 1


def run(seed: int) -> Tally:
    # Slow links (exchanges take a while, and writes land during them), skewed clocks beyond the offset bound
    # (some merges refuse versions from a clock ahead).
    network = NetworkModel(same_region=Latency(15.0, 15.0), loss=0.03, duplicate=0.03)
    sim = Simulation(seed=seed, settings=SETTINGS, network=network, skew_max_ms=1500, max_clock_offset_ms=1000)
    sim.form(NODES)
    rng = random.Random(seed)
    taken: list[Taken] = []
    tally = Tally()
    crashed: SimNode | None = None
    sim.run_until(sim.now + 3000)
    for round_ in range(120):
        if round_ % 30 == 4:
            group = frozenset(rng.sample(range(NODES), 2))
            sim.network.partitions.append(Partition(group, sim.now, sim.now + rng.randrange(3000, 12_000)))
        if round_ == 50:
            crashed = rng.choice(sim.up_nodes())
            sim.crash(crashed)
        if round_ == 70 and crashed is not None:
            sim.restart(crashed, [n for n in sim.up_nodes()][:1])
        for _ in range(rng.randrange(1, 4)):
            node = rng.choice(sim.up_nodes())
            value = None if rng.random() < 0.15 else bytes(rng.randrange(50, 400))
            sim.write(node, f"k{rng.randrange(KEYS):02}", value)
        sim.run_until(sim.now + rng.randrange(20, 600))
        if rng.random() < 0.5:
            a = rng.choice(sim.up_nodes())
            taken.append(Taken(a.index, Cursor(a.info.node_id, a.epoch, a.last_stamp), dict(a.data.items())))
        if round_ % 20 == 19:
            check(sim, taken, tally)
    sim.run_until(sim.now + 20_000)
    check(sim, taken, tally)
    return tally


@pytest.mark.parametrize("seed", range(1, 7))
def test_a_cursor_resumed_through_a_sync_point_misses_nothing(seed: int) -> None:
    tally = run(seed)
    assert tally.missed == 0
    # The check has something to check: resumes went through sync points, and without the replay from the
    # sync point's own stamp they would have missed versions (writes A had not seen at the cursor's point).
    assert tally.sync_point > 20 and tally.missed_without_replay > 0, tally


def _late_stamp(self: Exchanges, source: str, message: SyncPoint) -> list[HeldSyncPoint]:
    """A wrong rule: this side's stamp when the peer's sync point arrives, not at its first step."""
    record = self._record(source, message.session)
    if record is None or not record.answered_in_full:
        return []
    return [HeldSyncPoint(source, message.epoch, message.stamp, self.ports.last_stamp())]


def _cut_steps_ignored(self: Exchanges, source: str, message: SyncPoint) -> list[HeldSyncPoint]:
    """A wrong rule: a sync point kept although this side's steps were cut by max bytes."""
    record = self._record(source, message.session)
    return [] if record is None else [HeldSyncPoint(source, message.epoch, message.stamp, record.first_stamp)]


_MERGED = Exchanges.merged


def _refusals_ignored(self: Exchanges, step: ReconcileStep, took_all: bool) -> list[Send]:
    """A wrong rule: a sync point sent although a merge refused entries."""
    return _MERGED(self, step, True)


@pytest.mark.parametrize(
    ("method", "wrong"),
    [("keep", _late_stamp), ("keep", _cut_steps_ignored), ("merged", _refusals_ignored)],
    ids=["stamp-at-arrival", "cut-steps-ignored", "refusals-ignored"],
)
def test_the_check_catches_each_condition_left_out(method: str, wrong: Callable[..., Any]) -> None:
    # Each condition of the rule matters: the product's anti-entropy with one of them left out gives sync
    # points that miss versions, and the check finds it within these seeds.
    failures = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Exchanges, method, wrong)
        for seed in range(1, 7):
            try:
                run(seed)
            except CheckFailed as failure:
                failures.append(failure.seed)
    assert failures, "the check did not notice"
