"""Property tests for the canonical encodings and digests (`dsm.core.encoding`).

Checked against the rules in the module docstring:
- `decode_versions(encode_versions(s)) == s` for every valid version set, in the documented msgpack layout
  (`[FORMAT, [[timestamp, node, [node, counter, ...], value-or-nil], ...]]`, newest dot first);
- the encoding is canonical: equal sets built in different orders give identical bytes and digests, and
  `digest` differs when the key or the versions differ;
- decoding validates: arbitrary bytes and arbitrary msgpack documents raise only `DecodeError` (a
  `ValueError`), never another exception; non-canonical vectors (unsorted, duplicate node, zero or
  non-integer counter) and versions whose context covers their own dot are rejected;
- context tokens: URL-safe base64 without padding, round trip, oversized tokens are rejected before any
  decoding, and garbage tokens raise only `DecodeError`.

Valid version sets come from simulated histories: nodes write on their own replica with one hybrid
logical clock each (advanced past the state and the context, as `EpidemicStorage._commit` does) and
replicate whole version sets to each other.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import reduce
from random import Random
from typing import Any
from unittest import mock

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dsm.core import encoding
from dsm.core.encoding import (
    FORMAT,
    DecodeError,
    decode_context,
    decode_versions,
    digest,
    encode_context,
    encode_versions,
)
from dsm.core.hlc import MAX_TIMESTAMP, HybridLogicalClock
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, Version, VersionSet

KEY_TAG = encoding._key_tag("k")  # the tag of tokens read from key "k"

SETTINGS = settings(max_examples=150, deadline=None)

NODES = ("a", "b", "c", "ü")
EMPTY = VersionSet()
LWW, SIBLINGS = Resolution.LWW, Resolution.SIBLINGS
values = st.one_of(st.none(), st.binary(max_size=4))


def merged(states: Iterable[VersionSet], resolution: Resolution) -> VersionSet:
    return reduce(lambda acc, state: acc.merge(state, resolution), states, EMPTY)


@dataclass
class Cluster:
    """Replicas of one key: each node's state, clock and wall clock, and every state a replica has held."""

    resolution: Resolution
    clocks: dict[str, HybridLogicalClock] = field(
        default_factory=lambda: {n: HybridLogicalClock(max_offset_ms=1000) for n in NODES}
    )
    replicas: dict[str, VersionSet] = field(default_factory=lambda: dict.fromkeys(NODES, EMPTY))
    snapshots: list[VersionSet] = field(default_factory=lambda: [EMPTY])

    def set_replica(self, node: str, state: VersionSet) -> None:
        self.replicas[node] = state
        self.snapshots.append(state)


@st.composite
def clusters(draw: st.DrawFn, resolution: Resolution | None = None) -> Cluster:
    cluster = Cluster(resolution if resolution is not None else draw(st.sampled_from([LWW, SIBLINGS])))
    wall = draw(st.integers(min_value=1, max_value=1 << 41))
    for _ in range(draw(st.integers(min_value=1, max_value=10))):
        node = draw(st.sampled_from(NODES))
        if draw(st.integers(min_value=0, max_value=2)) == 0:
            snapshot = draw(st.sampled_from(cluster.snapshots))
            cluster.set_replica(node, cluster.replicas[node].merge(snapshot, cluster.resolution))
            continue
        current = cluster.replicas[node]
        read = draw(st.sampled_from([current, EMPTY, *cluster.snapshots]))
        context = read.context()
        wall = max(1, wall + draw(st.integers(min_value=-2, max_value=2)))
        clock = cluster.clocks[node]
        clock.advance_to(max(current.max_timestamp, context.max_timestamp()))
        version = Version(Dot(clock.now(wall), node), context, draw(values))
        cluster.set_replica(node, current.merge(VersionSet((version,)), cluster.resolution))
    return cluster


