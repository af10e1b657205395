"""Conditional writes in the simulator, on the product's core: every node's `NodeCore` runs the CASPaxos
proposer, acceptors answer from their `MemoryStore`'s paxos keyspace (durable across crashes), and clients
race IfAbsent / IfMatch / Read on a few keys while the network loses messages and partitions, clocks are
skewed and nodes crash and restart. Every history goes through the linearizability checker.

Membership is static (no joins or leaves during the run): the acceptor groups do not move yet (issue 19's
handover is a later step)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from dsm.core import cas_proposer
from dsm.core.cas_ops import IfAbsent, IfMatch, Operation, Read
from dsm.core.cas_proposer import CasDone, CasOutcome
from dsm.core.versions import VersionSet
from dsm.sim.cluster import SimNode, Simulation
from dsm.sim.linearizability import Operation as Checked
from dsm.sim.linearizability import OpKind, check
from dsm.sim.network import NetworkModel, Partition

KEYS = ("a", "b", "c")


@dataclass
class Client:
    name: str
    rng: random.Random
    seen: dict[str, VersionSet] = field(default_factory=dict)
    count: int = 0


def _value_of(state: VersionSet) -> bytes | None:
    live = state.live
    if len(live) > 1:  # never with conditional writes alone: a register holds one value
        return b"<siblings>"
    return live[0].value if live else None


def run(seed: int, duration_ms: int = 20_000) -> tuple[list[Checked], dict[CasOutcome, int]]:
    sim = Simulation(seed, network=NetworkModel(loss=0.02), skew_max_ms=300)
    sim.form(5)
    sim.run_until(sim.now + 3_000)
    start = sim.now
    rng = random.Random(seed * 31 + 7)
    history: list[Checked] = []
    open_ops: dict[tuple[str, int], tuple[Operation, str, int, bytes | None]] = {}
    outcomes = dict.fromkeys(CasOutcome, 0)
    clients = [Client(f"c{i}", random.Random(seed * 100 + i)) for i in range(6)]
    stop = start + duration_ms

    def issue(client: Client) -> None:
        if sim.now >= stop:
            return
        up = sim.up_nodes()
        node: SimNode = up[client.rng.randrange(len(up))]
        key = KEYS[client.rng.randrange(len(KEYS))]
        client.count += 1
        value = f"{client.name}-{client.count}".encode()
        seen = client.seen.get(key, VersionSet())
        choice = client.rng.random()
        operation: Operation
        expected: bytes | None = None
        if choice < 0.3:
            operation = Read()
        elif choice < 0.5:
            operation = IfAbsent(value)
        else:
            operation, expected = IfMatch(seen.context(), value), _value_of(seen)
        invoked = int(sim.now)
        ident = (client.name, client.count)
        open_ops[ident] = (operation, key, invoked, expected)

        def done(result: CasDone) -> None:
            open_ops.pop(ident, None)
            outcomes[result.outcome] += 1
            if result.state is not None:
                client.seen[key] = result.state
            ended: int | None = int(sim.now)
            if result.outcome is not CasOutcome.REFUSED:  # refused: it did not happen, so it is not recorded
                if result.outcome is CasOutcome.UNKNOWN:
                    ended = None
                history.append(_checked(len(history), client.name, key, operation, invoked, ended, expected, result))
            sim.at(sim.now + client.rng.uniform(0, 50), lambda: issue(client))

        sim.cas_at(node, key, operation, done, timeout_ms=1_000)

    for client in clients:
        sim.at(start + rng.uniform(0, 50), lambda c=client: issue(c))  # type: ignore[misc]
    # Faults: a partition cutting two nodes off, a crash and restart, each for a few seconds.
    sim.network.partitions.append(Partition(frozenset({0, 1}), start + 4_000, start + 8_000))
    victim = sim.nodes[rng.randrange(5)]
    sim.at(start + 10_000, lambda: sim.crash(victim))
    sim.at(start + 13_000, lambda: sim.restart(victim, [n for n in sim.nodes if n is not victim and n.up][:1]))
    sim.run_until(stop + 5_000)
    for (name, _), (operation, key, invoked, expected) in open_ops.items():  # a crashed coordinator's: pending
        if not isinstance(operation, Read):
            history.append(
                _checked(len(history), name, key, operation, invoked, None, expected, CasDone(0, CasOutcome.UNKNOWN))
            )
    return history, outcomes


def _checked(
    ident: int,
    client: str,
    key: str,
    operation: Operation,
    invoked: int,
    ended: int | None,
    expected: bytes | None,
    result: CasDone,
) -> Checked:
    if isinstance(operation, Read):
        state = result.state or VersionSet()
        observed = tuple(v.value for v in state.live if v.value is not None)
        return Checked(ident, client, key, OpKind.READ, invoked, ended, observed=observed)
    ok = result.outcome is not CasOutcome.FAILED or ended is None
    return Checked(ident, client, key, OpKind.CAS, invoked, ended, operation.value, True, expected, ok)


@pytest.mark.parametrize("seed", range(1, 9))
def test_conditional_operations_on_the_simulated_cluster_are_linearizable(seed: int) -> None:
    history, outcomes = run(seed)
    result = check(history)
    assert result.ok, f"seed {seed}: {result.summary()}"
    assert outcomes[CasOutcome.APPLIED] > 20 and outcomes[CasOutcome.FAILED] > 0, outcomes


def test_the_checker_catches_a_proposer_that_takes_one_answer_for_a_majority(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cas_proposer, "_majority", lambda group: 1)
    history, _ = run(1)
    assert not check(history).ok
