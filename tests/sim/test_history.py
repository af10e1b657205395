"""Tests for the history recorder and checker (`dsm.sim.history`).

Small hand-built histories, each property both holding and violated: lost acknowledged writes (and what is
not lost: superseded, unknown or failed writes), stale reads per consistency level and region, resurrected
values, last-writer-wins overwrites, and convergence of the nodes' states. One test drives the real core
(`dsm.core.versions.write` and the merge) for concurrent writers in siblings mode.
"""

from __future__ import annotations

import pytest

from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, VersionSet, write
from dsm.sim.history import (
    Context,
    FinalState,
    Held,
    History,
    Kind,
    Op,
    check,
    check_converged,
    covers,
    held_versions,
)


def put(
    h: History,
    key: str,
    value: bytes | None,
    dot: tuple[int, str],
    start: int,
    end: int,
    *,
    level: str = "local",
    region: str = "eu",
    given: Context | None = None,
    outcome: str = "ok",
    process: str = "c1",
) -> Op:
    """A write (or, with value None, a delete) coordinated by the dot's node, completed with `outcome`."""
    kind: Kind = "write" if value is not None else "delete"
    op = h.invoke(process, kind, key, value, level, region, dot[1], start, given=given)
    if outcome == "ok":
        h.ok(op, end, dot=dot, context={dot[1]: dot[0], **(given or {})})
    elif outcome == "fail":
        h.fail(op, end, "level not met")
    else:
        h.unknown(op, end)
    return op


def get(
    h: History,
    key: str,
    seen: list[tuple[tuple[int, str], bytes]],
    start: int,
    end: int,
    *,
    level: str = "local",
    region: str = "eu",
    node: str = "n1",
    context: Context | None = None,
) -> Op:
    """An ok read; its context defaults to covering exactly the dots it saw."""
    op = h.invoke("reader", "read", key, None, level, region, node, start)
    if context is None and seen:
        context = {}
        for (t, n), _ in seen:
            context[n] = max(context.get(n, 0), t)
    h.ok(op, end, seen=seen, context=context)
    return op


def held(dot: tuple[int, str], value: bytes | None, **context: int) -> Held:
    return Held(dot, context, value)


# ------------------------------------------------------------------ recording


def test_covers() -> None:
    assert covers({"a": 3}, (3, "a"))
    assert covers({"a": 3}, (2, "a"))
    assert not covers({"a": 3}, (4, "a"))
    assert not covers({"a": 3}, (1, "b"))
    assert not covers(None, (1, "a"))


def test_history_records_and_validates() -> None:
    h = History()
    op = h.invoke("c1", "write", "k", b"v", "quorum", "eu", "n1", 10)
    assert (op.id, op.outcome, op.complete_ms) == (0, None, None)
    with pytest.raises(ValueError, match="needs its dot"):
        h.ok(op, 12)
    h.ok(op, 12, dot=(5, "n1"), context={"n1": 5})
    assert (op.outcome, op.complete_ms, op.dot) == ("ok", 12, (5, "n1"))
    with pytest.raises(ValueError, match="already completed"):
        h.fail(op, 13)
    with pytest.raises(ValueError, match="unknown level"):
        h.invoke("c1", "read", "k", None, "most", "eu", "n1", 14)
    with pytest.raises(ValueError, match="needs a value"):
        h.invoke("c1", "write", "k", None, "local", "eu", "n1", 14)
    late = h.invoke("c1", "read", "k", None, "local", "eu", "n1", 20)
    with pytest.raises(ValueError, match="before its invocation"):
        h.ok(late, 19)
    assert len(h) == 2  # the refused invocations were not recorded; the pending read counts as unknown
    assert check(h, {"k": [held((5, "n1"), b"v")]}, "siblings").unknown_outcomes == 1


# ------------------------------------------------------------------ lost writes


def test_lost_acknowledged_write_is_reported() -> None:
    h = History()
    kept = put(h, "k", b"a", (1, "n1"), 0, 1)
    gone = put(h, "k", b"b", (2, "n2"), 0, 1)
    report = check(h, {"k": [held((1, "n1"), b"a")]}, "siblings")
    assert report.lost == [gone]
    assert not report.ok
    assert "lost 1" in report.summary() and f"op {gone.id}" in report.summary()
    # A key missing altogether loses every acknowledged write of it.
    assert check(h, {}, "siblings").lost == [kept, gone]


