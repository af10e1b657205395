"""Sync points (`dsm.core.anti_entropy.Exchanges`, `dsm.core.watch_cursor`): two cores wired together by hand
(h11's ConnectionPair style), each over an in-memory replica committed through the product's `Replica` (so
rows carry commit stamps), run whole anti-entropy exchanges. An exchange leaves a sync point each way when
every entry was merged and every step answered in full; none from a side that refused an entry; none kept by
a side whose step was cut by `anti_entropy_max_bytes`. And how a watch resumes with them (`choose`)."""

from __future__ import annotations

import itertools
import random
from collections import deque
from typing import Any

from dsm.core.anti_entropy import MAX_EXCHANGES, ReconcileStep, SyncPorts, is_opening, run_step
from dsm.core.encoding import decode_versions, encode_versions
from dsm.core.hlc import pack
from dsm.core.messages import DataItem, Reconcile, Send, SyncPoint
from dsm.core.node_core import NodeCore
from dsm.core.peer import Peer, PeerSettings
from dsm.core.reconcile import ENTRIES_MAX, WANT, SortedReplica, answer_step, encode_run, opening, short
from dsm.core.replica import MergeOp, Op, Replica, ReplicaSettings
from dsm.core.ring import MemberInfo
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, VersionSet, write
from dsm.core.watch_cursor import Cursor, HeldSyncPoint, Plan, SyncPoints, choose

INFOS = [MemberInfo(f"n{i}", f"mem://n{i}", "r") for i in range(2)]
WALL = 1_700_000_000_000
GRACE_MS = 7 * 24 * 3_600_000


def versions_of(node_id: str, ms: int, value: bytes) -> VersionSet:
    return write(VersionSet(), Dot(pack(ms), node_id), VersionVector(), value, Resolution.SIBLINGS, 16)


class Side:
    """A node: its core (with sync points), its replica's rows and commit stamps, the sync points it kept."""

    def __init__(
        self, index: int, rows: dict[str, VersionSet], max_bytes: int = 1 << 20, offset_ms: int = 10_000
    ) -> None:
        self.name = INFOS[index].node_id
        peer = Peer(INFOS[index], PeerSettings(anti_entropy_max_bytes=max_bytes), random.Random(index), 0)
        peer.install([(info, 0) for info in INFOS])
        self.max_bytes = max_bytes
        self.replica = Replica(self.name, ReplicaSettings(Resolution.SIBLINGS, max_clock_offset_ms=offset_ms))
        self.view = SortedReplica()
        self.seq: dict[str, int] = {}
        self.last_stamp = 0
        ports = SyncPorts(100 + index, lambda: self.last_stamp)
        self.core = NodeCore(peer, Resolution.SIBLINGS, iter(range(1, 1_000_000)).__next__, 0, sync_points=ports)
        self.kept: list[HeldSyncPoint] = []
        self.refused = 0
        if rows:
            self.commit([MergeOp(tuple(DataItem(0, k, encode_versions(v)) for k, v in rows.items()))])

    def commit(self, ops: list[Op]) -> MergeOp | None:
        replica = self.replica
        found = {k: v for k in replica.reads(ops) if (v := self.view.get(k)) is not None}
        commit = replica.apply(ops, found, WALL)
        for row in commit.rows:
            self.view.put(row.key, row.versions, row.digest)
            self.seq[row.key] = row.seq
        replica.stored(commit)
        if commit.stamp:
            self.last_stamp = commit.stamp
        merge = ops[0]
        return merge if isinstance(merge, MergeOp) else None

    def rows(self) -> dict[str, VersionSet]:
        return {k: decode_versions(self.view[k]) for k in self.view}


