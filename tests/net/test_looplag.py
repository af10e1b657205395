"""The event-loop lag monitor sees a stall that a blocking call causes."""

from __future__ import annotations

import asyncio
import time

from dsm.net.looplag import BUCKETS_S, LoopLag


async def test_a_blocking_call_shows_as_a_stall() -> None:
    lag = LoopLag(interval_s=0.01)
    lag.start()
    await asyncio.sleep(0.05)
    time.sleep(0.3)  # blocks the loop on purpose
    await asyncio.sleep(0.05)
    lag.stop()
    assert lag.max_s >= 0.25
    assert lag.samples >= 3 and sum(lag.counts) == lag.samples
    assert sum(lag.counts[BUCKETS_S.index(0.5) :]) >= 1  # the stall lands in the (0.2, 0.5] bucket or above
    samples = lag.samples
    await asyncio.sleep(0.05)
    assert lag.samples == samples  # stopped: no more samples
