"""A Jepsen-style workload in the simulator: clients read and write a few keys through random live nodes while
the network partitions, nodes crash and restart, clocks are skewed and messages are lost; every operation
goes into a `history.History`, and once the faults stop and the replicas converge, `history.check` says
whether an acknowledged write was lost (and, in 'lww' mode, how many were overwritten by a concurrent write
that had not seen them: that mode's documented cost).

Operations are acknowledged at the `local` level: a write is durable on its coordinator when it returns
(in the simulator, the coordinator's replica is its storage and survives its crash), then spreads by the
broadcast tree, gossip and anti-entropy. A client reads a key on some node, then writes it back with that
read's context (a read-modify-write) or writes blind, or deletes with the context; each client keeps
choosing nodes at random among those up, so its reads and writes land on different replicas.

Faults (all from the seed): a fixed clock offset per node, uniform in +-`skew_max_ms`; message loss;
`partitions` partitions, each cutting either one region or a random third of the nodes off for 5-30 s;
`crashes` crashes, each followed by a restart 5-30 s later. Latencies: `same_region` (1 ms + an
exponential jitter of mean 2 ms: mostly 1-5 ms) and `cross_region` (50 ms + jitter of mean 30 ms: mostly
50-150 ms).

    report, run = run_workload(WorkloadParams(seed=1, mode=Resolution.SIBLINGS))
    assert report.ok, report.summary()
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from dsm.config import Profile, StorageConfig
from dsm.core.consistency import Level
from dsm.core.encoding import decode_versions
from dsm.core.peer import PeerSettings
from dsm.core.vclock import VersionVector
from dsm.core.versions import Resolution, VersionSet
from dsm.sim.cluster import LevelRequest, SimNode, Simulation
from dsm.sim.history import History, Op, Report, check, check_converged, held_versions
from dsm.sim.network import Latency, NetworkModel, Partition


@dataclass
class WorkloadParams:
    """One run. Times in ms of virtual time."""

    seed: int
    mode: Resolution = Resolution.SIBLINGS
    nodes: int = 9
    regions: tuple[str, ...] = ("r0", "r1", "r2")
    clients: int = 7
    keys: int = 3
    #: How long clients run and faults happen.
    duration_ms: float = 60_000
    #: Mean pause between a client's operations (exponential).
    think_ms: float = 40.0
    loss: float = 0.02
    skew_max_ms: int = 60_000
    partitions: int = 3
    crashes: int = 3
    #: Chance that a write carries the client's last read context of that key (else blind).
    with_context: float = 0.7
    #: Chance that an operation is a delete (with the context).
    deletes: float = 0.05
    max_siblings: int = 1024
    #: Levels the clients use, drawn per operation (`local` operations complete at once; the others wait
    #: for the level's members, up to `level_timeout_ms`).
    levels: tuple[str, ...] = ("local",)
    level_timeout_ms: float = 2000.0
    #: Longest wait for convergence after the faults stop.
    settle_ms: float = 300_000
    #: The protocol's settings: the configuration's 'sim' profile (a faster protocol clock).
    settings: PeerSettings = field(default_factory=lambda: PeerSettings.from_config(StorageConfig(profile=Profile.SIM)))


@dataclass
class WorkloadRun:
    """What a run did, besides the checker's report."""

    sim: Simulation
    history: History
    converged_ms: float | None = None
    diverged: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        ops = self.history.ops
        return {
            "ops": len(ops),
            "writes_ok": sum(1 for o in ops if o.is_write and o.outcome == "ok"),
            "reads_ok": sum(1 for o in ops if o.kind == "read" and o.outcome == "ok"),
            "converged_after_ms": self.converged_ms,
            "faults": len(self.faults),
        }