@st.composite
def version_sets(draw: st.DrawFn, resolution: Resolution | None = None) -> VersionSet:
    """A valid replica state: the merge of some states replicas have held."""
    cluster = draw(clusters(resolution))
    chosen = draw(st.lists(st.sampled_from(cluster.snapshots[::-1]), min_size=1, max_size=4))
    return merged(chosen, cluster.resolution)


vectors = st.dictionaries(st.sampled_from(NODES), st.integers(min_value=0, max_value=MAX_TIMESTAMP)).map(
    VersionVector.of
)

#: Arbitrary msgpack-able documents (what a confused peer or a corrupt row could hold).
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.builds(msgpack.ExtType, st.integers(min_value=0, max_value=127), st.binary(max_size=4)),
)
documents = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=3), children, max_size=3),
    ),
    max_leaves=20,
)
#: Near-valid documents: the documented layout with each field valid or not, so that decoding gets deep.
near_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-2, max_value=5),
    st.just(""),
    st.binary(max_size=2),
    st.just(1.0),
    st.just([]),
)
near_flats = st.one_of(
    st.lists(st.tuples(st.sampled_from(NODES), st.integers(min_value=1, max_value=20)), max_size=3)
    .map(lambda pairs: sorted(dict(pairs).items()))
    .map(lambda pairs: [x for pair in pairs for x in pair]),
    st.lists(st.tuples(st.sampled_from(NODES), st.integers(min_value=-1, max_value=20)), max_size=3).map(
        lambda pairs: [x for pair in pairs for x in pair]
    ),
    st.lists(st.one_of(st.sampled_from(NODES), near_leaves), max_size=5),
    near_leaves,
)
corrupt_fields = st.one_of(near_leaves, near_flats, st.sampled_from(NODES))


