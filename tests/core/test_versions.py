"""Property tests for versions, version sets, their merge and the coordinator's `write` (`dsm.core.versions`).

Every property runs on *valid histories* only (`histories`): a few nodes each hold a replica of one key and
a hybrid logical clock. A write is coordinated by a node on its own replica; its context is the
`.context()` of a state its client read (the coordinator's, another replica state, or nothing for a blind
write), and its dot comes from the writer's clock after `advance_to` past the coordinator's state and the
context, exactly as `EpidemicStorage._commit` does. Replicas replicate whole version sets (possibly stale
ones) to each other. Replica states used in the properties are merges of random subsets of the states
replicas have held. (Versions delivered one by one, then read, are not valid histories: the module's rule
is that replicas exchange whole version sets.)

Checked against the rules in the module docstring, for both resolutions (LWW and SIBLINGS):
- merge is commutative, associative and idempotent, the empty set is its identity, and replicas that
  received the same versions in different orders hold the same set;
- a dominated version never survives a merge; in SIBLINGS no undominated version is dropped; in LWW the
  result is the version with the largest dot of the union; the winner is always the largest (timestamp,
  node id);
- a version always has a larger dot than any version it dominates, and dominates only versions its writer
  had (transitively) seen: no lost concurrent write;
- `VersionSet.context()` covers every version of the set and everything they had seen;
- `write`: the new version is in the result, the versions covered by the passed context are gone, a blind
  SIBLINGS write keeps the old versions as siblings, the `max_siblings` bound holds, contexts stay causally
  closed, and bounding never resurrects a version that the write superseded (nor anything it had superseded).

The regression tests at the end pin two bugs found by these properties and since fixed (contexts cut to a
size bound, and forced supersession without the superseded version's closure).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import reduce
from random import Random
from typing import TypeVar

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dsm.core.hlc import HybridLogicalClock
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, Version, VersionSet, write

T = TypeVar("T")

SETTINGS = settings(max_examples=100, deadline=None)

NODES = ("a", "b", "c")
LWW, SIBLINGS = Resolution.LWW, Resolution.SIBLINGS
EMPTY = VersionSet()
values = st.one_of(st.none(), st.binary(max_size=3))
both_resolutions = pytest.mark.parametrize("resolution", [LWW, SIBLINGS], ids=["lww", "siblings"])


def replica(versions: Iterable[Version], resolution: Resolution) -> VersionSet:
    """What a replica holds after receiving `versions` one by one, in this order."""
    return reduce(lambda state, v: state.merge(VersionSet((v,)), resolution), versions, EMPTY)


def merged(states: Iterable[VersionSet], resolution: Resolution) -> VersionSet:
    """What a replica holds after receiving `states` (whole version sets) one by one, in this order."""
    return reduce(lambda acc, state: acc.merge(state, resolution), states, EMPTY)


def dots(state: VersionSet) -> set[Dot]:
    return {v.dot for v in state.versions}


def covers(vector: VersionVector, version: Version) -> bool:
    return vector.covers(version.dot.timestamp, version.dot.node)


@dataclass
class History:
    """A simulated cluster for one key: each node's replica, clock and wall clock, and what was written.

    Attributes:
        snapshots: every state some replica has held (starting with the empty set): the states a client may
            have read, and the version sets a (possibly delayed) replication message may carry.
        versions: every version written, oldest first.
        knows: for each written dot, the dots its writer had seen (transitively) or superseded.
    """

    resolution: Resolution
    clocks: dict[str, HybridLogicalClock]
    walls: dict[str, int]
    replicas: dict[str, VersionSet]
    snapshots: list[VersionSet] = field(default_factory=lambda: [EMPTY])
    versions: list[Version] = field(default_factory=list)
    knows: dict[Dot, frozenset[Dot]] = field(default_factory=dict)

    def set_replica(self, node: str, state: VersionSet) -> None:
        self.replicas[node] = state
        self.snapshots.append(state)

    def seen(self, state: VersionSet) -> frozenset[Dot]:
        """The dots a reader of `state` has seen: its versions and everything they had seen."""
        out: set[Dot] = set()
        for v in state.versions:
            out.add(v.dot)
            out |= self.knows[v.dot]
        return frozenset(out)

    def issue(self, draw: st.DrawFn, writer: str, current: VersionSet, context: VersionVector) -> Dot:
        """The writer's next dot, as `_commit` issues it (the wall clock may stand still or go back)."""
        self.walls[writer] = max(1, self.walls[writer] + draw(st.integers(min_value=-2, max_value=2)))
        clock = self.clocks[writer]
        if current.versions or context.entries:
            clock.advance_to(max(current.max_timestamp, context.max_timestamp()))
        return Dot(clock.now(self.walls[writer]), writer)


