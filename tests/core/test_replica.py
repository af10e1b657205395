"""The write and merge rule (`dsm.core.replica.Replica`), run on dicts of encoded rows as a driver runs it: the
rows `reads` names are handed to `apply` with a wall-clock reading, the `Commit` is stored into the dict and
`stored` is told. No store, no event loop."""

from __future__ import annotations

import pytest

from dsm.core.dissemination import update_id
from dsm.core.encoding import decode_versions, encode_versions
from dsm.core.hlc import pack, physical_ms
from dsm.core.messages import DataItem
from dsm.core.replica import (
    HLC_RESERVE_MS,
    META_HLC,
    Change,
    Commit,
    MergeOp,
    Op,
    Replica,
    ReplicaSettings,
    WriteOp,
)
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, VersionSet, write
from dsm.errors import ClockSkewError, StorageCorruptError

WALL = 1_700_000_000_000  # Unix ms
DAY = 86_400_000
LWW, SIBLINGS = Resolution.LWW, Resolution.SIBLINGS
NOTHING = VersionVector()
JUNK = b"\xc1not msgpack"


def replica(mode: Resolution = SIBLINGS, **settings: int) -> Replica:
    return Replica("n0", ReplicaSettings(mode, **settings), "mem://test")


def versions_of(node: str, ms: int, value: bytes | None, context: VersionVector = NOTHING) -> VersionSet:
    """One version written by `node` at wall time `ms`."""
    return write(VersionSet(), Dot(pack(ms), node), context, value, SIBLINGS, 16)


def item(key: str, versions: VersionSet) -> DataItem:
    return DataItem(0, key, encode_versions(versions))


def run(r: Replica, batch: list[Op], rows: dict[str, bytes], wall_ms: int = WALL) -> Commit:
    """Commits `batch` against `rows` as the node's commit loop does, and stores the outcome into `rows`."""
    wanted = r.reads(batch)
    assert len(wanted) == len(set(wanted))  # each key once
    commit = r.apply(batch, {k: rows[k] for k in wanted if k in rows}, wall_ms)
    for row in commit.rows:
        rows[row.key] = row.versions
    for key in commit.deletes:
        del rows[key]
    r.stored(commit)
    return commit


def stored(rows: dict[str, bytes], key: str) -> VersionSet:
    return decode_versions(rows[key])


# --- local writes


@pytest.mark.parametrize(("stored_ahead_ms", "context_ahead_ms"), [(5000, 0), (0, 5000), (3000, 6000), (6000, 3000)])
def test_a_write_is_newer_than_what_the_key_holds_and_its_context_with_the_wall_clock_behind(
    stored_ahead_ms: int, context_ahead_ms: int
) -> None:
    r = replica(SIBLINGS)
    held = versions_of("n1", WALL + stored_ahead_ms, b"held")
    context = VersionVector.of({"n2": pack(WALL + context_ahead_ms)}) if context_ahead_ms else NOTHING
    rows = {"k": encode_versions(held)}
    op = WriteOp("k", b"new", context)
    run(r, [op], rows, wall_ms=WALL - 1000)  # the wall clock is behind both
    assert op.error is None
    assert op.timestamp > held.max_timestamp and op.timestamp > context.max_timestamp()
    assert op.after.winner is not None and op.after.winner.dot == Dot(op.timestamp, "n0")
    assert {v.value for v in op.after.versions} == {b"held", b"new"}  # its context did not cover the held one
    assert stored(rows, "k") == op.after


def test_in_lww_a_write_reads_no_row_and_still_wins_over_what_was_merged() -> None:
    r = replica(LWW)
    rows: dict[str, bytes] = {}
    ahead = versions_of("n9", WALL + 4000, b"remote")  # ahead of the wall clock, within the offset
    merge = MergeOp([item("k", ahead)])
    assert r.reads([merge]) == ["k"]  # merges read the row
    run(r, [merge], rows)
    assert stored(rows, "k") == ahead
    op = WriteOp("k", b"mine", NOTHING)
    assert r.reads([op]) == []  # a write does not
    commit = r.apply([op], {}, WALL)
    assert op.timestamp > ahead.max_timestamp
    assert [row.key for row in commit.rows] == ["k"] and decode_versions(commit.rows[0].versions) == op.after
    assert ahead.merge(op.after, LWW) == op.after  # whatever was stored, the new dot wins


