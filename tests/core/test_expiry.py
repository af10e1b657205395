"""Keys that expire, in the pure core: `Version.expires_ms`, its optional 5th encoded field, `live_at`,
`death`/`purgeable`, the siblings write rule that supersedes expired versions, and `WriteOp.ttl_ms` in the
replica (see `dsm.core.versions`, `dsm.core.encoding`, `dsm.core.replica`).

The central claim: expiry is never part of the merge. Random histories with expiring writes are checked to
merge exactly as the same histories without expiries (same dots kept, commutative, associative,
idempotent), and a version without an expiry encodes to the bytes it had before expiries existed.
"""

from __future__ import annotations

from functools import reduce
from random import Random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsm.core.encoding import MAX_EXPIRES_MS, DecodeError, decode_versions, digest, encode_versions
from dsm.core.hlc import HybridLogicalClock, pack, physical_ms
from dsm.core.replica import MergeOp, Replica, ReplicaSettings, WriteOp
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, Version, VersionSet, closed, death_ms, purgeable, write

LWW, SIBLINGS = Resolution.LWW, Resolution.SIBLINGS
NOTHING = VersionVector()
WALL = 1_700_000_000_000
GRACE = 60_000
SETTINGS = settings(max_examples=200, deadline=None)
both = pytest.mark.parametrize("resolution", [LWW, SIBLINGS])


def one(node: str, ms: int, value: bytes | None, expires_ms: int = 0, context: VersionVector = NOTHING) -> VersionSet:
    return write(VersionSet(), Dot(pack(ms), node), context, value, SIBLINGS, 16, expires_ms=expires_ms)


# --- encoding -------------------------------------------------------------------------------------------------

#: A set without expiries and its bytes and digest as encoded before expiries existed (computed at 2a457d7).
GOLDEN_SET = VersionSet(
    (
        Version(Dot(7_000_000_000_000_000, "n2"), VersionVector((("n1", 6_000_000_000_000_000),)), b"v2"),
        Version(Dot(6_500_000_000_000_000, "n1"), VersionVector(), None),
    )
)
GOLDEN_HEX = "92019294cf0018de76816d8000a26e3292a26e31cf001550f7dca70000c402763294cf001717b72f0a4000a26e3190c0"
GOLDEN_DIGEST = 3664879127464650656


def test_versions_without_expiry_encode_and_digest_as_before() -> None:
    encoded = encode_versions(GOLDEN_SET)
    assert encoded.hex() == GOLDEN_HEX
    assert digest("k", encoded) == GOLDEN_DIGEST
    assert decode_versions(bytes.fromhex(GOLDEN_HEX)) == GOLDEN_SET


def test_an_expiring_version_has_a_5th_field_and_round_trips() -> None:
    state = one("n1", WALL, b"v", expires_ms=WALL + 30_000)
    doc = msgpack.unpackb(encode_versions(state))
    assert doc == [1, [[pack(WALL), "n1", [], b"v", WALL + 30_000]]]
    assert decode_versions(encode_versions(state)) == state
    assert decode_versions(encode_versions(state)).versions[0].expires_ms == WALL + 30_000
    # The expiry is part of the bytes, so two replicas that differ in it differ in digest.
    assert encode_versions(state) != encode_versions(one("n1", WALL, b"v"))


@pytest.mark.parametrize("fifth", [0, -1, MAX_EXPIRES_MS + 1, True, 1.5, "1", None, b"\x01"])
def test_a_5th_field_that_is_not_a_positive_expiry_is_refused(fifth: object) -> None:
    data = msgpack.packb([1, [[pack(WALL), "n1", [], b"v", fifth]]], use_bin_type=True)
    with pytest.raises(DecodeError):
        decode_versions(data)