class _Workload:
    def __init__(self, params: WorkloadParams) -> None:
        self.p = params
        network = NetworkModel(
            same_region=Latency(1.0, 2.0),
            default_cross_region=Latency(50.0, 30.0),
            loss=params.loss,
        )
        self.sim = Simulation(
            params.seed, settings=params.settings, network=network, regions=params.regions,
            skew_max_ms=params.skew_max_ms,
        )  # fmt: skip
        self.sim.resolution = params.mode
        self.sim.max_siblings = params.max_siblings
        # As an operator must: the clock offset a node accepts covers the worst difference of two clocks.
        self.sim.max_clock_offset_ms = 2 * params.skew_max_ms + 10_000
        self.rng = random.Random(params.seed * 7919 + 1)
        self.history = History()
        self.contexts: dict[tuple[int, str], VersionVector] = {}
        self.run = WorkloadRun(self.sim, self.history)
        self.stop_at = 0.0

    def go(self) -> WorkloadRun:
        p, sim = self.p, self.sim
        sim.form(p.nodes)
        start = sim.now + 2_000  # let the overlay settle
        self.stop_at = start + p.duration_ms
        for client in range(p.clients):
            sim.at(start + self.rng.expovariate(1 / p.think_ms), lambda c=client: self._op(c))  # type: ignore[misc]
        self._plan_faults(start)
        sim.run_until(self.stop_at + 30_000)  # every fault is over by then (at most 30 s long)
        for node in sim.nodes:
            if not node.up and not node.left:
                self._restart(node)
        end = self.stop_at + p.settle_ms
        while sim.now < end:
            sim.run_until(sim.now + 5_000)
            states = {n.info.node_id: self.state(n) for n in sim.nodes if n.up}
            self.run.diverged = check_converged(states)
            if not self.run.diverged:
                self.run.converged_ms = sim.now - self.stop_at
                break
        return self.run

    # --- faults ---

    def _plan_faults(self, start: float) -> None:
        p, sim, rng = self.p, self.sim, self.rng
        for _ in range(p.partitions):
            begin = start + rng.uniform(0, p.duration_ms * 0.8)
            length = rng.uniform(5_000, 30_000)
            if rng.random() < 0.5:
                region = rng.choice(p.regions)
                group = frozenset(n.index for n in sim.nodes if n.info.region == region)
                what = f"region {region}"
            else:
                group = frozenset(rng.sample(range(p.nodes), max(1, p.nodes // 3)))
                what = f"nodes {sorted(group)}"
            sim.network.partitions.append(Partition(group, begin, begin + length))
            self.run.faults.append(f"partition {what} at {begin - start:.0f} ms for {length:.0f} ms")
        for _ in range(p.crashes):
            begin = start + rng.uniform(0, p.duration_ms * 0.8)
            length = rng.uniform(5_000, 30_000)
            index = rng.randrange(p.nodes)
            sim.at(begin, lambda i=index, d=length: self._crash(i, d))  # type: ignore[misc]

    def _crash(self, index: int, down_ms: float) -> None:
        node = self.sim.nodes[index]
        if not node.up or len(self.sim.up_nodes()) <= 2:
            return
        self.sim.crash(node)
        self.run.faults.append(f"crash {node.info.node_id} for {down_ms:.0f} ms")
        self.sim.at(self.sim.now + down_ms, lambda: self._restart(node))

    def _restart(self, node: SimNode) -> None:
        if node.up:
            return
        others = [n for n in self.sim.up_nodes() if n is not node]
        # Every other restart has lost its bootstrap list: it rejoins through the members it had saved.
        self.sim.restart(node, others[:3] if len(self.run.faults) % 2 else [])

    # --- clients ---

    def _op(self, client: int) -> None:
        p, sim, rng = self.p, self.sim, self.rng
        if sim.now >= self.stop_at:
            return
        up = sim.up_nodes()
        waiting = False
        if up:
            node = rng.choice(up)
            key = f"k{rng.randrange(p.keys)}"
            level = Level(rng.choice(p.levels))
            roll = rng.random()
            if roll < 0.4:
                waiting = self._read(client, node, key, level)
            elif roll < 0.4 + p.deletes:
                context = self.contexts.get((client, key), VersionVector())
                waiting = self._write(client, node, key, None, context, level)
            else:
                use = rng.random() < p.with_context
                context = self.contexts.get((client, key), VersionVector()) if use else VersionVector()
                waiting = self._write(client, node, key, f"c{client}-{len(self.history)}".encode(), context, level)
        if not waiting:
            self._next(client)

    def _next(self, client: int) -> None:
        self.sim.at(self.sim.now + self.rng.expovariate(1 / self.p.think_ms), lambda: self._op(client))

    def _versions(self, node: SimNode, key: str) -> VersionSet:
        raw = node.data.get(key)
        return VersionSet() if raw is None else decode_versions(raw)

    def _read(self, client: int, node: SimNode, key: str, level: Level) -> bool:
        """Reads `key` on `node`; returns whether the client waits for an answer (a level above local)."""
        op = self._invoke(client, "read", key, None, node, None, level)
        if level is Level.LOCAL:
            self._read_done(client, key, op, self._versions(node, key))
            return False

        def done(outcome: str, request: LevelRequest) -> None:
            if outcome == "ok":
                item = request.item
                self._read_done(client, key, op, VersionSet() if item is None else decode_versions(item.versions))
            else:
                self._end(op, outcome)
            self._next(client)

        self.sim.read_at(node, key, level, done, timeout_ms=self.p.level_timeout_ms)
        return True

    def _read_done(self, client: int, key: str, op: Op, versions: VersionSet) -> None:
        context = versions.context()
        self.contexts[(client, key)] = context
        seen = [(tuple(v.dot), v.value) for v in versions.live]
        self.history.ok(op, int(self.sim.now), context=context.as_dict(), seen=seen)  # type: ignore[arg-type]

    def _write(
        self, client: int, node: SimNode, key: str, value: bytes | None, context: VersionVector, level: Level
    ) -> bool:
        """Writes on `node`; returns whether the client waits for an answer (a level above local)."""
        kind = "write" if value is not None else "delete"
        op = self._invoke(client, kind, key, value, node, context.as_dict(), level)
        sim, p = self.sim, self.p
        if level is Level.LOCAL:
            item = sim.write(node, key, value, context=context)
            self._write_done(client, key, op, item.versions, node)
            return False

        def done(outcome: str, request: LevelRequest) -> None:
            if outcome == "ok":
                assert request.item is not None
                self._write_done(client, key, op, request.item.versions, node)
            else:
                self._end(op, outcome)
            self._next(client)

        sim.write_at(node, key, value, level, done, context=context, timeout_ms=p.level_timeout_ms)
        return True

    def _write_done(self, client: int, key: str, op: Op, encoded: bytes, node: SimNode) -> None:
        after = decode_versions(encoded)
        newest = after.versions[0]  # the new version: its dot is above everything the key held
        assert newest.dot.node == node.info.node_id
        self.contexts[(client, key)] = after.context()
        self.history.ok(op, int(self.sim.now), dot=tuple(newest.dot), context=after.context().as_dict())  # type: ignore[arg-type]

    def _end(self, op: Op, outcome: str) -> None:
        if outcome == "fail":
            self.history.fail(op, int(self.sim.now), "level not met in time")
        else:
            self.history.unknown(op, int(self.sim.now))

    def _invoke(
        self,
        client: int,
        kind: str,
        key: str,
        value: bytes | None,
        node: SimNode,
        given: dict[str, int] | None,
        level: Level,
    ) -> Op:
        return self.history.invoke(
            f"c{client}", kind, key, value, level.value, node.info.region, node.info.node_id, int(self.sim.now),  # type: ignore[arg-type]
            given=given,
        )  # fmt: skip

    def state(self, node: SimNode) -> dict[str, list[Any]]:
        """What `node` holds of the workload's keys, as the checker compares it."""
        return {
            f"k{i}": held_versions(self._versions(node, f"k{i}"))
            for i in range(self.p.keys)
            if node.data.get(f"k{i}") is not None
        }


def run_workload(params: WorkloadParams) -> tuple[Report, WorkloadRun]:
    """Runs the workload; returns the checker's report on the converged state (of the first live node) and
    the run. `run.diverged` lists keys the live replicas still disagree on after `settle_ms`."""
    workload = _Workload(params)
    run = workload.go()
    first = next(n for n in run.sim.nodes if n.up)
    final = workload.state(first)
    return check(run.history, final, params.mode), run


__all__ = ["WorkloadParams", "WorkloadRun", "run_workload"]
