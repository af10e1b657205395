"""Property tests for version vectors (`dsm.core.vclock`).

Checked against the rules in the module docstring:
- `merge` is the pointwise maximum and is commutative, associative and idempotent, with the empty vector as
  identity; the merge is AFTER or EQUAL to both inputs;
- `compare` agrees with the pointwise definition of the causal order and is antisymmetric (BEFORE and AFTER
  mirror each other, EQUAL and CONCURRENT are symmetric); EQUAL means equal vectors;
- `of` drops zero entries, takes the maximum of duplicate nodes and keeps entries sorted by node id, so
  equal mappings give equal (and equally hashed) vectors whatever the input order;
- `covers` means "the entry for the writer is at least the dot's timestamp".
"""

from __future__ import annotations

from collections.abc import Mapping
from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st

from dsm.core.vclock import Ordering, VersionVector

SETTINGS = settings(max_examples=200, deadline=None)

#: Few node ids and small counters so that vectors often share nodes and entries collide.
node_ids = st.sampled_from(["a", "b", "c", "d", "e", "node-10", "node-9", "é"])
counters = st.integers(min_value=0, max_value=6)
mappings = st.dictionaries(node_ids, counters, max_size=6)
vectors = mappings.map(VersionVector.of)
#: Raw (node, counter) pairs, possibly with duplicate nodes and zeros, in any order.
pair_lists = st.lists(st.tuples(node_ids, st.one_of(counters, st.integers(0, 1 << 62))), max_size=12)

MIRROR = {
    Ordering.BEFORE: Ordering.AFTER,
    Ordering.AFTER: Ordering.BEFORE,
    Ordering.EQUAL: Ordering.EQUAL,
    Ordering.CONCURRENT: Ordering.CONCURRENT,
}


def is_canonical(vector: VersionVector) -> bool:
    names = [node for node, _ in vector.entries]
    return names == sorted(set(names)) and all(counter > 0 for _, counter in vector.entries)