@st.composite
def near_documents(draw: st.DrawFn) -> list[Any]:
    """A document in the documented layout (in any version order) with up to three fields corrupted."""
    versions: list[Any] = [
        [
            draw(st.integers(min_value=1, max_value=20)),
            draw(st.sampled_from(NODES)),
            draw(near_flats.filter(lambda flat: isinstance(flat, list))),
            draw(st.one_of(st.none(), st.binary(max_size=2))),
        ]
        for _ in range(draw(st.integers(min_value=0, max_value=3)))
    ]
    document: list[Any] = [FORMAT, versions]
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        where = draw(st.integers(min_value=0, max_value=2 + 5 * len(versions)))
        if where == 0:
            document[0] = draw(near_leaves)
        elif where == 1:
            document[1] = draw(st.one_of(near_leaves, st.lists(near_leaves, max_size=3)))
        elif where == 2 or not isinstance(document[1], list) or not document[1]:
            document[1] = [*versions, draw(st.lists(near_leaves, max_size=5))]
        else:
            index = (where - 3) % len(document[1])
            item = document[1][index]
            if isinstance(item, list) and len(item) == 4 and (where - 3) // len(document[1]) < 4:
                item[(where - 3) // len(document[1])] = draw(corrupt_fields)
            else:
                document[1][index] = draw(near_leaves)
    return document


def pack(document: Any) -> bytes:
    return msgpack.packb(document, use_bin_type=True)  # type: ignore[no-any-return]


def decodes_or_raises_decode_error(data: bytes) -> VersionSet | None:
    """Decodes `data`; any exception other than DecodeError fails the test."""
    try:
        result = decode_versions(data)
    except DecodeError as exc:
        assert isinstance(exc, ValueError)
        return None
    assert isinstance(result, VersionSet)
    return result


def is_canonical(state: VersionSet) -> bool:
    ordered = [v.dot for v in state.versions]
    return ordered == sorted(set(ordered), reverse=True) and not any(
        v.dominated_by(w) for v in state.versions for w in state.versions if v is not w
    )


# --- version sets -----------------------------------------------------------------------------------------


@SETTINGS
@given(state=version_sets())
def test_decode_inverts_encode_on_valid_sets(state: VersionSet) -> None:
    data = encode_versions(state)
    assert isinstance(data, bytes)
    assert decode_versions(data) == state
    assert encode_versions(decode_versions(data)) == data


@SETTINGS
@given(state=version_sets())
def test_encoding_follows_the_documented_layout_newest_dot_first(state: VersionSet) -> None:
    document = msgpack.unpackb(encode_versions(state), raw=False)
    expected = [
        [v.dot.timestamp, v.dot.node, [x for entry in v.context.entries for x in entry], v.value]
        for v in state.versions
    ]
    assert document == [FORMAT, expected]
    timestamps = [(item[0], item[1]) for item in document[1]]
    assert timestamps == sorted(timestamps, reverse=True)


@SETTINGS
@given(data=st.data(), resolution=st.sampled_from([LWW, SIBLINGS]))
def test_equal_sets_built_in_different_orders_encode_identically(data: st.DataObject, resolution: Resolution) -> None:
    cluster = data.draw(clusters(resolution))
    chosen = data.draw(st.lists(st.sampled_from(cluster.snapshots), max_size=5))
    one, other = merged(chosen, resolution), merged(data.draw(st.permutations(chosen)), resolution)
    assert one == other
    assert encode_versions(one) == encode_versions(other)
    assert digest("key", encode_versions(one)) == digest("key", encode_versions(other))
    # The same versions handed to `VersionSet.of` in any order encode identically as well.
    versions = list(one.versions)
    Random(len(versions)).shuffle(versions)
    assert encode_versions(VersionSet.of(versions, resolution)) == encode_versions(one)


@SETTINGS
@given(a=version_sets(), b=version_sets())
def test_different_sets_encode_differently(a: VersionSet, b: VersionSet) -> None:
    assert (encode_versions(a) == encode_versions(b)) == (a == b)


@SETTINGS
@given(state=version_sets(), key=st.text(min_size=1, max_size=8), other=st.text(min_size=1, max_size=8))
def test_digest_is_a_signed_64_bit_function_of_key_and_bytes(state: VersionSet, key: str, other: str) -> None:
    data = encode_versions(state)
    value = digest(key, data)
    assert -(1 << 63) <= value < 1 << 63
    assert digest(key, data) == value
    if key != other:
        assert digest(other, data) != value


_ONE = Version(Dot(100, "a"), VersionVector(), b"x")
_DIGEST_PAIRS = {
    "key": (("k", VersionSet((_ONE,))), ("k2", VersionSet((_ONE,)))),
    "key case": (("k", VersionSet((_ONE,))), ("K", VersionSet((_ONE,)))),
    "empty vs one version": (("k", EMPTY), ("k", VersionSet((_ONE,)))),
    "value": (("k", VersionSet((_ONE,))), ("k", VersionSet((Version(_ONE.dot, _ONE.context, b"y"),)))),
    "tombstone vs empty value": (
        ("k", VersionSet((Version(_ONE.dot, _ONE.context, None),))),
        ("k", VersionSet((Version(_ONE.dot, _ONE.context, b""),))),
    ),
    "timestamp": (
        ("k", VersionSet((_ONE,))),
        ("k", VersionSet((Version(Dot(101, "a"), VersionVector(), b"x"),))),
    ),
    "node": (("k", VersionSet((_ONE,))), ("k", VersionSet((Version(Dot(100, "b"), VersionVector(), b"x"),)))),
    "context": (
        ("k", VersionSet((_ONE,))),
        ("k", VersionSet((Version(_ONE.dot, VersionVector.of({"b": 7}), b"x"),))),
    ),
    "sibling added": (
        ("k", VersionSet((_ONE,))),
        ("k", VersionSet.of([_ONE, Version(Dot(99, "b"), VersionVector(), b"x")])),
    ),
}


@pytest.mark.parametrize(("first", "second"), list(_DIGEST_PAIRS.values()), ids=list(_DIGEST_PAIRS))
def test_digest_differs_when_key_or_versions_differ(
    first: tuple[str, VersionSet], second: tuple[str, VersionSet]
) -> None:
    (key1, set1), (key2, set2) = first, second
    assert digest(key1, encode_versions(set1)) != digest(key2, encode_versions(set2))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64))
