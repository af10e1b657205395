"""The CASPaxos proposer (`dsm.core.cas_proposer`) over three in-memory acceptors running the pure rules
(`dsm.core.cas_acceptor`), on a seeded network that delays, reorders, duplicates and loses messages, with
skewed clocks; several clients race conditional operations on one key. Each run's history goes through the
linearizability checker (`dsm.sim.linearizability`). No event loop: the test is its own tiny simulator.

Refused operations (no accept was ever sent) are left out of the history: the proposer says they did not
happen, and if one had, some read would see a value nobody wrote. Unknown ones are pending."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from dsm.core import cas_acceptor, cas_proposer
from dsm.core.ballot import Ballot
from dsm.core.cas_acceptor import AcceptorState
from dsm.core.cas_ops import IfAbsent, IfMatch, Operation, Read
from dsm.core.cas_proposer import CasDone, CasOutcome, CasProposer
from dsm.core.encoding import decode_versions, encode_versions
from dsm.core.hlc import HybridLogicalClock
from dsm.core.messages import CasAccept, CasAccepted, CasCommit, CasPrepare, CasPromise, Send, Store
from dsm.core.versions import Resolution, VersionSet
from dsm.sim.cas_workload import checked_operation, register_value
from dsm.sim.linearizability import Operation as Checked
from dsm.sim.linearizability import check

NODES = ("n0", "n1", "n2")
KEY = "k"
START = 1_700_000_000_000
OFFSET = 10_000
SIBLINGS = Resolution.SIBLINGS


@dataclass
class Node:
    name: str
    skew: int
    proposer: CasProposer
    acceptor: dict[str, AcceptorState] = field(default_factory=dict)
    rows: dict[str, VersionSet] = field(default_factory=dict)


@dataclass
class Client:
    name: str
    node: str
    seen: VersionSet = field(default_factory=VersionSet)
    busy: bool = False
    count: int = 0


class World:
    """Three nodes, a lossy network, clients; the acceptor side is the driver's store work."""

    def __init__(
        self, seed: int, loss: float = 0.05, skew_ms: int = 200, waves: bool = False, hedge_ms: int = 10
    ) -> None:
        self.rng = random.Random(seed)
        self.now = 0
        self.events: list[tuple[int, int, Callable[[], None]]] = []
        self.seq = 0
        self.nodes: dict[str, Node] = {}
        for name in NODES:
            clock = HybridLogicalClock(OFFSET)
            # With waves, an accept asks its own acceptor and the next member first (as NodeCore orders them).
            me = NODES.index(name)
            order = (lambda group, me=me: (group[me:] + group[:me])[:2]) if waves else None
            proposer = CasProposer(
                name, clock, 1, random.Random(self.rng.getrandbits(32)), lambda key: NODES, lambda member: member,
                SIBLINGS, 16, backoff_base_ms=5, backoff_max_ms=50, accept_wave=order, hedge_ms=hedge_ms,
            )  # fmt: skip
            self.nodes[name] = Node(name, self.rng.randint(-skew_ms, skew_ms), proposer)
        self.loss = loss
        self.history: list[Checked] = []
        self.open: dict[int, tuple[Client, Operation, int, bytes | None]] = {}
        self.request = 0
        self.outcomes: dict[CasOutcome, int] = dict.fromkeys(CasOutcome, 0)
        self.stopped = False
        self.sent: list[tuple[str, str, object]] = []  # (source, target, message) of every send
        self.silent: set[str] = set()  # nodes that receive nothing
        self.fixed_delay: int | None = None  # every message's one-way delay (ms), instead of random ones

    def wall(self, node: Node) -> int:
        return START + self.now + node.skew

    def at(self, when: int, action: Callable[[], None]) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, action))

    def run(self, until: int) -> None:
        while self.events and self.events[0][0] <= until:
            self.now, _, action = heapq.heappop(self.events)
            action()
            for node in self.nodes.values():
                deadline = node.proposer.next_deadline()
                if deadline is not None and deadline <= self.now:
                    self.apply(node, node.proposer.tick(self.now, self.wall(node)))
        self.now = until

    def wake(self, node: Node) -> None:
        deadline = node.proposer.next_deadline()
        if deadline is not None:
            self.at(max(deadline, self.now), lambda: self.apply(node, node.proposer.tick(self.now, self.wall(node))))

    # --- effects and messages

    def apply(self, node: Node, effects: list[Any]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self.send(node.name, effect.node_id, effect.message)
            elif isinstance(effect, Store):
                for item in effect.items:
                    self.merge_row(node, item.key, item.versions)
            elif isinstance(effect, CasDone):
                self.done(effect)
        self.wake(node)

    def send(self, source: str, target: str, message: object) -> None:
        self.sent.append((source, target, message))
        copies = 0 if self.rng.random() < self.loss else 2 if self.rng.random() < 0.05 else 1
        if target in self.silent:
            copies = 0
        for _ in range(copies):
            delay = self.fixed_delay or 1 + int(self.rng.expovariate(1 / 3))
            self.at(self.now + delay, lambda m=message, t=target, s=source: self.deliver(s, t, m))  # type: ignore[misc]

    def deliver(self, source: str, target: str, message: object) -> None:
        node = self.nodes[target]
        wall = self.wall(node)
        if isinstance(message, CasPromise | CasAccepted):
            self.apply(node, node.proposer.handle(self.now, wall, source, message))
        elif isinstance(message, CasPrepare):
            state = node.acceptor.get(message.key, AcceptorState())
            new, vote = cas_acceptor.prepare(state, Ballot(*message.ballot), wall, OFFSET)
            if new is not None:
                node.acceptor[message.key] = new  # durable before the answer
            row = node.rows.get(message.key)
            reply = CasPromise(
                message.seq, target, vote.ok, vote.promised, vote.accepted, vote.value,
                b"" if row is None else encode_versions(row),
            )  # fmt: skip
            self.send(target, source, reply)
        elif isinstance(message, CasAccept):
            state = node.acceptor.get(message.key, AcceptorState())
            new, vote = cas_acceptor.accept(state, Ballot(*message.ballot), message.value, wall, OFFSET)
            if new is not None:
                node.acceptor[message.key] = new
            self.send(target, source, CasAccepted(message.seq, target, vote.ok, vote.promised))
        elif isinstance(message, CasCommit):
            self.merge_row(node, message.key, message.value)

    def merge_row(self, node: Node, key: str, encoded: bytes) -> None:
        node.rows[key] = node.rows.get(key, VersionSet()).merge(decode_versions(encoded), SIBLINGS)

    # --- clients and the history

    def start(self, client: Client) -> None:
        if client.busy or self.stopped:
            return
        client.busy = True
        client.count += 1
        value = f"{client.name}-{client.count}".encode()
        choice = self.rng.random()
        expected = register_value(client.seen)
        operation: Operation
        if choice < 0.3:
            operation, expected = Read(), None
        elif choice < 0.55:
            operation, expected = IfAbsent(value), None
        else:
            operation = IfMatch(client.seen.context(), value)
        self.request += 1
        self.open[self.request] = (client, operation, self.now, expected)
        node = self.nodes[client.node]
        self.apply(node, node.proposer.submit(self.now, self.wall(node), self.request, KEY, operation, 300))

    def done(self, done: CasDone) -> None:
        client, operation, invoked, expected = self.open.pop(done.request)
        self.outcomes[done.outcome] += 1
        client.busy = False
        if done.state is not None:
            client.seen = done.state
        ended: int | None = self.now
        if done.outcome is CasOutcome.REFUSED:
            ended = -1  # it did not happen: not recorded
        elif done.outcome is CasOutcome.UNKNOWN:
            ended = None
        if ended != -1:
            self.history.append(
                checked_operation(done.request, client.name, KEY, operation, invoked, ended, expected, done)
            )
        self.at(self.now + self.rng.randint(0, 10), lambda: self.start(client))


def run_world(seed: int, **kwargs: Any) -> World:
    world = World(seed, **kwargs)
    clients = [Client(f"c{i}", NODES[i % 3]) for i in range(5)]
    for client in clients:
        world.at(world.rng.randint(0, 5), lambda c=client: world.start(c))  # type: ignore[misc]
    world.run(3_000)
    world.stopped = True  # no new operations; the open ones end by their deadlines
    world.run(5_000)
    for request, (client, operation, invoked, expected) in world.open.items():  # none should be left: pending
        if not isinstance(operation, Read):
            world.history.append(
                checked_operation(
                    request, client.name, KEY, operation, invoked, None, expected, CasDone(0, CasOutcome.UNKNOWN)
                )
            )
    return world


@pytest.mark.parametrize("waves", [False, True], ids=["whole-group", "waves"])
@pytest.mark.parametrize("seed", range(1, 13))
def test_racing_conditional_operations_are_linearizable(seed: int, waves: bool) -> None:
    world = run_world(seed, waves=waves)
    result = check(world.history)
    assert result.ok, f"seed {seed}: {result.summary()}"
    applied = world.outcomes[CasOutcome.APPLIED]
    assert applied > 10 and world.outcomes[CasOutcome.FAILED] > 0  # real contention, and progress


def test_the_checker_sees_it_when_a_round_counts_one_answer_as_a_majority(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cas_proposer, "_majority", lambda group: 1)
    assert any(not check(run_world(seed).history).ok for seed in range(1, 13)), "a broken quorum went unnoticed"


def _one_write(world: World) -> CasDone:
    """One IfAbsent through n0, run to its end; its answer."""
    answers: list[CasDone] = []
    world.done = answers.append  # type: ignore[method-assign]
    node = world.nodes["n0"]
    world.apply(node, node.proposer.submit(world.now, world.wall(node), 1, KEY, IfAbsent(b"v"), 1_000))
    world.run(2_000)
    assert len(answers) == 1
    return answers[0]


def test_an_accept_asks_a_majority_first_and_the_rest_only_when_that_wave_is_silent() -> None:
    world = World(1, loss=0.0, waves=True, hedge_ms=50)
    assert _one_write(world).outcome is CasOutcome.APPLIED
    accepts = sorted(target for _, target, m in world.sent if isinstance(m, CasAccept))
    assert accepts == ["n0", "n1"]  # its own acceptor and the next member; n2 only gets the commit
    assert sorted(target for _, target, m in world.sent if isinstance(m, CasCommit)) == ["n1", "n2"]

    world = World(1, loss=0.0, waves=True, hedge_ms=50)
    world.silent.add("n1")  # the first wave cannot reach a majority: after the hedge delay n2 is asked
    assert _one_write(world).outcome is CasOutcome.APPLIED
    assert sorted(target for _, target, m in world.sent if isinstance(m, CasAccept)) == ["n0", "n1", "n2"]


def test_a_phase_timeout_grows_with_the_phase_durations_measured_on_its_group() -> None:
    # Round trips of 90 ms fit the 100 ms phase timeout; then they grow to 140 ms (a group whose majority
    # is across regions, or a slower network). The timeout follows what the group's phases took (4 x their
    # smoothed duration), so the slower rounds still complete; with the fixed 100 ms every phase timed out
    # and every operation ended refused or unknown.
    world = World(1, loss=0.0, skew_ms=0)
    answers: list[CasDone] = []
    world.done = answers.append  # type: ignore[method-assign]
    node = world.nodes["n0"]
    for i, delay in enumerate([45] * 10 + [70] * 10):
        world.fixed_delay = delay
        world.apply(node, node.proposer.submit(world.now, world.wall(node), i, KEY, Read(), 3_000))
        world.run(world.now + 3_500)
    assert [a.outcome for a in answers] == [CasOutcome.READ] * 20
