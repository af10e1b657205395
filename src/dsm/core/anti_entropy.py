"""`AntiEntropy`: when, with whom and which step of whole-store reconciliation (`reconcile.py`) a node runs.

Decided here, once, for both drivers; a driver only runs the store reads a step needs (`run_step`, against
its store's consistent view: the simulator synchronously on its `MemoryStore`, the network runtime off the
event loop) and then carries out the step's outcome: send the reply, merge the entries received.

- When: a node that starts (new, restarted after a crash, back from a long absence) reconciles as soon as it
  is joined and has a live link (checked every CATCH_UP_POLL_MS, for at most one interval), rather than
  after up to a whole period of missing what was written while it was away; then every
  `anti_entropy_interval_ms`, from a random phase, so nodes started together do not reconcile in step.
  A round due while the node sees more than `anti_entropy_busy_writes` writes a second (its own and the
  others', `dissemination.WriteRate`) waits, looking again every BUSY_RECHECK_MS, for at most one more
  interval, then runs whatever the load (as Riak holds its exchanges while a vnode's mailbox is long); a
  round that ran in a lull gives way if the writes come back before its exchange ends (the next answer is
  dropped, as a lost message would be, and the round waits again within the same bound). Under
  heavy writes an exchange mostly finds, and ships, writes still on their way (each step reads a newer snapshot
  than the one before), and its scans and merges compete for the CPU those writes need: on the 3-node
  loopback cluster its phases had the write tail (BENCHMARKS, issue 21 part 1). What dissemination misses
  is repaired at most one interval later for it. Catching up at start never waits.
- With whom: one live linked member, at random (a connection is already open to it).
- Which step: a round opens an exchange (`reconcile.opening`, a new session); an incoming `Reconcile` is
  answered (`reconcile.answer_step`); an answer that would be empty is sent as the explicit end
  (`reconcile.end`), which is never answered. Each step is one `ReconcileStep` effect.
- Sync points (`Exchanges`, when the driver gives `SyncPorts`): per exchange, this side's commit stamp at its
  first step, whether its every step answered in full, whether every entry it received was merged without a
  refusal, and whether the exchange ended. Once it ended and every such merge is done and clean, this side
  sends the peer `SyncPoint` (its epoch, its last commit stamp); a `SyncPoint` received is kept
  (`HeldSyncPoint` effect, `dsm.core.watch_cursor.SyncPoints`) when this side's own record of that exchange
  says it answered every step in full. The argument is in `reconcile.py`, "Sync points". The driver reports
  what only it sees: the outcome of each step (`stepped`, before it sends the reply), of each merge of
  received entries (`merged`) and a step it could not run (`failed`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from dsm.core.messages import DataItem, DataItems, Reconcile, Send, SyncPoint
from dsm.core.overlay import RandomSource
from dsm.core.reconcile import FINGERPRINT, RangeView, answer_step, end, is_end, opening
from dsm.core.ring import State
from dsm.core.watch_cursor import HeldSyncPoint

#: How often a starting node looks for its first live link, to reconcile with it at once, ms.
CATCH_UP_POLL_MS = 50
#: Exchanges whose record a node keeps for sync points (the oldest is forgotten first: no sync point then).
MAX_EXCHANGES = 64
#: How often a round held back by heavy writes looks again at the write rate, ms.
BUSY_RECHECK_MS = 1000


class LinkView(Protocol):
    """What anti-entropy needs of the membership (`Peer` provides it)."""

    @property
    def joined(self) -> bool: ...

    def link_ids(self) -> list[str]: ...

    def member_state(self, node_id: str) -> State: ...


@dataclass(frozen=True, slots=True)
class ReconcileStep:
    """Run one reconciliation step against the store (`run_step`), then send its reply to `node_id` and
    merge the entries it returns. `message` None: open a new exchange (`session`); else answer it. `stamp`:
    the node's last stored commit stamp when the step was decided (its read snapshot, taken later, holds
    every commit up to it; 0 without sync points)."""

    node_id: str
    session: int
    message: Reconcile | None = None
    stamp: int = 0


class StepResult(NamedTuple):
    """What a step gives: the message to send (None: nothing, the step answered an end), the entries received
    to merge, and whether the reply answered everything asked (`reconcile.Answer.complete`)."""

    reply: Reconcile | None
    items: DataItems
    complete: bool = True


def run_step(step: ReconcileStep, node_id: str, view: RangeView, max_bytes: int) -> StepResult:
    """Runs `step` on this node's store `view` (an answer that would be empty becomes the explicit end).

    Raises:
        ValueError: the incoming message is malformed (the sender's fault).
    """
    message = step.message
    if message is None:
        return StepResult(opening(step.session, node_id, view), ())
    reply, entries, complete = answer_step(message, node_id, view, max_bytes)
    if reply is None and not is_end(message):
        reply = end(step.session, node_id)
    return StepResult(reply, tuple(DataItem(0, key, versions) for key, versions in entries), complete)


def is_opening(message: Reconcile) -> bool:
    """Whether `message` has the shape of an exchange's first message (`reconcile.opening`: one summary of the
    whole key space). No later step makes one: a whole-space range is split only when the answering side
    holds more than `IDLIST_MAX` keys, into at least two parts."""
    if message.entries or len(message.runs) != 1:
        return False
    lo, hi, mode, shared, suffixes, packed = message.runs[0]
    return lo == "" and hi is None and mode == FINGERPRINT and not shared and not suffixes and len(packed) == 8


class SyncPorts(NamedTuple):
    """What sync points need of a driver: the node's store epoch, and its last stored commit stamp (every
    commit stamped up to it is in the store)."""

    epoch: int
    last_stamp: Callable[[], int]


@dataclass(slots=True)
class _Exchange:
    """This side's record of one exchange (see `Exchanges`)."""

    first_stamp: int
    answered_in_full: bool = True
    merged_in_full: bool = True
    merging: int = 0
    ended: bool = False
    sent: bool = False
    #: The peer's sync point of this exchange was taken (one per exchange).
    kept: bool = False


