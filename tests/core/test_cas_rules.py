"""The pure rules of conditional writes (issue 19, first step): ballots, the acceptor's rules and their state
codec, and the operations evaluated on a key's register state. The proposer and the wiring come later; the
last tests run whole CASPaxos rounds by hand over three acceptors with these rules, to show what the rules
alone guarantee when two proposers race."""

from __future__ import annotations

import itertools

import pytest

from dsm.core import cas_acceptor as acceptor
from dsm.core.ballot import ZERO, Ballot, next_ballot
from dsm.core.cas_acceptor import AcceptorState, decode_state, encode_state
from dsm.core.cas_ops import IfAbsent, IfMatch, Outcome, Put, Read, absorb, evaluate, holds
from dsm.core.encoding import decode_versions, encode_versions
from dsm.core.hlc import HybridLogicalClock, pack
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, VersionSet, write

WALL = 1_700_000_000_000
OFFSET = 10_000
SIBLINGS = Resolution.SIBLINGS


def clock() -> HybridLogicalClock:
    return HybridLogicalClock(OFFSET)


def versions(node: str, ms: int, value: bytes | None, base: VersionSet | None = None) -> VersionSet:
    base = base or VersionSet()
    return write(base, Dot(pack(ms), node), base.context(), value, SIBLINGS, 16)


# --- ballots


def test_ballots_of_one_node_only_increase_and_ballots_of_two_nodes_differ() -> None:
    c = clock()
    first = next_ballot(c, WALL, "a", 1)
    second = next_ballot(c, WALL - 5_000, "a", 1)  # the wall clock went back: the ballot still grows
    assert ZERO < first < second
    other = Ballot(first.timestamp, "b", 1)
    assert other != first and (other < first or other > first)
    assert Ballot(first.timestamp, "a", 2) != first  # a restart with its clock below: another run


# --- the acceptor


def test_an_acceptor_promises_only_higher_ballots_and_accepts_at_or_above_its_promise() -> None:
    low, high = Ballot(pack(WALL), "a", 1), Ballot(pack(WALL), "b", 1)
    state, vote = acceptor.prepare(AcceptorState(), high, WALL, OFFSET)
    assert state is not None and vote.ok and state.promised == high and vote.accepted == ZERO
    again, vote = acceptor.prepare(state, high, WALL, OFFSET)
    assert again is None and not vote.ok and vote.reason == acceptor.REFUSED_BALLOT and vote.promised == high
    _, vote = acceptor.prepare(state, low, WALL, OFFSET)
    assert not vote.ok and vote.promised == high
    _, vote = acceptor.accept(state, low, b"v", WALL, OFFSET)
    assert not vote.ok  # promised higher
    accepted, vote = acceptor.accept(state, high, b"v", WALL, OFFSET)
    assert (
        accepted is not None
        and vote.ok
        and (accepted.promised, accepted.accepted, accepted.value) == (high, high, b"v")
    )
    higher = Ballot(pack(WALL) + 1, "a", 1)
    promised, vote = acceptor.prepare(accepted, higher, WALL, OFFSET)
    assert promised is not None and vote.ok and vote.accepted == high and vote.value == b"v"  # it tells what it took


def test_an_acceptor_refuses_a_ballot_from_a_clock_too_far_ahead() -> None:
    ahead = Ballot(pack(WALL + OFFSET + 1), "fast", 1)
    state, vote = acceptor.prepare(AcceptorState(), ahead, WALL, OFFSET)
    assert state is None and not vote.ok and vote.reason == acceptor.REFUSED_SKEW
    _, vote = acceptor.accept(AcceptorState(), ahead, b"v", WALL, OFFSET)
    assert not vote.ok and vote.reason == acceptor.REFUSED_SKEW
    state, vote = acceptor.prepare(AcceptorState(), Ballot(pack(WALL + OFFSET), "fast", 1), WALL, OFFSET)
    assert vote.ok  # exactly at the bound is fine


