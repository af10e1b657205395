"""`NodeCore`: one node's whole sans-IO core, the one object a driver (the network runtime or the simulator)
feeds with time and messages.

It is a thin dispatcher over the core's parts:
- `Peer` (`peer.py`): membership, failure detection, the overlay, routing and the dissemination of writes;
- `Coordinator` (`coordinator.py`): requests at consistency levels this node coordinates;
- `AntiEntropy` (`anti_entropy.py`): when and with whom whole-store reconciliation runs, and its steps.
- `CasProposer` (`cas_proposer.py`, when the driver enables conditional writes): the per-key CASPaxos
  rounds of the conditional operations this node takes (`cas`); the acceptors' side is store work, done by
  the driver with `cas_acceptor.serve`.

    effects = core.handle(now, source, message)   # a message arrived from `source`
    effects = core.tick(now)                      # at core.next_deadline() (or later)

The effects are the peer's (`Send`, `Store`, `Deliver`, `RouteFailure`), the coordinator's (`LevelDone`),
anti-entropy's (`ReconcileStep`; `HeldSyncPoint`: keep a peer's sync point for resuming watches) and the
proposer's (`CasDone`). What needs the store stays with the driver:
the write and merge rule runs in `replica.py` on the driver's commit path, and members asked to store or
read for a level (`Replicate`, `ReadRequest`) are served by the driver's store work
(`coordinator.stored_reply` / `read_reply` say what to answer).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

from dsm.core.anti_entropy import AntiEntropy, Exchanges, ReconcileStep, SyncPorts
from dsm.core.ballot import ZERO
from dsm.core.cas_group import GROUP_SIZE, cas_group, group_digest
from dsm.core.cas_ops import Operation, cas_request, request_operation
from dsm.core.cas_proposer import CasDone, CasEffect, CasOutcome, CasProposer
from dsm.core.consistency import Level
from dsm.core.coordinator import Coordinator, LevelDone
from dsm.core.encoding import DecodeError, decode_versions, encode_versions
from dsm.core.hlc import HybridLogicalClock
from dsm.core.messages import (
    CasAccept,
    CasAccepted,
    CasCommit,
    CasCommits,
    CasPrepare,
    CasPromise,
    CasRequest,
    CasResult,
    CommitEntry,
    DataItem,
    Effect,
    Message,
    ReadReply,
    Reconcile,
    Replicate,
    Replicated,
    Send,
    Store,
    SyncPoint,
)
from dsm.core.peer import Peer
from dsm.core.ring import State
from dsm.core.versions import Resolution
from dsm.core.watch_cursor import HeldSyncPoint

CoreEffect = Effect | LevelDone | ReconcileStep | CasDone | HeldSyncPoint

#: How long a proposer gathers its commits to a member before sending them in one message, and the most
#: bytes of them it holds for one member.
COMMIT_GATHER_MS = 2
COMMIT_GATHER_BYTES = 256 << 10
#: The shortest wait of a conditional write's phase for a majority; it waits twice the level requests' hedge
#: (six smoothed round trips) when that is longer, so a round across regions is not given up too early.
PHASE_TIMEOUT_MIN_MS = 100
#: The longest a home runs an operation another node forwarded (a request asking for more gets this).
MAX_FORWARDED_TIMEOUT_MS = 60_000


class Conditional(NamedTuple):
    """What conditional writes need of a driver: the node's clock (ballots and dots), this start's run
    number, the wall clock (Unix ms), and the sibling bound its writes are made with."""

    clock: HybridLogicalClock
    run: int
    wall_ms: Callable[[], int]
    max_siblings: int


class NodeCore:
    """A node's core parts behind one dispatcher (see the module docstring).

    Args:
        peer: the membership and dissemination core.
        resolution: the conflict resolution rule (reads at levels merge with it).
        new_id: issues request ids for the coordinator (never reused while pending).
        now: the time the core starts at.
        anti_entropy: whether this node reconciles its whole store (every driver with a store does).
        conditional: enables conditional writes (`cas`): what their proposer needs of the driver.
        sync_points: enables anti-entropy's sync points (`anti_entropy.Exchanges`): the driver's store epoch
            and last stored commit stamp.
    """

    def __init__(
        self,
        peer: Peer,
        resolution: Resolution,
        new_id: Callable[[], int],
        now: int,
        anti_entropy: bool = True,
        conditional: Conditional | None = None,
        sync_points: SyncPorts | None = None,
    ) -> None:
        self.peer = peer
        self.coordinator = Coordinator(peer.id, peer, peer.directory, resolution, new_id)
        exchanges = None if sync_points is None else Exchanges(peer.id, sync_points, self._address_of)
        self.anti_entropy = (
            AntiEntropy(
                peer,
                peer.rng,
                peer.settings.anti_entropy_interval_ms,
                now,
                self._next_session,
                exchanges,
                peer.data.rate.per_second,
                peer.settings.anti_entropy_busy_writes,
            )
            if anti_entropy
            else None
        )
        self._sessions = 0
        self.proposer: CasProposer | None = None
        self._new_id = new_id
        # Operations forwarded to their key's home (request -> home) with their timers, and those run here for
        # another node (internal request -> (node, its request)).
        self._forwarded: dict[int, str] = {}
        self._forward_timers: list[tuple[int, int]] = []
        self._serving_for: dict[int, tuple[str, int]] = {}
        # Commits of chosen states gathered per member (`_gather_commit`), and when they go.
        self._commits: dict[str, list[CommitEntry]] = {}
        self._commit_bytes: dict[str, int] = {}
        self._commits_due: int | None = None
        self._wall_ms: Callable[[], int] = lambda: now
        if conditional is not None:
            directory, table = peer.directory, peer.table
            self._wall_ms = conditional.wall_ms
            self.proposer = CasProposer(
                peer.id, conditional.clock, conditional.run, peer.rng,
                lambda key: cas_group(directory, table, key), self._address_of, resolution, conditional.max_siblings,
                phase_timeout_ms=lambda: max(PHASE_TIMEOUT_MIN_MS, 2 * peer.level_hedge_ms()),
                accept_wave=self._accept_wave, hedge_ms=peer.level_hedge_ms,
            )  # fmt: skip
        # The peer's shared context and timer heap, read after every event (`next_deadline`).
        self._context = peer.context
        self._timers = peer.context.timers

    def _accept_wave(self, group: Sequence[str]) -> list[str]:
        """The members of a key's group an accept asks first (`CasProposer`; the rest after the hedge delay):
        a majority, in this order: this node's own acceptor, then alive before suspect before dead members,
        this node's region before others, linked (an open connection) before others, then the members after
        this one in the group's ring order, so that the nodes of a small cluster, each proposing for its own
        clients, load each other evenly. When that majority needs a member that is not alive or not in this
        node's region, the whole group at once: across regions the first of two distant answers comes much
        sooner than a chosen one (measured on the simulated two-region cluster), and a message is cheap
        beside a cross-region wait."""
        me = group.index(self.peer.id) if self.peer.id in group else 0
        directory, overlay, region = self.peer.directory, self.peer.overlay, self.peer.info.region

        def rank(i: int) -> tuple[int, int, int, int]:
            node = group[i]
            if node == self.peer.id:
                return (-1, 0, 0, 0)
            state = self.peer.member_state(node)
            slot = directory.slot(node)
            liveness = 0 if state == State.ALIVE else 2 if state == State.DEAD else 1
            elsewhere = 0 if slot is not None and directory.infos[slot].region == region else 1
            linked = 0 if slot is not None and overlay.linked(slot) else 1
            return (liveness, elsewhere, linked, (i - me) % len(group))

        ranks = sorted((rank(i), i) for i in range(len(group)))
        first = ranks[: len(group) // 2 + 1]
        if any(r[0] > 0 or r[1] > 0 for r, _ in first):
            return list(group)
        return [group[i] for _, i in first]

    def _address_of(self, node_id: str) -> str:
        slot = self.peer.directory.slot(node_id)
        return "" if slot is None else self.peer.directory.infos[slot].addr

    def cas(self, now: int, request: int, key: str, operation: Operation, timeout_ms: int) -> list[CoreEffect]:
        """Starts a conditional operation on `key`; its `CasDone` names `request`.

        A member of the key's acceptor group proposes itself (its rounds cost one round trip to its fellow
        acceptors per phase; rounds of several members on one key may duel, which costs retries, not answers).
        Another node forwards the operation to the key's home (`_home`) rather than talk to the whole group
        itself; it proposes itself only when it sees none of the group alive. A forwarded operation whose
        answer does not come within its timeout (and a grace for the way back) ends `UNKNOWN`: the home may
        have run it. (Measured on the simulator's lossy network, 40 seeds: forwarding every operation to the
        home gave 4.4 % unknown outcomes, all forwarded answers lost; members proposing themselves brings
        that to 2.3 %, with 27 % more operations done.) A node that has not joined refuses: its view is
        itself alone."""
        assert self.proposer is not None, "conditional writes are not enabled on this core"
        if not self.peer.joined:
            return [CasDone(request, CasOutcome.REFUSED, reason="not_joined")]
        home = self._home(key)
        if home == self.peer.id:
            return self._proposed(now, self.proposer.submit(now, self._wall_ms(), request, key, operation, timeout_ms))
        self._forwarded[request] = home
        heapq.heappush(self._forward_timers, (now + timeout_ms + timeout_ms // 4 + 1, request))
        return [Send(home, self._address_of(home), cas_request(request, self.peer.id, key, operation, timeout_ms))]

    def misrouted(self, message: CasPrepare | CasAccept | CasCommit) -> CasPromise | CasAccepted | None:
        """The refusal an acceptor answers at once, without store work, when the proposer's group for the key
        is not the one this node's view gives (`cas_group.group_digest`); None: serve it. A commit carries a
        chosen state and is always taken."""
        if isinstance(message, CasCommit):
            return None
        group = cas_group(self.peer.directory, self.peer.table, message.key)
        if self.peer.joined and message.group == group_digest(group):
            return None
        if isinstance(message, CasPrepare):
            return CasPromise(message.seq, self.peer.id, False, ZERO, ZERO, b"", b"")
        return CasAccepted(message.seq, self.peer.id, False, ZERO)

    def _gather_commit(self, now: int, member: str, commit: CasCommit) -> list[CoreEffect]:
        """Holds a round's commit to `member` for COMMIT_GATHER_MS, to send with the others made meanwhile
        (one message instead of one per round); sends at once what reached COMMIT_GATHER_BYTES."""
        entries = self._commits.setdefault(member, [])
        entries.append(CommitEntry(commit.key, commit.ballot, commit.value))
        self._commit_bytes[member] = self._commit_bytes.get(member, 0) + len(commit.value) + len(commit.key)
        if self._commit_bytes[member] >= COMMIT_GATHER_BYTES:
            return [self._commits_to(member)]
        if self._commits_due is None:
            self._commits_due = now + COMMIT_GATHER_MS
        return []

    def _commits_to(self, member: str) -> Send:
        entries = self._commits.pop(member)
        del self._commit_bytes[member]
        return Send(member, self._address_of(member), CasCommits(self.peer.id, tuple(entries)))

    def _flush_commits(self) -> list[CoreEffect]:
        self._commits_due = None
        return [self._commits_to(member) for member in list(self._commits)]

    def _home(self, key: str) -> str:
        """The member of the key's group an operation goes to: the first alive in this node's region (its
        rounds then cross regions only when the group's majority does), else the first alive; this node
        itself when it is in the group or sees none of it alive."""
        me, peer = self.peer.id, self.peer
        directory = peer.directory
        region = peer.info.region
        alive = [m for m in cas_group(directory, peer.table, key) if m == me or peer.member_state(m) is State.ALIVE]
        if not alive or me in alive:
            return me
        for member in alive:
            slot = directory.slot(member)
            if slot is not None and directory.infos[slot].region == region:
                return member
        return alive[0]

    def _serve_request(self, now: int, source: str, message: CasRequest) -> list[CoreEffect]:
        """Runs an operation another node forwarded here (this node is the key's home, as it sees it)."""
        assert self.proposer is not None
        if message.source != source:
            return []  # only the member the connection authenticated asks for itself
        try:
            if not self.peer.joined:
                raise DecodeError("not joined")  # answered as refused, like a malformed request
            operation = request_operation(message)
        except DecodeError:
            result = CasResult(message.request, self.peer.id, CasOutcome.REFUSED.value, b"")
            return [Send(source, self._address_of(source), result)]
        internal = self._new_id()
        self._serving_for[internal] = (source, message.request)
        timeout_ms = max(1, min(message.timeout_ms, MAX_FORWARDED_TIMEOUT_MS))
        effects = self.proposer.submit(now, self._wall_ms(), internal, message.key, operation, timeout_ms)
        return self._proposed(now, effects)

    def _result(self, source: str, message: CasResult) -> list[CoreEffect]:
        """The answer of the home an operation was forwarded to."""
        if self._forwarded.get(message.request) != source or message.source != source:
            return []  # unknown, late, or not from the home asked
        del self._forwarded[message.request]
        try:
            outcome = CasOutcome(message.outcome)
            state = decode_versions(message.state) if message.state else None
        except (ValueError, DecodeError):
            return [CasDone(message.request, CasOutcome.UNKNOWN)]
        if outcome in (CasOutcome.APPLIED, CasOutcome.FAILED, CasOutcome.READ) and state is None:
            return [CasDone(message.request, CasOutcome.UNKNOWN)]
        return [CasDone(message.request, outcome, state)]

    def _proposed(self, now: int, effects: list[CasEffect]) -> list[CoreEffect]:
        """The proposer's effects: the end of an operation another node forwarded becomes its answer; each
        state a conditional write changed (its `Store` item has an update id) is published, pushed along the
        broadcast tree like a local write, so every replica has it as soon as any write would."""
        out: list[CoreEffect] = []
        for effect in effects:
            if type(effect) is Send and type(effect.message) is CasCommit:
                out.extend(self._gather_commit(now, effect.node_id, effect.message))
                continue
            if type(effect) is CasDone and effect.request in self._serving_for:
                source, request = self._serving_for.pop(effect.request)
                state = b"" if effect.state is None else encode_versions(effect.state)
                result = CasResult(request, self.peer.id, effect.outcome.value, state)
                out.append(Send(source, self._address_of(source), result))
                continue
            out.append(effect)
            if type(effect) is Store and effect.path == "cas" and effect.items[0].id:
                # Every member outside the key's group needs it; when there is none (a cluster no larger than
                # a group), the round's commit to the group has already delivered it everywhere.
                reach = cas_group(self.peer.directory, self.peer.table, effect.items[0].key, GROUP_SIZE + 1)
                if len(reach) > GROUP_SIZE:
                    out.extend(self.peer.publish(now, effect.items))
        return out

    def _next_session(self) -> int:
        """A new anti-entropy session number: random (63 bits), not a count, so that a restarted node (whose
        count would start again) or the peer (which counts its own the same way) never opens one under the
        number of an exchange whose record the other side still holds; sync points rest on those records
        (`anti_entropy.Exchanges`)."""
        self._sessions += 1
        return self.peer.rng.randrange(1, 1 << 63)

    def write_at(
        self, now: int, level: Level, items: Sequence[DataItem], timeout_ms: int
    ) -> tuple[int, list[CoreEffect], tuple[str, ...]]:
        """Starts a write at `level` of `items` (durable here already; `Coordinator.write`); returns the
        request, its effects and the members its `Replicate` goes to, which the tree's push of the write
        leaves out (`publish_levelled`): they pass it on down the tree themselves (`replicated`), so a write
        at a level crosses each of those links once, not in both messages."""
        request, effects = self.coordinator.write(now, level, items, timeout_ms)
        targets = tuple(e.node_id for e in effects if type(e) is Send and type(e.message) is Replicate)
        return request, list(effects), targets

    def publish_levelled(self, now: int, entries: Sequence[tuple[DataItem, Sequence[str]]]) -> list[CoreEffect]:
        """Publishes writes, each with the members a level request's `Replicate` carried it to (`write_at`;
        none for a write at `local`): one push per eager link for all of them, as a commit's writes are
        published together."""
        items = tuple(item for item, _ in entries)
        skips = [targets for _, targets in entries]
        return list(self.peer.publish(now, items, True, skips if any(skips) else None))

    def replicated(self, now: int, source: str, message: Replicate) -> list[CoreEffect]:
        """A member's level request asks this node to store writes (the driver stores them and answers,
        `coordinator.stored_reply`): the broadcast tree takes them on from here (`Peer.replicated`). A read
        repair's `Replicate` (seq 0) is not a write being spread."""
        if message.seq == 0 or message.source != source:
            return []
        return list(self.peer.replicated(now, source, message.items))

    def handle(self, now: int, source: str, message: Message | Any) -> list[CoreEffect]:
        """Processes a message from `source` (for a network driver: the member the connection authenticated)."""
        kind = type(message)
        if kind is Replicated or kind is ReadReply:
            return list(self.coordinator.handle(now, source, cast("Replicated | ReadReply", message)))
        if kind is CasPromise or kind is CasAccepted:
            if self.proposer is None:
                return []
            answer = cast("CasPromise | CasAccepted", message)
            return self._proposed(now, self.proposer.handle(now, self._wall_ms(), source, answer))
        if kind is CasRequest:
            return [] if self.proposer is None else self._serve_request(now, source, cast(CasRequest, message))
        if kind is CasResult:
            return self._result(source, cast(CasResult, message))
        if kind is Reconcile:
            return list(self.anti_entropy.handle(source, cast(Reconcile, message), now)) if self.anti_entropy else []
        if kind is SyncPoint:
            return list(self.anti_entropy.keep(source, cast(SyncPoint, message))) if self.anti_entropy else []
        return list(self.peer.handle(now, message))

    def tick(self, now: int) -> list[CoreEffect]:
        """Runs every part's timers due at `now`."""
        out: list[CoreEffect] = list(self.peer.tick(now))
        if self.coordinator.pending:
            out.extend(self.coordinator.tick(now))
        proposer = self.proposer
        if proposer is not None:
            due = proposer.next_deadline()
            if due is not None and due <= now:
                out.extend(self._proposed(now, proposer.tick(now, self._wall_ms())))
            if self._commits_due is not None and self._commits_due <= now:
                out.extend(self._flush_commits())
            forward = self._forward_timers
            while forward and forward[0][0] <= now:
                _, request = heapq.heappop(forward)
                if self._forwarded.pop(request, None) is not None:
                    out.append(CasDone(request, CasOutcome.UNKNOWN))
        anti_entropy = self.anti_entropy
        if anti_entropy is not None and now >= anti_entropy.due and not self._context.left:
            out.extend(anti_entropy.tick(now))
        return out

    def next_deadline(self) -> int | None:
        """When `tick` must next be called, or None (called after every event: kept cheap)."""
        timers = self._timers
        deadline = timers[0][0] if timers else None
        coordinator = self.coordinator
        if coordinator.pending:
            other = coordinator.next_deadline()
            if other is not None and (deadline is None or other < deadline):
                deadline = other
        proposer = self.proposer
        if proposer is not None:
            other = proposer.next_deadline()
            if other is not None and (deadline is None or other < deadline):
                deadline = other
            if self._forward_timers:
                other = self._forward_timers[0][0]
                if deadline is None or other < deadline:
                    deadline = other
            other_due = self._commits_due
            if other_due is not None and (deadline is None or other_due < deadline):
                deadline = other_due
        anti_entropy = self.anti_entropy
        if anti_entropy is not None and not self._context.left:
            due = anti_entropy.due
            if deadline is None or due < deadline:
                deadline = due
        return deadline