def new_history(draw: st.DrawFn, resolution: Resolution) -> History:
    # Close wall clocks so that timestamps of different nodes tie now and then (the node id breaks ties).
    return History(
        resolution=resolution,
        clocks={node: HybridLogicalClock(max_offset_ms=1000) for node in NODES},
        walls={node: draw(st.integers(min_value=1, max_value=3)) for node in NODES},
        replicas=dict.fromkeys(NODES, EMPTY),
    )


def draw_subset(draw: st.DrawFn, items: Sequence[T], min_size: int = 0) -> list[T]:
    """A random subset of `items`, in random order."""
    if not items:
        return []
    indices = draw(
        st.lists(st.integers(min_value=0, max_value=len(items) - 1), unique=True, min_size=min_size, max_size=6)
    )
    return [items[i] for i in indices]


def draw_state(draw: st.DrawFn, history: History) -> VersionSet:
    """A replica state: the merge of a random subset of the states replicas have held, in random order."""
    # Newest snapshots first, so that states are seldom empty (and examples shrink towards recent states).
    return merged(draw_subset(draw, history.snapshots[::-1], min_size=1), history.resolution)


def draw_read(draw: st.DrawFn, history: History, current: VersionSet) -> VersionSet | None:
    """What a writing client had read: the coordinator's state, another replica state, or nothing."""
    kind = draw(st.sampled_from(["current", "replica", "blind"]))
    if kind == "current":
        return current
    if kind == "replica":
        return draw_state(draw, history)
    return None


@st.composite
def histories(
    draw: st.DrawFn,
    resolution: Resolution | None = None,
    max_steps: int = 10,
    bounds: int | None = None,
) -> History:
    """A valid history: nodes write on their own replica and replicate whole version sets to each other.

    A write's context is the context of a state its client read (or empty); its dot comes from the writer's
    clock advanced past the coordinator's state and the context. Without `bounds` the new version keeps the
    client's context; with `bounds` = max_siblings the write goes through `write`.
    """
    resolution = resolution if resolution is not None else draw(st.sampled_from([LWW, SIBLINGS]))
    history = new_history(draw, resolution)
    for _ in range(draw(st.integers(min_value=1, max_value=max_steps))):
        if draw(st.integers(min_value=0, max_value=2)) == 0:
            target, snapshot = draw(st.sampled_from(NODES)), draw(st.sampled_from(history.snapshots))
            history.set_replica(target, history.replicas[target].merge(snapshot, resolution))
            continue
        writer = draw(st.sampled_from(NODES))
        current = history.replicas[writer]
        read = draw_read(draw, history, current)
        context = read.context() if read is not None else VersionVector()
        dot = history.issue(draw, writer, current, context)
        value = draw(values)
        if bounds is None:
            after = current.merge(VersionSet((Version(dot, context, value),)), resolution)
        else:
            after = write(current, dot, context, value, resolution, bounds)
        superseded = VersionSet(tuple(v for v in current.versions if v.dot not in dots(after)))
        history.knows[dot] = history.seen(read or EMPTY) | history.seen(superseded)
        history.versions.extend(v for v in after.versions if v.dot == dot)
        history.set_replica(writer, after)
    return history


@st.composite
def history_and_states(draw: st.DrawFn, resolution: Resolution, count: int) -> tuple[History, list[VersionSet]]:
    history = draw(histories(resolution))
    return history, [draw_state(draw, history) for _ in range(count)]


def max_dot_version(versions: Iterable[Version]) -> Version | None:
    return max(versions, key=lambda v: (v.dot.timestamp, v.dot.node), default=None)


def assert_canonical(state: VersionSet) -> None:
    """Newest dot first, one version per dot, no version dominated by another."""
    ordered = [v.dot for v in state.versions]
    assert ordered == sorted(set(ordered), reverse=True)
    for v in state.versions:
        assert not any(v.dominated_by(w) for w in state.versions if w is not v)


# --- histories themselves ---------------------------------------------------------------------------------


@SETTINGS
@given(history=histories())
def test_valid_history_has_unique_dots_and_a_version_dominates_only_smaller_dots(history: History) -> None:
    assert len({v.dot for v in history.versions}) == len(history.versions)
    for v in history.versions:
        for w in history.versions:
            if v is not w and v.dominated_by(w):
                assert w.dot > v.dot