def test_a_tombstone_with_an_expiry_and_a_6th_field_are_refused() -> None:
    with pytest.raises(DecodeError, match="tombstone"):
        decode_versions(msgpack.packb([1, [[pack(WALL), "n1", [], None, WALL + 1]]], use_bin_type=True))
    with pytest.raises(DecodeError, match="4 or 5"):
        decode_versions(msgpack.packb([1, [[pack(WALL), "n1", [], b"v", WALL + 1, 1]]], use_bin_type=True))


# --- random histories with expiries ---------------------------------------------------------------------------


def history(seed: int, resolution: Resolution, steps: int = 14) -> list[VersionSet]:
    """Every state some replica held in a random history of three nodes that write (blind or with the context
    of some state read earlier, values, deletes, some with a 1-6 ms TTL, wall clocks close enough to expire
    versions during the run) and merge whole sets into each other."""
    rng = Random(seed)
    nodes = ("a", "b", "c")
    clocks = {node: HybridLogicalClock(max_offset_ms=1000) for node in nodes}
    walls = dict.fromkeys(nodes, 10)
    replicas = dict.fromkeys(nodes, VersionSet())
    snapshots = [VersionSet()]
    for _ in range(steps):
        node = rng.choice(nodes)
        if rng.random() < 0.35:
            replicas[node] = replicas[node].merge(rng.choice(snapshots), resolution)
        else:
            walls[node] = max(1, walls[node] + rng.randint(-1, 3))
            current = replicas[node]
            read = rng.choice([None, current, rng.choice(snapshots)])
            context = read.context() if read is not None else NOTHING
            clock = clocks[node]
            if current.versions or context.entries:
                clock.advance_to(max(current.max_timestamp, context.max_timestamp()))
            dot = Dot(clock.now(walls[node]), node)
            value = rng.choice([None, b"x", b"yy"])
            ttl = rng.choice([0, 0, 1, 3, 6]) if value is not None else 0
            expires = physical_ms(dot.timestamp) + ttl if ttl else 0
            replicas[node] = write(current, dot, context, value, resolution, 3, expires_ms=expires, now_ms=walls[node])
        snapshots.append(replicas[node])
    return snapshots


def stripped(state: VersionSet) -> VersionSet:
    return VersionSet(tuple(Version(v.dot, v.context, v.value) for v in state.versions))


def merged(states: list[VersionSet], resolution: Resolution) -> VersionSet:
    return reduce(lambda acc, s: acc.merge(s, resolution), states, VersionSet())


@both
@SETTINGS
@given(seed=st.integers(0, 2**32), picks=st.lists(st.integers(0, 1000), min_size=3, max_size=3))
def test_merge_laws_hold_with_expiries_and_expiry_changes_nothing_the_merge_keeps(
    resolution: Resolution, seed: int, picks: list[int]
) -> None:
    snapshots = history(seed, resolution)
    a, b, c = (snapshots[p % len(snapshots)] for p in picks)
    ab = a.merge(b, resolution)
    assert ab == b.merge(a, resolution)
    assert ab.merge(a, resolution) == ab and a.merge(a, resolution) == a
    assert ab.merge(c, resolution) == a.merge(b.merge(c, resolution), resolution)
    # The same sets without their expiries merge to the same dots: expiry is never part of the merge.
    assert stripped(ab) == stripped(a).merge(stripped(b), resolution)
    encoded = encode_versions(ab)
    assert decode_versions(encoded) == ab


@pytest.mark.parametrize(("seed", "picks"), [(13154, (1, 12, 487))])
def test_a_write_that_supersedes_an_expired_sibling_stays_closed_over_what_that_covers(
    seed: int, picks: tuple[int, ...]
) -> None:
    """Found by the property above (2026-12-05): node c held an expired value c:983041 beside c:983040, whose
    context covered a tombstone of b's; a blind write at c superseded the expired one, and its context's entry
    c:983041 also covered c:983040 (an older timestamp of the same node) without its context: merges that dropped
    c:983040 by it forgot the tombstone's fate, so one merge order kept the tombstone and another dropped it.
    A new version's context is now closed over every held version it covers (`versions.closed`)."""
    snapshots = history(seed, SIBLINGS)
    a, b, c = (snapshots[p % len(snapshots)] for p in picks)
    assert a.merge(b, SIBLINGS).merge(c, SIBLINGS) == a.merge(b.merge(c, SIBLINGS), SIBLINGS)
    for state in snapshots:
        for version in state.versions:
            for held in (v for other in snapshots for v in other.versions):
                if version.context.covers(held.dot.timestamp, held.dot.node):
                    assert closed(version.context, [held]) == version.context


