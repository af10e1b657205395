"""Difference sketches (`dsm.core.sketch`): the cell-wise difference of two sketches lists exactly the
digests one set has and the other lacks, when there are not too many; otherwise peeling says so and the
empty cells estimate how many there are."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsm.core.sketch import CELL_BYTES, HEADER, MAX_CELLS, Sketch, cells_for, check, estimate, positions, salt_of

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


@settings(max_examples=150, deadline=None)
@given(st.sets(U64, max_size=300), st.sets(U64, max_size=40), st.sets(U64, max_size=40), st.integers(0, 1 << 62))
def test_a_peeled_difference_is_exactly_the_set_difference(
    common: set[int], only_a: set[int], only_b: set[int], session: int
) -> None:
    only_a -= common
    only_b -= common | only_a
    salt = salt_of(session)
    # Sized generously here: then peeling fails only when digests collide in all their cells, rarely.
    cells = 3 * cells_for(len(only_a) + len(only_b))
    a = Sketch.build([*common, *only_a], cells, salt)
    b = Sketch.build(np.array(sorted(common | only_b), dtype=np.uint64), cells, salt)
    # Through the wire form, as a peer's sketch arrives.
    peeled = a.subtract(Sketch.from_bytes(b.to_bytes())).peel(salt)
    if peeled is None:  # possible (all cells shared); never a wrong answer
        assert only_a or only_b
        return
    assert set(peeled[0]) == only_a and set(peeled[1]) == only_b


@pytest.mark.parametrize("d", [1, 20, 100, 1000])
def test_sketches_sized_by_cells_for_almost_always_peel(d: int) -> None:
    # A failure costs anti-entropy one more round trip with a larger sketch (other positions), never data.
    rng = random.Random(d)
    trials = 200 if d < 1000 else 20
    peeled = 0
    for t in range(trials):
        extra = [rng.getrandbits(64) for _ in range(d)]
        salt = salt_of(t)
        cells = cells_for(d)
        result = Sketch.build(extra, cells, salt).subtract(Sketch.build([], cells, salt)).peel(salt)
        if result is not None:
            assert sorted(result[0]) == sorted(extra) and result[1] == []
            peeled += 1
    assert peeled >= 0.95 * trials


def test_signed_and_unsigned_digests_give_the_same_sketch() -> None:
    rng = random.Random(4)
    unsigned = [rng.getrandbits(64) for _ in range(500)]
    signed = [d - (1 << 64) if d >= 1 << 63 else d for d in unsigned]
    salt = salt_of(9)
    assert Sketch.build(unsigned, 99, salt).to_bytes() == Sketch.build(signed, 99, salt).to_bytes()
    as_array = np.array(signed, dtype=np.int64)
    assert Sketch.build(as_array, 99, salt).to_bytes() == Sketch.build(signed, 99, salt).to_bytes()


def test_vectorised_build_agrees_with_the_scalar_positions_and_checks() -> None:
    rng = random.Random(5)
    digests = [rng.getrandbits(64) for _ in range(50)]
    salt = salt_of(3)
    cells = 30
    built = Sketch.build(digests, cells, salt)
    counts = [0] * cells
    ids = [0] * cells
    checks = [0] * cells
    for d in digests:
        where = positions(d, cells, salt)
        assert len({w // (cells // 3) for w in where}) == 3  # one cell in each sub-table
        for i in where:
            counts[i] += 1
            ids[i] ^= d
            checks[i] ^= check(d, salt)
    assert [int(x) for x in built.counts] == [c & 0xFF for c in counts]
    assert [int(x) for x in built.ids] == ids
    assert [int(x) for x in built.checks] == checks


def test_too_many_differences_do_not_peel_and_are_estimated() -> None:
    rng = random.Random(6)
    salt = salt_of(1)
    common = [rng.getrandbits(64) for _ in range(20_000)]
    extra = [rng.getrandbits(64) for _ in range(600)]
    a = Sketch.build(common + extra, 300, salt)
    b = Sketch.build(common, 300, salt)
    difference = a.subtract(b)
    assert difference.peel(salt) is None
    guess = estimate(difference)
    assert 400 <= guess <= 900
    bigger = cells_for(guess + guess // 4)
    peeled = Sketch.build(common + extra, bigger, salt).subtract(Sketch.build(common, bigger, salt)).peel(salt)
    assert peeled is not None and sorted(peeled[0]) == sorted(extra) and peeled[1] == []


def test_a_saturated_difference_gives_at_least_its_count_gap() -> None:
    rng = random.Random(7)
    salt = salt_of(2)
    a = Sketch.build([rng.getrandbits(64) for _ in range(5000)], 96, salt)
    b = Sketch.build([], 96, salt)
    assert estimate(a.subtract(b)) >= 5000


@pytest.mark.parametrize(
    "data",
    [
        b"",
        HEADER.pack(1),  # no cells
        HEADER.pack(1) + b"\x00" * (CELL_BYTES * 3 + 1),  # not whole cells
        HEADER.pack(1) + b"\x00" * (CELL_BYTES * 4),  # not a multiple of 3 cells
        HEADER.pack(1) + b"\x00" * (CELL_BYTES * (MAX_CELLS + 3)),  # too large
    ],
)
def test_malformed_sketches_are_rejected(data: bytes) -> None:
    with pytest.raises(ValueError):
        Sketch.from_bytes(data)


def test_sketches_of_different_sizes_cannot_be_subtracted() -> None:
    with pytest.raises(ValueError):
        Sketch.build([1], 6, 0).subtract(Sketch.build([1], 9, 0))
    with pytest.raises(ValueError):
        Sketch.build([1], 10, 0)
