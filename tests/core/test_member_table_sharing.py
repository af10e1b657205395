"""Tests for the copy-on-write layout of `MemberTable` (`dsm.core.ring`, the class docstring).

A table filled from a `template` holding exactly the same arrays shares them and keeps only its own
changes; past a bound it folds them into arrays of its own. Whatever the layout, a table must behave
exactly like a plain one (built by `fill` without a template and written in place) through any history:
every reading (entries, counts, digests per arc and sub-arc, the vectorised sub-arc queries, `find`,
`size`) is compared after each step. Tables sharing arrays never see each other's changes, and the
template keeps behaving like a plain table too.
"""

from __future__ import annotations

from array import array
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dsm.core.ring import SYNC_BUCKETS, SYNC_SUB_BUCKETS, Directory, MemberInfo, MemberTable, State

SETTINGS = settings(max_examples=120, deadline=None)
N_MEMBERS = 300

DIRECTORY = Directory()
for _i in range(N_MEMBERS):
    DIRECTORY.intern(MemberInfo(f"s{_i}", f"addr{_i}", "r"))

slots = st.one_of(st.integers(0, 9), st.integers(0, N_MEMBERS - 1))
incarnations = st.one_of(st.integers(0, 3), st.integers(0, (1 << 32) - 1))
# Long enough to cross the bound (64 own entries) at which a shared table folds its changes.
ops = st.lists(st.tuples(slots, st.integers(0, 4), incarnations), max_size=160)


@st.composite
def snapshots(draw: st.DrawFn) -> tuple[bytes, array[int]]:
    """Per-slot states and incarnations of a formed cluster: 0..N_MEMBERS slots, some unknown (with an
    incarnation or not)."""
    length = draw(st.integers(0, N_MEMBERS))
    rng = draw(st.randoms(use_true_random=False))
    states = bytes(rng.choice((0, 1, 1, 1, 2, 3, 4)) for _ in range(length))
    incs = array("I", (rng.choice((0, 0, 1, 2, rng.randrange(1 << 32))) for _ in range(length)))
    return states, incs


def observe(table: MemberTable) -> dict[str, Any]:
    """Everything a core can read of a table."""
    every = list(range(SYNC_SUB_BUCKETS))
    some = every[::7]
    return {
        "size": table.size,
        "changes": table.changes,
        "entries": list(table.entries()),
        "raw": [table.raw_state(s) for s in range(N_MEMBERS + 5)],
        "state": [table.state(s) for s in range(0, N_MEMBERS, 17)],
        "incarnation": [table.incarnation(s) for s in range(N_MEMBERS + 5)],
        "counts": list(table.counts[1:]),
        "live": table.live_count(),
        "known": table.known_count(),
        "digests": table.digests,
        "subs": list(table.subs),
        "sub_digests": [table.sub_digests(b) for b in range(SYNC_BUCKETS)],
        "states": table.states,
        "incarnations": list(table.incarnations),
        "find": [table.find(s, start) for s in (1, 2, 3, 4) for start in (0, 5, 150, table.size)],
        "sub_arc_counts": table.sub_arc_counts().tolist(),
        "slots_in_sub_arcs": table.slots_in_sub_arcs(some).tolist(),
        "hashes": table.hashes_at(table.slots_in_sub_arcs(every)).tolist(),
        "buckets": [table.slots_in_bucket(b) for b in range(0, SYNC_BUCKETS, 5)],
        "sub_buckets": [table.slots_in_sub_bucket(s) for s in range(0, SYNC_SUB_BUCKETS, 97)],
        "slots_in": table.slots_in(State.ALIVE, State.SUSPECT),
    }


def plain(states: bytes, incs: array[int]) -> MemberTable:
    table = MemberTable(DIRECTORY)
    table.fill(states, incs)
    return table


@SETTINGS
@given(snapshot=snapshots(), history=ops, other=ops)
def test_a_shared_table_behaves_like_a_plain_one(
    snapshot: tuple[bytes, array[int]], history: list[tuple[int, int, int]], other: list[tuple[int, int, int]]
) -> None:
    states, incs = snapshot
    template = plain(states, incs)
    shared, sibling = MemberTable(DIRECTORY), MemberTable(DIRECTORY)
    shared.fill(states, incs, template)
    sibling.fill(states, incs, template)
    reference = plain(states, incs)
    assert observe(shared) == observe(reference) == observe(template)
    # A sibling sharing the same arrays changes on its own: the shared table must not see it.
    for slot, state, incarnation in other:
        sibling.set(slot, state, incarnation)
    assert observe(sibling) == observe(_replayed(states, incs, other))
    for slot, state, incarnation in history:
        shared.set(slot, state, incarnation)
        reference.set(slot, state, incarnation)
        assert shared.raw_state(slot) == reference.raw_state(slot)
        assert shared.incarnation(slot) == reference.incarnation(slot)
        assert shared.digests == reference.digests
    assert observe(shared) == observe(reference)
    assert shared.digests == shared.compute_digests()
    # The template (whose arrays are now shared) changes on its own as well.
    for slot, state, incarnation in other:
        template.set(slot, state, incarnation)
    assert observe(template) == observe(sibling)
    assert observe(shared) == observe(reference)


def _replayed(states: bytes, incs: array[int], history: list[tuple[int, int, int]]) -> MemberTable:
    table = plain(states, incs)
    for slot, state, incarnation in history:
        table.set(slot, state, incarnation)
    return table


def test_tables_share_until_their_own_changes_outgrow_the_bound() -> None:
    size = N_MEMBERS
    states, incs = bytes([State.ALIVE]) * size, array("I", bytes(4 * size))
    template = plain(states, incs)
    tables = [MemberTable(DIRECTORY) for _ in range(3)]
    for table in tables:
        table.fill(states, incs, template)
    assert all(t._states is template._states for t in tables)  # one copy of the arrays
    tables[0].set(5, State.DEAD, 1)
    assert tables[0]._states is template._states and tables[0]._own == {5: (1 << 3) | State.DEAD}
    tables[0].set(5, State.ALIVE, 0)  # back to the shared entry: nothing of its own left
    assert tables[0]._own == {} and tables[0]._sub_delta == {}
    for slot in range(65):  # past max(64, size / 32) own entries: folded into arrays of its own
        tables[1].set(slot, State.SUSPECT, 1)
    assert tables[1]._states is not template._states and not tables[1]._own
    assert observe(tables[1]) == observe(_replayed(states, incs, [(s, State.SUSPECT, 1) for s in range(65)]))
    assert observe(tables[2]) == observe(template) == observe(plain(states, incs))


def test_a_template_that_differs_only_lends_its_digests() -> None:
    states, incs = bytes([State.ALIVE]) * 50, array("I", bytes(4 * 50))
    template = MemberTable(DIRECTORY)
    for slot in range(50):
        template.set(slot, State.ALIVE, 0)  # same entries, but more slots (the table grew in steps)
    assert template.size != 50
    table = MemberTable(DIRECTORY)
    table.fill(states, incs, template)
    assert table._states is not template._states
    assert observe(table) == observe(plain(states, incs))
