"""A linearizability checker for histories of operations on per-key registers with compare-and-set.

Pure and deterministic (the optional wall-clock timeout aside): it is given the operations, with times the
caller recorded, and answers whether some total order of them explains every result.

Model. Each key is an independent register holding a value (bytes) or nothing (absent, the initial state).
- `read` returns the value or absent; a read that returned several values (siblings) matches no register
  state, so it is always a violation.
- `write` puts a value unconditionally; an unconditional `delete` makes the key absent.
- `cas` puts a value only if the key currently holds `expected` (`expected=None`: only if absent, the
  `if_absent` create); a conditional `delete` makes the key absent under the same rule. Each answers
  `ok=True` (the condition held and the operation took effect) or `ok=False` (it did not hold; nothing
  changed).
Conditions compare values, as Knossos's cas-register does: with If-Match contexts this is exact when every
write of a key writes a distinct value (what the workloads should do), and an ABA through equal values is not
told apart.

An operation is *completed* (it has a return time and a result) or *pending* (timed out, its client crashed,
its error said nothing definite): a pending write, cas or delete may take effect at any point after its
invocation or never; a pending read constrains nothing and is dropped. A pending cas that takes effect needs
its condition to hold at that point (one that would have failed is the same as one that never happened).

Linearizable = a total order of the completed operations, and of any subset of the pending ones, such that
an operation that returned before another was invoked (`complete < invoke`, strictly: equal times overlap)
comes first, and each operation's result is what the register answers in that order.

How: P-compositionality (Herlihy & Wing) first: a history is linearizable iff each key's sub-history is, so
keys are checked one by one. Per key, Wing & Gong's search over a doubly linked list of call and return
events in time order: take the next call whose operation the model accepts, lift it (and its return) out of
the list and restart from the head; on meeting a return whose operation is not yet linearized, undo the last
choice and try the next call. Lowe's memoization, as in Porcupine: a cache of (linearized set as an integer
bitset, register state) seen before prunes every repeated configuration, which makes the search polynomial
in practice for a bounded number of concurrent clients. Success: every completed operation is linearized
(pending ones have no return event, so they never force a backtrack). A step budget per key and an overall
timeout turn a search that would run too long into the verdict `unknown` instead of a hang.

A violation reports its key, the longest linearizable prefix the search found, the register state after it,
and the completed operations that could be placed next but were refused (or led only to dead ends): usually
one stale read or one doubly successful create, which is the explanation a reader needs.

`operations_from_history` adapts a `dsm.sim.history.History` (the simulator's Jepsen-style recorder).
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from dsm.sim.history import History, Op

__all__ = [
    "DEFAULT_MAX_STEPS",
    "CheckResult",
    "KeyResult",
    "OpKind",
    "Operation",
    "Verdict",
    "check",
    "check_history",
    "is_linearizable_op",
    "operations_from_history",
]

DEFAULT_MAX_STEPS = 5_000_000
"""Search steps allowed per key before its verdict is `unknown` (about 0.5 s of CPU per million here)."""


class OpKind(StrEnum):
    """What an operation does to its key's register."""

    READ = "read"
    WRITE = "write"
    CAS = "cas"
    DELETE = "delete"