@SETTINGS
@given(history=histories(SIBLINGS))
def test_a_write_supersedes_only_versions_its_client_had_seen(history: History) -> None:
    # No lost concurrent write: a version dominates another only if its writer had (transitively) seen it.
    for v in history.versions:
        for w in history.versions:
            if v is not w and v.dominated_by(w):
                assert v.dot in history.knows[w.dot]


# --- merge laws -------------------------------------------------------------------------------------------


@both_resolutions
@SETTINGS
@given(data=st.data())
def test_merge_is_commutative(resolution: Resolution, data: st.DataObject) -> None:
    _, (a, b) = data.draw(history_and_states(resolution, 2))
    assert a.merge(b, resolution) == b.merge(a, resolution)


@both_resolutions
@SETTINGS
@given(data=st.data())
def test_merge_is_associative(resolution: Resolution, data: st.DataObject) -> None:
    _, (a, b, c) = data.draw(history_and_states(resolution, 3))
    assert a.merge(b, resolution).merge(c, resolution) == a.merge(b.merge(c, resolution), resolution)


@both_resolutions
@SETTINGS
@given(data=st.data())
def test_merge_is_idempotent(resolution: Resolution, data: st.DataObject) -> None:
    _, (a, b) = data.draw(history_and_states(resolution, 2))
    assert a.merge(a, resolution) == a
    ab = a.merge(b, resolution)
    assert ab.merge(a, resolution) == ab
    assert ab.merge(b, resolution) == ab


@both_resolutions
@SETTINGS
@given(data=st.data())
def test_merge_with_empty_set_is_identity(resolution: Resolution, data: st.DataObject) -> None:
    _, (a,) = data.draw(history_and_states(resolution, 1))
    assert a.merge(EMPTY, resolution) == a
    assert EMPTY.merge(a, resolution) == a
    assert EMPTY.merge(EMPTY, resolution) == EMPTY


@both_resolutions
@SETTINGS
@given(data=st.data())
def test_replicas_receiving_same_versions_in_any_order_hold_same_set(
    resolution: Resolution, data: st.DataObject
) -> None:
    history = data.draw(histories(resolution))
    first = data.draw(st.permutations(history.versions))
    second = data.draw(st.permutations(history.versions))
    one_by_one = replica(first, resolution)
    assert one_by_one == replica(second, resolution)
    assert one_by_one == VersionSet.of(history.versions, resolution)
    # Receiving the versions in batches (replica states merged with each other) gives the same set too.
    cut = data.draw(st.integers(min_value=0, max_value=len(second)))
    batched = replica(second[:cut], resolution).merge(replica(second[cut:], resolution), resolution)
    assert batched == one_by_one


@both_resolutions
@SETTINGS
@given(data=st.data())
def test_dominated_version_never_survives_a_merge(resolution: Resolution, data: st.DataObject) -> None:
    _, (a, b) = data.draw(history_and_states(resolution, 2))
    result = a.merge(b, resolution)
    union = [*a.versions, *b.versions]
    for v in union:
        if any(v.dominated_by(w) for w in union if w.dot != v.dot):
            assert v.dot not in dots(result)
    assert_canonical(result)


@SETTINGS
@given(data=st.data())
def test_siblings_merge_keeps_every_undominated_version(data: st.DataObject) -> None:
    _, (a, b) = data.draw(history_and_states(SIBLINGS, 2))
    result = a.merge(b, SIBLINGS)
    union = [*a.versions, *b.versions]
    undominated = {v for v in union if not any(v.dominated_by(w) for w in union if w.dot != v.dot)}
    assert set(result.versions) == undominated


@SETTINGS
@given(data=st.data())
def test_siblings_replica_holds_exactly_undominated_versions_it_received(data: st.DataObject) -> None:
    history = data.draw(histories(SIBLINGS))
    received = draw_subset(data.draw, history.versions)
    state = replica(received, SIBLINGS)
    expected = {v for v in received if not any(v.dominated_by(w) for w in received if w is not v)}
    assert set(state.versions) == expected


@SETTINGS
@given(data=st.data())
def test_lww_merge_is_the_max_dot_version_of_the_union(data: st.DataObject) -> None:
    _, (a, b) = data.draw(history_and_states(LWW, 2))
    result = a.merge(b, LWW)
    best = max_dot_version([*a.versions, *b.versions])
    assert result == (VersionSet((best,)) if best is not None else EMPTY)
    assert len(result) <= 1


