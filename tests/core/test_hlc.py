"""Property tests for the hybrid logical clock (`dsm.core.hlc`).

Checked against the rules in the module docstring:
- `now()` and `observe()` issue strictly increasing timestamps for any sequence of wall-clock readings,
  including a wall clock that stands still, goes backwards, or sees more than 65,536 events in one
  millisecond (the logical counter carries into the physical part, at most one millisecond ahead per
  65,536 events, and the clock falls back to the wall clock as soon as it catches up);
- `observe()` returns a timestamp greater than the remote one and than everything issued before;
- a remote timestamp more than `max_offset_ms` ahead (or outside the timestamp range) raises
  `ClockSkewError` and leaves the clock untouched; `check()` never changes the clock;
- `advance_to` is a floor for every later timestamp and never moves the clock back;
- `pack` / `physical_ms` / `logical` round trip and order timestamps as (physical, logical).
"""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsm.core.hlc import (
    LOGICAL_BITS,
    LOGICAL_MASK,
    MAX_TIMESTAMP,
    HybridLogicalClock,
    logical,
    pack,
    physical_ms,
)
from dsm.errors import ClockSkewError, DSMError

SETTINGS = settings(max_examples=200, deadline=None)

MAX_PHYSICAL = MAX_TIMESTAMP >> LOGICAL_BITS
#: Plausible wall-clock readings (Unix ms up to ~2039), far from the overflow assertion.
walls = st.integers(min_value=1, max_value=1 << 41)
offsets = st.integers(min_value=0, max_value=10_000)
#: How the wall clock moves between two events: stands still, creeps, jumps back or forward.
wall_steps = st.one_of(
    st.just(0),
    st.integers(min_value=-3, max_value=3),
    st.integers(min_value=-100_000, max_value=100_000),
)

#: One clock operation: (kind, wall step, remote ms relative to the wall, remote logical part, floor
#: relative to the clock's last timestamp); kind is "now", "observe" or "advance".
operations = st.tuples(
    st.sampled_from(["now", "observe", "advance"]),
    wall_steps,
    st.integers(min_value=-100_000, max_value=20_000),
    st.integers(min_value=0, max_value=LOGICAL_MASK),
    st.integers(min_value=-(1 << 20), max_value=1 << 20),
)


@SETTINGS
@given(start=walls, max_offset=offsets, ops=st.lists(operations, min_size=1, max_size=60))
def test_now_and_observe_issue_strictly_increasing_timestamps_whatever_the_wall_clock_does(
    start: int, max_offset: int, ops: list[tuple[str, int, int, int, int]]
) -> None:
    clock = HybridLogicalClock(max_offset_ms=max_offset)
    wall = start
    issued: list[int] = []
    rejected = 0
    for kind, step, ahead_ms, remote_logical, floor_delta in ops:
        before = clock.last
        if kind == "advance":
            floor = max(0, clock.last + floor_delta)
            clock.advance_to(floor)
            assert clock.last == max(before, floor)
            continue
        wall = max(0, wall + step)
        if kind == "now":
            issued.append(clock.now(wall))
        else:
            remote = pack(max(0, wall + ahead_ms), remote_logical)
            if physical_ms(remote) - wall > max_offset:
                with pytest.raises(ClockSkewError):
                    clock.observe(remote, wall)
                assert clock.last == before
                rejected += 1
                continue
            issued.append(clock.observe(remote, wall))
            assert issued[-1] > remote
        assert issued[-1] > before
        assert issued[-1] == clock.last
        assert issued[-1] >= pack(wall)
    assert all(a < b for a, b in pairwise(issued))
    assert len(issued) + rejected <= len(ops)


@SETTINGS
@given(wall=walls, steps=st.lists(st.integers(min_value=-1000, max_value=0), min_size=1, max_size=50))
def test_wall_clock_going_backwards_keeps_physical_part_and_advances_logical_counter(
    wall: int, steps: list[int]
) -> None:
    clock = HybridLogicalClock(max_offset_ms=0)
    first = clock.now(wall)
    assert first == pack(wall)
    previous = first
    for step in steps:
        ts = clock.now(max(0, wall + step))
        assert ts == previous + 1
        assert physical_ms(ts) == wall
        previous = ts