def test_superseded_write_is_not_lost() -> None:
    h = History()
    put(h, "k", b"a", (1, "n1"), 0, 1)
    put(h, "k", b"b", (2, "n2"), 2, 3, given={"n1": 1})
    report = check(h, {"k": [held((2, "n2"), b"b", n1=1)]}, "siblings")
    assert report.ok and report.lost == [] and report.overwritten == []


def test_unknown_or_failed_writes_are_never_required() -> None:
    h = History()
    put(h, "k", b"a", (1, "n1"), 0, 1)
    put(h, "k", b"b", (2, "n2"), 0, 5, outcome="unknown")
    put(h, "k", b"c", (3, "n3"), 0, 5, outcome="fail")
    # Absent: fine. Present (a failed write can land and spread): fine too.
    assert check(h, {"k": [held((1, "n1"), b"a")]}, "siblings").ok
    report = check(h, {"k": [held((1, "n1"), b"a"), held((3, "n3"), b"c")]}, "siblings")
    assert report.ok and report.unknown_outcomes == 1


def test_lost_delete_is_reported() -> None:
    h = History()
    put(h, "k", b"a", (1, "n1"), 0, 1)
    delete = put(h, "k", None, (2, "n1"), 2, 3, given={"n1": 1})
    assert check(h, {"k": [held((2, "n1"), None, n1=1)]}, "siblings").ok
    report = check(h, {"k": []}, "siblings")
    assert delete in report.lost


# ------------------------------------------------------------------ last-writer-wins


def test_lww_overwrite_is_counted_not_lost() -> None:
    h = History()
    loser = put(h, "k", b"a", (1, "n1"), 0, 2)
    put(h, "k", b"b", (2, "n2"), 0, 2)
    final: FinalState = {"k": [held((2, "n2"), b"b")]}
    report = check(h, final, "lww")
    assert report.ok
    assert report.overwritten == [loser] and report.lost == []
    assert "overwritten 1 (lww)" in report.summary()
    # The same history in siblings mode lost a write: both should have been kept.
    siblings = check(h, final, Resolution.SIBLINGS)
    assert siblings.lost == [loser] and siblings.overwritten == []


def test_lww_write_missing_without_a_larger_dot_is_lost() -> None:
    h = History()
    put(h, "k", b"a", (1, "n1"), 0, 2)
    newest = put(h, "k", b"b", (2, "n2"), 0, 2)
    report = check(h, {"k": [held((1, "n1"), b"a")]}, "lww")
    assert report.lost == [newest] and report.overwritten == []


def test_lww_read_that_saw_a_larger_dot_is_not_stale() -> None:
    h = History()
    put(h, "k", b"a", (1, "n1"), 0, 2, level="quorum")
    get(h, "k", [((2, "n2"), b"b")], 3, 4, level="quorum")
    assert check(h, {"k": [held((2, "n2"), b"b")]}, "lww").stale_reads == []
    # In siblings mode the larger dot did not replace the write: the read had to return both.
    assert len(check(h, {"k": [held((2, "n2"), b"b")]}, "siblings").stale_reads) == 1


# ------------------------------------------------------------------ stale reads


def test_stale_region_quorum_read_is_reported_but_a_local_read_is_not() -> None:
    h = History()
    w = put(h, "k", b"new", (5, "n1"), 0, 10, level="region_quorum", region="eu")
    local = get(h, "k", [((1, "n2"), b"old")], 11, 12, level="local", region="eu")
    stale = get(h, "k", [((1, "n2"), b"old")], 11, 12, level="region_quorum", region="eu")
    fresh = get(h, "k", [((5, "n1"), b"new"), ((1, "n2"), b"old")], 11, 12, level="region_quorum", region="eu")
    final: FinalState = {"k": [held((5, "n1"), b"new"), held((1, "n2"), b"old")]}
    report = check(h, final, "siblings")
    assert [(s.read, s.missed) for s in report.stale_reads] == [(stale, (w,))]
    assert local is not stale and fresh is not stale
    assert not report.ok and "stale reads 1" in report.summary()


