"""The tombstone sweep: purges deleted and expired keys dead for longer than the grace period, and dates the
node's presence.

Every min(tombstone_grace_ms / 4, SWEEP_MAX_MS) the sweep pages through the rows older than the grace period
(`older_than`) and queues for purging the keys whose versions are all dead (tombstones, values whose expiry
has passed) since before the grace period (`versions.purgeable`); each is checked again in the commit that
deletes it (`Replica`, against the row as it is then), so a write that arrived meanwhile wins. Expired keys
need no index of their own: a version's dot is older than its expiry, so a key dead since before the bound
is among the rows whose newest dot is older than it. Until it is purged, an expired key is an ordinary row:
no replica rewrites it at expiry, so anti-entropy sees no difference between replicas that expire it at
slightly different moments.
The same round records that the node is running (`last_seen_ms`), which dates an absence at the next start
(`dsm.node.startup`).
"""

from __future__ import annotations

import asyncio
import logging

from dsm.core.replica import MergeOp
from dsm.errors import ClosedError, DSMError
from dsm.node.commits import Commits
from dsm.node.startup import META_LAST_SEEN

log = logging.getLogger("dsm.node")

#: Most rows the tombstone sweep looks at per step (each step is one commit of the purgeable ones).
SWEEP_PAGE = 1000
#: Longest period of the tombstone sweep (it is also the heartbeat that dates a node's absence), ms.
SWEEP_MAX_MS = 3_600_000


class Sweeper:
    """One node's tombstone sweep (see the module docstring)."""

    def __init__(self, commits: Commits) -> None:
        self.commits = commits
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"dsm-sweep-{self.commits.node_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        period_s = min(self.commits.config.tombstone_grace_ms / 4, SWEEP_MAX_MS) / 1000
        while True:
            await asyncio.sleep(period_s)
            try:
                await self.sweep()
            except ClosedError:
                return
            except DSMError as exc:  # the store failed: try again next period
                log.warning("tombstone sweep failed: %s", exc)

    async def sweep(self) -> int:
        """Purges the keys dead (deleted or expired) for longer than the grace period and records that this
        node is running; returns how many keys were purged."""
        commits = self.commits
        replica, store = commits.replica, commits.store
        now = commits.wall_ms()
        before = replica.purge_bound(now)
        purged = 0
        after = ""
        while page := await store.older_than(before, after, SWEEP_PAGE):
            after = page[-1][0]
            keys = replica.purge_candidates(page, before)
            if keys:
                purged += (await commits.enqueue(MergeOp((), keys, before))).changed
            if len(page) < SWEEP_PAGE:
                break
            await asyncio.sleep(0)
        await commits.enqueue(MergeOp((), (), before, {META_LAST_SEEN: str(now).encode("ascii")}))
        return purged