def pointwise_le(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    return all(count <= b.get(node, 0) for node, count in a.items())


def reference_compare(a: VersionVector, b: VersionVector) -> Ordering:
    """The causal order from its textbook definition, on plain dictionaries."""
    da, db = a.as_dict(), b.as_dict()
    le, ge = pointwise_le(da, db), pointwise_le(db, da)
    if le and ge:
        return Ordering.EQUAL
    if le:
        return Ordering.BEFORE
    if ge:
        return Ordering.AFTER
    return Ordering.CONCURRENT


@SETTINGS
@given(a=vectors, b=vectors)
def test_merge_is_commutative(a: VersionVector, b: VersionVector) -> None:
    assert a.merge(b) == b.merge(a)


@SETTINGS
@given(a=vectors, b=vectors, c=vectors)
def test_merge_is_associative(a: VersionVector, b: VersionVector, c: VersionVector) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@SETTINGS
@given(a=vectors)
def test_merge_is_idempotent_and_empty_vector_is_identity(a: VersionVector) -> None:
    assert a.merge(a) == a
    assert a.merge(VersionVector()) == a
    assert VersionVector().merge(a) == a


@SETTINGS
@given(a=mappings, b=mappings)
def test_merge_is_pointwise_maximum_and_canonical(a: dict[str, int], b: dict[str, int]) -> None:
    merged = VersionVector.of(a).merge(VersionVector.of(b))
    expected = {n: max(a.get(n, 0), b.get(n, 0)) for n in a.keys() | b.keys()}
    assert merged.as_dict() == {n: c for n, c in expected.items() if c > 0}
    assert is_canonical(merged)


@SETTINGS
@given(a=vectors, b=vectors)
def test_merge_is_after_or_equal_to_both_inputs(a: VersionVector, b: VersionVector) -> None:
    merged = a.merge(b)
    assert merged.compare(a) in (Ordering.AFTER, Ordering.EQUAL)
    assert merged.compare(b) in (Ordering.AFTER, Ordering.EQUAL)
    assert a.compare(merged) in (Ordering.BEFORE, Ordering.EQUAL)


@SETTINGS
@given(a=vectors, b=vectors)
def test_compare_is_antisymmetric(a: VersionVector, b: VersionVector) -> None:
    assert b.compare(a) is MIRROR[a.compare(b)]


@SETTINGS
@given(a=vectors, b=vectors)
def test_compare_agrees_with_pointwise_definition(a: VersionVector, b: VersionVector) -> None:
    assert a.compare(b) is reference_compare(a, b)


@SETTINGS
@given(a=vectors, b=vectors)
def test_compare_is_equal_exactly_for_equal_vectors(a: VersionVector, b: VersionVector) -> None:
    assert (a.compare(b) is Ordering.EQUAL) == (a == b)
    assert a.compare(a) is Ordering.EQUAL


@SETTINGS
@given(a=vectors, b=vectors, c=vectors)
def test_compare_before_is_transitive(a: VersionVector, b: VersionVector, c: VersionVector) -> None:
    # Build a chain a <= a+b <= a+b+c and check that strict steps compose.
    ab, abc = a.merge(b), a.merge(b).merge(c)
    assert a.compare(abc) in (Ordering.BEFORE, Ordering.EQUAL)
    if a.compare(ab) is Ordering.BEFORE:
        assert a.compare(abc) is Ordering.BEFORE


@SETTINGS
@given(pairs=pair_lists)
def test_of_drops_zero_entries_and_takes_max_of_duplicates(pairs: list[tuple[str, int]]) -> None:
    vector = VersionVector.of(pairs)
    expected: dict[str, int] = {}
    for node, counter in pairs:
        expected[node] = max(expected.get(node, 0), counter)
    assert vector.as_dict() == {n: c for n, c in expected.items() if c > 0}
    assert is_canonical(vector)
    assert len(vector) == len(vector.entries)
    assert list(vector) == list(vector.entries)


@SETTINGS
@given(pairs=pair_lists, order=st.randoms(use_true_random=False))
def test_of_is_canonical_whatever_the_input_order(pairs: list[tuple[str, int]], order: Random) -> None:
    shuffled = list(pairs)
    order.shuffle(shuffled)
    a, b = VersionVector.of(pairs), VersionVector.of(shuffled)
    assert a == b
    assert hash(a) == hash(b)
    assert a.entries == b.entries


@SETTINGS
@given(mapping=mappings)
def test_of_from_mapping_equals_of_from_pairs(mapping: dict[str, int]) -> None:
    from_mapping = VersionVector.of(mapping)
    from_pairs = VersionVector.of(list(mapping.items()))
    assert from_mapping == from_pairs
    assert hash(from_mapping) == hash(from_pairs)
    assert VersionVector.of(from_mapping.as_dict()) == from_mapping
    assert VersionVector.of(from_mapping) == from_mapping


@SETTINGS
@given(mapping=mappings, node=node_ids, timestamp=st.integers(min_value=0, max_value=8))
def test_covers_means_entry_at_least_timestamp_and_get_defaults_to_zero(
    mapping: dict[str, int], node: str, timestamp: int
) -> None:
    vector = VersionVector.of(mapping)
    assert vector.get(node) == mapping.get(node, 0)
    assert vector.covers(timestamp, node) == (mapping.get(node, 0) >= timestamp)


@SETTINGS
@given(a=vectors, b=vectors, node=node_ids, timestamp=st.integers(min_value=1, max_value=8))
def test_merge_covers_exactly_what_either_input_covers(
    a: VersionVector, b: VersionVector, node: str, timestamp: int
) -> None:
    assert a.merge(b).covers(timestamp, node) == (a.covers(timestamp, node) or b.covers(timestamp, node))


@SETTINGS
@given(mapping=mappings)
def test_max_timestamp_is_largest_entry_or_zero(mapping: dict[str, int]) -> None:
    assert VersionVector.of(mapping).max_timestamp() == max(mapping.values(), default=0)


@SETTINGS
@given(a=vectors, b=vectors)
def test_vectors_are_immutable_values_usable_as_keys(a: VersionVector, b: VersionVector) -> None:
    table = {a: "a"}
    assert (b in table) == (a == b)
    assert VersionVector.of(a.as_dict()) in table