def test_siblings_keep_concurrent_writes_and_a_write_with_a_reads_context_supersedes_them() -> None:
    r = replica(SIBLINGS)
    rows: dict[str, bytes] = {}
    run(r, [MergeOp([item("k", versions_of("n1", WALL, b"theirs"))])], rows)
    assert r.reads([WriteOp("k", b"x", NOTHING)]) == ["k"]
    blind = WriteOp("k", b"mine", NOTHING)
    run(r, [blind], rows, WALL + 1)
    held = stored(rows, "k")
    assert {v.value for v in held.versions} == {b"theirs", b"mine"}  # concurrent: both kept
    after_read = WriteOp("k", b"resolved", held.context())
    run(r, [after_read], rows, WALL + 2)
    assert [v.value for v in stored(rows, "k").versions] == [b"resolved"]


def test_max_siblings_supersedes_the_oldest_versions() -> None:
    r = replica(SIBLINGS, max_siblings=3)
    rows: dict[str, bytes] = {}
    for i in range(5):
        run(r, [WriteOp("k", b"v%d" % i, NOTHING)], rows, WALL + i)  # blind writes: each concurrent
    assert [v.value for v in stored(rows, "k").versions] == [b"v4", b"v3", b"v2"]


# --- merges


def test_a_merge_refuses_and_counts_an_undecodable_item() -> None:
    r = replica()
    rows: dict[str, bytes] = {}
    good = versions_of("n1", WALL, b"good")
    op = MergeOp([DataItem(0, "bad", JUNK), item("ok", good)])
    commit = run(r, [op], rows)
    assert r.stats.refused_corrupt == 1 and r.stats.items == 2 and r.stats.keys_changed == 1
    assert op.refused == 1 and op.changed == 1
    assert commit.refused == {"bad"} and [key for key, _ in commit.refusals] == ["bad"]
    assert set(rows) == {"ok"}


def test_a_merge_refuses_an_item_too_far_ahead_of_the_wall_clock_and_the_clock_does_not_follow_it() -> None:
    r = replica(max_clock_offset_ms=10_000)
    rows: dict[str, bytes] = {}
    at_limit = versions_of("n1", WALL + 10_000, b"at the limit")
    beyond = versions_of("n2", WALL + 10_001, b"beyond")
    op = MergeOp([item("a", at_limit), item("b", beyond)])
    commit = run(r, [op], rows)
    assert set(rows) == {"a"} and op.refused == 1 and commit.refused == {"b"}
    assert r.stats.refused_skew == 1 and [key for key, _ in commit.refusals] == ["b"]
    write_op = WriteOp("c", b"x", NOTHING)
    run(r, [write_op], rows)
    assert at_limit.max_timestamp < write_op.timestamp < beyond.max_timestamp  # observed only what it took


def test_a_merge_refuses_old_versions_of_keys_this_member_does_not_hold_but_takes_newer_or_held_ones() -> None:
    r = replica(tombstone_grace_ms=7 * DAY)
    r.member_since_ms = WALL - 30 * DAY  # a member long before those versions were written
    old = versions_of("n1", WALL - 8 * DAY, b"old")  # beyond the grace period
    rows = {"held": encode_versions(versions_of("n2", WALL - 9 * DAY, b"older"))}
    op = MergeOp([item("absent", old), item("held", old), item("recent", versions_of("n1", WALL - DAY, b"new"))])
    commit = run(r, [op], rows)
    assert set(rows) == {"held", "recent"} and old.versions[0] in stored(rows, "held").versions
    assert r.stats.refused_expired == 1 and op.refused == 1 and commit.refused == {"absent"}
    assert commit.refusals == []  # expected after a purge: not logged


def test_old_versions_are_taken_by_a_store_that_joined_after_they_were_written() -> None:
    r = replica(tombstone_grace_ms=7 * DAY)
    r.member_since_ms = WALL - 2 * DAY  # it was not there when they were deleted, so it never purged them
    rows: dict[str, bytes] = {}
    old = versions_of("n1", WALL - 8 * DAY, b"old")
    run(r, [MergeOp([item("absent", old)])], rows)
    assert stored(rows, "absent") == old and r.stats.refused_expired == 0


