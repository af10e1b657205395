"""`CasProposer`: the proposer of the per-key CASPaxos rounds that conditional writes run (issue 19), sans-IO.

A node that proposes for a key queues the operations it takes for it (`submit`) and runs one round at a
time per key, for a batch of them (up to `batch_max`, evaluated in queue order):
1. prepare: a new ballot (`ballot.next_ballot`) to the key's acceptor group (`group_of(key)`);
2. on promises from a majority: the state accepted at the highest ballot among them (empty if none),
   joined with the plain writes the answering acceptors hold (`cas_ops.absorb`), then the batch evaluated on
   it (`cas_ops.evaluate`): the new state, and each operation's outcome;
3. accept: the new state at the ballot, to the group, even when nothing changed (a failed condition and a
   read are chosen identity states, so their answers are linearizable: the lesson of CASSANDRA-12126). The
   accept goes first to a wave of the group (`accept_wave`: a majority, this node's own acceptor and the
   members most likely to answer soon), and to the rest if that wave has not answered after `hedge_ms` or
   one of it refused:
   a third acceptor that is not needed costs a message, an answer and a durable write per round. Safety does
   not depend on whom a phase asks, only on counting a majority of the group;
4. on accepts from a majority the state is chosen: every operation of the batch is answered (`CasDone`),
   the state is stored here (`Store`, path "cas"; its item has an update id when a write changed it, and the
   node core then publishes it like a local write) and sent to the group (`CasCommit`), and the next batch
   of the key starts.
A refusal fast-forwards the clock past the ballot that won; a failed phase (refused, or too few answers)
retries after a random backoff (full jitter up to `backoff_max_ms`, doubling from `backoff_base_ms`) until
the operations' deadlines. Once an accept was sent, the round's state may already be chosen (or be chosen
later, by a round that finds it as the highest accepted state), so an operation whose write went out is not
simply evaluated again: each round looks for its writes in the state it prepared (`_chosen_write`). An
operation that reaches its deadline ends as `UNKNOWN` if an accept of it was ever sent (never as a definite
failure), else as `REFUSED`.
The group is fixed here; keeping quorums intersecting while membership changes is a later step (see the
design note).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from dsm.core.ballot import ZERO, Ballot, next_ballot
from dsm.core.cas_group import group_digest
from dsm.core.cas_ops import Operation, Outcome, absorb, apply
from dsm.core.dissemination import update_id
from dsm.core.encoding import DecodeError, decode_versions, encode_versions
from dsm.core.hlc import HybridLogicalClock
from dsm.core.messages import CasAccept, CasAccepted, CasCommit, CasPrepare, CasPromise, DataItem, Send, Store
from dsm.core.overlay import RandomSource
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, VersionSet

#: What a node's conditional writes add to its id as the writer of their versions: a character no node id
#: holds, so no plain write (whose writer is the node id) shares their dots' writer.
WRITER_SUFFIX = "/cas"


def writer_id(node_id: str) -> str:
    """The writer of the versions `node_id`'s conditional writes make."""
    return node_id + WRITER_SUFFIX


class CasOutcome(Enum):
    """How a conditional operation ended."""

    APPLIED = "applied"  # its write was chosen
    FAILED = "failed"  # its condition was false on the chosen state (nothing written)
    READ = "read"  # a linearizable read: `state` is the chosen state
    REFUSED = "refused"  # no accept of it was ever sent: it did not happen
    UNKNOWN = "unknown"  # an accept was sent but not confirmed: it may or may not have happened


_OF = {Outcome.APPLIED: CasOutcome.APPLIED, Outcome.FAILED: CasOutcome.FAILED, Outcome.READ: CasOutcome.READ}


@dataclass(frozen=True, slots=True)
class CasDone:
    """A conditional operation ended; `state` is the key's chosen state (applied, failed and read)."""

    request: int
    outcome: CasOutcome
    state: VersionSet | None = None
    #: Why a `REFUSED` operation was refused, when it is not the usual (too few acceptors answered in time):
    #: "not_joined" (this node's view is not yet a member's).
    reason: str = ""