def test_closed_folds_in_what_the_folded_contexts_cover_in_turn() -> None:
    first = Version(Dot(10, "a"), VersionVector.of([("b", 5)]), b"x")
    second = Version(Dot(5, "b"), VersionVector.of([("x", 3)]), b"y")  # covered only once first is folded in
    unrelated = Version(Dot(7, "c"), VersionVector.of([("z", 1)]), b"z")
    got = closed(VersionVector.of([("a", 10)]), [unrelated, second, first])
    assert got == VersionVector.of([("a", 10), ("b", 5), ("x", 3)])


@SETTINGS
@given(seed=st.integers(0, 2**32), now=st.integers(0, 40))
def test_live_at_hides_exactly_the_expired_values(seed: int, now: int) -> None:
    state = merged(history(seed, SIBLINGS), SIBLINGS)
    live = state.live_at(now)
    assert live == tuple(v for v in state.versions if v.value is not None and (not v.expires_ms or now < v.expires_ms))
    assert state.live_at(0) == state.live  # before any expiry, every value is live


# --- reads, LWW, siblings --------------------------------------------------------------------------------------


def test_an_expired_lww_winner_hides_the_older_value_it_superseded() -> None:
    old = one("n1", WALL, b"old")
    newer = one("n2", WALL + 5, b"new", expires_ms=WALL + 100)
    state = old.merge(newer, LWW)
    assert [v.value for v in state.live_at(WALL + 99)] == [b"new"]
    assert state.live_at(WALL + 100) == ()  # absent: it does not fall back to the older value


def test_a_siblings_write_supersedes_the_siblings_expired_at_its_wall_clock() -> None:
    expired = one("n1", WALL, b"gone", expires_ms=WALL + 10)
    alive = one("n2", WALL + 1, b"here")
    held = expired.merge(alive, SIBLINGS)
    assert len(held) == 2
    dot = Dot(pack(WALL + 20), "n3")
    after = write(held, dot, NOTHING, b"blind", SIBLINGS, 16, now_ms=WALL + 20)
    assert [v.value for v in after.versions] == [b"blind", b"here"]
    assert after.versions[0].context.covers(pack(WALL), "n1")
    # Without the wall clock (or before the expiry) the expired version stays a sibling.
    kept = write(held, dot, NOTHING, b"blind", SIBLINGS, 16, now_ms=WALL + 9)
    assert [v.value for v in kept.versions] == [b"blind", b"here", b"gone"]


def test_an_expired_sibling_is_not_superseded_when_its_node_entry_would_take_a_live_older_one_with_it() -> None:
    # n1 coordinated two concurrent writes of the key: a value, then (blind) one that expires.
    live = one("n1", WALL, b"older, alive")
    held = write(live, Dot(pack(WALL + 1), "n1"), NOTHING, b"newer, expiring", SIBLINGS, 16, expires_ms=WALL + 10)
    assert len(held) == 2
    # A blind write at WALL + 20: superseding the expired one would add the entry (n1, WALL + 1), which also
    # covers (n1, WALL), a value nobody read. The expired one stays (reads skip it); the live one stays too.
    after = write(held, Dot(pack(WALL + 20), "n3"), NOTHING, b"blind", SIBLINGS, 16, now_ms=WALL + 20)
    assert [v.value for v in after.live_at(WALL + 20)] == [b"blind", b"older, alive"]
    assert [v.value for v in after.versions] == [b"blind", b"newer, expiring", b"older, alive"]