def test_decode_arbitrary_bytes_raises_only_decode_error(data: bytes) -> None:
    decodes_or_raises_decode_error(data)


@SETTINGS
@given(state=version_sets(), edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=3))
def test_decode_corrupted_valid_encoding_raises_only_decode_error(
    state: VersionSet, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(encode_versions(state))
    for position, byte in edits:
        data[position % len(data)] = byte
    decodes_or_raises_decode_error(bytes(data))
    for cut in range(len(data)):
        decodes_or_raises_decode_error(bytes(data[:cut]))


@settings(max_examples=300, deadline=None)
@given(document=st.one_of(documents, near_documents()))
def test_decode_arbitrary_msgpack_documents_raises_only_decode_error(document: Any) -> None:
    decodes_or_raises_decode_error(pack(document))


# Regression: decode_versions once accepted these non-canonical encodings (versions oldest first, a nil
# context, a boolean format tag), so two replicas could hold the same versions as different bytes.
@settings(max_examples=300, deadline=None)
@given(document=near_documents())
@example(document=[FORMAT, [[1, "a", [], b"older"], [2, "b", [], b"newer"]]])
@example(document=[FORMAT, [[1, "a", None, b"x"]]])
@example(document=[True, []])
def test_decode_accepts_only_canonical_version_sets(document: Any) -> None:
    data = pack(document)
    state = decodes_or_raises_decode_error(data)
    if state is not None:
        assert is_canonical(state)
        assert encode_versions(state) == data


def _with_context(flat: Any) -> bytes:
    return pack([FORMAT, [[10, "z", flat, b"v"]]])


@pytest.mark.parametrize(
    "flat",
    [
        ["b", 1, "a", 2],
        ["a", 1, "a", 2],
        ["a", 1, "a", 1],
        ["a", 0],
        ["a", -1],
        ["a", True],
        ["a", 1.0],
        ["a", "1"],
        ["", 1],
        [1, 1],
        [b"a", 1],
        ["a"],
        ["a", 1, "b"],
        {"a": 1},
        "a",
        7,
    ],
    ids=repr,
)
def test_non_canonical_vectors_are_rejected(flat: Any) -> None:
    with pytest.raises(DecodeError):
        decode_versions(_with_context(flat))
    with pytest.raises(DecodeError):
        decode_context(base64.urlsafe_b64encode(pack([FORMAT, KEY_TAG, flat])).decode().rstrip("="), 1000, "k")


@SETTINGS
@given(
    pairs=st.lists(st.tuples(st.sampled_from(["a", "b", "c", ""]), st.integers(min_value=-1, max_value=3)), max_size=4)
)
def test_vector_decodes_exactly_when_sorted_unique_and_positive(pairs: list[tuple[str, int]]) -> None:
    flat = [x for pair in pairs for x in pair]
    names = [node for node, _ in pairs]
    valid = names == sorted(set(names)) and all(node and counter > 0 for node, counter in pairs)
    if valid:
        assert decode_versions(_with_context(flat)).versions[0].context == VersionVector(tuple(pairs))
        assert decode_context(encode_context(VersionVector(tuple(pairs)), "k"), 1000, "k").entries == tuple(pairs)
    else:
        with pytest.raises(DecodeError):
            decode_versions(_with_context(flat))


@pytest.mark.parametrize(
    "item",
    [
        [10, "a", ["a", 10], b"v"],
        [10, "a", ["a", 11], b"v"],
        [0, "a", [], b"v"],
        [-1, "a", [], b"v"],
        [True, "a", [], b"v"],
        [1.5, "a", [], b"v"],
        [10, "", [], b"v"],
        [10, b"a", [], b"v"],
        [10, "a", [], "text"],
        [10, "a", [], 5],
        [10, "a", []],
        [10, "a", [], b"v", None],
    ],
    ids=repr,
)
def test_malformed_versions_are_rejected(item: list[Any]) -> None:
    with pytest.raises(DecodeError):
        decode_versions(pack([FORMAT, [item]]))


@pytest.mark.parametrize("document", [[2, []], [FORMAT], [FORMAT, [], []], {"v": 1}, [FORMAT, {}], None, 1])
def test_unknown_formats_are_rejected(document: Any) -> None:
    with pytest.raises(DecodeError):
        decode_versions(pack(document))


# --- context tokens ---------------------------------------------------------------------------------------


@SETTINGS
@given(vector=vectors)
def test_context_token_round_trips_and_is_url_safe_without_padding(vector: VersionVector) -> None:
    token = encode_context(vector, "some/key")
    assert re.fullmatch(r"[A-Za-z0-9_-]*", token)
    assert decode_context(token, max_bytes=len(token), key="some/key") == vector


@SETTINGS
@given(vector=vectors, key=st.text(min_size=1, max_size=20), other=st.text(min_size=1, max_size=20))
def test_context_token_is_refused_for_another_key(vector: VersionVector, key: str, other: str) -> None:
    token = encode_context(vector, key)
    if other == key:
        assert decode_context(token, 10_000, other) == vector
    else:
        with pytest.raises(DecodeError, match="another key"):
            decode_context(token, 10_000, other)


@SETTINGS
@given(state=version_sets())
def test_context_token_of_a_read_round_trips(state: VersionSet) -> None:
    context = state.context()
    assert decode_context(encode_context(context, "k"), max_bytes=4096, key="k") == context


@SETTINGS
@given(
    token=st.one_of(st.text(min_size=1, max_size=40), vectors.map(lambda v: encode_context(v, "k"))),
    shortfall=st.integers(min_value=1, max_value=40),
)
def test_token_longer_than_max_bytes_is_rejected_before_decoding(token: str, shortfall: int) -> None:
    max_bytes = max(0, len(token) - shortfall)
    forbidden = AssertionError("decoded an oversized token")
    with (
        mock.patch.object(encoding.base64, "urlsafe_b64decode", side_effect=forbidden) as b64,
        mock.patch.object(encoding.msgpack, "unpackb", side_effect=forbidden) as unpack,
        pytest.raises(DecodeError),
    ):
        decode_context(token, max_bytes=max_bytes, key="k")
    b64.assert_not_called()
    unpack.assert_not_called()


@settings(max_examples=300, deadline=None)
@given(token=st.one_of(st.text(max_size=40), st.text(alphabet="ABCDEFabcdef0123456789-_=+/", max_size=40)))
def test_garbage_tokens_raise_only_decode_error(token: str) -> None:
    try:
        result = decode_context(token, max_bytes=1000, key="k")
    except DecodeError:
        return
    assert isinstance(result, VersionVector)


@SETTINGS
@given(
    payload=st.one_of(
        st.binary(max_size=40),
        documents.map(pack),
        near_documents().map(pack),
        # Well-formed tokens for key "k" around a garbage vector, so the vector checks are reached too.
        near_documents().map(lambda d: pack([FORMAT, KEY_TAG, d])),
    )
)
def test_well_encoded_garbage_tokens_raise_only_decode_error(payload: bytes) -> None:
    token = base64.urlsafe_b64encode(payload).decode("ascii").rstrip("=")
    try:
        result = decode_context(token, max_bytes=10_000, key="k")
    except DecodeError:
        return
    assert isinstance(result, VersionVector)
    assert all(node and counter > 0 for node, counter in result.entries)
