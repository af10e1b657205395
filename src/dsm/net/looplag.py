"""`LoopLag`: measures how long the event loop is kept from running its callbacks (stalls).

A timer is armed every `interval_s`; when it fires, the time past its due moment is how long something
(a callback that computed too long, a blocking call that slipped onto the loop) held the loop. Every
overshoot goes into a histogram and the worst one is kept, both exported as metrics, so "storage calls never
stall the event loop for long" is measured on the running node rather than assumed. The cost is one timer
callback per interval (20 per second by default); stalls shorter than the loop's own timer resolution
(about 1 ms) read as zero.
"""

from __future__ import annotations

import asyncio
import bisect

#: Upper bounds of the histogram's buckets, seconds (the last bucket is everything above).
BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class LoopLag:
    """Samples the running loop's lag until `stop()`."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        #: Samples per bucket (`BUCKETS_S`, then one for larger lags).
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.total_s = 0.0
        self.samples = 0
        self.max_s = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.interval_s
        self._handle = loop.call_at(self._due, self._sample, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _sample(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        lag = max(0.0, now - self._due)
        self.counts[bisect.bisect_left(BUCKETS_S, lag)] += 1
        self.total_s += lag
        self.samples += 1
        self.max_s = max(self.max_s, lag)
        self._due = now + self.interval_s
        self._handle = loop.call_at(self._due, self._sample, loop)