# --- death and purge -----------------------------------------------------------------------------------------


def test_an_expired_value_is_dead_from_its_expiry_and_purgeable_after_the_grace_period() -> None:
    expiring = one("n1", WALL, b"v", expires_ms=WALL + 1_000)
    assert death_ms(expiring.versions[0]) == WALL + 1_000
    assert not purgeable(expiring, pack(WALL + 1_000))  # the grace period counts from the death
    assert purgeable(expiring, pack(WALL + 1_001))
    forever = one("n1", WALL, b"v")
    assert death_ms(forever.versions[0]) == 0 and not purgeable(forever, pack(WALL * 2))
    both_dead = expiring.merge(one("n2", WALL + 5, None), SIBLINGS)
    assert len(both_dead) == 2 and purgeable(both_dead, pack(WALL + 1_001))
    assert not purgeable(both_dead, pack(WALL + 1_000))


def run(r: Replica, ops: list[WriteOp | MergeOp], rows: dict[str, bytes], wall_ms: int) -> None:
    wanted = r.reads(ops)
    commit = r.apply(ops, {k: rows[k] for k in wanted if k in rows}, wall_ms)
    for row in commit.rows:
        rows[row.key] = row.versions
    for key in commit.deletes:
        del rows[key]
    r.stored(commit)


@both
def test_a_ttl_write_stores_its_absolute_expiry_and_is_purged_after_it_and_the_grace(resolution: Resolution) -> None:
    r = Replica("n0", ReplicaSettings(resolution, tombstone_grace_ms=GRACE), "mem://test")
    rows: dict[str, bytes] = {}
    op = WriteOp("k", b"v", NOTHING, ttl_ms=30_000)
    plain = WriteOp("p", b"v", NOTHING)
    run(r, [op, plain], rows, WALL)
    stored = decode_versions(rows["k"]).versions[0]
    assert stored.expires_ms == physical_ms(op.timestamp) + 30_000 == op.after.versions[0].expires_ms
    assert decode_versions(rows["p"]).versions[0].expires_ms == 0
    page = sorted(rows.items())
    # Dead at WALL + 30 s; purgeable once the grace period has passed since then, not before.
    assert r.purge_candidates(page, r.purge_bound(WALL + 30_000 + GRACE)) == []
    later = WALL + 30_000 + GRACE + 1
    assert r.purge_candidates(page, r.purge_bound(later)) == ["k"]
    purge = MergeOp((), ["k", "p"], r.purge_bound(later))
    run(r, [purge], rows, later)
    assert sorted(rows) == ["p"] and purge.changed == 1


def test_a_write_with_the_context_of_an_expired_read_renews_or_removes_the_expiry() -> None:
    r = Replica("n0", ReplicaSettings(SIBLINGS, tombstone_grace_ms=GRACE), "mem://test")
    rows: dict[str, bytes] = {}
    first = WriteOp("k", b"v1", NOTHING, ttl_ms=1_000)
    run(r, [first], rows, WALL)
    read = decode_versions(rows["k"])
    assert read.live_at(WALL + 2_000) == ()  # expired; the read's context still covers it
    renew = WriteOp("k", b"v2", read.context(), ttl_ms=5_000)
    run(r, [renew], rows, WALL + 500)  # before the expiry: not superseded by the wall clock, by the context
    (renewed,) = decode_versions(rows["k"]).versions
    assert renewed.value == b"v2" and renewed.expires_ms == physical_ms(renew.timestamp) + 5_000
    forever = WriteOp("k", b"v3", decode_versions(rows["k"]).context())
    run(r, [forever], rows, WALL + 600)
    (kept,) = decode_versions(rows["k"]).versions
    assert kept.value == b"v3" and kept.expires_ms == 0
    assert decode_versions(rows["k"]).live_at(WALL * 2) == (kept,)