@pytest.mark.parametrize("mode", [LWW, SIBLINGS])
def test_a_merge_that_changes_nothing_writes_no_row(mode: Resolution) -> None:
    r = replica(mode)
    rows: dict[str, bytes] = {}
    newer = versions_of("n1", WALL + 10, b"newer")
    run(r, [MergeOp([item("k", newer)])], rows)
    superseded = versions_of("n1", WALL, b"older")
    dominated = write(VersionSet(), Dot(pack(WALL + 20), "n2"), newer.context(), b"newest", SIBLINGS, 16)
    run(r, [MergeOp([item("j", dominated)])], rows)
    same = MergeOp([item("k", newer)])
    covered = [item("j", newer)]  # `j` holds a version whose context covers it
    if mode is LWW:
        covered.append(item("k", superseded))  # an older dot loses (in SIBLINGS it would be a sibling)
    older = MergeOp(covered)
    commit = run(r, [same, older], rows)
    assert commit.rows == [] and commit.meta == {} and commit.published == [] and commit.changes() == []
    assert same.changed == older.changed == 0 and r.stats.keys_changed == 2


# --- a corrupt stored row


def test_a_corrupt_row_fails_its_own_writes_and_refuses_merges_while_the_rest_of_the_batch_commits() -> None:
    r = replica(SIBLINGS)
    rows = {"bad": JUNK}
    bad_write, good_write = WriteOp("bad", b"x", NOTHING), WriteOp("good", b"y", NOTHING)
    merge = MergeOp([item("bad", versions_of("n1", WALL, b"remote")), item("other", versions_of("n1", WALL, b"o"))])
    commit = run(r, [bad_write, good_write, merge], rows)
    assert isinstance(bad_write.error, StorageCorruptError) and "bad" in str(bad_write.error)
    assert good_write.error is None and stored(rows, "good") == good_write.after
    assert rows["bad"] == JUNK  # left for an operator
    assert merge.refused == 1 and merge.changed == 1 and commit.refused == {"bad"} and r.stats.refused_corrupt == 1
    assert [i.key for i in commit.published] == ["good"] and {row.key for row in commit.rows} == {"good", "other"}


# --- the tombstone purge


def test_a_purge_deletes_only_keys_holding_only_old_tombstones_and_not_one_the_batch_changed() -> None:
    r = replica(SIBLINGS, tombstone_grace_ms=7 * DAY)
    before = r.purge_bound(WALL)
    tombstone = encode_versions(versions_of("n1", WALL - 8 * DAY, None))
    rows = {
        "gone": tombstone,
        "written": tombstone,
        "revived": tombstone,
        "tombstones": tombstone,
        "live": encode_versions(versions_of("n1", WALL - 8 * DAY, b"value")),
        "recent": encode_versions(versions_of("n1", WALL - DAY, None)),
    }
    purgeable = ["gone", "revived", "tombstones", "written"]
    assert r.purge_candidates(sorted(rows.items()), before) == purgeable
    written = WriteOp("written", b"back", NOTHING)
    revived = versions_of("n2", WALL, b"revived")
    other_tombstone = versions_of("n2", WALL - 9 * DAY, None)  # concurrent: the key then holds two, both old
    keys = [*purgeable, "live", "recent", "absent"]
    purge = MergeOp([item("revived", revived), item("tombstones", other_tombstone)], keys, before)
    commit = run(r, [written, purge], rows)
    assert commit.deletes == ["gone"] and purge.changed == 3  # two merged keys and the purged one
    assert set(rows) == {"written", "revived", "tombstones", "live", "recent"} and r.tombstones_purged == 1
    assert stored(rows, "written") == written.after and revived.versions[0] in stored(rows, "revived").versions
    assert len(stored(rows, "tombstones")) == 2  # changed in this batch: the next sweep decides


def test_a_write_after_a_purge_of_its_key_in_the_same_batch_is_not_deleted() -> None:
    """The commit loop batches a sweep's purge with client writes queued after it. The stores apply a
    commit's rows before its deletes, so a key both written and deleted by one commit would end deleted and
    the write, acknowledged, lost on this replica (as it was until this test found it): the purge gives way."""
    r = replica(SIBLINGS, tombstone_grace_ms=7 * DAY)
    rows = {"k": encode_versions(versions_of("n1", WALL - 8 * DAY, None))}
    written = WriteOp("k", b"back", NOTHING)
    commit = run(r, [MergeOp((), ["k"], r.purge_bound(WALL)), written], rows)
    assert written.error is None and [i.key for i in commit.published] == ["k"]
    assert "k" not in commit.deletes and stored(rows, "k") == written.after


# --- the clock floor