def exchange(sides: dict[str, Side], opener: str) -> int:
    """Runs one whole exchange opened by `opener` (and the sync points it leaves); returns the messages sent."""
    ae = sides[opener].core.anti_entropy
    assert ae is not None
    (first,) = ae.tick(ae.due)  # the schedule alone: the peers' probes are not wired here
    queue: deque[tuple[str, Any]] = deque([(opener, first)])
    messages = 0
    while queue:
        at, effect = queue.popleft()
        side = sides[at]
        ae = side.core.anti_entropy
        assert ae is not None
        if isinstance(effect, ReconcileStep):
            result = run_step(effect, at, side.view, side.max_bytes)
            out: list[Any] = list(ae.stepped(effect, result))
            if result.reply is not None:
                out.insert(0, Send(effect.node_id, "", result.reply))
            if result.items:
                merge = side.commit([MergeOp(result.items)])
                assert merge is not None
                side.refused += merge.refused
                out.extend(ae.merged(effect, merge.refused == 0))
            queue.extend((at, e) for e in out)
        elif isinstance(effect, Send):
            messages += 1
            assert messages < 100, "the exchange does not end"
            queue.extend((effect.node_id, e) for e in sides[effect.node_id].core.handle(1, at, effect.message))
        elif isinstance(effect, HeldSyncPoint):
            side.kept.append(effect)
    return messages


def pair(left: dict[str, VersionSet], right: dict[str, VersionSet], **kw: int) -> dict[str, Side]:
    return {
        "n0": Side(0, left, kw.get("left_bytes", 1 << 20), kw.get("left_offset_ms", 10_000)),
        "n1": Side(1, right, kw.get("right_bytes", 1 << 20)),
    }


def holds(mine: dict[str, VersionSet], theirs: dict[str, VersionSet]) -> bool:
    """Whether `mine` holds or dominates every version of `theirs`."""
    return all(k in mine and mine[k].merge(v, Resolution.SIBLINGS) == mine[k] for k, v in theirs.items())


def contents() -> tuple[dict[str, VersionSet], dict[str, VersionSet]]:
    common = {f"k{i:04d}": versions_of("n2", WALL - i, b"same") for i in range(300)}
    left, right = dict(common), dict(common)
    left.update({f"a{i:03d}": versions_of("n0", WALL - i, b"left") for i in range(25)})
    right.update({f"b{i:03d}": versions_of("n1", WALL - i, b"right") for i in range(20)})
    for i in range(0, 300, 30):
        left[f"k{i:04d}"] = versions_of("n0", WALL + i, b"left side")
        right[f"k{i:04d}"] = versions_of("n1", WALL + i, b"right side")
    return left, right


def test_an_exchange_that_merged_everything_leaves_a_sync_point_each_way() -> None:
    left, right = contents()
    sides = pair(left, right)
    before = {name: (side.last_stamp, side.rows()) for name, side in sides.items()}
    exchange(sides, "n0")
    a, b = sides["n0"], sides["n1"]
    assert a.rows() == b.rows() and a.refused == b.refused == 0
    # n1 keeps "n0 at its stamp after the merges held everything n1 held at its first step", and the reverse.
    ((kept_at_b,), (kept_at_a,)) = (b.kept, a.kept)
    assert kept_at_b == HeldSyncPoint("n0", 100, a.last_stamp, before["n1"][0])
    assert kept_at_a == HeldSyncPoint("n1", 101, b.last_stamp, before["n0"][0])
    # The claim itself: each side now holds or dominates what the other held at its recorded stamp.
    assert holds(a.rows(), before["n1"][1]) and holds(b.rows(), before["n0"][1])


def test_the_exchange_ends_with_an_explicit_end_that_is_not_answered() -> None:
    side = Side(0, {"k": versions_of("n0", WALL, b"v")})
    same = opening(9, "n1", side.view)
    result = run_step(ReconcileStep("n1", 9, same), "n0", side.view, 1 << 20)
    assert result.reply == Reconcile(9, "n0", (), ()) and result.complete  # equal stores: the end at once
    assert side.core.handle(1, "n1", result.reply) == []  # an end asks nothing: no step
    assert is_opening(same) and not is_opening(result.reply)


