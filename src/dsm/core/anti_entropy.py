"""`AntiEntropy`: when, with whom and which step of whole-store reconciliation (`reconcile.py`) a node runs.

Decided here, once, for both drivers; a driver only runs the store reads a step needs (`run_step`, against
its store's consistent view: the simulator synchronously on its `MemoryStore`, the network runtime off the
event loop) and then carries out the step's outcome: send the reply, merge the entries received.

- When: a node that starts (new, restarted after a crash, back from a long absence) reconciles as soon as it
  is joined and has a live link (checked every CATCH_UP_POLL_MS, for at most one interval), rather than
  after up to a whole period of missing what was written while it was away; then every
  `anti_entropy_interval_ms`, from a random phase, so nodes started together do not reconcile in step.
- With whom: one live linked member, at random (a connection is already open to it).
- Which step: a round opens an exchange (`reconcile.opening`, a new session); an incoming `Reconcile` is
  answered (`reconcile.answer`). Each step is one `ReconcileStep` effect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from dsm.core.messages import DataItem, DataItems, Reconcile
from dsm.core.overlay import RandomSource
from dsm.core.reconcile import RangeView, answer, opening
from dsm.core.ring import State

#: How often a starting node looks for its first live link, to reconcile with it at once, ms.
CATCH_UP_POLL_MS = 50


class LinkView(Protocol):
    """What anti-entropy needs of the membership (`Peer` provides it)."""

    @property
    def joined(self) -> bool: ...

    def link_ids(self) -> list[str]: ...

    def member_state(self, node_id: str) -> State: ...


@dataclass(frozen=True, slots=True)
class ReconcileStep:
    """Run one reconciliation step against the store (`run_step`), then send its reply to `node_id` and
    merge the entries it returns. `message` None: open a new exchange (`session`); else answer it."""

    node_id: str
    session: int
    message: Reconcile | None = None


def run_step(step: ReconcileStep, node_id: str, view: RangeView, max_bytes: int) -> tuple[Reconcile | None, DataItems]:
    """Runs `step` on this node's store `view`: the message to send (None: the exchange ended) and the
    entries received to merge.

    Raises:
        ValueError: the incoming message is malformed (the sender's fault).
    """
    if step.message is None:
        return opening(step.session, node_id, view), ()
    reply, entries = answer(step.message, node_id, view, max_bytes)
    return reply, tuple(DataItem(0, key, versions) for key, versions in entries)


class AntiEntropy:
    """One node's anti-entropy schedule (see the module docstring).

    Args:
        view: the node's membership.
        rng: its random source.
        interval_ms: `anti_entropy_interval_ms`.
        now: the time it starts at.
        next_session: issues session numbers.
    """

    def __init__(
        self, view: LinkView, rng: RandomSource, interval_ms: int, now: int, next_session: Callable[[], int]
    ) -> None:
        self.view = view
        self.rng = rng
        self.interval_ms = interval_ms
        self.next_session = next_session
        self.sessions = 0
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
        if catching_up:
            # Caught up (or gave up waiting): from now on every interval, from a random phase.
            self._catch_up_until = 0
            self.due = now + self.rng.randrange(max(1, self.interval_ms))
        else:
            self.due = now + self.interval_ms
        if target is None:
            return []
        self.sessions += 1
        return [ReconcileStep(target, self.next_session())]

    def handle(self, source: str, message: Reconcile) -> list[ReconcileStep]:
        """An exchange step from the member `source` (for a network driver: the one the connection
        authenticated, whatever the message claims): answer it, to that member."""
        return [ReconcileStep(source, message.session, message)]

    def _target(self) -> str | None:
        view = self.view
        if not view.joined:
            return None
        candidates: Sequence[str] = [i for i in view.link_ids() if view.member_state(i) == State.ALIVE]
        if not candidates:
            return None
        return candidates[self.rng.randrange(len(candidates))]
