"""Hybrid logical clock (HLC): what it owns and the rules it keeps.

A timestamp is one non-negative integer: the physical part (Unix milliseconds) in the high bits and a
logical counter in the low `LOGICAL_BITS` bits, so timestamps compare as plain integers and encode as one
msgpack uint64. The clock is given wall-clock readings by its caller; it never reads a clock itself.

Invariants:
- `now()` and `observe()` return strictly increasing timestamps, whatever the wall clock does. When the
  wall clock goes backwards the clock keeps its physical part and advances the logical counter; if the
  counter overflows it carries into the physical part (the clock runs at most a millisecond ahead per
  65,536 events, and falls back in step as soon as the wall clock catches up).
- A remote timestamp whose physical part is more than `max_offset_ms` ahead of the local wall clock is
  rejected with `ClockSkewError` and leaves the clock untouched. This is the rule for "too far in the
  future": one node with a runaway clock must not drag every clock in the cluster forward, which would make
  its writes win last-writer-wins for as long as the skew lasts.
- The clock can be given a floor (`advance_to`), used after a restart so that it never issues a timestamp
  at or below one it issued before.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsm.errors import ClockSkewError

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
#: The largest timestamp: 47 bits of milliseconds (until year 6429) and 16 logical bits fit an int64.
MAX_TIMESTAMP = (1 << 63) - 1


def pack(physical_ms: int, logical: int = 0) -> int:
    """Builds a timestamp from its physical (Unix ms) and logical parts."""
    assert 0 <= logical <= LOGICAL_MASK, logical
    return (physical_ms << LOGICAL_BITS) | logical


def physical_ms(timestamp: int) -> int:
    """The physical part of a timestamp, in Unix milliseconds."""
    return timestamp >> LOGICAL_BITS


def logical(timestamp: int) -> int:
    """The logical counter of a timestamp."""
    return timestamp & LOGICAL_MASK


@dataclass
class HybridLogicalClock:
    """A hybrid logical clock fed with wall-clock readings.

    Args:
        max_offset_ms: how far ahead of the local wall clock a remote reading may be before it is
            rejected (`ClockSkewError`).
        last: the last timestamp issued (0 for a new clock).
    """

    max_offset_ms: int
    last: int = 0

    def now(self, wall_ms: int) -> int:
        """Issues a timestamp for a local event.

        Args:
            wall_ms: the local wall clock, Unix milliseconds.

        Returns:
            a timestamp strictly greater than every timestamp issued or observed before.
        """
        candidate = max(self.last + 1, pack(wall_ms))
        assert candidate <= MAX_TIMESTAMP, "hybrid logical clock overflow"
        self.last = candidate
        return candidate

    def check(self, remote: int, wall_ms: int) -> None:
        """Raises `ClockSkewError` if `remote` is too far ahead of `wall_ms`; changes nothing."""
        if remote < 0 or remote > MAX_TIMESTAMP:
            raise ClockSkewError(physical_ms(max(remote, 0)), wall_ms, self.max_offset_ms)
        if physical_ms(remote) - wall_ms > self.max_offset_ms:
            raise ClockSkewError(physical_ms(remote), wall_ms, self.max_offset_ms)

    def observe(self, remote: int, wall_ms: int) -> int:
        """Merges a remote timestamp (a received message or version) and issues a new local timestamp.

        Args:
            remote: the remote timestamp.
            wall_ms: the local wall clock, Unix milliseconds.

        Returns:
            a timestamp greater than `remote` and than everything issued before.

        Raises:
            ClockSkewError: `remote` is more than `max_offset_ms` ahead of `wall_ms`; the clock is unchanged.
        """
        self.check(remote, wall_ms)
        candidate = max(self.last + 1, remote + 1, pack(wall_ms))
        self.last = candidate
        return candidate

    def advance_to(self, floor: int) -> None:
        """Makes every later timestamp greater than `floor` (used when reopening a store)."""
        self.last = max(self.last, floor)