@SETTINGS
@given(
    wall=walls,
    already_this_ms=st.integers(min_value=0, max_value=LOGICAL_MASK),
    events=st.integers(min_value=1, max_value=300),
)
def test_logical_counter_overflow_carries_into_physical_part_by_at_most_one_ms_per_65536_events(
    wall: int, already_this_ms: int, events: int
) -> None:
    # The clock has issued `already_this_ms + 1` timestamps in millisecond `wall`; more events follow while
    # the wall clock stands still.
    clock = HybridLogicalClock(max_offset_ms=0, last=pack(wall, already_this_ms))
    previous = clock.last
    for _ in range(events):
        ts = clock.now(wall)
        assert ts == previous + 1
        assert pack(physical_ms(ts), logical(ts)) == ts
        previous = ts
    total_events = already_this_ms + 1 + events
    assert physical_ms(clock.last) - wall <= total_events // (LOGICAL_MASK + 1)
    assert physical_ms(clock.last) == wall + (already_this_ms + events) // (LOGICAL_MASK + 1)
    # As soon as the wall clock passes the carried physical part the clock is back on the wall clock.
    caught_up = physical_ms(clock.last) + 1
    assert clock.now(caught_up) == pack(caught_up)


def test_more_than_65536_events_in_one_millisecond_stay_strictly_increasing() -> None:
    wall = 1_700_000_000_000
    clock = HybridLogicalClock(max_offset_ms=0)
    issued = [clock.now(wall) for _ in range(LOGICAL_MASK + 1 + 1000)]
    assert all(a + 1 == b for a, b in pairwise(issued))
    assert physical_ms(issued[LOGICAL_MASK]) == wall
    assert logical(issued[LOGICAL_MASK]) == LOGICAL_MASK
    assert issued[LOGICAL_MASK + 1] == pack(wall + 1, 0)
    assert physical_ms(issued[-1]) == wall + 1
    assert clock.now(wall + 1) == issued[-1] + 1
    assert clock.now(wall + 2) == pack(wall + 2)


@SETTINGS
@given(
    wall=walls,
    history=st.lists(st.integers(min_value=-5000, max_value=5000), max_size=20),
    step=st.integers(min_value=1, max_value=100_000),
)
def test_clock_falls_back_to_wall_clock_as_soon_as_it_catches_up(wall: int, history: list[int], step: int) -> None:
    clock = HybridLogicalClock(max_offset_ms=0)
    for delta in history:
        clock.now(max(0, wall + delta))
    later = physical_ms(clock.last) + step
    assert clock.now(later) == pack(later)


@SETTINGS
@given(
    last=st.integers(min_value=0, max_value=pack(1 << 41)),
    wall=walls,
    max_offset=offsets,
    ahead_ms=st.integers(min_value=-(1 << 30), max_value=10_000),
    remote_logical=st.integers(min_value=0, max_value=LOGICAL_MASK),
)
def test_observe_returns_more_than_remote_and_everything_before_when_within_offset(
    last: int, wall: int, max_offset: int, ahead_ms: int, remote_logical: int
) -> None:
    ahead_ms = min(ahead_ms, max_offset)
    remote = pack(max(0, wall + ahead_ms), remote_logical)
    clock = HybridLogicalClock(max_offset_ms=max_offset, last=last)
    result = clock.observe(remote, wall)
    assert result > remote
    assert result > last
    assert result >= pack(wall)
    assert clock.last == result
    assert result == max(last + 1, remote + 1, pack(wall))


@SETTINGS
@given(
    last=st.integers(min_value=0, max_value=pack(1 << 41)),
    wall=walls,
    max_offset=offsets,
    excess_ms=st.integers(min_value=1, max_value=1 << 30),
    remote_logical=st.integers(min_value=0, max_value=LOGICAL_MASK),
)
def test_remote_more_than_max_offset_ahead_raises_clock_skew_and_leaves_clock_unchanged(
    last: int, wall: int, max_offset: int, excess_ms: int, remote_logical: int
) -> None:
    remote_ms = wall + max_offset + excess_ms
    remote = pack(remote_ms, remote_logical)
    clock = HybridLogicalClock(max_offset_ms=max_offset, last=last)
    with pytest.raises(ClockSkewError) as info:
        clock.observe(remote, wall)
    assert clock.last == last
    assert clock.max_offset_ms == max_offset
    assert isinstance(info.value, DSMError)
    assert info.value.remote_ms == remote_ms
    assert info.value.local_ms == wall
    assert info.value.max_offset_ms == max_offset
    with pytest.raises(ClockSkewError):
        clock.check(remote, wall)
    assert clock.last == last
    # The clock still works afterwards and is not dragged forward by the rejected reading.
    assert clock.now(wall) == max(last + 1, pack(wall))