def test_read_concurrent_with_the_write_need_not_observe_it() -> None:
    h = History()
    put(h, "k", b"new", (5, "n1"), 0, 10, level="region_quorum")
    get(h, "k", [], 10, 12, level="region_quorum")  # invoked when the write completed: not after
    assert check(h, {"k": [held((5, "n1"), b"new")]}, "siblings").ok


def test_region_quorum_read_in_another_region_is_not_bound() -> None:
    h = History()
    put(h, "k", b"eu", (5, "n1"), 0, 10, level="region_quorum", region="eu")
    get(h, "k", [], 11, 12, level="region_quorum", region="us", context={})
    # A quorum read does not meet a region_quorum write either (a majority of all need not include a
    # majority of one region).
    get(h, "k", [], 11, 12, level="quorum", region="eu", context={})
    assert check(h, {"k": [held((5, "n1"), b"eu")]}, "siblings").ok


def test_quorum_read_must_observe_a_quorum_write_from_any_region() -> None:
    h = History()
    w = put(h, "k", b"eu", (5, "n1"), 0, 10, level="quorum", region="eu")
    missed = get(h, "k", [], 11, 12, level="quorum", region="us", context={})
    get(h, "k", [((5, "n1"), b"eu")], 11, 12, level="quorum", region="ap")
    get(h, "k", [], 11, 12, level="all", region="ap", context={"n1": 5})  # saw it superseded: fine
    report = check(h, {"k": [held((5, "n1"), b"eu")]}, "siblings")
    assert [(s.read, s.missed) for s in report.stale_reads] == [(missed, (w,))]


def test_each_region_quorum_meets_every_region() -> None:
    h = History()
    each = put(h, "k", b"x", (5, "n1"), 0, 10, level="each_region_quorum", region="eu")
    us = get(h, "k", [], 11, 12, level="region_quorum", region="us", context={})
    rq = put(h, "j", b"y", (6, "n2"), 0, 10, level="region_quorum", region="us")
    strong = get(h, "j", [], 11, 12, level="each_region_quorum", region="eu", context={})
    final: FinalState = {"k": [held((5, "n1"), b"x")], "j": [held((6, "n2"), b"y")]}
    report = check(h, final, "siblings")
    assert [(s.read, s.missed) for s in report.stale_reads] == [(us, (each,)), (strong, (rq,))]


def test_a_read_that_saw_a_superseding_write_observed_the_superseded_one() -> None:
    h = History()
    put(h, "k", b"a", (1, "n1"), 0, 1, level="quorum")
    b = put(h, "k", b"b", (2, "n2"), 2, 3, level="quorum", given={"n1": 1})
    # The read's context (wrongly, to isolate the rule) covers only the newer write.
    get(h, "k", [((2, "n2"), b"b")], 4, 5, level="quorum", context={"n2": 2})
    assert check(h, {"k": [held((2, "n2"), b"b", n1=1)]}, "siblings").ok
    # Missing both, only the unsuperseded write is named.
    stale = get(h, "k", [], 6, 7, level="quorum", context={})
    report = check(h, {"k": [held((2, "n2"), b"b", n1=1)]}, "siblings")
    assert [(s.read, s.missed) for s in report.stale_reads] == [(stale, (b,))]


def test_not_found_read_after_delete() -> None:
    h = History()
    put(h, "k", b"a", (1, "n1"), 0, 1, level="quorum")
    put(h, "k", None, (2, "n1"), 2, 3, level="quorum", given={"n1": 1})
    # The real client's not-found carries no context: the delete explains the absence.
    get(h, "k", [], 4, 5, level="quorum")
    final: FinalState = {"k": [held((2, "n1"), None, n1=1)]}
    assert check(h, final, "siblings").ok
    # Without a delete that could have removed it, absence misses the write.
    h2 = History()
    w = put(h2, "k", b"a", (1, "n1"), 0, 1, level="quorum")
    blind = put(h2, "k", None, (2, "n2"), 0, 1, level="quorum")  # blind: does not supersede the write
    read = get(h2, "k", [], 4, 5, level="quorum")
    final2: FinalState = {"k": [held((1, "n1"), b"a"), held((2, "n2"), None)]}
    report = check(h2, final2, "siblings")
    assert [(s.read, s.missed) for s in report.stale_reads] == [(read, (w,))]
    assert blind not in report.lost