def test_commit_only_moves_forward() -> None:
    b1, b2 = Ballot(1, "a", 1), Ballot(2, "a", 1)
    state = acceptor.commit(AcceptorState(), b2, b"v2")
    assert state is not None and state.committed == b2
    assert acceptor.commit(state, b1, b"v1") is None and acceptor.commit(state, b2, b"v2") is None


def test_a_commit_is_taken_as_the_accept_the_acceptor_missed_unless_it_promised_higher() -> None:
    b1, b2, b3 = Ballot(1, "a", 1), Ballot(2, "a", 1), Ballot(3, "b", 1)
    behind = AcceptorState(b1, b1, b"v1")  # left out of b2's accept (or its accept was lost)
    state = acceptor.commit(behind, b2, b"v2")
    assert state == AcceptorState(b2, b2, b"v2", b2)  # what the accept at b2 would have left, and chosen
    # A later prepare sees the chosen state, as from any acceptor that accepted it.
    _, vote = acceptor.prepare(state, b3, WALL, OFFSET)
    assert vote.ok and vote.accepted == b2 and vote.value == b"v2"
    # Promised above the commit's ballot: an accept at b2 would be refused, so the accepted state stays.
    promised = AcceptorState(b3, b1, b"v1")
    assert acceptor.commit(promised, b2, b"v2") == AcceptorState(b3, b1, b"v1", b2)
    # Already accepted at or above it: only the chosen ballot is noted.
    ahead = AcceptorState(b3, b3, b"v3")
    assert acceptor.commit(ahead, b2, b"v2") == AcceptorState(b3, b3, b"v3", b2)


def test_the_state_codec_round_trips_and_refuses_garbage() -> None:
    state = AcceptorState(Ballot(9, "b", 2), Ballot(7, "a", 1), b"\x00value", Ballot(5, "a", 1))
    assert decode_state(encode_state(state)) == state
    assert decode_state(encode_state(AcceptorState())) == AcceptorState()
    for bad in (b"", b"\xc1", encode_state(state)[:-3], b"\x94\x01\x02\x03\x04"):
        with pytest.raises(ValueError):
            decode_state(bad)
    broken = AcceptorState(Ballot(1, "a", 1), Ballot(2, "a", 1), b"v", ZERO)  # accepted above promised
    with pytest.raises(ValueError, match="above its promise"):
        decode_state(encode_state(broken))


# --- operations on the register state


def test_if_absent_holds_on_an_absent_or_deleted_key_only() -> None:
    assert holds(IfAbsent(b"v"), VersionSet())
    assert holds(IfAbsent(b"v"), versions("a", WALL, None))  # tombstones only
    assert not holds(IfAbsent(b"v"), versions("a", WALL, b"x"))


def test_if_match_holds_only_on_exactly_the_state_the_read_saw() -> None:
    read = versions("a", WALL, b"x")
    assert holds(IfMatch(read.context(), b"y"), read)
    later = versions("b", WALL + 1, b"z", base=read)
    assert not holds(IfMatch(read.context(), b"y"), later)  # a stale context
    assert not holds(IfMatch(VersionVector(), b"y"), read)  # a blind context on a live key


def test_a_holding_write_supersedes_the_whole_state_with_a_newer_dot() -> None:
    c = clock()
    a = versions("a", WALL + 5_000, b"1")  # written by a clock ahead of ours
    state = a.merge(versions("b", WALL, b"2"), SIBLINGS)  # two siblings
    assert len(state.versions) == 2
    after, outcomes = evaluate(state, [IfMatch(state.context(), b"3")], c, WALL, "home", SIBLINGS, 16)
    assert outcomes == [Outcome.APPLIED] and len(after.versions) == 1 and after.live[0].value == b"3"
    assert after.max_timestamp > state.max_timestamp  # newer than what it replaced, whatever the wall clock


def test_a_batch_is_evaluated_in_order() -> None:
    c = clock()
    ops = [IfAbsent(b"first"), IfAbsent(b"second"), Read(), Put(b"third"), IfMatch(VersionVector(), b"x")]
    after, outcomes = evaluate(VersionSet(), ops, c, WALL, "home", SIBLINGS, 16)
    assert outcomes == [Outcome.APPLIED, Outcome.FAILED, Outcome.READ, Outcome.APPLIED, Outcome.FAILED]
    assert [v.value for v in after.live] == [b"third"]


