"""The queue of membership updates waiting to be piggybacked on outgoing messages.

Each update is sent at most `limit` times (the caller passes retransmit_mult * ceil(log10(n + 1)), enough
for an epidemic to reach every member with high probability), updates sent the fewest times go first, and
among those the newest first. A newer update about a member replaces the queued one, whatever its count.
It holds at most one update per member and at most `max_len` in all: past that, the updates sent the most
times are dropped first (after a mass failure every survivor would otherwise queue thousands). What the
queue drops, membership anti-entropy still delivers.
"""

from __future__ import annotations

from dsm.core.messages import Update


class BroadcastQueue:
    """Updates by member slot, bucketed by how many times each was sent."""

    __slots__ = ("_buckets", "_count_of", "max_len")

    def __init__(self, max_len: int = 1024) -> None:
        self.max_len = max_len
        # _buckets[k] maps slot -> update for updates sent k times (insertion order = age).
        self._buckets: list[dict[int, Update]] = [{}]
        self._count_of: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._count_of)

    def put(self, slot: int, update: Update) -> None:
        """Queues `update` about the member in `slot`, replacing any queued update about it."""
        old = self._count_of.get(slot)
        if old is not None:
            del self._buckets[old][slot]
        self._buckets[0][slot] = update
        self._count_of[slot] = 0
        if len(self._count_of) > self.max_len:
            self._drop_most_sent()

    def _drop_most_sent(self) -> None:
        for count in range(len(self._buckets) - 1, -1, -1):
            bucket = self._buckets[count]
            if bucket:
                slot = next(iter(bucket))
                del bucket[slot]
                del self._count_of[slot]
                return

    def take(self, max_count: int, limit: int) -> tuple[Update, ...]:
        """Up to `max_count` updates to piggyback on one message; each taken update counts one sending
        and leaves the queue after `limit` sendings."""
        if not self._count_of or max_count <= 0 or limit <= 0:
            return ()
        taken: list[tuple[int, int, Update]] = []
        buckets = self._buckets
        for count, bucket in enumerate(buckets):
            if not bucket:
                continue
            for slot in reversed(bucket):
                taken.append((count, slot, bucket[slot]))
                if len(taken) >= max_count:
                    break
            if len(taken) >= max_count:
                break
        # Re-queue oldest first, so that reading a bucket from its end still gives the newest first.
        for count, slot, update in reversed(taken):
            del buckets[count][slot]
            sent = count + 1
            if sent >= limit:
                del self._count_of[slot]
                continue
            if sent == len(buckets):
                buckets.append({})
            buckets[sent][slot] = update
            self._count_of[slot] = sent
        return tuple(update for _, _, update in taken)