class Verdict(StrEnum):
    """The checker's answer for a key or a whole history."""

    OK = "ok"
    VIOLATION = "violation"
    UNKNOWN = "unknown"  # the budget ran out first


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation on one key, from invocation to completion.

    Attributes:
        id: the caller's identity of the operation (reported back in explanations).
        client: who issued it.
        key: the register it acts on.
        kind: read, write, cas or delete.
        invoke: when it was invoked (any unit, the same for every operation).
        complete: when it returned, or None when its outcome is unknown (pending).
        value: what a write or cas puts (None for reads and deletes).
        conditional: True for a cas and a conditional delete: it takes effect only if the key holds
            `expected`.
        expected: the value a conditional operation expects (None: the key must be absent).
        ok: for a completed conditional operation, whether its condition held (False: it changed nothing).
            Always True for the others.
        observed: for a completed read, the values it returned: () absent, (v,) the value v, more than one
            a set of siblings (which no register state explains).
    """

    id: int
    client: str
    key: str
    kind: OpKind
    invoke: int
    complete: int | None
    value: bytes | None = None
    conditional: bool = False
    expected: bytes | None = None
    ok: bool = True
    observed: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.complete is not None and self.complete < self.invoke:
            raise ValueError(f"op {self.id} returns at {self.complete}, before its invocation at {self.invoke}")
        if (self.kind in (OpKind.WRITE, OpKind.CAS)) != (self.value is not None):
            raise ValueError(f"op {self.id}: a write or cas needs a value; a read or delete takes none")
        if self.kind == OpKind.CAS and not self.conditional:
            raise ValueError(f"op {self.id}: a cas is conditional")
        if self.kind in (OpKind.READ, OpKind.WRITE) and self.conditional:
            raise ValueError(f"op {self.id}: only a cas or a delete is conditional")
        if self.expected is not None and not self.conditional:
            raise ValueError(f"op {self.id}: an expected value goes with a conditional operation")
        if not self.ok and not (self.conditional and self.complete is not None):
            raise ValueError(f"op {self.id}: only a completed conditional operation can fail")
        if self.observed and self.kind != OpKind.READ:
            raise ValueError(f"op {self.id}: only a read observes values")

    @property
    def pending(self) -> bool:
        """True when the outcome is unknown: the operation may take effect after its invocation, or never."""
        return self.complete is None

    def describe(self) -> str:
        """One line for reports."""
        if self.kind == OpKind.READ:
            what = "read -> " + (_show(None) if not self.observed else ", ".join(map(_show, self.observed)))
        elif self.kind == OpKind.WRITE:
            what = f"write {_show(self.value)}"
        elif self.kind == OpKind.CAS:
            what = f"cas {_show(self.expected)} -> {_show(self.value)}"
        else:
            what = "delete" + (f" if {_show(self.expected)}" if self.conditional else "")
        if self.conditional and not self.pending:
            what += " ok" if self.ok else " failed"
        until = "?" if self.complete is None else str(self.complete)
        return f"op {self.id} {what} by {self.client}, {self.invoke}..{until}"


def _show(value: bytes | None) -> str:
    return "absent" if value is None else repr(value)


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict for one key.

    Attributes:
        key: the key.
        verdict: ok, violation or unknown.
        ops: operations of this key that were checked (pending reads are dropped beforehand).
        steps: search steps taken.
        prefix: violation: the longest linearizable prefix found, in linearization order.
        state: violation: the register's value after that prefix (None: absent).
        unplaced: violation: the completed operations that could be linearized next after the prefix, none of
            which leads to a linearization.
    """

    key: str
    verdict: Verdict
    ops: int
    steps: int
    prefix: tuple[Operation, ...] = ()
    state: bytes | None = None
    unplaced: tuple[Operation, ...] = ()

    def explain(self) -> str:
        """A few lines saying what went wrong (or the verdict, when nothing did)."""
        if self.verdict != Verdict.VIOLATION:
            return f"key {self.key!r}: {self.verdict} ({self.ops} ops, {self.steps} steps)"
        lines = [
            f"key {self.key!r}: not linearizable ({self.ops} ops); the longest linearizable prefix has "
            f"{len(self.prefix)} ops and leaves the register {_show(self.state)}"
        ]
        lines += [f"  ... {op.describe()}" for op in self.prefix[-3:]]
        lines.append("  none of these can come next:")
        for op in self.unplaced:
            accepted, _ = _step(op, self.state)
            why = "fits, but no linearization follows" if accepted else "its result contradicts the register"
            lines.append(f"    {op.describe()}: {why}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict for a whole history: a violation on any key, else unknown if any key ran out of budget.

    Attributes:
        verdict: ok, violation or unknown.
        keys: keys checked.
        ops: operations checked.
        violations: one `KeyResult` per violating key, in key order.
        unknown: the keys whose search ran out of budget (or was not reached before the timeout).
    """

    verdict: Verdict
    keys: int
    ops: int
    violations: tuple[KeyResult, ...] = ()
    unknown: tuple[KeyResult, ...] = ()
    results: tuple[KeyResult, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return self.verdict == Verdict.OK

    @property
    def violation(self) -> KeyResult | None:
        """The first violating key's result, if any."""
        return self.violations[0] if self.violations else None

    def summary(self, examples: int = 3) -> str:
        """The verdict on one line, then up to `examples` violations explained."""
        line = f"{self.verdict}: {self.keys} keys, {self.ops} ops, {len(self.violations)} violating keys"
        line += f", {len(self.unknown)} unknown"
        return "\n".join([line, *(result.explain() for result in self.violations[:examples])])


# ------------------------------------------------------------------ the model


def _step(op: Operation, state: bytes | None) -> tuple[bool, bytes | None]:
    """The register's answer: whether `op` can take effect (with its recorded result) in `state`, and after."""
    kind = op.kind
    if kind == OpKind.READ:
        if len(op.observed) > 1:
            return False, state
        return (op.observed[0] if op.observed else None) == state, state
    if not op.conditional:
        return True, op.value
    holds = state == op.expected
    if op.ok:  # a completed success, or a pending operation that takes effect
        return holds, op.value if holds else state
    return not holds, state


# ------------------------------------------------------------------ the search


class _Budget:
    """Steps per key and an overall deadline, read every few thousand steps."""

    __slots__ = ("clock", "deadline", "max_steps")

    def __init__(self, max_steps: int | None, timeout_s: float | None, clock: Callable[[], float]) -> None:
        self.max_steps = max_steps
        self.clock = clock
        self.deadline = None if timeout_s is None else clock() + timeout_s

    def expired(self) -> bool:
        return self.deadline is not None and self.clock() >= self.deadline


def _check_key(key: str, ops: Sequence[Operation], budget: _Budget) -> KeyResult:
    """Wing & Gong's search with Lowe's cache over one key's operations."""
    n = len(ops)
    # Events: (time, 0 for a call / 1 for a return, op index). Calls sort before returns at equal times, so
    # an operation returning at t and one invoked at t overlap.
    events = [(op.invoke, 0, i) for i, op in enumerate(ops)]
    events += [(op.complete, 1, i) for i, op in enumerate(ops) if op.complete is not None]
    events.sort()
    m = len(events)
    # A doubly linked list over the events with two sentinels: head (index m) and tail (index m + 1).
    head, tail = m, m + 1
    order = [head, *range(m), tail]
    nxt = [0] * (m + 2)
    prv = [0] * (m + 2)
    for before, after in itertools.pairwise(order):
        nxt[before], prv[after] = after, before
    is_call = [kind == 0 for _, kind, _ in events]
    op_of = [i for _, _, i in events]
    return_of = [-1] * n
    for e, (_, kind, i) in enumerate(events):
        if kind == 1:
            return_of[i] = e
    match = [-1 if not is_call[e] else return_of[op_of[e]] for e in range(m)]

    remaining = sum(1 for op in ops if op.complete is not None)
    state: bytes | None = None
    linearized = 0
    stack: list[tuple[int, bytes | None]] = []
    cache: set[tuple[int, bytes | None]] = set()
    best: list[int] = []
    best_state: bytes | None = None
    steps = 0
    entry = nxt[head]
    while remaining:
        steps += 1
        if budget.max_steps is not None and steps > budget.max_steps:
            return KeyResult(key, Verdict.UNKNOWN, n, steps)
        if steps & 0xFFF == 0 and budget.expired():
            return KeyResult(key, Verdict.UNKNOWN, n, steps)
        assert entry != tail, "a completed operation's return is always ahead"
        if is_call[entry]:
            i = op_of[entry]
            accepted, after = _step(ops[i], state)
            if accepted:
                bits = linearized | (1 << i)
                if (bits, after) not in cache:
                    cache.add((bits, after))
                    stack.append((entry, state))
                    state, linearized = after, bits
                    # Lift the call and its return out of the list (dancing links: undone in reverse).
                    nxt[prv[entry]], prv[nxt[entry]] = nxt[entry], prv[entry]
                    ret = match[entry]
                    if ret >= 0:
                        nxt[prv[ret]], prv[nxt[ret]] = nxt[ret], prv[ret]
                        remaining -= 1
                    if len(stack) > len(best):
                        best, best_state = [op_of[e] for e, _ in stack], state
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
            continue
        # A return whose operation is not linearized yet: the last choice was wrong.
        if not stack:
            return _violation(key, ops, steps, best, best_state)
        entry, state = stack.pop()
        i = op_of[entry]
        linearized &= ~(1 << i)
        ret = match[entry]
        if ret >= 0:
            nxt[prv[ret]] = prv[nxt[ret]] = ret
            remaining += 1
        nxt[prv[entry]] = prv[nxt[entry]] = entry
        entry = nxt[entry]
    return KeyResult(key, Verdict.OK, n, steps)


def _violation(key: str, ops: Sequence[Operation], steps: int, best: list[int], state: bytes | None) -> KeyResult:
    """The explanation: the deepest prefix and the completed operations that were candidates after it."""
    placed = set(best)
    left = [op for i, op in enumerate(ops) if i not in placed]
    first_return = min(op.complete for op in left if op.complete is not None)
    unplaced = tuple(op for op in left if op.complete is not None and op.invoke <= first_return)
    return KeyResult(key, Verdict.VIOLATION, len(ops), steps, tuple(ops[i] for i in best), state, unplaced)


# ------------------------------------------------------------------ entry points


def check(
    operations: Iterable[Operation],
    *,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    timeout_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> CheckResult:
    """Checks that the operations are linearizable, key by key.

    Args:
        operations: the history, in any order.
        max_steps: search steps allowed per key (None: no limit); a key that needs more is `unknown`.
        timeout_s: wall-clock seconds for the whole check (None: no limit); keys not finished are `unknown`.
        clock: the clock `timeout_s` is measured on.

    Returns:
        The verdict, with every violating key explained.
    """
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for op in operations:
        if op.kind == OpKind.READ and op.pending:
            continue  # an unanswered read constrains nothing
        by_key[op.key].append(op)
    budget = _Budget(max_steps, timeout_s, clock)
    results: list[KeyResult] = []
    for key in sorted(by_key):
        ops = sorted(by_key[key], key=lambda op: (op.invoke, op.id))
        if budget.expired():
            results.append(KeyResult(key, Verdict.UNKNOWN, len(ops), 0))
        else:
            results.append(_check_key(key, ops, budget))
    violations = tuple(r for r in results if r.verdict == Verdict.VIOLATION)
    unknown = tuple(r for r in results if r.verdict == Verdict.UNKNOWN)
    verdict = Verdict.VIOLATION if violations else Verdict.UNKNOWN if unknown else Verdict.OK
    total = sum(r.ops for r in results)
    return CheckResult(verdict, len(results), total, violations, unknown, tuple(results))


# ------------------------------------------------------------------ the simulator's history


def is_linearizable_op(op: Op) -> bool:
    """The default selection from a `History`: conditional writes and deletes, and operations at level
    "linearizable"."""
    return op.condition is not None or op.level == "linearizable"


def operations_from_history(
    history: History | Sequence[Op], include: Callable[[Op], bool] = is_linearizable_op
) -> list[Operation]:
    """The checker's operations for the recorded ones that `include` selects.

    Outcomes map as follows: "ok" is a completed operation with its result (a read's `seen` values are what
    it observed); "precondition_failed" is a completed conditional operation whose condition did not hold;
    "fail", "unknown" and no outcome at all are pending (a failed write may still have landed), and such
    reads are dropped.
    """
    ops = history.ops if isinstance(history, History) else history
    out: list[Operation] = []
    for op in ops:
        if not include(op):
            continue
        done = op.outcome in ("ok", "precondition_failed")
        complete = op.complete_ms if done else None
        if op.kind == "read":
            if done:
                observed = tuple(value for _, value in op.seen)
                out.append(Operation(op.id, op.process, op.key, OpKind.READ, op.invoke_ms, complete, observed=observed))
            continue
        conditional = op.condition is not None
        kind = OpKind.DELETE if op.kind == "delete" else OpKind.CAS if conditional else OpKind.WRITE
        out.append(
            Operation(
                op.id,
                op.process,
                op.key,
                kind,
                op.invoke_ms,
                complete,
                value=op.value,
                conditional=conditional,
                expected=op.expected if op.condition == "if_match" else None,
                ok=op.outcome != "precondition_failed",
            )
        )
    return out


def check_history(
    history: History | Sequence[Op],
    include: Callable[[Op], bool] = is_linearizable_op,
    *,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    timeout_s: float | None = None,
) -> CheckResult:
    """`check` over the operations of a recorded `History` that `include` selects (see
    `operations_from_history`)."""
    return check(operations_from_history(history, include), max_steps=max_steps, timeout_s=timeout_s)