@SETTINGS
@given(data=st.data())
def test_lww_fold_over_permutations_of_states_is_deterministic(data: st.DataObject) -> None:
    _, states = data.draw(history_and_states(LWW, 4))
    results = {merged(data.draw(st.permutations(states)), LWW) for _ in range(3)}
    assert len(results) == 1
    best = max_dot_version(v for s in states for v in s.versions)
    assert results.pop().winner == best


@both_resolutions
@SETTINGS
@given(data=st.data())
def test_winner_is_largest_timestamp_then_node_id(resolution: Resolution, data: st.DataObject) -> None:
    history = data.draw(histories(resolution))
    received = draw_subset(data.draw, history.versions)
    state = replica(received, resolution)
    assert state.winner == max_dot_version(received)
    assert state.max_timestamp == (state.winner.dot.timestamp if state.winner else 0)
    if state.winner is not None:
        assert all(not state.winner.dominated_by(v) for v in received if v is not state.winner)


def test_lww_tie_on_timestamp_is_broken_by_node_id() -> None:
    a = Version(Dot(100, "a"), VersionVector(), b"from a")
    b = Version(Dot(100, "b"), VersionVector(), b"from b")
    older = Version(Dot(99, "c"), VersionVector(), b"from c")
    for resolution in (LWW, SIBLINGS):
        for order in ([a, b, older], [b, older, a], [older, a, b]):
            assert replica(order, resolution).winner == b
    assert replica([a, b, older], LWW) == VersionSet((b,))
    assert replica([a, b, older], SIBLINGS).versions == (b, a, older)


@both_resolutions
@SETTINGS
@given(data=st.data())
def test_context_covers_every_version_in_the_set_and_what_they_saw(resolution: Resolution, data: st.DataObject) -> None:
    _, (state,) = data.draw(history_and_states(resolution, 1))
    context = state.context()
    for v in state.versions:
        assert covers(context, v)
        assert context.merge(v.context) == context
    # It covers nothing else: every entry comes from a version's dot or context.
    expected = VersionVector.of([(v.dot.node, v.dot.timestamp) for v in state.versions])
    for v in state.versions:
        expected = expected.merge(v.context)
    assert context == expected


@SETTINGS
@given(data=st.data())
def test_live_versions_are_the_non_tombstones_newest_first(data: st.DataObject) -> None:
    _, (state,) = data.draw(history_and_states(SIBLINGS, 1))
    assert state.live == tuple(v for v in state.versions if not v.is_tombstone)
    assert all(v.value is not None for v in state.live)
    assert bool(state) == (len(state) > 0)


# --- write ------------------------------------------------------------------------------------------------


@dataclass
class WriteCase:
    history: History
    current: VersionSet
    dot: Dot
    context: VersionVector
    value: bytes | None
    max_siblings: int


SIBLING_BOUNDS = st.integers(min_value=1, max_value=5)


@st.composite
def write_cases(
    draw: st.DrawFn,
    resolution: Resolution,
    read_kind: str | None = None,
    max_siblings: st.SearchStrategy[int] = SIBLING_BOUNDS,
) -> WriteCase:
    """A write coordinated by a node on its replica of a valid history, with the dot `_commit` issues."""
    history = draw(histories(resolution))
    writer = draw(st.sampled_from(NODES))
    current = history.replicas[writer]
    if read_kind == "blind":
        context = VersionVector()
    elif read_kind == "current":
        context = current.context()
    else:
        read = draw_read(draw, history, current)
        context = read.context() if read is not None else VersionVector()
    dot = history.issue(draw, writer, current, context)
    return WriteCase(history, current, dot, context, draw(values), draw(max_siblings))


def do_write(case: WriteCase, resolution: Resolution) -> tuple[VersionSet, Version]:
    result = write(
        case.current,
        case.dot,
        case.context,
        case.value,
        resolution,
        case.max_siblings,
    )
    new = [v for v in result.versions if v.dot == case.dot]
    assert len(new) == 1
    return result, new[0]


def superseded_by(case: WriteCase, result: VersionSet) -> list[Version]:
    return [v for v in case.current.versions if v.dot not in dots(result)]


@both_resolutions
@SETTINGS
@given(data=st.data())
def test_write_result_contains_the_new_version_and_is_canonical(resolution: Resolution, data: st.DataObject) -> None:
    case = data.draw(write_cases(resolution))
    result, new = do_write(case, resolution)
    assert new.value == case.value
    assert result.winner == new
    assert_canonical(result)
    assert result == VersionSet.of(result.versions, resolution)
    if resolution is LWW:
        assert result.versions == (new,)