@SETTINGS
@given(
    last=st.integers(min_value=0, max_value=pack(1 << 41)),
    wall=walls,
    max_offset=offsets,
    remote_logical=st.integers(min_value=0, max_value=LOGICAL_MASK),
)
def test_remote_exactly_max_offset_ahead_is_accepted(
    last: int, wall: int, max_offset: int, remote_logical: int
) -> None:
    remote = pack(wall + max_offset, remote_logical)
    clock = HybridLogicalClock(max_offset_ms=max_offset, last=last)
    clock.check(remote, wall)
    assert clock.last == last
    assert clock.observe(remote, wall) > remote


@SETTINGS
@given(
    last=st.integers(min_value=0, max_value=pack(1 << 41)),
    wall=walls,
    remote=st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=MAX_TIMESTAMP + 1, max_value=MAX_TIMESTAMP * 4),
    ),
)
def test_remote_outside_timestamp_range_raises_clock_skew_and_leaves_clock_unchanged(
    last: int, wall: int, remote: int
) -> None:
    clock = HybridLogicalClock(max_offset_ms=1 << 62, last=last)
    with pytest.raises(ClockSkewError):
        clock.observe(remote, wall)
    assert clock.last == last


@SETTINGS
@given(
    last=st.integers(min_value=0, max_value=pack(1 << 41)),
    wall=walls,
    max_offset=offsets,
    remote=st.integers(min_value=0, max_value=pack(1 << 42)),
)
def test_check_never_changes_the_clock(last: int, wall: int, max_offset: int, remote: int) -> None:
    clock = HybridLogicalClock(max_offset_ms=max_offset, last=last)
    too_far = physical_ms(remote) - wall > max_offset
    if too_far:
        with pytest.raises(ClockSkewError):
            clock.check(remote, wall)
    else:
        assert clock.check(remote, wall) is None
    assert clock.last == last


@SETTINGS
@given(
    last=st.integers(min_value=0, max_value=pack(1 << 41)),
    floor=st.integers(min_value=0, max_value=pack(1 << 41)),
    wall=walls,
    use_observe=st.booleans(),
)
def test_advance_to_is_a_floor_for_every_later_timestamp(last: int, floor: int, wall: int, use_observe: bool) -> None:
    clock = HybridLogicalClock(max_offset_ms=0, last=last)
    clock.advance_to(floor)
    assert clock.last == max(last, floor)
    ts = clock.observe(pack(wall), wall) if use_observe else clock.now(wall)
    assert ts > floor
    assert ts > last


@SETTINGS
@given(last=st.integers(min_value=0, max_value=pack(1 << 41)), lower=st.integers(min_value=0))
def test_advance_to_never_moves_the_clock_back(last: int, lower: int) -> None:
    clock = HybridLogicalClock(max_offset_ms=0, last=last)
    clock.advance_to(min(lower, last))
    assert clock.last == last


@SETTINGS
@given(
    physical=st.integers(min_value=0, max_value=MAX_PHYSICAL),
    counter=st.integers(min_value=0, max_value=LOGICAL_MASK),
)
def test_pack_physical_ms_and_logical_round_trip(physical: int, counter: int) -> None:
    ts = pack(physical, counter)
    assert physical_ms(ts) == physical
    assert logical(ts) == counter
    assert 0 <= ts <= MAX_TIMESTAMP


@SETTINGS
@given(ts=st.integers(min_value=0, max_value=MAX_TIMESTAMP))
def test_every_timestamp_splits_into_parts_that_pack_back(ts: int) -> None:
    assert 0 <= logical(ts) <= LOGICAL_MASK
    assert pack(physical_ms(ts), logical(ts)) == ts


@SETTINGS
@given(
    a=st.tuples(st.integers(min_value=0, max_value=MAX_PHYSICAL), st.integers(0, LOGICAL_MASK)),
    b=st.tuples(st.integers(min_value=0, max_value=MAX_PHYSICAL), st.integers(0, LOGICAL_MASK)),
)
def test_timestamps_order_as_physical_then_logical(a: tuple[int, int], b: tuple[int, int]) -> None:
    assert (pack(*a) < pack(*b)) == (a < b)
    assert (pack(*a) == pack(*b)) == (a == b)


def test_largest_timestamp_is_largest_physical_and_logical_parts() -> None:
    assert pack(MAX_PHYSICAL, LOGICAL_MASK) == MAX_TIMESTAMP
    assert MAX_TIMESTAMP < 1 << 63
    assert pack(0) == 0
