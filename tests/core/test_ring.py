"""Tests for the ring (`dsm.core.ring`): positions, ring distance, the directory and the member table.

Checked against the module's docstrings:
- `position` is a stable 64-bit hash of the node id; `distance` is the shorter way round (a metric on the
  ring, at most 2^63) and agrees with `clockwise` taken both ways;
- `Directory.intern` is idempotent, hands out dense slots in first-seen order, keeps `ring_positions` sorted
  with `ring_slots` aligned, and replaces a changed address or region without moving the member;
  `intern_many` ends with the same slots and ring as interning one by one;
- `walk` goes once round the ring from just past a point, in either direction; `nearest` goes through every
  slot once by non-decreasing ring distance;
- `MemberTable` keeps its per-state counts and per-arc digests equal to a from-scratch computation through
  any history, so equal tables have equal digests and a differing entry changes the digest of its arc;
  `slots_in_bucket` lists the known slots of an arc in ring order.
"""

from __future__ import annotations

import hashlib
from array import array

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dsm.core.ring import (
    HALF_RING,
    RING,
    SYNC_BUCKETS,
    Directory,
    MemberInfo,
    MemberTable,
    State,
    bucket_of,
    clockwise,
    distance,
    position,
)

SETTINGS = settings(max_examples=150, deadline=None)

# --- positions and distances ---

node_id_texts = st.text(max_size=12)
#: Ring points, with the interesting ones (0, the half ring, the wrap-around) drawn often.
EDGE_POINTS = [0, 1, HALF_RING - 1, HALF_RING, HALF_RING + 1, RING - 2, RING - 1]
points = st.one_of(st.sampled_from(EDGE_POINTS), st.integers(0, RING - 1))


@pytest.mark.parametrize(
    ("node_id", "expected"),
    [
        ("", 16476032584258269876),
        ("a", 4681665781835383343),
        ("node-1", 10328925849262549801),
        ("é", 14635220546840893743),
    ],
)
def test_position_is_pinned(node_id: str, expected: int) -> None:
    # Every process must compute the same position for an id, across restarts and versions.
    assert position(node_id) == expected


@SETTINGS
@given(node_id=node_id_texts)
def test_position_is_deterministic_and_in_range(node_id: str) -> None:
    p = position(node_id)
    assert 0 <= p < RING
    assert position(node_id) == p
    assert p == int.from_bytes(hashlib.blake2b(node_id.encode(), digest_size=8).digest(), "big")


def test_positions_of_distinct_ids_differ() -> None:
    ids = [f"node-{i}" for i in range(1000)]
    assert len({position(i) for i in ids}) == len(ids)


@SETTINGS
@given(a=points, b=points)
def test_distance_symmetric_bounded_and_the_shorter_way_round(a: int, b: int) -> None:
    d = distance(a, b)
    assert d == distance(b, a)
    assert 0 <= d <= HALF_RING
    assert (d == 0) == (a == b)
    assert d == min(clockwise(a, b), clockwise(b, a))
    assert clockwise(a, b) + clockwise(b, a) == (0 if a == b else RING)


@SETTINGS
@given(a=points, b=points, c=points)
def test_distance_triangle_inequality(a: int, b: int, c: int) -> None:
    assert distance(a, c) <= distance(a, b) + distance(b, c)


def test_distance_edge_values() -> None:
    assert distance(0, RING - 1) == 1
    assert distance(RING - 1, 0) == 1
    assert distance(0, HALF_RING) == HALF_RING
    assert distance(1, HALF_RING + 2) == HALF_RING - 1
    assert clockwise(RING - 1, 0) == 1
    assert clockwise(0, RING - 1) == RING - 1