class Exchanges:
    """The records of this node's recent exchanges, for sync points (see the module docstring). At most
    MAX_EXCHANGES, keyed by (peer, session); the least recently used is forgotten first.

    A record is made at this side's first step only (the opening, or the answer to a message shaped like
    one), so its stamp is never later than any of this side's steps: a step of an exchange whose record was
    forgotten (or made before this node restarted) makes none, and that exchange leaves no sync point. (The
    one gap: a duplicate of an exchange's first message arriving after its record was forgotten, 64
    exchanges later, starts a new record; TCP does not duplicate, the simulator's network can.) Session
    numbers are random 63-bit numbers (`NodeCore._next_session`), so two exchanges never share a record in
    practice: with numbers counted from 1 by every node, a node restarted (or the peer, counting its own the
    same way) reused the number of an exchange the other side still held, and a sync point sent at the end
    of the old exchange was kept for the new one (review of the first version, tests in
    tests/core/test_sync_points_review.py).

    Args:
        node_id: this node.
        ports: the driver's epoch and last stored stamp.
        address_of: a member's address, for the `SyncPoint` sent to it.
    """

    def __init__(self, node_id: str, ports: SyncPorts, address_of: Callable[[str], str]) -> None:
        self.node_id = node_id
        self.ports = ports
        self.address_of = address_of
        self._records: OrderedDict[tuple[str, int], _Exchange] = OrderedDict()
        #: Sync points sent, and those received that were kept or refused.
        self.sent = 0
        self.kept = 0
        self.refused = 0

    def _record(self, peer: str, session: int) -> _Exchange | None:
        record = self._records.get((peer, session))
        if record is not None:
            self._records.move_to_end((peer, session))
        return record

    def stepped(self, step: ReconcileStep, result: StepResult) -> list[Send]:
        """A step ran: `result` is what it gives (call before its reply is sent)."""
        record = self._record(step.node_id, step.session)
        if record is None:
            if step.message is not None and not is_opening(step.message):
                return []  # not this side's first step (or its record was forgotten): no sync point
            record = self._records[(step.node_id, step.session)] = _Exchange(step.stamp)
            if len(self._records) > MAX_EXCHANGES:
                self._records.popitem(last=False)
        record.first_stamp = min(record.first_stamp, step.stamp)
        record.answered_in_full &= result.complete
        if result.items:
            record.merging += 1
        if result.reply is not None and is_end(result.reply):
            record.ended = True
        return self._ready(step.node_id, step.session, record)

    def merged(self, step: ReconcileStep, took_all: bool) -> list[Send]:
        """The entries `step` received were merged (`took_all`: durably, with no refusal)."""
        record = self._record(step.node_id, step.session)
        if record is None:
            return []
        record.merging -= 1
        record.merged_in_full &= took_all
        return self._ready(step.node_id, step.session, record)

    def failed(self, node_id: str, session: int) -> None:
        """A message of the exchange could not be answered (malformed, dropped, the store failed)."""
        record = self._record(node_id, session)
        if record is not None:
            record.answered_in_full = record.merged_in_full = False

    def ended(self, node_id: str, session: int) -> list[Send]:
        """The peer sent the exchange's end."""
        record = self._record(node_id, session)
        if record is None:
            return []
        record.ended = True
        return self._ready(node_id, session, record)

    def _ready(self, peer: str, session: int, record: _Exchange) -> list[Send]:
        if not record.ended or record.merging or not record.merged_in_full or record.sent:
            return []
        record.sent = True
        self.sent += 1
        ports = self.ports
        return [Send(peer, self.address_of(peer), SyncPoint(session, self.node_id, ports.epoch, ports.last_stamp()))]

    def keep(self, source: str, message: SyncPoint) -> list[HeldSyncPoint]:
        """A peer's sync point: kept if this side's record of the exchange says it answered in full, once per
        exchange, from the member the connection authenticated, with a stamp that can be one."""
        record = self._record(source, message.session)
        if (
            record is None
            or not record.answered_in_full
            or record.kept
            or message.source != source
            or message.stamp < 0
            or message.epoch < 0
        ):
            self.refused += 1
            return []
        record.kept = True
        self.kept += 1
        return [HeldSyncPoint(source, message.epoch, message.stamp, record.first_stamp)]


