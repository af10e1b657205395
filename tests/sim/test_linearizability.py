"""Tests for the linearizability checker (`dsm.sim.linearizability`) and its `History` adapter.

Hand-built histories on both sides of the line: concurrent operations that can be ordered, pending operations
that took effect or not, refused compare-and-sets; and the classic violations (a stale read after a completed
write, two creates of one key both succeeding, a read going back in time, a lost update from two
read-then-cas clients, a refused cas whose condition held). P-compositionality (one bad key among many), the
budget (a pathological history ends `unknown`), and two randomized properties: a history cut from a
sequential execution is accepted and, with one read changed to a value never written, rejected; and on small
arbitrary histories the checker agrees with a brute-force search over every order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsm.sim.history import History, Op
from dsm.sim.history import check as check_eventual
from dsm.sim.linearizability import (
    CheckResult,
    Operation,
    OpKind,
    Verdict,
    check,
    check_history,
    operations_from_history,
)

_ids = iter(range(1_000_000))


def rd(value: bytes | None, start: int, end: int, *, key: str = "k", client: str = "r") -> Operation:
    """A completed read that returned `value` (None: absent)."""
    observed = () if value is None else (value,)
    return Operation(next(_ids), client, key, OpKind.READ, start, end, observed=observed)


def wr(value: bytes, start: int, end: int | None, *, key: str = "k", client: str = "w") -> Operation:
    """A write; `end` None: its answer was lost."""
    return Operation(next(_ids), client, key, OpKind.WRITE, start, end, value)


def cas(
    expected: bytes | None,
    value: bytes,
    start: int,
    end: int | None,
    ok: bool = True,
    *,
    key: str = "k",
    client: str = "c",
) -> Operation:
    """A compare-and-set (`expected` None: if_absent) that answered ok or failed, or (end None) never answered."""
    return Operation(next(_ids), client, key, OpKind.CAS, start, end, value, True, expected, ok=ok)


def dl(
    start: int,
    end: int | None,
    *,
    expected: bytes | None = None,
    conditional: bool = False,
    ok: bool = True,
    key: str = "k",
) -> Operation:
    return Operation(next(_ids), "d", key, OpKind.DELETE, start, end, None, conditional, expected, ok=ok)


def verdict(*ops: Operation) -> Verdict:
    return check(ops).verdict


# ------------------------------------------------------------------ accepted


def test_overlapping_writes_can_take_effect_in_either_order() -> None:
    # b's write overlaps a's, so it may come first: reads after both see a, then a later read still a.
    assert verdict(wr(b"a", 0, 10), wr(b"b", 5, 15), rd(b"a", 16, 20), rd(b"a", 21, 22)) == Verdict.OK
    assert verdict(wr(b"a", 0, 10), wr(b"b", 5, 15), rd(b"b", 16, 20)) == Verdict.OK
    # A read overlapping a write may see either side of it, and equal times overlap.
    assert verdict(wr(b"a", 0, 10), rd(None, 10, 12), rd(b"a", 13, 14)) == Verdict.OK


def test_pending_write_may_take_effect_late_or_never() -> None:
    base = wr(b"a", 0, 5)
    assert verdict(base, wr(b"b", 6, None), rd(b"b", 10, 12), rd(b"b", 13, 14)) == Verdict.OK
    assert verdict(base, wr(b"b", 6, None), rd(b"a", 10, 12), rd(b"a", 13, 14)) == Verdict.OK
    # Long after its invocation (a Paxos proposal another proposer completes).
    assert verdict(base, wr(b"b", 6, None), rd(b"a", 10, 12), rd(b"b", 100, 101)) == Verdict.OK
    # But only once: b does not come back after a later write.
    late = verdict(base, wr(b"b", 6, None), rd(b"b", 10, 12), wr(b"c", 20, 21), rd(b"b", 30, 31))
    assert late == Verdict.VIOLATION
    # And never before its invocation.
    assert verdict(base, rd(b"b", 6, 7), wr(b"b", 8, None)) == Verdict.VIOLATION


def test_pending_cas_takes_effect_only_if_its_condition_holds_then() -> None:
    assert verdict(wr(b"a", 0, 5), cas(b"a", b"b", 6, None), rd(b"b", 10, 11)) == Verdict.OK
    assert verdict(wr(b"a", 0, 5), cas(b"a", b"b", 6, None), rd(b"a", 10, 11)) == Verdict.OK
    assert verdict(wr(b"a", 0, 5), cas(b"x", b"b", 6, None), rd(b"b", 10, 11)) == Verdict.VIOLATION


def test_failed_cas_and_if_absent_race() -> None:
    assert verdict(wr(b"a", 0, 5), cas(b"b", b"c", 6, 8, ok=False), rd(b"a", 9, 10)) == Verdict.OK
    # Two concurrent creates: one wins, the other is refused, whichever went first.
    assert verdict(cas(None, b"x", 0, 10), cas(None, b"y", 2, 8, ok=False), rd(b"x", 11, 12)) == Verdict.OK
    # A refused create that overlaps a delete of the value it saw.
    assert verdict(wr(b"a", 0, 5), cas(None, b"c", 6, 10, ok=False), dl(7, 9), rd(None, 11, 12)) == Verdict.OK


def test_conditional_delete() -> None:
    assert verdict(wr(b"a", 0, 5), dl(6, 8, expected=b"a", conditional=True), rd(None, 9, 10)) == Verdict.OK
    refused = dl(6, 8, expected=b"z", conditional=True, ok=False)
    assert verdict(wr(b"a", 0, 5), refused, rd(b"a", 9, 10)) == Verdict.OK
    # if_absent delete of a present key must fail.
    wrong = dl(6, 8, expected=None, conditional=True, ok=True)
    assert verdict(wr(b"a", 0, 5), wrong) == Verdict.VIOLATION


def test_empty_and_pending_only_histories_are_ok() -> None:
    assert check([]).verdict == Verdict.OK
    assert verdict(wr(b"a", 0, None), cas(None, b"b", 1, None)) == Verdict.OK
    # A pending read constrains nothing (it would be a violation if it had returned b"zz").
    pending_read = Operation(next(_ids), "r", "k", OpKind.READ, 0, None)
    assert check([wr(b"a", 0, 1), pending_read]).ops == 1


# ------------------------------------------------------------------ caught


def test_stale_read_after_completed_write() -> None:
    a, b, stale = wr(b"a", 0, 5), wr(b"b", 6, 10), rd(b"a", 11, 12)
    result = check([a, b, stale])
    assert result.verdict == Verdict.VIOLATION
    bad = result.violation
    assert bad is not None and bad.key == "k"
    assert bad.prefix == (a, b) and bad.state == b"b"
    assert bad.unplaced == (stale,)
    assert "its result contradicts the register" in bad.explain()


def test_two_creates_both_succeed() -> None:
    first, second = cas(None, b"x", 0, 10, client="c1"), cas(None, b"y", 2, 8, client="c2")
    result = check([first, second])
    assert result.verdict == Verdict.VIOLATION
    assert result.violation is not None and len(result.violation.prefix) == 1


def test_read_goes_back_in_time() -> None:
    # b's write is still running, so either read alone is fine; both in this order are not.
    assert verdict(wr(b"a", 0, 5), wr(b"b", 6, 30), rd(b"b", 10, 12), rd(b"a", 14, 16)) == Verdict.VIOLATION
    assert verdict(wr(b"a", 0, 5), wr(b"b", 6, 30), rd(b"a", 10, 12), rd(b"b", 14, 16)) == Verdict.OK


def test_lost_update_from_two_read_then_cas_clients() -> None:
    ops = [
        wr(b"0", 0, 5),
        rd(b"0", 6, 8, client="c1"),
        rd(b"0", 6, 8, client="c2"),
        cas(b"0", b"1-by-c1", 10, 14, client="c1"),
        cas(b"0", b"1-by-c2", 10, 14, client="c2"),
    ]
    assert check(ops).verdict == Verdict.VIOLATION
    # The same with the second cas refused is how it should go.
    ops[-1] = replace(ops[-1], ok=False)
    assert check(ops).verdict == Verdict.OK


def test_refused_cas_whose_condition_held() -> None:
    assert verdict(wr(b"a", 0, 5), cas(b"a", b"c", 6, 8, ok=False)) == Verdict.VIOLATION


def test_siblings_are_no_register_answer() -> None:
    siblings = Operation(next(_ids), "r", "k", OpKind.READ, 11, 12, observed=(b"a", b"b"))
    assert verdict(wr(b"a", 0, 10), wr(b"b", 0, 10), siblings) == Verdict.VIOLATION


def test_violation_found_among_many_clean_keys() -> None:
    ops: list[Operation] = []
    for k in range(300):
        key = f"key-{k}"
        ops += [wr(b"a", 0, 10, key=key), cas(b"a", b"b", 5, 20, key=key), rd(b"b", 21, 22, key=key)]
    ops += [wr(b"a", 0, 5, key="key-137"), rd(b"zz", 30, 31, key="key-137")]  # never written
    result = check(ops)
    assert result.verdict == Verdict.VIOLATION
    assert [r.key for r in result.violations] == ["key-137"]
    assert result.keys == 300 and result.ops == 902
    assert sum(r.verdict == Verdict.OK for r in result.results) == 299


# ------------------------------------------------------------------ the budget


def pathological(writers: int) -> list[Operation]:
    """Concurrent writes of distinct values, then a read of a value never written: refuting it means trying
    every subset of the writes in turn (the cache holds each (subset, last value) once)."""
    ops = [wr(f"v{i}".encode(), 0, 100, client=f"c{i}") for i in range(writers)]
    return [*ops, rd(b"never", 101, 102)]


def test_budget_returns_unknown_on_pathological_history() -> None:
    result = check(pathological(30), max_steps=20_000)
    assert result.verdict == Verdict.UNKNOWN
    assert [r.key for r in result.unknown] == ["k"] and result.unknown[0].steps > 20_000
    # A small enough instance of the same shape is refuted outright.
    assert check(pathological(6), max_steps=None).verdict == Verdict.VIOLATION


def test_timeout_returns_unknown_and_skips_later_keys() -> None:
    ticks = iter(range(1_000_000))
    ops = [*pathological(30), wr(b"a", 0, 1, key="later")]
    result = check(ops, max_steps=None, timeout_s=3, clock=lambda: float(next(ticks)))
    assert result.verdict == Verdict.UNKNOWN
    assert {r.key for r in result.unknown} == {"k", "later"}


def test_violation_beats_unknown() -> None:
    ops = [*pathological(30), wr(b"a", 0, 5, key="bad"), rd(None, 6, 7, key="bad")]
    result = check(ops, max_steps=20_000)
    assert result.verdict == Verdict.VIOLATION and not result.ok
    assert [r.key for r in result.unknown] == ["k"]
    assert "1 unknown" in result.summary()


# ------------------------------------------------------------------ the simulator's History


def record_conditional(
    h: History, process: str, value: bytes, start: int, end: int, outcome: str, **cond: object
) -> Op:
    op = h.invoke(process, "write", "lock", value, "quorum", "eu", "n1", start, **cond)  # type: ignore[arg-type]
    if outcome == "ok":
        h.ok(op, end, dot=(start, "n1"), context={"n1": start})
    elif outcome == "precondition_failed":
        h.precondition_failed(op, end, context={"n1": 1})
    else:
        h.unknown(op, end)
    return op


def test_history_adapter_creates() -> None:
    h = History()
    record_conditional(h, "c1", b"c1", 0, 10, "ok", condition="if_absent")
    record_conditional(h, "c2", b"c2", 2, 12, "precondition_failed", condition="if_absent")
    record_conditional(h, "c3", b"c3", 3, 13, "unknown", condition="if_match", expected=b"c1")
    read = h.invoke("r", "read", "lock", None, "linearizable", "eu", "n2", 20)
    h.ok(read, 21, seen=[((3, "n1"), b"c3")], context={"n1": 3})
    plain = h.invoke("r", "read", "lock", None, "quorum", "eu", "n2", 30)  # not selected by default
    h.ok(plain, 31, seen=[], context={})
    ops = operations_from_history(h)
    assert [(o.kind, o.conditional, o.expected, o.ok, o.pending) for o in ops] == [
        (OpKind.CAS, True, None, True, False),
        (OpKind.CAS, True, None, False, False),
        (OpKind.CAS, True, b"c1", True, True),
        (OpKind.READ, False, None, True, False),
    ]
    assert check_history(h).verdict == Verdict.OK
    assert "if_match b'c1'" in h.ops[2].describe()
    # Everything selected: the quorum read of nothing after c3 is now a violation.
    assert check_history(h, include=lambda op: True).verdict == Verdict.VIOLATION


def test_history_adapter_catches_double_create_and_keeps_the_old_checker_quiet() -> None:
    h = History()
    record_conditional(h, "c1", b"c1", 0, 10, "ok", condition="if_absent")
    record_conditional(h, "c2", b"c2", 2, 12, "ok", condition="if_absent")
    stale = h.invoke("r", "read", "lock", None, "linearizable", "eu", "n2", 20)
    h.ok(stale, 21, seen=[], context={})
    result: CheckResult = check_history(h)
    assert result.verdict == Verdict.VIOLATION
    # The eventual-consistency checker puts no stale-read obligation on linearizable operations.
    final = {"lock": [((2, "n1"), {"n1": 2}, b"c2")]}
    report = check_eventual(h, final, "lww")
    assert report.ok and report.stale_reads == []
    # The same read at quorum level would be stale there (the creates were recorded at quorum).
    h.ops[2].level = "quorum"
    assert [s.read for s in check_eventual(h, final, "lww").stale_reads] == [h.ops[2]]


def test_history_adapter_failed_write_is_pending_and_deletes_map() -> None:
    h = History()
    w = h.invoke("c1", "write", "k", b"a", "linearizable", "eu", "n1", 0)
    h.fail(w, 5, "no quorum")
    d = h.invoke("c2", "delete", "k", None, "linearizable", "eu", "n1", 6, condition="if_match", expected=b"a")
    h.ok(d, 8, dot=(8, "n1"))
    r = h.invoke("c3", "read", "k", None, "linearizable", "eu", "n1", 9)
    h.ok(r, 10, seen=[])
    ops = operations_from_history(h)
    assert ops[0].pending and ops[1].kind == OpKind.DELETE and ops[1].conditional and ops[1].expected == b"a"
    assert check(ops).verdict == Verdict.OK  # the failed write took effect before the delete


def test_history_validates_conditions() -> None:
    h = History()
    with pytest.raises(ValueError, match="read takes no condition"):
        h.invoke("c", "read", "k", None, "linearizable", "eu", "n1", 0, condition="if_absent")
    with pytest.raises(ValueError, match="expected value"):
        h.invoke("c", "write", "k", b"v", "linearizable", "eu", "n1", 0, condition="if_absent", expected=b"x")
    with pytest.raises(ValueError, match="unknown condition"):
        h.invoke("c", "write", "k", b"v", "linearizable", "eu", "n1", 0, condition="if_newer")  # type: ignore[arg-type]
    plain = h.invoke("c", "write", "k", b"v", "linearizable", "eu", "n1", 0)
    with pytest.raises(ValueError, match="only a conditional"):
        h.precondition_failed(plain, 1)


def test_operation_validation() -> None:
    with pytest.raises(ValueError, match="before its invocation"):
        Operation(0, "c", "k", OpKind.READ, 5, 4)
    with pytest.raises(ValueError, match="a cas is conditional"):
        Operation(0, "c", "k", OpKind.CAS, 0, 1, b"v")
    with pytest.raises(ValueError, match="only a completed conditional"):
        Operation(0, "c", "k", OpKind.WRITE, 0, 1, b"v", ok=False)
    with pytest.raises(ValueError, match="needs a value"):
        Operation(0, "c", "k", OpKind.WRITE, 0, 1)


# ------------------------------------------------------------------ randomized


@st.composite
def sequential_histories(draw: st.DrawFn) -> list[Operation]:
    """A sequential execution on one key, then an interval around each operation's point in it (so the
    history is linearizable by construction); some writes lose their answer, and a few requests that never
    took effect are added as pending."""
    count = draw(st.integers(1, 24))
    state: bytes | None = None
    written: list[bytes] = []
    ops: list[Operation] = []
    for i in range(count):
        point = 10 * i + 5
        start = point - draw(st.integers(0, 40))
        end = point + draw(st.integers(0, 40))
        lost = draw(st.integers(0, 9)) == 0
        kind = draw(st.sampled_from(["read", "read", "write", "cas", "delete", "cdelete"]))
        value = f"v{i}".encode()
        if kind == "read":
            observed = () if state is None else (state,)
            ops.append(Operation(i, "c", "k", OpKind.READ, start, end, observed=observed))
        elif kind == "write":
            ops.append(Operation(i, "c", "k", OpKind.WRITE, start, None if lost else end, value))
            state = value
            written.append(value)
        elif kind == "delete":
            ops.append(Operation(i, "c", "k", OpKind.DELETE, start, None if lost else end))
            state = None
        else:
            expected = draw(st.sampled_from([state, None, *written[-2:]]))
            holds = expected == state
            new = value if kind == "cas" else None
            opkind = OpKind.CAS if kind == "cas" else OpKind.DELETE
            if not (lost and not holds):  # a lost refusal is the same as no request
                ops.append(Operation(i, "c", "k", opkind, start, None if lost else end, new, True, expected, holds))
            if holds:
                state = new
                if new is not None:
                    written.append(new)
    for j in range(draw(st.integers(0, 2))):  # requests that never took effect
        start = draw(st.integers(0, 10 * count))
        ops.append(Operation(count + j, "p", "k", OpKind.WRITE, start, None, b"phantom"))
    return ops


@settings(max_examples=150, deadline=None)
@given(sequential_histories(), st.integers(0, 1000))
def test_cut_sequential_execution_is_accepted_and_a_mutated_read_rejected(ops: list[Operation], pick: int) -> None:
    assert check(ops, max_steps=200_000).verdict == Verdict.OK
    reads = [i for i, op in enumerate(ops) if op.kind == OpKind.READ]
    if not reads:
        return
    victim = reads[pick % len(reads)]
    mutated = [*ops]
    mutated[victim] = replace(ops[victim], observed=(b"never written",))
    result = check(mutated, max_steps=200_000)
    assert result.verdict == Verdict.VIOLATION
    assert result.violation is not None


def brute_force(ops: Sequence[Operation]) -> bool:
    """Linearizable by trying every order (no cache, no linked list): place any operation no unplaced
    completed operation must precede; done when every completed one is placed."""

    def step(op: Operation, state: bytes | None) -> tuple[bool, bytes | None]:
        if op.kind == OpKind.READ:
            return op.observed == (() if state is None else (state,)), state
        if op.conditional and (state == op.expected) != op.ok:
            return False, state
        if op.conditional and not op.ok:
            return True, state
        return True, op.value

    def search(left: frozenset[int], state: bytes | None) -> bool:
        if all(ops[i].pending for i in left):
            return True
        for i in left:
            op = ops[i]
            if any(ops[j].complete is not None and ops[j].complete < op.invoke for j in left if j != i):  # type: ignore[operator]
                continue
            accepted, after = step(op, state)
            if accepted and search(left - {i}, after):
                return True
        return False

    return search(frozenset(i for i, op in enumerate(ops) if not (op.kind == OpKind.READ and op.pending)), None)


@st.composite
def arbitrary_histories(draw: st.DrawFn) -> list[Operation]:
    """Up to 6 operations with random intervals and random (often wrong) results over 3 values."""
    values = st.sampled_from([None, b"a", b"b"])
    ops: list[Operation] = []
    for i in range(draw(st.integers(1, 6))):
        start = draw(st.integers(0, 20))
        end = None if draw(st.integers(0, 5)) == 0 else start + draw(st.integers(0, 15))
        kind = draw(st.sampled_from(list(OpKind)))
        if kind == OpKind.READ:
            seen = draw(values)
            ops.append(Operation(i, "c", "k", kind, start, end, observed=() if seen is None else (seen,)))
        elif kind == OpKind.WRITE:
            ops.append(Operation(i, "c", "k", kind, start, end, draw(st.sampled_from([b"a", b"b"]))))
        else:
            conditional = kind == OpKind.CAS or draw(st.booleans())
            value = draw(st.sampled_from([b"a", b"b"])) if kind == OpKind.CAS else None
            expected = draw(values) if conditional else None
            ok = draw(st.booleans()) if conditional and end is not None else True
            ops.append(Operation(i, "c", "k", kind, start, end, value, conditional, expected, ok))
    return ops


@settings(max_examples=300, deadline=None)
@given(arbitrary_histories())
def test_agrees_with_brute_force_on_small_histories(ops: list[Operation]) -> None:
    expected = Verdict.OK if brute_force(ops) else Verdict.VIOLATION
    assert check(ops).verdict == expected
