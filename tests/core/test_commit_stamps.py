"""Commit stamps (`Commit.stamp`, `StoredKey.seq`, `Change.stamp`): each commit that changes rows takes a
reading of the replica's clock, above the stamp of every earlier commit, and stores it as every changed row's
`seq` (what a watch resumes from). Run as the node's commit loop runs the rule, on a dict of rows."""

from __future__ import annotations

from dsm.core.hlc import pack
from dsm.core.replica import Commit, MergeOp, Op, Replica, ReplicaSettings, WriteOp, expiry_of
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, VersionSet, write
from test_replica import item, versions_of

WALL = 1_700_000_000_000
NOTHING = VersionVector()


def run(r: Replica, batch: list[Op], rows: dict[str, bytes], wall_ms: int = WALL) -> Commit:
    commit = r.apply(batch, {k: rows[k] for k in r.reads(batch) if k in rows}, wall_ms)
    for row in commit.rows:
        rows[row.key] = row.versions
    r.stored(commit)
    return commit


def test_every_row_and_change_of_a_commit_carries_its_stamp_and_stamps_increase() -> None:
    r = Replica("n0", ReplicaSettings(Resolution.LWW), "mem://test")
    rows: dict[str, bytes] = {}
    stamps = []
    for i in range(5):
        batch: list[Op] = [WriteOp(f"k{j}", b"v%d" % i, NOTHING) for j in range(i + 1)]
        commit = run(r, batch, rows)
        assert commit.stamp and {row.seq for row in commit.rows} == {commit.stamp}
        changes = commit.changes()
        assert [c.stamp for c in changes] == [commit.stamp] * len(changes)
        assert [c.digest for c in changes] == [row.digest for row in commit.rows]
        # The stamp is not below any dot of the commit: nothing it stored is newer than its position.
        assert commit.stamp >= max(op.timestamp for op in batch if isinstance(op, WriteOp))
        stamps.append(commit.stamp)
    assert stamps == sorted(set(stamps))


def test_a_commit_of_old_remote_versions_is_stamped_above_every_earlier_commit() -> None:
    """Replicated versions may be far older than what this node wrote: the stamp is a new clock reading, not
    their timestamps (a cursor taken after the earlier commits must still see them)."""
    r = Replica("n0", ReplicaSettings(Resolution.SIBLINGS), "mem://test")
    rows: dict[str, bytes] = {}
    first = run(r, [WriteOp("mine", b"v", NOTHING)], rows)
    old = versions_of("n9", WALL - 60_000, b"old")
    merged = run(r, [MergeOp([item("theirs", old)])], rows)
    assert merged.rows and merged.stamp > first.stamp > old.max_timestamp
    assert merged.rows[0].seq == merged.stamp
    # A write, then a merge in the same batch: the merge moved nothing, the write's dot is still the newest.
    mixed = run(r, [WriteOp("a", b"1", NOTHING), MergeOp([item("b", versions_of("n9", WALL - 1, b"x"))])], rows)
    assert mixed.stamp > merged.stamp and {row.seq for row in mixed.rows} == {mixed.stamp}


def test_a_commit_that_changes_no_row_takes_no_stamp() -> None:
    r = Replica("n0", ReplicaSettings(Resolution.SIBLINGS), "mem://test")
    rows: dict[str, bytes] = {}
    versions = versions_of("n9", WALL - 10, b"x")
    run(r, [MergeOp([item("k", versions)])], rows)
    last = r.clock.last
    again = run(r, [MergeOp([item("k", versions)], meta={"m": b"1"})], rows)  # nothing new
    assert not again.rows and again.stamp == 0 and r.clock.last == last


def test_expiry_of_is_when_the_last_live_value_expires() -> None:
    def one(node: str, ms: int, value: bytes | None, expires_ms: int = 0) -> VersionSet:
        return write(VersionSet(), Dot(pack(ms), node), NOTHING, value, Resolution.SIBLINGS, 16, expires_ms=expires_ms)

    assert expiry_of(one("a", WALL, b"v")) is None
    assert expiry_of(one("a", WALL, None)) is None
    assert expiry_of(one("a", WALL, b"v", WALL + 5)) == WALL + 5
    both = one("a", WALL, b"v", WALL + 5).merge(one("b", WALL, b"w", WALL + 9), Resolution.SIBLINGS)
    assert expiry_of(both) == WALL + 9
    # A sibling that never expires keeps the key present: no moment of expiry.
    assert expiry_of(both.merge(one("c", WALL, b"u"), Resolution.SIBLINGS)) is None
    # A tombstone sibling does not keep it present.
    assert expiry_of(both.merge(one("d", WALL, None), Resolution.SIBLINGS)) == WALL + 9
