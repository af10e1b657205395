"""A conditional operation whose round was not confirmed, scripted message by message on three in-memory
acceptors and proposers (scenarios found by tests/processes/test_cas_processes.py on real nodes):
- its retry must decide from the *prepared* state whether its earlier write was chosen, not from a state
  that already holds a newer write of the same batch (whose dot, of the same writer, covers the old one);
- once found chosen, it is answered with the state its own write made, not with a later round's state
  holding other clients' writes (its context would let the writer overwrite what it never saw)."""

from __future__ import annotations

import random
from typing import Any

from dsm.core import cas_acceptor
from dsm.core.ballot import Ballot
from dsm.core.cas_acceptor import AcceptorState
from dsm.core.cas_ops import IfAbsent, IfMatch, Operation, Read
from dsm.core.cas_proposer import CasDone, CasOutcome, CasProposer
from dsm.core.hlc import HybridLogicalClock
from dsm.core.messages import CasAccept, CasAccepted, CasCommit, CasPrepare, CasPromise, Send
from dsm.core.versions import Resolution, VersionSet

NODES = ("n0", "n1", "n2")
KEY = "k"
START = 1_700_000_000_000
OFFSET = 10_000
SKEW = {"n0": 0, "n1": 3_000, "n2": 6_000}  # later nodes' ballots are higher


class Script:
    """Three proposers and three acceptors; messages are held until the script delivers them."""

    def __init__(self, fast: bool = False) -> None:
        #: Whether acceptors grant the next ballot an accept asks for (the one-round-trip path).
        self.fast = fast
        self.now = 0
        self.acceptors = {n: AcceptorState() for n in NODES}
        self.done: dict[int, CasDone] = {}
        self.held: list[tuple[str, Send]] = []
        self.proposers = {n: self._proposer(n) for n in NODES}

    @staticmethod
    def _proposer(node: str) -> CasProposer:
        return CasProposer(
            node, HybridLogicalClock(OFFSET), 1, random.Random(1), lambda key: NODES, lambda m: m, Resolution.LWW,
            16, backoff_base_ms=5, backoff_max_ms=5,
        )  # fmt: skip

    def wall(self, node: str) -> int:
        return START + self.now + SKEW[node]

    def effects(self, proposer: str, out: list[Any]) -> None:
        for effect in out:
            if isinstance(effect, Send):
                if not isinstance(effect.message, CasCommit):
                    self.held.append((proposer, effect))
            elif isinstance(effect, CasDone):
                self.done[effect.request] = effect

    def submit(self, node: str, request: int, operation: Operation) -> None:
        self.effects(node, self.proposers[node].submit(self.now, self.wall(node), request, KEY, operation, 5_000))

    def tick(self, node: str, ms: int) -> None:
        self.now += ms
        self.effects(node, self.proposers[node].tick(self.now, self.wall(node)))

    def deliver(self, proposer: str, target: str, kind: type, lose_answer: bool = False) -> None:
        for i, (p, send) in enumerate(self.held):
            if p == proposer and send.node_id == target and isinstance(send.message, kind):
                del self.held[i]
                break
        else:
            raise AssertionError(f"no {kind.__name__} from {proposer} to {target}")
        message, state = send.message, self.acceptors[target]
        reply: Any
        if isinstance(message, CasPrepare):
            new, vote = cas_acceptor.prepare(state, Ballot(*message.ballot), self.wall(target), OFFSET)
            reply = CasPromise(message.seq, target, vote.ok, vote.promised, vote.accepted, vote.value, b"")
        else:
            then = Ballot(*message.then) if self.fast else Ballot(0, "", 0)
            new, vote = cas_acceptor.accept(
                state, Ballot(*message.ballot), message.value, self.wall(target), OFFSET, then
            )
            reply = CasAccepted(message.seq, target, vote.ok, vote.promised)
        if new is not None:
            self.acceptors[target] = new
        if not lose_answer:
            self.effects(proposer, self.proposers[proposer].handle(self.now, self.wall(proposer), target, reply))

    def round_trip(self, proposer: str, targets: tuple[str, ...] = NODES) -> None:
        for kind in (CasPrepare, CasAccept):
            for target in targets:
                self.deliver(proposer, target, kind)

    def drop(self, proposer: str) -> None:
        self.held = [(p, s) for p, s in self.held if p != proposer]

    def outcome(self, request: int) -> CasOutcome:
        return self.done[request].outcome

    def values(self, request: int) -> list[bytes | None]:
        return [v.value for v in (self.done[request].state or VersionSet()).live]


