"""A Jepsen-style workload of conditional operations on the simulator (issue 19), checked for linearizability.

Clients race `IfAbsent`, `IfMatch` (with the context of the state they last saw) and linearizable `Read`s on a
few keys, each operation through a random live node's core (the product's CASPaxos proposer; acceptors
answer from their `MemoryStore`s), while the network loses messages and partitions, clocks are skewed and a
node crashes and restarts. Every value written is distinct, so the checker (`linearizability.py`) can compare
values. Outcomes map onto the checker's model: applied and failed operations complete; `UNKNOWN` ones (an
accept was sent, no answer) are pending; `REFUSED` ones (no accept was ever sent) are left out, since they
did not happen: if one had, some read would see a value nobody wrote. Operations a crashed coordinator
never answered are pending.

Membership is static during the run (no joins or leaves): acceptor groups do not move yet.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from dsm.core.cas_ops import IfAbsent, IfMatch, Operation, Read
from dsm.core.cas_proposer import CasDone, CasOutcome
from dsm.core.versions import VersionSet
from dsm.sim.cluster import SimNode, Simulation
from dsm.sim.linearizability import CheckResult, OpKind, check
from dsm.sim.linearizability import Operation as Checked
from dsm.sim.network import NetworkModel, Partition


@dataclass(frozen=True)
class CasParams:
    """One run: the seed decides everything else."""

    seed: int
    nodes: int = 5
    clients: int = 6
    keys: tuple[str, ...] = ("a", "b", "c")
    duration_ms: int = 20_000
    loss: float = 0.02
    skew_max_ms: int = 300
    timeout_ms: int = 1_000
    #: Nodes that join during the run (at 5 s, 9 s, ...) and members that leave (at 15 s, 16 s, ...).
    #: Conditional writes are not safe across these yet (docs/consistency.md): this measures it.
    joins: int = 0
    leaves: int = 0


@dataclass
class CasRun:
    """A run's history, outcomes and the applied operations' latencies (virtual ms)."""

    history: list[Checked] = field(default_factory=list)
    outcomes: dict[CasOutcome, int] = field(default_factory=lambda: dict.fromkeys(CasOutcome, 0))
    latencies_ms: list[float] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)

    def check(self) -> CheckResult:
        return check(self.history)


@dataclass
class _Client:
    name: str
    rng: random.Random
    seen: dict[str, VersionSet] = field(default_factory=dict)
    count: int = 0


def register_value(state: VersionSet) -> bytes | None:
    """The register value a conditional key's state stands for (the checker's model); siblings, which
    conditional writes alone never leave, stand for a value nobody wrote, so the checker refuses them."""
    live = state.live
    if len(live) > 1:
        return b"<siblings>"
    return live[0].value if live else None


def checked_operation(
    ident: int,
    client: str,
    key: str,
    operation: Operation,
    invoked: int,
    ended: int | None,
    expected: bytes | None,
    result: CasDone,
) -> Checked:
    """A conditional operation and its outcome as the linearizability checker takes it (`ended` None:
    pending)."""
    if isinstance(operation, Read):
        state = result.state or VersionSet()
        observed = tuple(v.value for v in state.live if v.value is not None)
        return Checked(ident, client, key, OpKind.READ, invoked, ended, observed=observed)
    value = operation.value
    assert value is not None
    ok = result.outcome is not CasOutcome.FAILED or ended is None
    return Checked(ident, client, key, OpKind.CAS, invoked, ended, value, True, expected, ok)


def run_cas_workload(params: CasParams) -> CasRun:
    """Runs the workload (see the module docstring); the history is in `run.history`."""
    sim = Simulation(params.seed, network=NetworkModel(loss=params.loss), skew_max_ms=params.skew_max_ms)
    sim.form(params.nodes)
    sim.run_until(sim.now + 3_000)
    start, stop = sim.now, sim.now + params.duration_ms
    rng = random.Random(params.seed * 31 + 7)
    run = CasRun()
    open_ops: dict[tuple[str, int], tuple[Operation, str, int, bytes | None]] = {}
    clients = [_Client(f"c{i}", random.Random(params.seed * 100 + i)) for i in range(params.clients)]

    def issue(client: _Client) -> None:
        if sim.now >= stop:
            return
        up = sim.up_nodes()
        node: SimNode = up[client.rng.randrange(len(up))]
        key = params.keys[client.rng.randrange(len(params.keys))]
        client.count += 1
        value = f"{client.name}-{client.count}".encode()
        seen = client.seen.get(key, VersionSet())
        choice = client.rng.random()
        operation: Operation = (
            Read() if choice < 0.3 else IfAbsent(value) if choice < 0.5 else IfMatch(seen.context(), value)
        )
        expected = register_value(seen) if isinstance(operation, IfMatch) else None
        invoked = int(sim.now)
        ident = (client.name, client.count)
        open_ops[ident] = (operation, key, invoked, expected)
        sim.cas_at(node, key, operation, _done(client, ident, key, operation, invoked, expected), params.timeout_ms)

    def _done(
        client: _Client, ident: tuple[str, int], key: str, operation: Operation, invoked: int, expected: bytes | None
    ) -> Callable[[CasDone], None]:
        def done(result: CasDone) -> None:
            open_ops.pop(ident, None)
            run.outcomes[result.outcome] += 1
            if result.state is not None:
                client.seen[key] = result.state
            if result.outcome is CasOutcome.APPLIED:
                run.latencies_ms.append(sim.now - invoked)
            if result.outcome is not CasOutcome.REFUSED:
                ended = None if result.outcome is CasOutcome.UNKNOWN else int(sim.now)
                run.history.append(
                    checked_operation(len(run.history), client.name, key, operation, invoked, ended, expected, result)
                )
            sim.at(sim.now + client.rng.uniform(0, 50), lambda: issue(client))

        return done

    for client in clients:
        sim.at(start + rng.uniform(0, 50), lambda c=client: issue(c))  # type: ignore[misc]
    cut = frozenset(rng.sample(range(params.nodes), 2))
    sim.network.partitions.append(Partition(cut, start + 4_000, start + 8_000))
    victim = sim.nodes[rng.randrange(params.nodes)]
    run.faults += [f"partition {sorted(cut)} 4-8 s", f"crash {victim.info.node_id} 10-13 s"]
    sim.at(start + 10_000, lambda: sim.crash(victim))
    sim.at(start + 13_000, lambda: sim.restart(victim, [n for n in sim.nodes if n is not victim and n.up][:1]))

    def joiner() -> None:
        node = sim.add_node()
        sim.join(node, [n for n in sim.nodes if n.up][:1])

    def leaver(index: int) -> None:
        if sim.nodes[index].up:
            sim.leave(sim.nodes[index])

    for i in range(params.joins):
        sim.at(start + 5_000 + 4_000 * i, joiner)
    for i in range(params.leaves):
        leaving = (victim.index + 1 + i) % params.nodes
        sim.at(start + 15_000 + 1_000 * i, lambda index=leaving: leaver(index))  # type: ignore[misc]
    if params.joins or params.leaves:
        run.faults += [f"{params.joins} joins from 5 s", f"{params.leaves} leaves from 15 s"]
    sim.run_until(stop + 5_000)
    unknown = CasDone(0, CasOutcome.UNKNOWN)
    for (name, _), (operation, key, invoked, expected) in open_ops.items():  # never answered: pending
        if not isinstance(operation, Read):
            run.history.append(
                checked_operation(len(run.history), name, key, operation, invoked, None, expected, unknown)
            )
    return run
