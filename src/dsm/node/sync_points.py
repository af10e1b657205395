"""`SyncPointBook`: a networked node's sync points (`dsm.core.watch_cursor.SyncPoints`), what anti-entropy
needs to leave them (`dsm.core.anti_entropy.SyncPorts`), and their copy in the store's metadata.

- The stamp: every anti-entropy step carries the node's last stored commit stamp when it was decided
  (`ReconcileStep.stamp`), so its read snapshot, taken later, holds every commit up to it. The book follows
  the node's commits (`Commits.subscribe`: a listener runs once the commit is durable) and starts from
  `stamp_bound`: at or above every stamp the store has given, below every stamp to come.
- Keeping: a sync point the core accepted (`HeldSyncPoint`) is added, and the whole set (at most
  `SYNC_POINT_PEERS` peers x `SYNC_POINTS_PER_PEER`, about 40 bytes each) is written to the metadata entry
  `META_SYNC_POINTS`, one write at a time, the latest state last. A restart reads it back, so a watch resumed
  after any node restarted still finds them. A store of another epoch (emptied since) starts with none.
- Watches read the entry when they resume from another node's cursor (`read`), so they need no link to the
  network runtime.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from dsm.core.anti_entropy import SyncPorts
from dsm.core.hlc import pack
from dsm.core.replica import Commit, Replica
from dsm.core.watch_cursor import HeldSyncPoint, SyncPoints
from dsm.node import startup
from dsm.node.commits import Commits
from dsm.storage.base import BackingStore

log = logging.getLogger("dsm.node")

#: The metadata entry holding the node's sync points (`SyncPoints.encode`).
META_SYNC_POINTS = "sync_points"


def stamp_bound(replica: Replica, wall_ms: int) -> int:
    """A stamp at or above every commit stamp the store has given and below every one to come: every stamp
    given is below the clock floor (`replica.reserved_ms`); when the wall clock is past the floor, every stamp
    to come is above it; otherwise the clock was started above every stored stamp. Never a clock reading of
    its own, which the store does not record: a restart with a wall clock behind restarts the clock from what
    is stored, and could stamp later commits below such a reading."""
    return pack(replica.reserved_ms) if replica.reserved_ms < wall_ms else replica.clock.last


async def read(store: BackingStore, epoch: int) -> SyncPoints:
    """The sync points kept in `store` for its `epoch`."""
    return SyncPoints.decode(await store.read_meta(META_SYNC_POINTS), epoch)


class SyncPointBook:
    """A networked node's sync points (see the module docstring).

    Args:
        commits: the node's local replica (its store, clock and commits).
        background: runs a coroutine as a task the runtime awaits at close.
    """

    def __init__(self, commits: Commits, background: Callable[[Coroutine[Any, Any, None]], object]) -> None:
        self.commits = commits
        self.background = background
        self.points = SyncPoints(0)
        self.last_stamp = 0
        self._dirty = False
        self._saving = False

    async def open(self) -> SyncPorts:
        """Reads the store's epoch and kept sync points (the store is open) and follows its commits; returns
        what the core's anti-entropy needs."""
        commits = self.commits
        store = commits.store
        epoch = await startup.store_epoch(store)
        self.points = await read(store, epoch)
        self.last_stamp = max(self.last_stamp, stamp_bound(commits.replica, commits.wall_ms()))
        commits.subscribe(self._on_commit)
        return SyncPorts(epoch, lambda: self.last_stamp)

    def close(self) -> None:
        self.commits.unsubscribe(self._on_commit)

    def _on_commit(self, commit: Commit) -> None:
        self.last_stamp = max(self.last_stamp, commit.stamp)

    def keep(self, point: HeldSyncPoint) -> None:
        """Adds a sync point the core accepted, and writes the set to the store (unless it changed nothing)."""
        before = self.points.of(point.peer)
        self.points.add(point)
        if self.points.of(point.peer) == before:
            return
        self._dirty = True
        if not self._saving:
            self._saving = True
            self.background(self._save())

    async def _save(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                await self.commits.store.write([], {META_SYNC_POINTS: self.points.encode()})
        except Exception as exc:  # the store failed: kept in memory; the next sync point writes them again
            log.warning("saving sync points failed: %s", exc)
        finally:
            self._saving = False