def test_a_retried_write_is_not_taken_for_chosen_because_a_newer_write_of_its_batch_covers_it() -> None:
    s = Script()
    s.submit("n0", 1, IfAbsent(b"v0"))
    s.round_trip("n0")
    ctx0 = s.done[1].state.context()  # type: ignore[union-attr]
    # n0 queues X = IfAbsent(x) and Y = IfMatch(ctx0, y); n1's higher prepare makes n0's prepare fail.
    s.now += 1
    s.submit("n0", 2, IfAbsent(b"x"))
    s.submit("n0", 3, IfMatch(ctx0, b"y"))
    s.submit("n1", 10, Read())
    s.deliver("n1", "n1", CasPrepare)
    s.deliver("n1", "n2", CasPrepare)
    for target in NODES:
        s.deliver("n0", target, CasPrepare)
    s.drop("n1")
    s.tick("n0", 10)  # the retry runs [X, Y]: X fails, Y writes y; only n0 accepts it
    for target in NODES:
        s.deliver("n0", target, CasPrepare)
    s.deliver("n0", "n0", CasAccept)
    # n2 deletes v0 with ctx0 on n1 and n2, which never saw y: chosen.
    s.now += 1
    s.submit("n2", 20, IfMatch(ctx0, None))
    for kind in (CasPrepare, CasAccept):
        s.deliver("n2", "n1", kind)
        s.deliver("n2", "n2", kind)
    assert s.outcome(20) is CasOutcome.APPLIED
    # n0's accepts of y are refused; its next round prepares the tombstone, which does not show y: a
    # resolving round accepts it unchanged (y may still be taken up until then), then X applies first.
    s.deliver("n0", "n1", CasAccept)
    s.deliver("n0", "n2", CasAccept)
    s.tick("n0", 10)
    s.round_trip("n0")
    assert 2 not in s.done and 3 not in s.done
    s.round_trip("n0")
    assert s.outcome(2) is CasOutcome.APPLIED and s.values(2) == [b"x"]
    # Y's write was never chosen, and the key no longer holds v0: Y fails (before the fix: APPLIED, so two
    # If-Match on ctx0 both succeeded, and y, answered as written, was in no chosen state).
    assert s.outcome(3) is CasOutcome.FAILED


def test_a_write_found_chosen_later_is_answered_with_the_state_it_made() -> None:
    s = Script()
    s.submit("n0", 1, IfAbsent(b"v0"))
    s.round_trip("n0")
    ctx0 = s.done[1].state.context()  # type: ignore[union-attr]
    # A on n0: Y = IfMatch(ctx0, y), accepted by n0 and n1 (chosen), n1's answer lost.
    s.now += 1
    s.submit("n0", 2, IfMatch(ctx0, b"y"))
    for target in NODES:
        s.deliver("n0", target, CasPrepare)
    s.deliver("n0", "n0", CasAccept)
    s.deliver("n0", "n1", CasAccept, lose_answer=True)
    # B on n2 reads y and replaces it by z.
    s.now += 1
    s.submit("n2", 20, Read())
    s.round_trip("n2", ("n1", "n2"))
    assert s.values(20) == [b"y"]
    s.now += 1
    s.submit("n2", 21, IfMatch(s.done[20].state.context(), b"z"))  # type: ignore[union-attr]
    s.round_trip("n2", ("n1", "n2"))
    assert s.outcome(21) is CasOutcome.APPLIED
    # n0's round fails; a later round finds z, which covers Y's write: Y is applied (correctly).
    s.deliver("n0", "n2", CasAccept)
    for _ in range(8):
        s.tick("n0", 200)
        if any(p == "n0" and isinstance(m.message, CasPrepare) for p, m in s.held):
            break
        for p, m in list(s.held):
            if p == "n0" and isinstance(m.message, CasAccept):
                s.deliver("n0", m.node_id, CasAccept)
    s.round_trip("n0")
    assert s.outcome(2) is CasOutcome.APPLIED
    # Its acknowledgement is y's state, not z's: an If-Match with it must fail now that z replaced y.
    assert s.values(2) == [b"y"]
    s.now += 1
    s.submit("n0", 3, IfMatch(s.done[2].state.context(), b"y2"))  # type: ignore[union-attr]
    s.round_trip("n0")
    assert s.outcome(3) is CasOutcome.FAILED