@both_resolutions
@SETTINGS
@given(data=st.data())
def test_write_removes_every_version_covered_by_the_passed_context(resolution: Resolution, data: st.DataObject) -> None:
    case = data.draw(write_cases(resolution))
    result, new = do_write(case, resolution)
    for v in case.current.versions:
        if covers(case.context, v):
            assert v.dot not in dots(result)
            if resolution is SIBLINGS:
                assert v.dominated_by(new)


@SETTINGS
@given(data=st.data())
def test_blind_siblings_write_keeps_old_versions_as_siblings(data: st.DataObject) -> None:
    case = data.draw(write_cases(SIBLINGS, read_kind="blind", max_siblings=st.just(100)))
    result, new = do_write(case, SIBLINGS)
    assert set(result.versions) == {*case.current.versions, new}
    assert new.context == VersionVector()


@SETTINGS
@given(data=st.data())
def test_read_modify_write_replaces_everything_that_was_read(data: st.DataObject) -> None:
    case = data.draw(write_cases(SIBLINGS, read_kind="current"))
    result, new = do_write(case, SIBLINGS)
    assert result.versions == (new,)


@SETTINGS
@given(data=st.data())
def test_write_within_bounds_keeps_the_client_context_unchanged(data: st.DataObject) -> None:
    case = data.draw(write_cases(SIBLINGS, max_siblings=st.just(100)))
    result, new = do_write(case, SIBLINGS)
    assert new.context == case.context
    assert set(result.versions) == {new, *(v for v in case.current.versions if not covers(case.context, v))}


@SETTINGS
@given(data=st.data())
def test_write_respects_max_siblings(data: st.DataObject) -> None:
    case = data.draw(write_cases(SIBLINGS, max_siblings=st.integers(min_value=1, max_value=3)))
    result, _ = do_write(case, SIBLINGS)
    assert len(result) <= case.max_siblings
    # Only the oldest uncovered versions are superseded to make room, and only as many as needed.
    survivors = [v for v in case.current.versions if not covers(case.context, v)]
    kept = [v for v in survivors if v.dot in dots(result)]
    dropped = [v for v in survivors if v.dot not in dots(result)]
    assert len(dropped) == max(0, len(survivors) + 1 - case.max_siblings)
    assert all(d.dot < k.dot for d in dropped for k in kept)


@both_resolutions
@SETTINGS
@given(data=st.data())
def test_new_context_is_causally_closed(resolution: Resolution, data: st.DataObject) -> None:
    case = data.draw(write_cases(resolution))
    _, new = do_write(case, resolution)
    # Whatever the new version supersedes, it also covers everything that version had superseded.
    for v in case.current.versions:
        if v.dominated_by(new):
            assert all(new.context.covers(counter, node) for node, counter in v.context.entries)


@both_resolutions
@SETTINGS
@given(data=st.data())
def test_new_context_claims_only_what_the_client_read_or_the_write_superseded(
    resolution: Resolution, data: st.DataObject
) -> None:
    case = data.draw(write_cases(resolution))
    result, new = do_write(case, resolution)
    allowed = case.context
    for v in superseded_by(case, result):
        allowed = allowed.merge(v.context).merge(VersionVector.of([(v.dot.node, v.dot.timestamp)]))
    assert all(counter <= allowed.get(node) for node, counter in new.context.entries)


@SETTINGS
@given(data=st.data())
def test_bounding_never_resurrects_a_superseded_version(data: st.DataObject) -> None:
    case = data.draw(
        write_cases(
            SIBLINGS,
            max_siblings=st.integers(min_value=1, max_value=3),
        )
    )
    result, new = do_write(case, SIBLINGS)
    for v in superseded_by(case, result):
        assert v.dominated_by(new)
        # A late copy of a superseded version (from any replica) is dropped again.
        assert v.dot not in dots(result.merge(VersionSet((v,)), SIBLINGS))
        assert v.dot not in dots(VersionSet((v,)).merge(result, SIBLINGS))
    assert result.merge(case.current, SIBLINGS) == result
    assert case.current.merge(result, SIBLINGS) == result


