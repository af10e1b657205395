"""Large values and large sibling sets in the pure core: every version set stays within the protocol's size
bounds at merge as at write (so it travels), replicas that merge in any order converge, and no message that
carries writes is larger than one key's set (batches are split by size)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from dsm.config import StorageConfig, message_max_bytes
from dsm.core import versions
from dsm.core.dissemination import ITEMS_MAX_BYTES, batches, update_id
from dsm.core.encoding import encode_versions
from dsm.core.messages import DataItem, DirectPush, GossipDigest, GossipItems, GossipReply, Graft, Push, Send
from dsm.core.vclock import VersionVector
from dsm.core.versions import SIBLINGS_MAX_BYTES, Dot, Resolution, Version, VersionSet, write
from dsm.errors import ConfigError
from wire import SMALL, Wire

SIBLINGS = Resolution.SIBLINGS
MIB = 1024 * 1024


def values_of(held: VersionSet) -> int:
    return sum(len(v.value or b"") for v in held.versions)


def test_concurrent_coordinators_merge_into_a_set_within_the_bound() -> None:
    # Three coordinators each take four blind 1 MiB writes before hearing of the others' (what concurrent
    # writers on 3 nodes do): each write keeps its own set within 4 MiB, their merge would hold 12 MiB.
    value = b"v" * MIB
    coordinators = []
    for n, node in enumerate(("a", "b", "c")):
        held = VersionSet()
        for i in range(4):
            held = write(held, Dot(10 * i + n + 1, node), VersionVector(), value, SIBLINGS, 16, SIBLINGS_MAX_BYTES)
        assert len(held) == 4
        coordinators.append(held)
    merged = coordinators[0].merge(coordinators[1], SIBLINGS).merge(coordinators[2], SIBLINGS)
    assert values_of(merged) <= SIBLINGS_MAX_BYTES
    # The newest versions stay, by dot.
    assert [v.dot for v in merged.versions] == [Dot(33, "c"), Dot(32, "b"), Dot(31, "a"), Dot(23, "c")]
    assert len(encode_versions(merged)) < message_max_bytes(1 * MIB, 1024)


def test_the_newest_version_stays_even_alone_above_the_bound() -> None:
    small = Version(Dot(1, "a"), VersionVector(), b"s")
    big = Version(Dot(2, "b"), VersionVector(), b"x" * (SIBLINGS_MAX_BYTES + 1))
    assert VersionSet.of([small, big]).versions == (big,)
    assert VersionSet.of([small]).versions == (small,)
    # A newer concurrent value leaves no room for an older one above the bound (as a write would supersede it).
    newer = Version(Dot(3, "c"), VersionVector(), b"n")
    assert VersionSet.of([small, big, newer]).versions == (newer,)


def test_dots_and_contexts_are_bounded_too() -> None:
    # Many concurrent tombstones hold no value bytes; their dots and contexts are what the bound counts.
    context = VersionVector.of([(f"node-{i:04d}", 5) for i in range(200)])
    many = [Version(Dot(10 + i, f"w{i}"), context, None) for i in range(1000)]
    held = VersionSet.of(many)
    meta = sum(v.meta_bytes() for v in held.versions)
    assert meta <= versions.SIBLINGS_META_MAX_BYTES < meta + held.versions[-1].meta_bytes() + 1
    assert held.versions[0].dot == Dot(1009, "w999")
    assert len(encode_versions(held)) <= meta


@pytest.mark.parametrize("seed", range(40))
def test_replicas_merging_in_any_order_converge_within_the_bounds(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small bounds so that cuts happen all the time with small values (the rule is the same).
    monkeypatch.setattr(versions, "SIBLINGS_MAX_BYTES", 40)
    monkeypatch.setattr(versions, "SIBLINGS_META_MAX_BYTES", 400)
    rng = random.Random(seed)
    replicas = [VersionSet() for _ in range(4)]
    clock = 0

    def check(held: VersionSet) -> None:
        if len(held) > 1:
            assert values_of(held) <= 40 and sum(v.meta_bytes() for v in held.versions) <= 400

    def merge(i: int, j: int) -> None:
        merged = replicas[i].merge(replicas[j], SIBLINGS)
        assert merged == replicas[j].merge(replicas[i], SIBLINGS)  # commutative
        assert merged.merge(merged, SIBLINGS) == merged  # idempotent
        check(merged)
        replicas[i] = merged

    for _ in range(60):
        i = rng.randrange(len(replicas))
        if rng.random() < 0.6:
            clock = max(clock, replicas[i].max_timestamp) + 1
            # Blind, or with the context of what this replica holds (a read-modify-write).
            context = replicas[i].context() if rng.random() < 0.3 else VersionVector()
            clock = max(clock, context.max_timestamp() + 1)
            value = None if rng.random() < 0.1 else bytes(rng.randrange(0, 25))
            replicas[i] = write(replicas[i], Dot(clock, f"n{i}"), context, value, SIBLINGS, 8, 30)
            check(replicas[i])
        else:
            merge(i, rng.randrange(len(replicas)))
    # Anti-entropy: a replica merges another's set, in random order, until all hold the same.
    pool = {v for r in replicas for v in r.versions}
    for _ in range(2000):
        merge(*rng.sample(range(len(replicas)), 2))
        held = {v for r in replicas for v in r.versions}
        assert held <= pool  # merges only keep what some replica held
        pool = held
        if all(r == replicas[0] for r in replicas):
            break
    assert all(r == replicas[0] for r in replicas)
    # What they hold is every undominated version still held anywhere.
    assert replicas[0] == VersionSet(VersionSet.of(pool).versions)


def test_the_largest_message_covers_the_largest_set() -> None:
    assert StorageConfig().max_message_bytes == message_max_bytes(1 * MIB, 1024)
    config = StorageConfig(max_value_bytes=20 * MIB)
    assert config.max_message_bytes >= 20 * MIB + versions.SIBLINGS_META_MAX_BYTES + 8 * MIB
    with pytest.raises(ConfigError) as caught:
        StorageConfig(max_value_bytes=64 * MIB, reassembly_max_bytes=64 * MIB)
    assert caught.value.field == "reassembly_max_bytes"


# ------------------------------------------------------------------ batches of writes


def big_item(key: str, size: int) -> DataItem:
    return DataItem(update_id(key, 1, "n0"), key, b"x" * size)


def test_batches_split_by_size_and_keep_a_larger_item_alone() -> None:
    items = (
        big_item("a", 300_000),
        big_item("b", 300_000),
        big_item("c", 3 * MIB),
        big_item("d", 10),
        big_item("e", 10),
    )
    runs = list(batches(items, 700_000))
    assert [[i.key for i in run] for run in runs] == [["a", "b"], ["c"], ["d", "e"]]
    assert list(batches(())) == []
    small = (big_item("s", 10),)
    assert list(batches(small)) == [small]


def sent(effects: list[object], kind: type) -> list[object]:
    return [e.message for e in effects if isinstance(e, Send) and type(e.message) is kind]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "tree"])
def test_pushes_grafts_and_gossip_answers_are_split_by_size(direct: bool) -> None:
    # 8 fully linked nodes push their writes directly by default (`direct_push_max`); 0 keeps the tree.
    w = Wire(seed=3, settings=SMALL if direct else dataclasses.replace(SMALL, direct_push_max=0))
    w.formed(8)
    w.advance(3000)
    a = w.peers["n0"]
    b_id = a.link_ids()[0]
    items = tuple(big_item(f"k{i}", 400_000) for i in range(6))  # 2.4 MiB of writes at once
    pushes = sent(a.publish(w.now, items), DirectPush if direct else Push)
    assert pushes and all(sum(len(i.versions) for i in p.items) <= ITEMS_MAX_BYTES for p in pushes)  # type: ignore[attr-defined]
    assert len(pushes) == 3 * len(a.link_ids() if direct else a.data.eager)
    grafted = sent(a.handle(w.now, Graft(b_id, tuple(i.id for i in items))), Push)
    assert [len(p.items) for p in grafted] == [2, 2, 2]  # type: ignore[attr-defined]
    # A digest listing none of them: the reply carries what fits, the rest follows as GossipItems.
    t = w.now + 60_000
    answer = a.handle(t, GossipDigest(9, b_id, (), ()))
    reply = sent(answer, GossipReply)
    rest = sent(answer, GossipItems)
    assert len(reply) == 1 and len(reply[0].items) == 2 and [len(m.items) for m in rest] == [2, 2]  # type: ignore[attr-defined]
    wanted = sent(a.handle(t, GossipReply(77, b_id, tuple(i.id for i in items), ())), GossipItems)
    assert [len(m.items) for m in wanted] == [2, 2, 2]  # type: ignore[attr-defined]
