"""When a watch reports that keys expired: pure rules over the store's expiring rows (no I/O, no clock; the
node's `dsm.node.expiries` runs them against its store and wall clock).

A key becomes absent by expiry at a moment no commit marks: nothing is written when it happens (see
`versions.py`: expiry is read-side only). The store indexes that moment per row (`dsm_kv.expires_ms`, made
by `replica.expiry_of`: the latest expiry of the key's live values when every one of them expires), so
"which keys under P expired between two moments" is an indexed query (`BackingStore.expiring`).

A watch keeps an *expiry mark*: the wall time up to which it has reported the keys that expired (carried in
its cursor, `watch_cursor.Cursor.expiry_ms`). At `now`:
- the rows with `mark < expires_ms <= now` are due, in (expires_ms, key) order, each reported once as an
  expired event (`take`, page by page; the mark moves to `now` once the last page is taken, or to just
  below the last moment a full page reached, so a page never splits one millisecond's keys between two
  marks);
- then the watch sleeps until the next expiry under its prefix (`next_due`), at most `EXPIRY_POLL_MAX_MS`
  (`wake_at`); a commit meanwhile that stores a key under the prefix with an earlier expiry wakes it
  sooner (the node's `Watches.on_commit`).

The reading node's clock decides, as for reads: a key is absent from `expires_ms` on (`VersionSet.live_at`),
and a watch on a node whose clock runs ahead reports it early by as much. A row renewed before the query no
longer matches (its `expires_ms` moved); one renewed just after it still gets its expired event, followed by
the renewal's own change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

#: Longest sleep of a watch between two looks for expired keys, ms (commits that bring an earlier expiry wake
#: it sooner; this bounds what a missed wake-up or a clock step can delay).
EXPIRY_POLL_MAX_MS = 5_000
#: Most rows of one millisecond's expiries a page may grow to before `take` reports them anyway.
TAKE_MAX_ROWS = 100_000


class ExpiryTimer(Enum):
    """The timer of a watch's expiry events."""

    DUE = "due"


@dataclass(frozen=True, slots=True)
class Taken:
    """What `take` decided for one page of expiring rows.

    Attributes:
        count: how many of the page's rows are due now (the first `count`, in (expires_ms, key) order).
        mark: the watch's new expiry mark.
        more: another page may hold due rows (query again from `mark`).
        limit: the page size to ask for next (larger when one millisecond filled a whole page).
    """

    count: int
    mark: int
    more: bool
    limit: int


def take(expires: Sequence[int], mark_ms: int, now_ms: int, limit: int) -> Taken:
    """Which rows of a page of the store's expiring rows a watch reports now.

    Args:
        expires: the page's `expires_ms`, ascending: the rows with `mark_ms < expires_ms <= now_ms` (at most
            `limit` of them) in (expires_ms, key) order.
        mark_ms: the watch's expiry mark.
        now_ms: the node's wall clock.
        limit: the page size the page was asked with.

    Returns:
        the rows to report and the new mark (see `Taken`).
    """
    assert all(mark_ms < e <= now_ms for e in expires), "the page holds rows outside (mark, now]"
    if len(expires) < limit:
        return Taken(len(expires), max(mark_ms, now_ms), False, limit)
    last = expires[-1]
    if expires[0] == last:
        if limit < TAKE_MAX_ROWS:  # one millisecond filled the page: ask for more of it
            return Taken(0, mark_ms, True, min(limit * 2, TAKE_MAX_ROWS))
        return Taken(len(expires), last, True, limit)  # bounded: the rest of that millisecond is skipped
    count = sum(1 for e in expires if e < last)
    return Taken(count, last - 1, True, limit)


def marks_after(expires: Sequence[int], mark_ms: int, page_mark_ms: int) -> list[int]:
    """The expiry mark after each row of a page `take` reported (for each event's cursor): below the next
    row's expiry, so a resume from any of them repeats at most the rows of that same millisecond, and the
    page's mark after its last row.

    Args:
        expires: the reported rows' `expires_ms`, ascending.
        mark_ms: the mark before the page.
        page_mark_ms: the mark `take` gave for the page.
    """
    if not expires:
        return []
    out = [max(mark_ms, following - 1) for following in expires[1:]]
    out.append(page_mark_ms)
    return out


def next_due(expires: Iterable[int], now_ms: int) -> int | None:
    """The earliest expiry after `now_ms` among `expires` (None: none is ahead)."""
    ahead = [e for e in expires if e > now_ms]
    return min(ahead) if ahead else None


def wake_at(next_ms: int | None, now_ms: int) -> int:
    """When a watch looks for expired keys again: at the next expiry, at most `EXPIRY_POLL_MAX_MS` from now."""
    latest = now_ms + EXPIRY_POLL_MAX_MS
    return latest if next_ms is None else max(now_ms + 1, min(next_ms, latest))