def test_no_sync_point_from_a_side_that_refused_an_entry() -> None:
    left, right = contents()
    left["skewed"] = versions_of("n0", WALL + 3_600_000, b"an hour ahead")  # n1 refuses it (clock skew)
    sides = pair(left, right, left_offset_ms=7_200_000)  # n0 took it (a wider offset bound)
    before_a = sides["n0"].rows()
    assert "skewed" in before_a
    exchange(sides, "n0")
    a, b = sides["n0"], sides["n1"]
    assert b.refused == 1 and "skewed" not in b.rows() and not holds(b.rows(), before_a)
    assert a.kept == []  # n1 did not claim to hold what n0 held: it refused part of it
    assert [p.peer for p in b.kept] == ["n0"]  # n0 merged all of n1's entries


def test_a_sync_point_resting_on_a_step_cut_by_max_bytes_is_refused() -> None:
    left, right = contents()
    left.update({f"big{i:03d}": versions_of("n0", WALL - i, b"x" * 200) for i in range(40)})
    sides = pair(left, right, left_bytes=2048)  # n0's answers carry at most 2 KiB of entries
    before_a = sides["n0"].rows()
    exchange(sides, "n0")
    a, b = sides["n0"], sides["n1"]
    assert not holds(b.rows(), before_a)  # n1 did not get everything: the rest waits for the next exchange
    assert a.kept == [] and a.core.anti_entropy is not None
    exchanges = a.core.anti_entropy.exchanges
    assert exchanges is not None and exchanges.refused == 1  # n1 sent one; n0 knows its step was cut
    assert [p.peer for p in b.kept] == ["n0"]
    # A later exchange brings the rest; once nothing is cut, n0 keeps n1's sync point again.
    for _ in range(20):
        if holds(b.rows(), before_a):
            break
        exchange(sides, "n0")
    exchange(sides, "n1")
    assert holds(b.rows(), before_a) and a.kept and {p.peer for p in a.kept} == {"n1"}


def test_a_want_over_a_range_grown_too_large_is_an_incomplete_answer() -> None:
    view = SortedReplica({f"k{i:04d}": b"v" for i in range(ENTRIES_MAX + 1)})
    wanted = [short(d, 1) for _, d in view.digests("", None)]
    reply, _, complete = answer_step(Reconcile(1, "x", (encode_run("", None, WANT, (), wanted[:10]),), ()), "me", view)
    assert reply is None and not complete


def test_a_sync_point_for_an_unknown_exchange_or_from_another_member_is_refused() -> None:
    sides = pair(*contents())
    exchange(sides, "n0")
    b = sides["n1"]
    assert b.core.anti_entropy is not None and b.core.anti_entropy.exchanges is not None
    [session] = [s for peer, s in b.core.anti_entropy.exchanges._records if peer == "n0"]  # n0's exchange
    assert len(b.kept) == 1  # n0's own sync point of it, kept
    assert b.core.handle(1, "n0", SyncPoint(session + 5, "n0", 100, 7)) == []  # no such exchange
    assert b.core.handle(1, "n2", SyncPoint(session, "n2", 100, 7)) == []  # not its peer in it
    assert b.core.handle(1, "n0", SyncPoint(session, "n2", 100, 7)) == []  # naming another member
    assert b.core.handle(1, "n0", SyncPoint(session, "n0", 100, -1)) == []  # a stamp no commit has
    assert b.core.handle(1, "n0", SyncPoint(session, "n0", 100, 7)) == []  # one per exchange: taken already