@both_resolutions
@SETTINGS
@given(data=st.data())
def test_write_result_merges_with_any_replica_like_a_normal_version(
    resolution: Resolution, data: st.DataObject
) -> None:
    case = data.draw(write_cases(resolution, max_siblings=st.just(100)))
    result, _ = do_write(case, resolution)
    other = draw_state(data.draw, case.history)
    assert result.merge(other, resolution) == other.merge(result, resolution)
    assert result.merge(case.current, resolution) == result


@SETTINGS
@given(
    versions=histories(SIBLINGS, bounds=100).map(lambda h: h.versions),
    order=st.randoms(use_true_random=False),
)
def test_versions_written_within_bounds_merge_the_same_in_any_order(versions: list[Version], order: Random) -> None:
    shuffled = list(versions)
    order.shuffle(shuffled)
    assert replica(shuffled, SIBLINGS) == replica(versions, SIBLINGS) == VersionSet.of(versions, SIBLINGS)


# --- regressions of fixed bugs ----------------------------------------------------------------------------

# `v` is written blind by node a; `w` is a delete by node b whose client had read `v`; `x` is written by
# node c on a replica holding only `w`: a blind write with max_siblings=1, so `write` supersedes `w` to make
# room. x must then cover v too (which w had superseded): before the fix, it covered w's dot only, and
# ({v} merge {w}) merge {x} = {x} while {v} merge ({w} merge {x}) = {x, v}, the deleted value back.
_V = write(EMPTY, Dot(1, "a"), VersionVector(), b"v", SIBLINGS, 8).versions[0]
_W = write(VersionSet((_V,)), Dot(2, "b"), VersionSet((_V,)).context(), None, SIBLINGS, 8).versions[0]
_X = write(VersionSet((_W,)), Dot(3, "c"), VersionVector(), b"x", SIBLINGS, 1).versions[0]


def test_sibling_bound_supersedes_with_the_whole_closure() -> None:
    assert _W.dominated_by(_X) and _V.dominated_by(_W) and _V.dominated_by(_X)
    v, w, newest = VersionSet((_V,)), VersionSet((_W,)), VersionSet((_X,))
    left = v.merge(w, SIBLINGS).merge(newest, SIBLINGS)
    right = v.merge(w.merge(newest, SIBLINGS), SIBLINGS)
    assert left == right == newest


@SETTINGS
@given(
    versions=histories(SIBLINGS, bounds=1).map(lambda h: h.versions),
    order=st.randoms(use_true_random=False),
)
@example(versions=[_V, _W, _X], order=Random(0))
def test_versions_written_with_tight_bounds_merge_the_same_in_any_order(versions: list[Version], order: Random) -> None:
    shuffled = list(versions)
    order.shuffle(shuffled)
    assert replica(shuffled, SIBLINGS) == VersionSet.of(versions, SIBLINGS)
    assert replica(reversed(versions), SIBLINGS) == VersionSet.of(versions, SIBLINGS)


def test_a_write_supersedes_the_oldest_siblings_beyond_the_byte_bound() -> None:
    held = VersionSet()
    for i in range(1, 6):  # five blind 100-byte values from different writers: siblings
        held = write(held, Dot(i, f"w{i}"), VersionVector(), bytes([i]) * 100, SIBLINGS, 16)
    assert len(held.live) == 5
    after = write(held, Dot(10, "w9"), VersionVector(), b"n" * 100, SIBLINGS, 16, max_bytes=300)
    # 600 bytes would be held: the three oldest are superseded (covered by the new version's context).
    assert sorted(v.dot.node for v in after.versions) == ["w4", "w5", "w9"]
    newest = next(v for v in after.versions if v.dot.node == "w9")
    assert all(newest.context.covers(i, f"w{i}") for i in (1, 2, 3))
    # The new value alone above the bound still stays (and supersedes every other).
    big = write(held, Dot(11, "w9"), VersionVector(), b"x" * 1000, SIBLINGS, 16, max_bytes=300)
    assert [v.dot.node for v in big.versions] == ["w9"]


def test_an_lww_write_closes_its_context_over_the_version_it_covers() -> None:
    # Found by Hypothesis: the replica holds b@65537 (which had seen a@65536); the client read b@65538, a
    # blind LWW write whose context is empty, from another replica. Its context {b: 65538} covers b@65537, so
    # the new version must also cover what b@65537 had seen.
    older = Version(Dot(65537, "b"), VersionVector.of([("a", 65536)]), None)
    result = write(VersionSet((older,)), Dot(65539, "c"), VersionVector.of([("b", 65538)]), None, LWW, 1)
    assert result.versions[0].context.covers(65536, "a")
