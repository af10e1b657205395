"""`StoreSync`: anti-entropy of the store as the simulator runs it: every anti_entropy_interval_ms the node
reconciles its whole store with one live linked member (reconcile.py), and answers such sessions.

Kept apart, unchanged, from the membership parts so it can move as one piece (issue 18 moves the store's
anti-entropy to core/anti_entropy.py). With no `replica` (a `reconcile.RangeView` of the local store) it
does nothing; the network runtime drives its own anti-entropy and gives none.

Keeps true: one session opened per interval at most; what a session brings is handed to the runtime as a
`Store` effect (path "anti-entropy"), never written here.
"""

from __future__ import annotations

import enum

from dsm.core.context import Context
from dsm.core.messages import DataItem, Reconcile, Store
from dsm.core.overlay import Overlay
from dsm.core.reconcile import RangeView, answer, opening
from dsm.core.ring import State

_ALIVE = int(State.ALIVE)


class StoreSyncTimer(enum.Enum):
    """Timer kinds of `StoreSync`."""

    #: The next anti-entropy session (arg unused).
    ROUND = enum.auto()


class StoreSync:
    """This node's store anti-entropy sessions (see the module docstring)."""

    def __init__(self, context: Context, overlay: Overlay, replica: RangeView | None) -> None:
        self.context = context
        self.overlay = overlay
        # The local store as anti-entropy reads it (reconcile.py); None: no anti-entropy.
        self.replica = replica
        self.sessions = 0

    def start(self) -> None:
        """Arms the first session at a random point of the first interval (only with a replica)."""
        context = self.context
        if self.replica is not None:
            interval = context.settings.anti_entropy_interval_ms
            context.arm(context.now + context.rng.randrange(max(1, interval)), StoreSyncTimer.ROUND, 0)

    def on_timer(self, kind: StoreSyncTimer, arg: int) -> None:
        """Every anti_entropy_interval_ms: reconcile the whole store with one live linked member."""
        context = self.context
        context.arm(context.now + context.settings.anti_entropy_interval_ms, StoreSyncTimer.ROUND, 0)
        if not context.joined or self.replica is None:
            return
        candidates = [s for s in self.overlay.links() if context.table.raw_state(s) == _ALIVE]
        if not candidates:
            return
        self.sessions += 1
        target = candidates[context.rng.randrange(len(candidates))]
        context.send_to_slot(target, opening(context.next_seq(), context.id, self.replica))

    def on_reconcile(self, message: Reconcile) -> None:
        if self.replica is None:
            return
        context = self.context
        reply, entries = answer(message, context.id, self.replica, context.settings.anti_entropy_max_bytes)
        if entries:
            items = tuple(DataItem(0, key, versions) for key, versions in entries)
            context.emit(Store(items, message.source, "anti-entropy", 0))
        if reply is not None:
            context.send_to_id(message.source, reply)


__all__ = ["StoreSync", "StoreSyncTimer"]