def test_exchange_records_are_bounded() -> None:
    side = Side(0, {"k": versions_of("n0", WALL, b"v")})
    ae = side.core.anti_entropy
    assert ae is not None and ae.exchanges is not None
    peer_view = SortedReplica()
    for session in range(1, MAX_EXCHANGES + 10):
        step = ReconcileStep("n1", session, opening(session, "n1", peer_view), 5)
        ae.stepped(step, run_step(step, "n0", side.view, 1 << 20))
    assert ae.keep("n1", SyncPoint(1, "n1", 101, 9)) == []  # forgotten: the oldest go first
    assert ae.keep("n1", SyncPoint(MAX_EXCHANGES + 9, "n1", 101, 9)) == [HeldSyncPoint("n1", 101, 9, 5)]


# --- resuming with sync points


def cursor(stamp_ms: int, node: str = "A", epoch: int = 1) -> Cursor:
    return Cursor(node, epoch, pack(stamp_ms))


def test_choose_takes_the_covering_sync_point_with_the_largest_own_stamp() -> None:
    now = WALL
    held = [
        HeldSyncPoint("A", 1, pack(now - 500), pack(now - 600)),
        HeldSyncPoint("A", 1, pack(now - 300), pack(now - 400)),
        HeldSyncPoint("A", 1, pack(now - 100), pack(now - 150)),  # after the cursor: not covering
        HeldSyncPoint("A", 2, pack(now - 400), pack(now - 200)),  # another epoch of A
        HeldSyncPoint("C", 1, pack(now - 400), pack(now - 100)),  # another node
    ]
    assert choose(cursor(now - 200), "B", 9, now, GRACE_MS, held) == (Plan.SYNC_POINT, pack(now - 400))
    assert choose(cursor(now - 550), "B", 9, now, GRACE_MS, held).plan is Plan.RESYNC  # none covers it
    assert choose(cursor(now - 200, epoch=3), "B", 9, now, GRACE_MS, held).plan is Plan.RESYNC
    assert choose(cursor(now - 200), "B", 9, now, GRACE_MS).plan is Plan.RESYNC
    # Its own cursor: the same node's replay, sync points or not.
    assert choose(Cursor("B", 9, pack(now - 200)), "B", 9, now, GRACE_MS, held) == (Plan.SAME_NODE, pack(now - 200))


def test_choose_keeps_the_grace_period_rule_for_the_cursor() -> None:
    now = WALL
    first = HeldSyncPoint("A", 1, pack(now - 2000), 0)  # B held nothing then: it replays every row
    assert choose(cursor(now - 100), "B", 9, now, 1500, [first]) == (Plan.SYNC_POINT, 0)
    assert choose(cursor(now - 1800), "B", 9, now, 1500, [first]).plan is Plan.RESYNC  # the cursor is too old


def test_sync_points_are_bounded_and_kept_across_a_restart_of_the_same_store_only() -> None:
    points = SyncPoints(7)
    for i in range(100):
        points.add(HeldSyncPoint("A", 1, i, 1000 + i))
    kept = [p.peer_stamp for p in points.of("A")]
    # The first and the newest stay, and those between spread out: an old cursor still finds one.
    assert len(kept) == 6 and kept[0] == 0 and kept[-1] == 99 and kept == sorted(kept)
    assert max(b - a for a, b in itertools.pairwise(kept)) < 50
    points.add(HeldSyncPoint("A", 2, 50, 200))  # A's store was replaced: its old epoch's points go
    assert points.of("A") == [HeldSyncPoint("A", 2, 50, 200)]
    for i in range(100):
        points.add(HeldSyncPoint(f"p{i}", 1, i, i))
    assert len(points) == 64 and points.of("A") == [] and points.of("p99") == [HeldSyncPoint("p99", 1, 99, 99)]
    again = SyncPoints.decode(points.encode(), 7)
    assert [again.of(f"p{i}") for i in range(100)] == [points.of(f"p{i}") for i in range(100)]
    assert len(SyncPoints.decode(points.encode(), 8)) == 0  # a store emptied since: another history of stamps
    assert len(SyncPoints.decode(b"\x93garbage", 7)) == 0 and len(SyncPoints.decode(None, 7)) == 0
