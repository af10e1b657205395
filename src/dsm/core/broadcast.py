"""The queue of membership updates waiting to be piggybacked on outgoing messages.

Each update is sent at most `limit` times (the caller passes retransmit_mult * ceil(log10(n + 1)), enough
for an epidemic to reach every member with high probability), updates sent the fewest times go first, and
among those the newest first. A newer update about a member replaces the queued one, whatever its count.
It holds at most one update per member and at most `max_len` in all: past that, the updates sent the most
times are dropped first (after a mass failure every survivor would otherwise queue thousands). What the
queue drops, membership anti-entropy still delivers.

Layout (the simulator calls `take` for every probe message, so it is the hot path): one deque per sending
count, holding mutable entries [slot, update, alive]; newest at the left. Taking pops from the left of the
lowest non-empty deque and appends to the right of the next one, which keeps every deque newest-first.
A replaced or dropped entry is only marked dead and skipped when reached.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from dsm.core.messages import Update

# Entry fields.
_SLOT = 0
_UPDATE = 1
_LIVE = 2


class BroadcastQueue:
    """Updates by member slot, bucketed by how many times each was sent."""

    __slots__ = ("_buckets", "_entry_of", "max_len")

    def __init__(self, max_len: int = 1024) -> None:
        self.max_len = max_len
        self._buckets: list[deque[list[Any]]] = [deque()]
        # slot -> the live entry of each queued member.
        self._entry_of: dict[int, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._entry_of)

    def put(self, slot: int, update: Update) -> None:
        """Queues `update` about the member in `slot`, replacing any queued update about it."""
        old = self._entry_of.get(slot)
        if old is not None:
            old[_LIVE] = False
        entry = [slot, update, True]
        self._buckets[0].appendleft(entry)
        self._entry_of[slot] = entry
        if len(self._entry_of) > self.max_len:
            self._drop_most_sent()

    def _drop_most_sent(self) -> None:
        buckets = self._buckets
        while True:
            bucket = buckets[-1]
            while bucket:
                entry = bucket.pop()  # the oldest among the most sent
                if entry[_LIVE]:
                    entry[_LIVE] = False
                    del self._entry_of[entry[_SLOT]]
                    return
            if len(buckets) == 1:
                return
            # An empty top bucket goes (take adds it back when needed), so later drops do not scan it.
            buckets.pop()

    def take(self, max_count: int, limit: int) -> tuple[Update, ...]:
        """Up to `max_count` updates to piggyback on one message; each taken update counts one sending
        and leaves the queue after `limit` sendings."""
        if not self._entry_of or max_count <= 0 or limit <= 0:
            return ()
        taken: list[Update] = []
        append = taken.append
        need = max_count
        entry_of = self._entry_of
        # Taken entries join the right of their next bucket only once the take is over (that bucket may
        # be read next), so one take never returns a member twice.
        groups: list[tuple[int, list[list[Any]]]] = []
        for count, bucket in enumerate(self._buckets):
            if not bucket:
                continue
            sent = count + 1
            last = sent >= limit
            group: list[list[Any]] = []
            popleft = bucket.popleft
            while bucket:
                entry = popleft()
                if not entry[_LIVE]:
                    continue
                append(entry[_UPDATE])
                if last:
                    entry[_LIVE] = False
                    del entry_of[entry[_SLOT]]
                else:
                    group.append(entry)
                need -= 1
                if not need:
                    break
            if group:
                groups.append((sent, group))
            if not need:
                break
        for sent, group in groups:
            self._requeue(group, sent)
        return tuple(taken)

    def _requeue(self, entries: list[list[Any]], sent: int) -> None:
        buckets = self._buckets
        if sent == len(buckets):
            buckets.append(deque())
        buckets[sent].extend(entries)