def test_a_failed_condition_or_a_read_leaves_the_state_as_it_was() -> None:
    state = versions("a", WALL, b"x")
    after, outcomes = evaluate(state, [IfAbsent(b"y"), Read()], clock(), WALL, "home", SIBLINGS, 16)
    assert after is state and outcomes == [Outcome.FAILED, Outcome.READ]


def test_a_plain_write_absorbed_from_an_acceptor_makes_an_older_context_fail() -> None:
    chosen = versions("home", WALL, b"x")
    plain = versions("other", WALL + 1, b"plain")  # a concurrent plain write: a sibling
    state = absorb(chosen, [chosen, plain], SIBLINGS)
    assert {v.value for v in state.live} == {b"x", b"plain"}  # not lost
    assert not holds(IfMatch(chosen.context(), b"y"), state)  # the next If-Match must have seen it
    assert holds(IfMatch(state.context(), b"y"), state)


# --- whole rounds by hand: what the rules guarantee when two proposers race


class Proposer:
    """A minimal CASPaxos proposer for the tests (the product's comes in the next step): prepare on a
    majority, take the highest accepted state, apply the operation, accept it on a majority."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.clock = clock()
        self.ballot = ZERO
        self.promises: dict[int, acceptor.Vote] = {}
        self.state = VersionSet()
        self.outcome: Outcome | None = None
        self.accepted: set[int] = set()
        self.failed = False

    def start(self) -> None:
        self.ballot = next_ballot(self.clock, WALL, self.node, 1)


def run_round(order: list[tuple[str, int, int]], proposers: dict[str, Proposer], ops: dict[str, IfAbsent]) -> None:
    """Runs steps (proposer, phase 1 = prepare / 2 = accept, acceptor) in `order` over 3 acceptors."""
    acceptors = [AcceptorState() for _ in range(3)]
    for name, phase, target in order:
        p = proposers[name]
        if p.failed:
            continue
        if phase == 1:
            new, vote = acceptor.prepare(acceptors[target], p.ballot, WALL, OFFSET)
            if new is not None:
                acceptors[target] = new
            if vote.ok:
                p.promises[target] = vote
            else:
                p.failed = True
        else:
            if len(p.promises) < 2:
                p.failed = True
                continue
            if p.outcome is None:  # first accept: decide the value from a majority of promises
                best = max(p.promises.values(), key=lambda v: v.accepted)
                start = decode_versions(best.value) if best.value else VersionSet()
                p.state, (p.outcome,) = evaluate(start, [ops[name]], p.clock, WALL, p.node, SIBLINGS, 16)
            new, vote = acceptor.accept(acceptors[target], p.ballot, encode_versions(p.state), WALL, OFFSET)
            if new is not None:
                acceptors[target] = new
            if vote.ok:
                p.accepted.add(target)
            else:
                p.failed = True


def test_two_racing_if_absent_creates_never_both_succeed_in_any_interleaving() -> None:
    steps = [(name, phase, target) for name in ("a", "b") for phase in (1, 2) for target in range(3)]
    # Every interleaving that keeps each proposer's own steps in order (prepare before accept).
    successes = 0
    for picks in itertools.combinations(range(12), 6):
        a_steps = [s for s in steps if s[0] == "a"]
        b_steps = [s for s in steps if s[0] == "b"]
        order, ai, bi = [], 0, 0
        for i in range(12):
            if i in picks:
                order.append(a_steps[ai])
                ai += 1
            else:
                order.append(b_steps[bi])
                bi += 1
        proposers = {"a": Proposer("a"), "b": Proposer("b")}
        proposers["a"].start()
        proposers["b"].start()
        run_round(order, proposers, {"a": IfAbsent(b"A"), "b": IfAbsent(b"B")})
        chosen = [p for p in proposers.values() if len(p.accepted) >= 2 and p.outcome is Outcome.APPLIED]
        assert len(chosen) <= 1, order
        successes += len(chosen)
    assert successes > 0  # the schedules do let one of them win