class AntiEntropy:
    """One node's anti-entropy schedule (see the module docstring).

    Args:
        view: the node's membership.
        rng: its random source.
        interval_ms: `anti_entropy_interval_ms`.
        now: the time it starts at.
        next_session: issues session numbers.
        exchanges: the records sync points rest on (None: this driver keeps none).
        write_rate: the writes per second the node sees at a time (`dissemination.WriteRate.per_second`).
        busy_writes: `anti_entropy_busy_writes`: above this rate a due round waits (0: never).
    """

    def __init__(
        self,
        view: LinkView,
        rng: RandomSource,
        interval_ms: int,
        now: int,
        next_session: Callable[[], int],
        exchanges: Exchanges | None = None,
        write_rate: Callable[[int], int] | None = None,
        busy_writes: int = 0,
    ) -> None:
        self.view = view
        #: The records that sync points rest on (None: this driver keeps none).
        self.exchanges = exchanges
        self.rng = rng
        self.interval_ms = interval_ms
        self.next_session = next_session
        self.sessions = 0
        self.write_rate = write_rate
        self.busy_writes = busy_writes
        #: Rounds held back by heavy writes: once per wait, however long, and again when one gives way.
        self.held = 0
        # When the round now waiting was due (None: none waits).
        self._waiting_since: int | None = None
        # The exchange opened in a lull: (peer, session, when its round first fell due).
        self._open: tuple[str, int, int] | None = None
        # Catching up until this time (the first round runs at the first live link before it).
        self._catch_up_until = now + interval_ms
        #: When the next round is due (ms).
        self.due = now

    def next_deadline(self) -> int:
        return self.due

    def tick(self, now: int) -> list[ReconcileStep]:
        """Runs the round due at `now`, if any."""
        if now < self.due:
            return []
        catching_up = self._catch_up_until > 0
        target = self._target()
        if catching_up and target is None and now < self._catch_up_until:
            self.due = now + CATCH_UP_POLL_MS
            return []
        lull = None
        if catching_up:
            # Caught up (or gave up waiting): from now on every interval, from a random phase.
            self._catch_up_until = 0
            self.due = now + self.rng.randrange(max(1, self.interval_ms))
        else:
            wait, lull = self._busy(now) if target is not None else (False, None)
            if wait:
                self.due = now + BUSY_RECHECK_MS
                return []
            self.due = now + self.interval_ms
        if target is None:
            return []
        self.sessions += 1
        session = self.next_session()
        self._open = None if lull is None else (target, session, lull)
        return [ReconcileStep(target, session, None, self._stamp())]

    def _busy(self, now: int) -> tuple[bool, int | None]:
        """Whether the round due now waits for the writes to ease (see the module docstring), and, for a round
        that runs before its bound with the writes light, when it first fell due (else None): it gives way if
        they come back before its exchange ends (`_gives_way`)."""
        rate = self.write_rate
        if rate is None or self.busy_writes <= 0:
            return False, None
        since = now if self._waiting_since is None else self._waiting_since
        if now - since >= self.interval_ms:
            self._waiting_since = None  # waited its interval: runs whatever the load
            return False, None
        if rate(now) <= self.busy_writes:
            self._waiting_since = None
            return False, since
        if self._waiting_since is None:
            self._waiting_since = now
            self.held += 1
        return True, None

    def _gives_way(self, now: int, source: str, message: Reconcile) -> bool:
        """Whether `message`, the peer's answer in the exchange this node opened in a lull, finds the writes
        back: the exchange is dropped there (as if the message were lost: no sync point rests on it) and the
        round waits again, its bound counted from when it first fell due."""
        open_ = self._open
        if open_ is None or open_[1] != message.session or open_[0] != source:
            return False
        rate = self.write_rate
        assert rate is not None
        if now - open_[2] >= self.interval_ms or rate(now) <= self.busy_writes:
            return False
        self._open = None
        self._waiting_since = open_[2]
        self.due = now + BUSY_RECHECK_MS
        self.held += 1
        if self.exchanges is not None:
            self.exchanges.failed(source, message.session)
        return True

    def _stamp(self) -> int:
        return 0 if self.exchanges is None else self.exchanges.ports.last_stamp()

    def handle(self, source: str, message: Reconcile, now: int) -> list[ReconcileStep | Send]:
        """An exchange step from the member `source` (for a network driver: the one the connection
        authenticated, whatever the message claims): answer it, to that member; its end is not answered;
        neither is an answer in an exchange this node opened in a lull that finds heavy writes back."""
        if is_end(message):
            if self._open is not None and self._open[1] == message.session:
                self._open = None
            return [] if self.exchanges is None else list(self.exchanges.ended(source, message.session))
        if self._gives_way(now, source, message):
            return []
        return [ReconcileStep(source, message.session, message, self._stamp())]

    def stepped(self, step: ReconcileStep, result: StepResult) -> list[Send]:
        """The driver ran `step` (call before sending its reply); see `Exchanges.stepped`."""
        return [] if self.exchanges is None else self.exchanges.stepped(step, result)

    def merged(self, step: ReconcileStep, took_all: bool) -> list[Send]:
        """The driver merged the entries `step` received; see `Exchanges.merged`."""
        return [] if self.exchanges is None else self.exchanges.merged(step, took_all)

    def failed(self, node_id: str, session: int) -> None:
        """The driver could not run a step of that exchange (or dropped its message)."""
        if self.exchanges is not None:
            self.exchanges.failed(node_id, session)

    def keep(self, source: str, message: SyncPoint) -> list[HeldSyncPoint]:
        """A peer's `SyncPoint`; see `Exchanges.keep`."""
        return [] if self.exchanges is None else self.exchanges.keep(source, message)

    def _target(self) -> str | None:
        view = self.view
        if not view.joined:
            return None
        candidates: Sequence[str] = [i for i in view.link_ids() if view.member_state(i) == State.ALIVE]
        if not candidates:
            return None
        return candidates[self.rng.randrange(len(candidates))]