class CasTimer(Enum):
    """The proposer's timers: a key's retry after a refusal, an operation's deadline, a phase that got too
    few answers (lost messages, members down)."""

    RETRY = 0
    DEADLINE = 1
    PHASE = 2
    HEDGE = 3  # the accept's second wave (see `_propose`)


@dataclass(slots=True)
class _Op:
    request: int
    key: str
    operation: Operation
    deadline: int
    accept_sent: bool = False
    #: The writes it made in rounds whose accept was sent but not confirmed, oldest first: each one's dot and
    #: the state right after it (what the operation is answered with if that write turns out chosen). See
    #: `_propose`.
    writes: list[tuple[Dot, VersionSet]] = field(default_factory=list)


@dataclass(slots=True)
class _Round:
    seq: int
    key: str
    ballot: Ballot
    group: tuple[str, ...]
    ops: list[_Op]
    promises: dict[str, CasPromise] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)
    #: The members the current accept was sent to (its first wave, then everyone).
    asked: set[str] = field(default_factory=set)
    #: Members that refused the current phase (it fails once a majority can no longer answer).
    refusals: set[str] = field(default_factory=set)
    value: bytes = b""
    state: VersionSet | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    #: Each operation's answer: the state right after it (its own write, or its place in the batch).
    states: list[VersionSet] = field(default_factory=list)
    #: The timer of the current phase (a later phase arms another), and when the phase began.
    phase_timer: int = 0
    phase_at: int = 0
    #: Times the accept was sent again to members that had not answered (lost messages).
    resends: int = 0
    #: The ballot the accept asks the acceptors to promise for the next round (see `_Prepared`), and the
    #: members that promised it.
    then: Ballot = ZERO
    promised_then: set[str] = field(default_factory=set)
    #: Rounds in a row that skipped their prepare, this one included.
    fast: int = 0
    #: A resolving round (see `_propose`): it accepts the prepared state unchanged, and `waiting` holds the
    #: operations it did not evaluate, which go back to the queue after it.
    resolving: bool = False
    waiting: list[_Op] = field(default_factory=list)


@dataclass(slots=True)
class _Prepared:
    """A key's next round, already prepared: a majority of `group` accepted `state` and promised `ballot` with
    it (at `at`), so nothing else can have been accepted there since; the round may go straight to its
    accept. Used only soon after (`FAST_IDLE_MS`) and for at most `FAST_ROUNDS` rounds in a row, so that the
    acceptors' data rows (plain writes, absorbed by a prepare) are looked at regularly."""

    ballot: Ballot
    state: VersionSet
    group: tuple[str, ...]
    at: int
    fast: int


CasEffect = Send | Store | CasDone

#: Times an accept is sent again to members that did not answer before the round ends as unknown.
ACCEPT_RESENDS = 2
#: How long a round's promise of the next ballot may be used, and for how many rounds in a row (see
#: `_Prepared`): CASPaxos's one-round-trip optimisation (the paper's 2.2.1), one prepare saved per round.
FAST_IDLE_MS = 1_000
FAST_ROUNDS = 32
#: The longest phase timeout measured phase durations may set, and the groups whose durations are kept.
PHASE_TIMEOUT_MAX_MS = 2_000
PHASE_GROUPS_MAX = 1_024