def test_the_clock_floor_moves_when_the_newest_timestamp_reaches_it_and_only_once_stored() -> None:
    r = replica()
    rows: dict[str, bytes] = {}
    first = r.apply([WriteOp("a", b"1", NOTHING)], {}, WALL)
    assert first.meta == {META_HLC: str(WALL + HLC_RESERVE_MS).encode()} and first.reserved_ms == WALL + HLC_RESERVE_MS
    assert r.reserved_ms == 0  # not durable yet: a commit that failed must not move it
    retry = run(r, [WriteOp("a", b"1", NOTHING)], rows, WALL + 1)  # the first commit failed: reserved again
    assert retry.meta == {META_HLC: str(WALL + 1 + HLC_RESERVE_MS).encode()}
    assert r.reserved_ms == WALL + 1 + HLC_RESERVE_MS
    below = run(r, [WriteOp("b", b"2", NOTHING)], rows, WALL + HLC_RESERVE_MS)
    assert below.meta == {} and below.reserved_ms == 0 and r.reserved_ms == WALL + 1 + HLC_RESERVE_MS
    # A merged timestamp reaching the floor moves it too (every stored timestamp stays at or below it).
    ahead = versions_of("n1", WALL + 1 + HLC_RESERVE_MS, b"x")
    reached = run(r, [MergeOp([item("c", ahead)])], rows, WALL + HLC_RESERVE_MS)
    assert reached.reserved_ms == WALL + 1 + 2 * HLC_RESERVE_MS == r.reserved_ms
    assert all(physical_ms(decode_versions(v).max_timestamp) <= r.reserved_ms for v in rows.values())


# --- what a commit tells others


def test_published_holds_each_locally_written_key_once_with_its_whole_set_and_nothing_for_merges() -> None:
    r = replica(SIBLINGS)
    rows: dict[str, bytes] = {}
    first, second, other = WriteOp("k", b"1", NOTHING), WriteOp("k", b"2", NOTHING), WriteOp("j", None, NOTHING)
    merge = MergeOp([item("m", versions_of("n1", WALL, b"remote"))])
    commit = run(r, [first, merge, second, other], rows)
    assert [i.key for i in commit.published] == ["k", "j"]
    by_key = {i.key: i for i in commit.published}
    assert decode_versions(by_key["k"].versions) == second.after and len(second.after) == 2  # both siblings
    assert by_key["k"].id == update_id("k", second.timestamp, "n0")
    assert decode_versions(by_key["j"].versions) == other.after
    only_merge = run(r, [MergeOp([item("m2", versions_of("n1", WALL, b"remote"))])], rows)
    assert only_merge.published == [] and only_merge.written == {}


def test_changes_list_client_keys_only_with_local_and_deleted_flags() -> None:
    r = replica(SIBLINGS)
    rows: dict[str, bytes] = {}
    deleted = WriteOp("gone", None, NOTHING)
    written = WriteOp("here", b"v", NOTHING)
    internal = WriteOp("\x00member/n0", b"record", NOTHING)
    remote = versions_of("n1", WALL, b"theirs")
    commit = run(r, [deleted, written, internal, MergeOp([item("\x00member/n1", remote), item("far", remote)])], rows)
    assert {row.key for row in commit.rows} == {"gone", "here", "\x00member/n0", "\x00member/n1", "far"}
    digests = {row.key: row.digest for row in commit.rows}
    assert commit.changes() == [
        Change("gone", deleted.timestamp, "n0", True, True, commit.stamp, digests["gone"]),
        Change("here", written.timestamp, "n0", False, True, commit.stamp, digests["here"]),
        Change("far", remote.max_timestamp, "n1", False, False, commit.stamp, digests["far"]),
    ]


# --- contexts from clients


def test_check_context_refuses_a_context_from_the_future_unless_the_clock_issued_or_observed_it() -> None:
    r = replica(max_clock_offset_ms=10_000)
    future = pack(WALL + 10_001)
    r.check_context(VersionVector.of({"n1": pack(WALL + 10_000)}), WALL)  # within the offset
    with pytest.raises(ClockSkewError):
        r.check_context(VersionVector.of({"n1": future}), WALL)
    rows: dict[str, bytes] = {}
    observed = versions_of("n1", WALL + 10_001, b"x")
    run(r, [MergeOp([item("k", observed)])], rows, WALL + 1)  # taken: within the offset of that wall clock
    r.check_context(observed.context(), WALL)  # the clock has been there: not from the future
    op = WriteOp("k", b"y", observed.context())
    run(r, [op], rows, WALL + 2)
    r.check_context(op.after.context(), WALL)  # issued by this clock, however far ahead of the wall clock
    with pytest.raises(ClockSkewError):
        r.check_context(VersionVector.of({"n1": op.timestamp + pack(1)}), WALL)
