"""The keys of a prefix that expired, as a watch reports them: the store's indexed `expiring` query run by the
core's rules (`dsm.core.expiry`) with this node's wall clock.

`Expiries.pages(lo, hi, mark_ms)` yields the rows under [lo, hi) whose key became absent by expiry after the
watch's mark and up to now, a page at a time in (expires_ms, key) order, each page with the mark that holds
after it (a watch puts that mark in the cursor of the page's last event, so a resume neither repeats nor
misses one). `Expiries.wake_at(lo, hi, now_ms)` says when to look again: at the next expiry under the prefix,
at most `EXPIRY_POLL_MAX_MS` later. Both read only through the index (`dsm_kv_expires`), so a quiet watch
costs one small query per poll, whatever the store's size.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

from dsm.core import expiry
from dsm.storage.base import BackingStore, ExpiringRow

#: Rows read per page of expiries.
PAGE_ROWS = 500


class Expiries:
    """A node's view of the keys that expired (see the module docstring).

    Args:
        store: the node's backing store.
        wall_ms: the node's wall clock, Unix ms.
        page_rows: rows per query.
    """

    def __init__(self, store: BackingStore, wall_ms: Callable[[], int], page_rows: int = PAGE_ROWS) -> None:
        self.store = store
        self.wall_ms = wall_ms
        self.page_rows = page_rows

    async def pages(self, lo: str, hi: str | None, mark_ms: int) -> AsyncGenerator[tuple[list[ExpiringRow], int], None]:
        """The rows under [lo, hi) that expired after `mark_ms` and up to now (the wall clock when called),
        a page at a time, each with the mark that holds after it. The last page (empty when none expired)
        carries the mark `now`; nothing is yielded when the clock is not past `mark_ms`."""
        now_ms = self.wall_ms()
        if now_ms <= mark_ms:
            return
        limit, mark = self.page_rows, mark_ms
        while True:
            rows = await self.store.expiring(mark, now_ms, lo, hi, limit)
            taken = expiry.take([row[2] for row in rows], mark, now_ms, limit)
            mark, limit = taken.mark, taken.limit
            if taken.count or not taken.more:
                yield rows[: taken.count], mark
            if not taken.more:
                return

    async def wake_at(self, lo: str, hi: str | None, now_ms: int) -> int:
        """When a watch of [lo, hi) should look for expired keys again (Unix ms)."""
        horizon = now_ms + expiry.EXPIRY_POLL_MAX_MS
        ahead = await self.store.expiring(now_ms, horizon, lo, hi, 1)
        return expiry.wake_at(expiry.next_due((row[2] for row in ahead), now_ms), now_ms)