# ------------------------------------------------------------------ resurrection


def test_resurrected_deleted_value_is_reported() -> None:
    h = History()
    put(h, "k", b"a", (1, "n1"), 0, 1)
    delete = put(h, "k", None, (2, "n2"), 2, 3, given={"n1": 1})
    # The value the delete superseded is back beside its tombstone.
    report = check(h, {"k": [held((2, "n2"), None, n1=1), held((1, "n1"), b"a")]}, "siblings")
    assert [(r.key, r.dot, r.value, r.by) for r in report.resurrected] == [("k", (1, "n1"), b"a", delete)]
    assert not report.ok and "resurrected 1" in report.summary()


def test_concurrent_sibling_of_a_blind_delete_is_not_resurrected() -> None:
    h = History()
    put(h, "k", b"a", (1, "n1"), 0, 1)
    delete = put(h, "k", None, (2, "n1"), 2, 3)
    # Its result context covers the sibling, which the blind delete did not supersede.
    assert covers(delete.context, (1, "n1"))
    report = check(h, {"k": [held((2, "n1"), None), held((1, "n1"), b"a")]}, "siblings")
    assert report.ok and report.resurrected == []


# ------------------------------------------------------------------ convergence


def test_check_converged_detects_differing_nodes() -> None:
    a: FinalState = {"k": [held((1, "n1"), b"a")], "j": [held((2, "n2"), b"b", n1=1)]}
    same: FinalState = {"j": [Held((2, "n2"), {"n1": 1}, b"b")], "k": [((1, "n1"), {}, b"a")]}
    assert check_converged({"n1": a, "n2": same}) == []
    other_context: FinalState = {"k": [held((1, "n1"), b"a")], "j": [held((2, "n2"), b"b", n1=0)]}
    missing: FinalState = {"j": a["j"]}
    assert check_converged({"n1": a, "n2": other_context, "n3": same}) == ["j"]
    assert check_converged({"n1": a, "n2": missing}) == ["k"]


# ------------------------------------------------------------------ with the real core


def test_real_core_concurrent_writers_lose_nothing() -> None:
    mode = Resolution.SIBLINGS
    h = History()
    empty = VersionSet()
    # Two coordinators write the key blind and concurrently; their replicas then exchange whole sets.
    at_a = write(empty, Dot(1, "a"), VersionVector(), b"from-a", mode, 8)
    at_b = write(empty, Dot(2, "b"), VersionVector(), b"from-b", mode, 8)
    put(h, "k", b"from-a", at_a.versions[0].dot, 0, 1, level="local", process="c1")
    put(h, "k", b"from-b", at_b.versions[0].dot, 0, 1, level="local", process="c2")
    merged = at_a.merge(at_b, mode)
    read = h.invoke("c3", "read", "k", None, "local", "eu", "a", 2)
    seen = [(v.dot, v.value) for v in merged.live if v.value is not None]
    h.ok(read, 3, seen=seen, context=merged.context().as_dict())
    # c3 supersedes both siblings at a, while c4 writes blind at b once more.
    given = merged.context()
    at_a = write(merged, Dot(3, "a"), given, b"resolved", mode, 8)
    put(h, "k", b"resolved", Dot(3, "a"), 4, 5, given=given.as_dict(), process="c3")
    at_b = write(merged, Dot(4, "b"), VersionVector(), b"blind", mode, 8)
    put(h, "k", b"blind", Dot(4, "b"), 4, 5, process="c4")
    final_a, final_b = at_a.merge(at_b, mode), at_b.merge(at_a, mode)
    states = {"a": {"k": held_versions(final_a)}, "b": {"k": held_versions(final_b)}}
    assert check_converged(states) == []
    assert sorted(v.value or b"" for v in final_a.versions) == [b"blind", b"resolved"]
    report = check(h, states["a"], mode)
    assert report.ok, report.summary()
    assert report.lost == [] and report.resurrected == [] and report.stale_reads == []
    # A replica that dropped the blind write (a broken merge) loses an acknowledged write.
    broken = {"k": held_versions(at_a)}
    assert [op.value for op in check(h, broken, mode).lost] == [b"blind"]
