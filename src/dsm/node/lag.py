"""Replication delay: how long after a write another replica stores it.

Each durable commit tells its listeners what it stored (`dsm.node.commits.Commits.subscribe`). For every key a
commit changed that did not come from a local write (it arrived by a push, a `Replicate`, anti-entropy or a
conditional write's commit), the delay is this node's wall clock at the commit minus the physical time of
the key's newest version: the time from the write, on the writer's clock, to durability here. Clock offsets
between the nodes enter it (they are bounded by `max_clock_offset_ms`; a negative reading counts as 0), and
so does the age of whatever anti-entropy repairs (a replica that was away brings old writes, and that is
what its lag was). Kept as a fixed-bucket histogram (cumulative counts, as Prometheus shows it), read by the
status snapshot (`dsm.net.status`), `/metrics` (`dsm_replication_delay_seconds`) and the dashboard.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from dsm.core.hlc import physical_ms
from dsm.core.replica import USER_KEYS_START, Commit

#: Upper bounds of the buckets (seconds); one more bucket holds everything above the last.
BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


class ReplicationDelay:
    """The histogram of this node's replication delays (see the module docstring).

    Args:
        wall_ms: the node's wall clock (ms since the epoch).
    """

    def __init__(self, wall_ms: Callable[[], int]) -> None:
        self.wall_ms = wall_ms
        #: Per bucket (BUCKETS_S, then +Inf), the readings that fell into it (not cumulative).
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.sum_s = 0.0
        #: The latest reading (seconds; 0 before the first).
        self.last_s = 0.0

    def on_commit(self, commit: Commit) -> None:
        """A commit listener: one reading per key the commit changed that was not written here."""
        if len(commit.states) == len(commit.written):
            return  # local writes only (or nothing)
        now = self.wall_ms()
        for key, versions in commit.states.items():
            if key in commit.written or key < USER_KEYS_START or not versions.versions or key in commit.deletes:
                continue  # a local write, an internal record (member metadata), a purge
            newest = max(v.dot.timestamp for v in versions.versions)
            delay_s = max(0, now - physical_ms(newest)) / 1000
            self.counts[bisect.bisect_left(BUCKETS_S, delay_s)] += 1
            self.sum_s += delay_s
            self.last_s = delay_s

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-quantile (seconds; inf above the last bound); None
        before any reading."""
        total = self.count
        if not total:
            return None
        rank, seen = q * total, 0
        for bound, n in zip((*BUCKETS_S, float("inf")), self.counts, strict=True):
            seen += n
            if seen >= rank:
                return bound
        return float("inf")