class CasProposer:
    """One node's proposer (see the module docstring).

    Args:
        node_id: this node.
        clock: its hybrid logical clock (ballots and dots come from it).
        run: this start's run number (`ballot.Ballot.run`).
        rng: the random source of the backoff.
        group_of: the acceptor group of a key (node ids).
        address_of: a member's address ("" if unknown).
        resolution, max_siblings: the conflict rule and sibling bound writes are made with.
        accept_wave: the members of a group an accept asks first (at least a majority of it; the rest are
            asked after `hedge_ms`); None: the whole group at once.
        hedge_ms: how long the first wave of an accept has before the rest are asked (ms, or a callable
            asked each time).
    """

    def __init__(
        self,
        node_id: str,
        clock: HybridLogicalClock,
        run: int,
        rng: RandomSource,
        group_of: Callable[[str], Sequence[str]],
        address_of: Callable[[str], str],
        resolution: Resolution,
        max_siblings: int,
        *,
        batch_max: int = 64,
        backoff_base_ms: int = 10,
        backoff_max_ms: int = 100,
        phase_timeout_ms: int | Callable[[], int] = 100,
        accept_wave: Callable[[Sequence[str]], Sequence[str]] | None = None,
        hedge_ms: int | Callable[[], int] = 20,
    ) -> None:
        self.node_id = node_id
        #: The writer of the versions its conditional writes make (`writer_id`).
        self.writer = writer_id(node_id)
        self.clock = clock
        self.run = run
        self.rng = rng
        self.group_of = group_of
        self.address_of = address_of
        self.resolution = resolution
        self.max_siblings = max_siblings
        self.batch_max = batch_max
        self.backoff_base_ms = backoff_base_ms
        self.backoff_max_ms = backoff_max_ms
        #: How long a phase waits for a majority before it resends or fails (ms; a callable is asked each time).
        self.phase_timeout_ms = phase_timeout_ms
        self.accept_wave = accept_wave
        self.hedge_ms = hedge_ms
        self._queues: dict[str, deque[_Op]] = {}
        self._rounds: dict[str, _Round] = {}  # by key: the round in flight
        self._by_seq: dict[int, _Round] = {}
        self._ops: dict[int, _Op] = {}
        self._attempts: dict[str, int] = {}
        self._retrying: set[str] = set()
        self._prepared: dict[str, _Prepared] = {}
        self._phase_ms: dict[tuple[str, ...], float] = {}  # group -> smoothed duration of its phases
        self._timers: list[tuple[int, int, CasTimer, str, int]] = []
        self._seq = 0

    @property
    def pending(self) -> int:
        """Operations not ended yet."""
        return len(self._ops)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # --- the driver's interface

    def submit(
        self, now: int, wall_ms: int, request: int, key: str, operation: Operation, timeout_ms: int
    ) -> list[CasEffect]:
        """Queues `operation` on `key` (ending by `now + timeout_ms`); `request` names it in its `CasDone`."""
        op = _Op(request, key, operation, now + timeout_ms)
        self._ops[request] = op
        self._queues.setdefault(key, deque()).append(op)
        self._arm(op.deadline, CasTimer.DEADLINE, key, request)
        if key in self._rounds or key in self._retrying:
            return []
        return self._start(now, wall_ms, key)

    def handle(self, now: int, wall_ms: int, source: str, message: CasPromise | CasAccepted) -> list[CasEffect]:
        """An acceptor's answer, from `source` (the member the connection authenticated)."""
        round_ = self._by_seq.get(message.seq)
        if round_ is None or message.source != source or source not in round_.group:
            return []  # late, unknown, or not from a member of the group asked
        if not message.ok:
            if isinstance(message, CasPromise) and round_.state is not None:
                return []  # a late refusal of a prepare that a majority already answered
            self.clock.advance_to(message.promised[0])  # the next ballot is above the one that won
            round_.refusals.add(source)
            if len(round_.refusals) <= len(round_.group) - _majority(round_.group):
                return self._ask_rest(round_)  # a majority may still answer
            return self._refused(now, round_)
        if isinstance(message, CasPromise):
            if round_.state is not None or source in round_.promises:
                return []
            round_.promises[source] = message
            return self._decide(now, wall_ms, round_) if len(round_.promises) >= _majority(round_.group) else []
        if round_.state is None or source in round_.accepted:
            return []
        round_.accepted.add(source)
        if round_.then != ZERO and Ballot(*message.promised) == round_.then:
            round_.promised_then.add(source)
        return self._chosen(now, wall_ms, round_) if len(round_.accepted) >= _majority(round_.group) else []

    def next_deadline(self) -> int | None:
        return self._timers[0][0] if self._timers else None

    def tick(self, now: int, wall_ms: int) -> list[CasEffect]:
        """Runs the timers due at `now`: retries and deadlines."""
        out: list[CasEffect] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, key, request = heapq.heappop(timers)
            if kind is CasTimer.RETRY:
                self._retrying.discard(key)
                if key not in self._rounds and self._queues.get(key):
                    out.extend(self._start(now, wall_ms, key))
            elif kind is CasTimer.PHASE or kind is CasTimer.HEDGE:
                round_ = self._rounds.get(key)
                if round_ is not None and round_.phase_timer == request:
                    out.extend(self._phase_timed_out(now, round_) if kind is CasTimer.PHASE else self._ask_rest(round_))
            else:
                out.extend(self._expire(request))
        return out

    # --- rounds

    def _start(self, now: int, wall_ms: int, key: str) -> list[CasEffect]:
        queue = self._queues.get(key)
        if not queue:
            return []
        ops: list[_Op] = []
        while queue and len(ops) < self.batch_max:
            op = queue.popleft()
            if op.request in self._ops:  # not expired while it waited
                ops.append(op)
        if not ops:
            return []
        group = tuple(self.group_of(key))
        prepared = self._prepared.pop(key, None)
        if prepared is not None and prepared.group == group and now - prepared.at <= FAST_IDLE_MS:
            round_ = _Round(self._next_seq(), key, prepared.ballot, group, ops, fast=prepared.fast + 1)
            self._rounds[key] = round_
            self._by_seq[round_.seq] = round_
            return self._propose(now, wall_ms, round_, prepared.state)
        round_ = _Round(self._next_seq(), key, next_ballot(self.clock, wall_ms, self.node_id, self.run), group, ops)
        self._rounds[key] = round_
        self._by_seq[round_.seq] = round_
        self._arm_phase(now, round_)
        message = CasPrepare(round_.seq, self.node_id, key, round_.ballot, group_digest(group))
        return [self._send(member, message) for member in group]

    def _decide(self, now: int, wall_ms: int, round_: _Round) -> list[CasEffect]:
        self._measured(now, round_)
        best = max(round_.promises.values(), key=lambda p: Ballot(*p.accepted))
        try:
            start = decode_versions(best.value) if best.value else VersionSet()
            rows = [decode_versions(p.row) for p in round_.promises.values() if p.row]
        except DecodeError:
            return self._abandon(round_, CasOutcome.REFUSED)  # an acceptor answered garbage: not this round
        return self._propose(now, wall_ms, round_, absorb(start, rows, self.resolution))

    def _propose(self, now: int, wall_ms: int, round_: _Round, state: VersionSet) -> list[CasEffect]:
        """Evaluates the round's operations on the state its prepare found (or the one a promise of its
        ballot came with) and sends the accept."""
        prepared = state.context()
        live: list[_Op] = []
        outcomes: list[Outcome] = []
        states: list[VersionSet] = []
        ops = [op for op in round_.ops if op.request in self._ops]  # some may have expired meanwhile
        found = {op.request: _chosen_write(op, prepared) for op in ops if op.writes}
        # A write of an earlier round that failed is not in the prepared state, but may still be chosen (see
        # `_chosen_write`). Until it is found or proven lost, this proposer writes nothing on the key (a newer
        # write of its writer would make the coverage test ambiguous): the round accepts the prepared state
        # unchanged (a resolving round); once chosen, no lower ballot's value can be taken up any more.
        round_.resolving = any(after is None for after in found.values())
        for op in ops:
            after = found.get(op.request)
            if after is not None:  # its write is in the prepared state: applied, with the state after it
                live.append(op)
                outcomes.append(Outcome.APPLIED)
                states.append(after)
            elif round_.resolving:
                round_.waiting.append(op)
            else:
                state, outcome = apply(
                    state, op.operation, self.clock, wall_ms, self.writer, self.resolution, self.max_siblings
                )
                if outcome is Outcome.APPLIED:
                    op.writes.append((Dot(state.max_timestamp, self.writer), state))
                live.append(op)
                outcomes.append(outcome)
                states.append(state)
        if not live and not round_.resolving:
            self._end_round(round_)
            return self._start(now, wall_ms, round_.key)
        round_.ops, round_.state, round_.outcomes, round_.states = live, state, outcomes, states
        round_.value = encode_versions(round_.state)
        round_.refusals.clear()  # the accept phase counts its own
        self._arm_phase(now, round_)
        for op in live:
            op.accept_sent = True
        if round_.fast < FAST_ROUNDS:
            round_.then = next_ballot(self.clock, wall_ms, self.node_id, self.run)
        first = round_.group
        if self.accept_wave is not None:
            wave = tuple(self.accept_wave(round_.group))
            first = wave if len(set(wave) & set(round_.group)) >= _majority(round_.group) else round_.group
            if len(first) < len(round_.group):
                hedge = self.hedge_ms if isinstance(self.hedge_ms, int) else self.hedge_ms()
                self._arm(now + hedge, CasTimer.HEDGE, round_.key, round_.phase_timer)
        round_.asked = set(first)
        message = self._accept(round_)
        return [self._send(member, message) for member in first]

    def _ask_rest(self, round_: _Round) -> list[CasEffect]:
        """The accept's second wave: the members its first wave left out (none in the prepare phase, which
        asks everyone)."""
        if round_.state is None or len(round_.asked) == len(round_.group):
            return []
        rest = [m for m in round_.group if m not in round_.asked]
        round_.asked.update(rest)
        message = self._accept(round_)
        return [self._send(member, message) for member in rest]

    def _accept(self, round_: _Round) -> CasAccept:
        digest = group_digest(round_.group)
        return CasAccept(round_.seq, self.node_id, round_.key, round_.ballot, round_.value, round_.then, digest)

    def _chosen(self, now: int, wall_ms: int, round_: _Round) -> list[CasEffect]:
        self._measured(now, round_)
        self._end_round(round_)
        self._attempts.pop(round_.key, None)
        assert round_.state is not None
        out: list[CasEffect] = []
        for op, outcome, after in zip(round_.ops, round_.outcomes, round_.states, strict=True):
            if self._ops.pop(op.request, None) is not None:
                out.append(CasDone(op.request, _OF[outcome], after))
        if round_.waiting:
            # A resolving round was chosen on a state without those writes: they are lost for good, and
            # their operations are evaluated again by the next round.
            for op in round_.waiting:
                op.writes.clear()
            self._queues.setdefault(round_.key, deque()).extendleft(reversed(round_.waiting))
        # A state a write of this round changed is spread like a local write (the node core publishes items
        # with an id); a read's or a failed condition's identity state is stored here only.
        changed = Outcome.APPLIED in round_.outcomes
        ident = update_id(round_.key, round_.state.max_timestamp, self.writer) if changed else 0
        out.append(Store((DataItem(ident, round_.key, round_.value),), self.node_id, "cas", 0))
        commit = CasCommit(self.node_id, round_.key, round_.ballot, round_.value)
        out.extend(self._send(member, commit) for member in round_.group if member != self.node_id)
        if len(round_.promised_then) >= _majority(round_.group):
            self._prepared[round_.key] = _Prepared(round_.then, round_.state, round_.group, now, round_.fast)
        out.extend(self._start(now, wall_ms, round_.key))
        return out

    def _phase_timed_out(self, now: int, round_: _Round) -> list[CasEffect]:
        """Too few answers in time. An accept is sent again (same ballot and state: acceptors take it again
        harmlessly) to the members that have not answered, up to ACCEPT_RESENDS times, before the round ends
        as unknown; a prepare phase counts as refused (a new ballot follows)."""
        if round_.state is None or round_.resends >= ACCEPT_RESENDS:
            return self._refused(now, round_)
        round_.resends += 1
        self._arm_phase(now, round_)
        round_.asked = set(round_.group)
        message = self._accept(round_)
        return [self._send(m, message) for m in round_.group if m not in round_.accepted and m not in round_.refusals]

    def _refused(self, now: int, round_: _Round) -> list[CasEffect]:
        """A phase failed (refused by too many, or too few answers): the round's operations go back to the
        front of the key's queue for a new round after a backoff, until their deadlines. Those whose accept
        was sent keep the writes they made, which the next round looks for (see `_chosen_write`)."""
        self._end_round(round_)
        self._prepared.pop(round_.key, None)
        queue = self._queues.setdefault(round_.key, deque())
        queue.extendleft(reversed(round_.ops + round_.waiting))  # back to the front
        attempt = self._attempts.get(round_.key, 0)
        self._attempts[round_.key] = attempt + 1
        ceiling = min(self.backoff_max_ms, self.backoff_base_ms << min(attempt, 20))
        self._retrying.add(round_.key)
        self._arm(now + self.rng.randrange(max(1, ceiling)), CasTimer.RETRY, round_.key, 0)
        return []

    def _abandon(self, round_: _Round, outcome: CasOutcome) -> list[CasEffect]:
        """Ends the round's operations with `outcome` (`UNKNOWN` for those whose accept went out before)."""
        self._end_round(round_)
        return [
            CasDone(op.request, CasOutcome.UNKNOWN if op.accept_sent else outcome)
            for op in round_.ops + round_.waiting
            if self._ops.pop(op.request, None)
        ]

    def _expire(self, request: int) -> list[CasEffect]:
        op = self._ops.pop(request, None)
        if op is None:
            return []
        queue = self._queues.get(op.key)
        if queue is not None and op in queue:
            queue.remove(op)
        return [CasDone(request, CasOutcome.UNKNOWN if op.accept_sent else CasOutcome.REFUSED)]

    def _end_round(self, round_: _Round) -> None:
        self._rounds.pop(round_.key, None)
        self._by_seq.pop(round_.seq, None)

    def _arm_phase(self, now: int, round_: _Round) -> None:
        """Arms the phase's timeout: `phase_timeout_ms`, or four times the smoothed duration of the phases
        that succeeded on the same group when that is longer (a group whose majority is across regions
        answers in a cross-region round trip, longer than the node's own round trips say), at most
        PHASE_TIMEOUT_MAX_MS."""
        round_.phase_timer = self._next_seq()
        round_.phase_at = now
        timeout = self.phase_timeout_ms
        wait = timeout if isinstance(timeout, int) else timeout()
        measured = self._phase_ms.get(round_.group)
        if measured is not None:
            wait = max(wait, min(PHASE_TIMEOUT_MAX_MS, int(4 * measured)))
        self._arm(now + wait, CasTimer.PHASE, round_.key, round_.phase_timer)

    def _measured(self, now: int, round_: _Round) -> None:
        """A phase met its majority: its duration goes into the group's smoothed phase duration."""
        took = float(now - round_.phase_at)
        phase_ms = self._phase_ms
        before = phase_ms.pop(round_.group, None)  # re-inserted last: the dict is least recently used first
        phase_ms[round_.group] = took if before is None else 0.875 * before + 0.125 * took
        if len(phase_ms) > PHASE_GROUPS_MAX:
            del phase_ms[next(iter(phase_ms))]

    def _arm(self, when: int, kind: CasTimer, key: str, request: int) -> None:
        heapq.heappush(self._timers, (when, self._next_seq(), kind, key, request))

    def _send(self, member: str, message: CasPrepare | CasAccept | CasCommit) -> Send:
        return Send(member, self.address_of(member), message)


def _chosen_write(op: _Op, prepared: VersionVector) -> VersionSet | None:
    """The state after the write of `op` that a round chose, if the prepared state (`prepared`, its context)
    shows it; None: not (yet).

    A write of a round that was not confirmed may still be chosen later: a value a minority accepted can be
    taken up by any later round that finds it as the highest accepted value in its prepare quorum, so a
    prepare that does not show it proves nothing by itself. Two rules make the answer exact:
    - coverage: only this proposer writes with its writer id (`writer_id`) and its dots only grow. Until the
      fate of its writes from a failed round is known, it makes no other write on the key (`_propose` runs
      resolving rounds, which accept the prepared state unchanged), so a context that covers one of them
      covers it because the value holding it was taken up (with every write of that round);
    - loss: once a resolving round whose prepared state did not cover them is chosen, no value below its
      ballot can be taken up again: those writes are lost for good, and the operations are evaluated again.
    So an operation answered applied had exactly one of its writes chosen, and one evaluated again had none.
    """
    for dot, after in reversed(op.writes):
        if prepared.covers(dot.timestamp, dot.node):
            return after
    return None


def _majority(group: Sequence[str]) -> int:
    return len(group) // 2 + 1