def held_kinds(s: Script, proposer: str) -> set[type]:
    return {type(m.message) for p, m in s.held if p == proposer}


def test_the_next_round_skips_its_prepare_until_another_proposer_prepares() -> None:
    s = Script(fast=True)
    s.submit("n0", 1, IfAbsent(b"v0"))
    s.round_trip("n0")
    assert s.outcome(1) is CasOutcome.APPLIED
    ctx0 = s.done[1].state.context()  # type: ignore[union-attr]
    s.now += 1
    s.submit("n0", 2, IfMatch(ctx0, b"v1"))  # straight to the accept: the last one promised its ballot
    assert held_kinds(s, "n0") == {CasAccept}
    for target in NODES:
        s.deliver("n0", target, CasAccept)
    assert s.outcome(2) is CasOutcome.APPLIED
    ctx1 = s.done[2].state.context()  # type: ignore[union-attr]
    # n1 prepares a higher ballot on n1 and n2 before n0's next round: n0's accept is refused there, and the
    # operation goes through a full round (its write was not chosen: it is evaluated again and applies).
    s.now += 1
    s.submit("n0", 3, IfMatch(ctx1, b"v2"))
    assert held_kinds(s, "n0") == {CasAccept}
    s.submit("n1", 10, Read())
    s.deliver("n1", "n1", CasPrepare)
    s.deliver("n1", "n2", CasPrepare)
    s.drop("n1")
    for target in NODES:
        s.deliver("n0", target, CasAccept)
    assert 3 not in s.done
    s.tick("n0", 10)
    assert held_kinds(s, "n0") == {CasPrepare}
    s.round_trip("n0")
    assert s.outcome(3) is CasOutcome.APPLIED and s.values(3) == [b"v2"]
    s.now += 1
    s.submit("n2", 20, Read())
    s.round_trip("n2")
    assert s.values(20) == [b"v2"]


def test_a_write_only_its_own_acceptor_took_is_recognised_when_another_proposer_completes_it() -> None:
    """Found by the simulator with churn: a value a minority accepted can be taken up by a later round of
    another proposer even after this proposer's next prepare did not see it. Its operation, evaluated again
    meanwhile (a second write), must be answered applied with the first write's state once that one shows
    up chosen, not failed because the state now holds its own first write."""
    s = Script()
    s.submit("n0", 1, IfAbsent(b"v0"))
    s.round_trip("n0")
    ctx0 = s.done[1].state.context()  # type: ignore[union-attr]
    s.now += 1
    s.submit("n0", 2, IfMatch(ctx0, b"y"))  # R1: only n0's own acceptor takes y (dot d1)
    for target in NODES:
        s.deliver("n0", target, CasPrepare)
    s.deliver("n0", "n0", CasAccept)
    s.submit("n1", 10, Read())  # a higher prepare on n1 and n2 makes R1's other accepts fail
    s.deliver("n1", "n1", CasPrepare)
    s.deliver("n1", "n2", CasPrepare)
    s.drop("n1")
    s.deliver("n0", "n1", CasAccept)
    s.deliver("n0", "n2", CasAccept)
    assert 2 not in s.done
    s.tick("n0", 10)  # R2 prepares on n1 and n2, which never took y: the operation writes again (dot d2)
    s.deliver("n0", "n1", CasPrepare)
    s.deliver("n0", "n2", CasPrepare)
    # n2 prepares higher on n0 and n2: n0's y (R1's ballot) is the highest accepted there, so n2's read
    # completes it: y is chosen.
    s.now += 1
    s.submit("n2", 20, Read())
    s.deliver("n2", "n0", CasPrepare)
    s.deliver("n2", "n2", CasPrepare)
    s.deliver("n2", "n0", CasAccept)
    s.deliver("n2", "n2", CasAccept)
    assert s.outcome(20) is CasOutcome.READ and s.values(20) == [b"y"]
    # R2's accepts: n1 takes it, n0 and n2 refuse (they promised n2's ballot): R2 fails; R3 finds y chosen.
    for target in NODES:
        s.deliver("n0", target, CasAccept)
    s.drop("n0")
    s.tick("n0", 10)
    s.round_trip("n0")
    assert s.outcome(2) is CasOutcome.APPLIED and s.values(2) == [b"y"]