@SETTINGS
@given(p=points)
def test_bucket_of_cuts_the_ring_into_equal_arcs(p: int) -> None:
    b = bucket_of(p)
    assert 0 <= b < SYNC_BUCKETS
    assert b * (RING // SYNC_BUCKETS) <= p < (b + 1) * (RING // SYNC_BUCKETS)


# --- the directory ---

#: Few ids, addresses and regions so that lists repeat ids, sometimes with a changed address or region.
small_ids = st.sampled_from([f"n{i}" for i in range(10)])
infos = st.builds(MemberInfo, small_ids, st.sampled_from(["10.0.0.1:1", "10.0.0.2:1"]), st.sampled_from(["eu", "us"]))
info_lists = st.lists(infos, max_size=25)


def check_ring(directory: Directory) -> None:
    """`ring_positions` sorted, `ring_slots` a permutation of the slots aligned with it."""
    assert directory.ring_positions == sorted(directory.ring_positions)
    assert sorted(directory.ring_slots) == list(range(len(directory)))
    assert [directory.positions[s] for s in directory.ring_slots] == directory.ring_positions
    assert len(directory.positions) == len(directory.infos) == len(directory)


def make_directory(n: int) -> Directory:
    directory = Directory()
    for i in range(n):
        directory.intern(MemberInfo(f"node-{i}", f"10.0.{i // 256}.{i % 256}:7000", "eu"))
    return directory


@SETTINGS
@given(batch=info_lists)
def test_intern_gives_dense_slots_in_first_seen_order_and_keeps_position(batch: list[MemberInfo]) -> None:
    directory = Directory()
    first_seen: dict[str, int] = {}
    latest: dict[str, MemberInfo] = {}
    for info in batch:
        slot = directory.intern(info)
        first_seen.setdefault(info.node_id, len(first_seen))
        latest[info.node_id] = info
        assert slot == first_seen[info.node_id]
        assert directory.intern(info) == slot  # idempotent
        assert directory.slot(info.node_id) == slot
        assert directory.infos[slot] == info  # a changed address or region replaces the old one
        assert directory.positions[slot] == position(info.node_id)
        check_ring(directory)
    assert len(directory) == len(first_seen)
    for node_id, slot in first_seen.items():
        assert directory.infos[slot] == latest[node_id]
    assert directory.slot("never-interned") is None


def test_intern_changed_address_keeps_slot_and_ring() -> None:
    directory = make_directory(5)
    ring = (list(directory.ring_positions), list(directory.ring_slots))
    moved = MemberInfo("node-3", "192.168.1.1:9000", "us")
    assert directory.intern(moved) == 3
    assert directory.infos[3] == moved
    assert directory.positions[3] == position("node-3")
    assert (directory.ring_positions, directory.ring_slots) == ring
    assert len(directory) == 5


@SETTINGS
@given(before=info_lists, batch=info_lists)
def test_intern_many_matches_interning_one_by_one(before: list[MemberInfo], batch: list[MemberInfo]) -> None:
    one_by_one, at_once = Directory(), Directory()
    for info in before:
        one_by_one.intern(info)
        at_once.intern(info)
    expected = [one_by_one.intern(info) for info in batch]
    assert at_once.intern_many(batch) == expected
    assert len(at_once) == len(one_by_one)
    assert at_once.positions == one_by_one.positions
    assert at_once.ring_positions == one_by_one.ring_positions
    assert at_once.ring_slots == one_by_one.ring_slots
    for info in batch:
        assert at_once.slot(info.node_id) == one_by_one.slot(info.node_id)
    check_ring(at_once)
    # Interning more one by one after a batch keeps the ring consistent.
    extra = MemberInfo("late", "10.9.9.9:1", "eu")
    assert at_once.intern(extra) == one_by_one.intern(extra)
    assert at_once.ring_slots == one_by_one.ring_slots
    check_ring(at_once)


@st.composite
def directories_and_points(draw: st.DrawFn) -> tuple[Directory, int]:
    """A directory of 0..30 members and a point, often exactly at a member's position."""
    directory = make_directory(draw(st.integers(0, 30)))
    if len(directory) and draw(st.booleans()):
        return directory, directory.positions[draw(st.integers(0, len(directory) - 1))]
    return directory, draw(points)


@SETTINGS
@given(case=directories_and_points())
def test_walk_clockwise_goes_once_round_starting_strictly_after_start(case: tuple[Directory, int]) -> None:
    directory, start = case
    walked = list(directory.walk(start, 1))
    assert sorted(walked) == list(range(len(directory)))
    # A member exactly at `start` is the farthest one (a full turn), not the first.
    keys = [(directory.positions[s] - start - 1) % RING for s in walked]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    if walked:
        first = directory.positions[walked[0]]
        assert all(clockwise(start, first) <= clockwise(start, p) for p in directory.positions if p != start)


@SETTINGS
@given(case=directories_and_points())
def test_walk_counter_clockwise_goes_once_round_starting_strictly_before_start(case: tuple[Directory, int]) -> None:
    directory, start = case
    walked = list(directory.walk(start, -1))
    assert sorted(walked) == list(range(len(directory)))
    keys = [(start - directory.positions[s] - 1) % RING for s in walked]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    if walked:
        first = directory.positions[walked[0]]
        assert all(clockwise(first, start) <= clockwise(p, start) for p in directory.positions if p != start)


@SETTINGS
@given(case=directories_and_points())
def test_walk_directions_are_mirror_images_when_start_is_not_a_position(case: tuple[Directory, int]) -> None:
    directory, start = case
    if start in directory.positions:
        start = (start + 1) % RING
    if start in directory.positions:
        return
    assert list(directory.walk(start, -1)) == list(reversed(list(directory.walk(start, 1))))


@SETTINGS
@given(case=directories_and_points())
def test_nearest_yields_every_slot_once_by_non_decreasing_distance(case: tuple[Directory, int]) -> None:
    directory, point = case
    order = list(directory.nearest(point))
    assert sorted(order) == list(range(len(directory)))
    dists = [distance(point, directory.positions[s]) for s in order]
    assert dists == sorted(dists)
    if order:
        assert dists[0] == min(distance(point, p) for p in directory.positions)


def test_walk_and_nearest_on_small_ring() -> None:
    directory = make_directory(3)
    by_position = sorted(range(3), key=directory.positions.__getitem__)
    low, mid, high = by_position
    p = directory.positions
    assert list(directory.walk(p[mid], 1)) == [high, low, mid]
    assert list(directory.walk(p[mid], -1)) == [low, high, mid]
    assert list(directory.walk(p[high] + 1, 1)) == [low, mid, high]  # wraps past 2^64
    assert next(directory.nearest(p[mid])) == mid
    assert list(Directory().walk(0, 1)) == []
    assert list(Directory().nearest(0)) == []


# --- the member table ---

N_MEMBERS = 200
#: Slots, often among a few so that histories revisit them.
slots = st.one_of(st.integers(0, 7), st.integers(0, N_MEMBERS - 1))
states = st.one_of(st.sampled_from(list(State)), st.integers(0, 4))
incarnations = st.one_of(st.integers(0, 3), st.integers(0, (1 << 32) - 1))
ops = st.lists(st.tuples(slots, states, incarnations), max_size=40)

DIRECTORY = make_directory(N_MEMBERS)  # only read by the tables below


def model_of(history: list[tuple[int, int, int]]) -> dict[int, tuple[int, int]]:
    model: dict[int, tuple[int, int]] = {}
    for slot, state, incarnation in history:
        model[slot] = (int(state), incarnation)
    return model


def check_table(table: MemberTable, model: dict[int, tuple[int, int]], touched: int | None = None) -> None:
    """The table agrees with `model` (slot -> (state, incarnation)) and its derived data is consistent;
    only the `touched` slot is compared entry by entry when given (checks after each step of a history)."""
    for slot in range(N_MEMBERS) if touched is None else (touched,):
        state, incarnation = model.get(slot, (0, 0))
        assert table.raw_state(slot) == state
        assert table.state(slot) == State(state)
        assert table.incarnation(slot) == incarnation
    for state in State:
        if state:
            assert table.counts[state] == sum(1 for s, _ in model.values() if s == state)
    live = sum(1 for s, _ in model.values() if s in (State.ALIVE, State.SUSPECT))
    assert table.live_count() == live
    assert table.known_count() == sum(1 for s, _ in model.values() if s)
    assert table.digests == table.compute_digests()
    assert table.subs == table.compute_sub_digests()
    assert len(table.digests) == SYNC_BUCKETS
    assert sorted(table.slots_in(State.ALIVE, State.SUSPECT)) == sorted(
        slot for slot, (s, _) in model.items() if s in (State.ALIVE, State.SUSPECT)
    )


def expected_digests(model: dict[int, tuple[int, int]]) -> list[int]:
    """Digests of a table built fresh from `model`, entry by entry in slot order."""
    table = MemberTable(DIRECTORY)
    for slot in sorted(model):
        table.set(slot, *model[slot])
    return table.digests


@SETTINGS
@given(history=ops)
def test_counts_and_digests_follow_any_history(history: list[tuple[int, int, int]]) -> None:
    table = MemberTable(DIRECTORY)
    for i, (slot, state, incarnation) in enumerate(history):
        table.set(slot, state, incarnation)
        check_table(table, model_of(history[: i + 1]), touched=slot)
    check_table(table, model_of(history))


def test_empty_table() -> None:
    table = MemberTable(DIRECTORY)
    assert table.digests == [0] * SYNC_BUCKETS
    assert table.live_count() == table.known_count() == 0
    assert table.state(N_MEMBERS - 1) == State.UNKNOWN
    assert all(table.slots_in_bucket(b) == [] for b in range(SYNC_BUCKETS))


def test_set_counts_transitions() -> None:
    table = MemberTable(DIRECTORY)
    table.set(5, State.ALIVE, 1)
    table.set(6, State.ALIVE, 1)
    table.set(5, State.SUSPECT, 1)
    assert (table.counts[State.ALIVE], table.counts[State.SUSPECT], table.live_count()) == (1, 1, 2)
    table.set(5, State.DEAD, 2)
    assert (table.counts[State.SUSPECT], table.counts[State.DEAD], table.live_count()) == (0, 1, 1)
    table.set(5, State.DEAD, 3)  # same state, new incarnation: counts unchanged, digest changes
    assert table.counts[State.DEAD] == 1 and table.incarnation(5) == 3
    assert table.digests == table.compute_digests()
    table.set(5, State.UNKNOWN, 0)
    assert table.known_count() == 1
    assert table.digests == expected_digests({6: (State.ALIVE, 1)})


@st.composite
def two_histories(draw: st.DrawFn) -> tuple[dict[int, tuple[int, int]], list, list]:
    """Final entries and two different histories (noise, then the final values in different orders) that
    both end with exactly those entries."""
    final = draw(st.dictionaries(slots, st.tuples(st.integers(1, 4), incarnations), max_size=15))
    histories = []
    for _ in range(2):
        noise = draw(ops)
        touched = sorted(set(final) | {slot for slot, _, _ in noise})
        settle = [(slot, *final.get(slot, (0, 0))) for slot in touched]
        histories.append(noise + draw(st.permutations(settle)))
    return final, histories[0], histories[1]


@SETTINGS
@given(case=two_histories())
def test_equal_tables_have_equal_digests_whatever_the_history(case: tuple) -> None:
    final, history_a, history_b = case
    a, b = MemberTable(DIRECTORY), MemberTable(DIRECTORY)
    for slot, state, incarnation in history_a:
        a.set(slot, state, incarnation)
    for slot, state, incarnation in history_b:
        b.set(slot, state, incarnation)
    check_table(a, final)
    check_table(b, final)
    assert a.digests == b.digests == expected_digests(final)
    # No entries, no digest: a table emptied by its history digests like a fresh one.
    if not final:
        assert a.digests == [0] * SYNC_BUCKETS


@SETTINGS
@given(
    final=st.dictionaries(slots, st.tuples(st.integers(1, 4), incarnations), max_size=15),
    data=st.data(),
)
def test_tables_differing_in_one_entry_differ_in_its_arc(
    final: dict[int, tuple[int, int]], data: st.DataObject
) -> None:
    slot = data.draw(st.sampled_from(sorted(final)) if final and data.draw(st.booleans()) else slots, label="slot")
    state, incarnation = final.get(slot, (0, 0))
    what = data.draw(st.sampled_from(["state", "incarnation", "both"]), label="what")
    if what != "incarnation":
        state = data.draw(st.integers(0, 4).filter(lambda s: s != final.get(slot, (0, 0))[0]), label="state")
    if what != "state":
        incarnation = data.draw(incarnations, label="incarnation")
    changed = dict(final)
    if state:
        changed[slot] = (state, incarnation)
    else:
        changed.pop(slot, None)
    assume(changed != final)
    a, b = expected_digests(final), expected_digests(changed)
    arc = bucket_of(DIRECTORY.positions[slot])
    assert a[arc] != b[arc]
    assert [d for i, d in enumerate(a) if i != arc] == [d for i, d in enumerate(b) if i != arc]


@st.composite
def snapshots(draw: st.DrawFn) -> dict[int, tuple[int, int]]:
    """Entries of a table given as a snapshot of length 0..N_MEMBERS (including UNKNOWN slots)."""
    length = draw(st.integers(0, N_MEMBERS))
    rng = draw(st.randoms(use_true_random=False))  # far faster than drawing up to 200 entries one by one
    big = draw(st.booleans())
    return {slot: (rng.randrange(5), rng.randrange(1 << 32) if big else rng.randrange(4)) for slot in range(length)}


@SETTINGS
@given(snapshot=snapshots(), history=ops, pass_template=st.booleans())
def test_fill_then_set_keeps_invariants(
    snapshot: dict[int, tuple[int, int]], history: list, pass_template: bool
) -> None:
    length = len(snapshot)
    state_bytes = bytes(snapshot[i][0] for i in range(length))
    incarnation_array = array("I", (snapshot[i][1] for i in range(length)))
    # The model keeps the incarnation of UNKNOWN slots, as the table does.
    model = {slot: entry for slot, entry in snapshot.items() if entry[0] or entry[1]}
    table = MemberTable(DIRECTORY)
    table.set(N_MEMBERS - 1, State.ALIVE, 9)  # replaced by the fill
    template = None
    if pass_template:
        template = MemberTable(DIRECTORY)
        for slot, (state, incarnation) in sorted(model.items()):
            if state:
                template.set(slot, state, incarnation)
    table.fill(state_bytes, incarnation_array, template)
    check_table(table, model)
    for slot, state, incarnation in history:
        table.set(slot, state, incarnation)
        model[slot] = (int(state), incarnation)
        check_table(table, model, touched=slot)
    check_table(table, model)


@SETTINGS
@given(history=ops)
def test_slots_in_bucket_lists_known_slots_of_the_arc_in_ring_order(history: list[tuple[int, int, int]]) -> None:
    table = MemberTable(DIRECTORY)
    for slot, state, incarnation in history:
        table.set(slot, state, incarnation)
    known = {slot for slot, (state, _) in model_of(history).items() if state}
    seen: list[int] = []
    for bucket in range(SYNC_BUCKETS):
        got = table.slots_in_bucket(bucket)
        expected = [s for s in DIRECTORY.ring_slots if s in known and bucket_of(DIRECTORY.positions[s]) == bucket]
        assert got == expected
        seen.extend(got)
    assert sorted(seen) == sorted(known)


def test_slots_in_bucket_on_a_full_table() -> None:
    table = MemberTable(DIRECTORY)
    table.fill(bytes([State.ALIVE]) * N_MEMBERS, array("I", [0] * N_MEMBERS))
    per_bucket = [table.slots_in_bucket(b) for b in range(SYNC_BUCKETS)]
    assert [s for bucket in per_bucket for s in bucket] == DIRECTORY.ring_slots
    assert max(len(b) for b in per_bucket) > 1  # the arcs really hold several members here
    for b, bucket in enumerate(per_bucket):
        assert all(bucket_of(DIRECTORY.positions[s]) == b for s in bucket)


def test_sub_arc_digests_fold_into_the_arc_digest_and_locate_differences() -> None:
    from functools import reduce

    from dsm.core.ring import SUB_ARCS, sub_bucket_of

    d = Directory()
    for i in range(300):
        d.intern(MemberInfo(f"m{i}", f"a{i}", "r"))
    t = MemberTable(d)
    for slot in range(300):
        t.set(slot, State.ALIVE, slot % 3)
    for arc in range(64):
        subs = t.sub_digests(arc)
        assert len(subs) == SUB_ARCS
        assert reduce(lambda a, b: a ^ b, subs, 0) == t.digests[arc]
        for k in range(SUB_ARCS):
            members = t.slots_in_sub_bucket(arc * SUB_ARCS + k)
            assert all(sub_bucket_of(d.positions[s]) == arc * SUB_ARCS + k for s in members)
    # One changed entry changes exactly one sub-arc digest.
    slot = 17
    arc, sub = bucket_of(d.positions[slot]), sub_bucket_of(d.positions[slot])
    before = t.sub_digests(arc)
    t.set(slot, State.DEAD, 5)
    after = t.sub_digests(arc)
    assert [k for k in range(SUB_ARCS) if before[k] != after[k]] == [sub % SUB_ARCS]


def test_vectorised_sub_arc_queries_match_the_scalar_ones() -> None:
    import random

    from dsm.core.ring import SYNC_SUB_BUCKETS, entry_hash

    rng = random.Random(5)
    d = Directory()
    for i in range(2000):
        d.intern(MemberInfo(f"v{i}", f"a{i}", "r"))
    t = MemberTable(d)
    for slot in rng.sample(range(2000), 1500):  # some slots hold no state
        t.set(slot, rng.choice([State.ALIVE, State.SUSPECT, State.DEAD, State.LEFT]), rng.randrange(1 << 32))
    d.intern(MemberInfo("late", "a", "r"))  # a directory longer than the table
    subs = rng.sample(range(SYNC_SUB_BUCKETS), 300)
    slots = t.slots_in_sub_arcs(subs).tolist()
    assert sorted(slots) == sorted(s for sub in subs for s in t.slots_in_sub_bucket(sub))
    counts = t.sub_arc_counts()
    assert all(counts[sub] == len(t.slots_in_sub_bucket(sub)) for sub in range(SYNC_SUB_BUCKETS))
    hashes = t.hashes_at(t.slots_in_sub_arcs(subs)).tolist()
    assert hashes == [entry_hash(d.positions[s], t.states[s], t.incarnations[s]) for s in slots]
