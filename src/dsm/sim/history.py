"""A Jepsen-style history of client operations, and the checker of its safety properties.

Pure: no I/O and no clock. The caller (the simulator, or a test driving real processes) records every
operation as it is invoked and as it completes, with times it supplies, then gathers what the nodes hold
once they have converged and asks `check` whether the history and that final state are consistent.

Vocabulary (see `dsm.core.versions`):
- A write or delete creates a version identified by its *dot* (timestamp, writer node id); a delete writes
  a tombstone (value None). A *context* is a version vector, here a plain `dict` node id -> timestamp, and
  it *covers* a dot (t, w) when context[w] >= t (`covers`). Contexts are causally closed: a context that
  covers a version also covers everything that version's writer had seen.
- A write passes a context (`Op.given`: what its client had read; None or {} for a blind write) and so
  *supersedes* every version that context covers. The write's *result* context (`Op.context`) is the
  context of the key's whole version set right after the write: it also covers concurrent siblings that the
  write did NOT supersede, which is why the checker never uses it to decide what was superseded.
- An operation ends `ok`, `fail` (the level was not met, or an error) or `unknown` (timeout, connection
  lost: it may or may not have happened). An operation never completed counts as unknown. A write that
  failed or is unknown may still have landed and spread (nothing is rolled back): it is never required to
  be anywhere, and is fine wherever it is.

Properties checked by `check(history, final, mode)`:
- **lost**: an acknowledged (ok) write or delete must, after convergence, be *present* (its dot is among
  the key's final versions) or *superseded* (some final version's context covers its dot: a later write saw
  it). In 'lww' mode a write that is neither, while a final version has a larger dot, lost the
  last-writer-wins race to a write that had not seen it: that is the mode's documented cost and is counted
  in `overwritten`, not `lost`; in 'siblings' mode nothing may be overwritten, so every such write is lost.
- **stale_reads**: an ok read must observe every ok write of its key that completed (real time,
  `complete_ms < read.invoke_ms`) at a level whose replicas any replica set of the read's level must meet:
    - region_quorum read (region r): region_quorum writes coordinated in r, each_region_quorum and all
      writes from anywhere;
    - quorum read: quorum, each_region_quorum and all writes, from any region;
    - each_region_quorum and all reads: every write above local, from any region;
    - local reads, and local writes, carry no obligation.
  A quorum write is deliberately not required of a region_quorum read (nor the reverse): a majority of all
  members need not hold a majority of any one region. (each_region_quorum holds a majority of every region
  and so more than half of all members.) The pairing assumes a stable membership: quorums counted against
  different member lists need not meet.
  The read *observed* a write W when W's dot is among the values it returned, or its context covers W's dot,
  or it observed a later such write whose given context covered W's dot (a newer state that replaced W;
  the checker uses this to keep only the unsuperseded writes per key, so a check costs what the concurrent
  writes cost, not the whole history). In 'lww' mode a read also observed W when it saw a larger dot (W
  lost, or will lose, to it). A read that found nothing observed every delete; if it also has no context
  (the real client's not-found carries none) it observed a write W when some delete of the key invoked
  before the read completed could have removed W: one whose outcome is not ok, whose given context covers
  W's dot, or (lww) whose dot is larger. The simulator, which knows the tombstones' context, should pass it.
- **resurrected**: a live final version whose dot is covered by the given context of an ok write or delete
  came back after that operation superseded it (the classic case: a deleted value reappears).
- `unknown_outcomes` counts operations with outcome unknown (or never completed), for the report.

`check_converged` compares what the nodes hold, key by key; `check` expects a converged final state.

Conditional operations (compare-and-set) are recorded here too, for `dsm.sim.linearizability`: a write or
delete may carry a `condition` ("if_absent": only if the key holds no live value; "if_match": only if the key
still holds what a read returned, whose context is passed as `given` and whose value is recorded as
`expected`), and may end `precondition_failed` (a definite refusal: the condition did not hold and nothing was
written). The linearizability checker looks at every conditional operation and at every operation at level
"linearizable". This module's checker still counts acknowledged conditional writes in **lost** and
**resurrected**; operations at level "linearizable" carry no stale-read obligation here, neither as reads nor
as writes (that is the linearizability checker's job), while a conditional operation recorded at another
level keeps that level's obligations.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from dsm.core.versions import Resolution, VersionSet

__all__ = [
    "CONDITIONS",
    "KINDS",
    "LEVELS",
    "Condition",
    "Context",
    "Dot",
    "FinalState",
    "Held",
    "History",
    "Kind",
    "Op",
    "Outcome",
    "Report",
    "Resurrection",
    "StaleRead",
    "check",
    "check_converged",
    "covers",
    "held_versions",
]

Dot = tuple[int, str]
"""A version's identity: (timestamp, writer node id). `dsm.core.versions.Dot` is one."""

Context = Mapping[str, int]
"""A causal context: node id -> the largest timestamp of that node's writes seen."""

Kind = Literal["write", "delete", "read"]
Outcome = Literal["ok", "fail", "unknown", "precondition_failed"]
Condition = Literal["if_absent", "if_match"]

KINDS: tuple[str, ...] = ("write", "delete", "read")
LEVELS: tuple[str, ...] = ("local", "region_quorum", "quorum", "each_region_quorum", "all", "linearizable")
CONDITIONS: tuple[str, ...] = ("if_absent", "if_match")


def covers(ctx: Context | None, dot: Dot) -> bool:
    """True when the context has seen the write `dot` (a None context has seen nothing)."""
    return ctx is not None and ctx.get(dot[1], 0) >= dot[0]


@dataclass(slots=True, eq=False)
class Op:
    """One client operation, from invocation to completion.

    Attributes:
        id: its index in the history.
        process: the client that issued it.
        kind: "write", "delete" or "read".
        key: the key.
        value: the bytes written (writes only; None for deletes and reads).
        level: the consistency level asked for (one of `LEVELS`).
        region: the coordinator node's region.
        node: the coordinator node's id.
        invoke_ms: when the client sent it.
        given: for writes and deletes, the context passed with it (None: a blind write).
        complete_ms: when the client got the answer (None while pending).
        outcome: "ok", "fail", "unknown" or, for a conditional write or delete, "precondition_failed"
            (None while pending).
        error: what a failure said.
        dot: ok writes and deletes: the new version's dot.
        context: ok writes and deletes: the result context; ok reads: the read's context (None when the
            client was not given one, as for a not-found read).
        seen: ok reads: (dot, value) of each live value returned.
        condition: for a conditional write or delete, "if_absent" or "if_match" (None: unconditional).
        expected: for "if_match", the value of the read whose context the operation passes as `given`
            (None when that read found nothing).
    """

    id: int
    process: str
    kind: Kind
    key: str
    value: bytes | None
    level: str
    region: str
    node: str
    invoke_ms: int
    given: Context | None = None
    complete_ms: int | None = None
    outcome: Outcome | None = None
    error: str = ""
    dot: Dot | None = None
    context: Context | None = None
    seen: tuple[tuple[Dot, bytes], ...] = ()
    condition: Condition | None = None
    expected: bytes | None = None

    @property
    def is_write(self) -> bool:
        """True for writes and deletes."""
        return self.kind != "read"

    def describe(self) -> str:
        """One line for reports."""
        what = f"op {self.id} {self.kind} {self.key!r} by {self.process} via {self.node} ({self.region})"
        what += f" at {self.level}, {self.invoke_ms}..{self.complete_ms} ms"
        if self.condition is not None:
            what += f", {self.condition}" + (f" {self.expected!r}" if self.condition == "if_match" else "")
        return what + (f", dot {self.dot}" if self.dot is not None else "")


class History:
    """The operations of a run, in invocation order. Record with `invoke`, then one of `ok`/`fail`/`unknown`
    (or, for a conditional write or delete, `precondition_failed`)."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def __len__(self) -> int:
        return len(self.ops)

    def invoke(
        self,
        process: str,
        kind: Kind,
        key: str,
        value: bytes | None,
        level: str,
        region: str,
        node: str,
        now_ms: int,
        *,
        given: Context | None = None,
        condition: Condition | None = None,
        expected: bytes | None = None,
    ) -> Op:
        """Records an operation sent at `now_ms`; `given` is the context passed with a write or delete.

        A conditional write or delete names its `condition`: "if_absent", or "if_match" with `expected`, the
        value of the read whose context it passes (None if that read found nothing).
        """
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; one of {', '.join(LEVELS)}")
        if (kind == "write") != (value is not None):
            raise ValueError("a write needs a value; a delete or read takes none")
        if kind == "read" and given is not None:
            raise ValueError("a read takes no context")
        if condition is not None and condition not in CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}; one of {', '.join(CONDITIONS)}")
        if kind == "read" and condition is not None:
            raise ValueError("a read takes no condition")
        if expected is not None and condition != "if_match":
            raise ValueError("an expected value goes with the if_match condition only")
        op = Op(len(self.ops), process, kind, key, value, level, region, node, now_ms, given)
        op.condition = condition
        op.expected = expected
        self.ops.append(op)
        return op

    def _complete(self, op: Op, now_ms: int, outcome: Outcome) -> None:
        if op.outcome is not None:
            raise ValueError(f"op {op.id} already completed ({op.outcome})")
        if now_ms < op.invoke_ms:
            raise ValueError(f"op {op.id} completes at {now_ms} ms, before its invocation at {op.invoke_ms} ms")
        op.complete_ms = now_ms
        op.outcome = outcome

    def ok(
        self,
        op: Op,
        now_ms: int,
        dot: Dot | None = None,
        context: Context | None = None,
        seen: Iterable[tuple[Dot, bytes]] | None = None,
    ) -> None:
        """Records success: a write or delete needs its new version's `dot` (and may give its result
        `context`); a read gives the live values it returned as `seen` and its `context` if it had one."""
        if op.is_write and dot is None:
            raise ValueError(f"op {op.id}: an acknowledged {op.kind} needs its dot")
        if not op.is_write and dot is not None:
            raise ValueError(f"op {op.id}: a read has no dot")
        self._complete(op, now_ms, "ok")
        op.dot = dot
        op.context = context
        if seen is not None:
            op.seen = tuple(seen)

    def fail(self, op: Op, now_ms: int, error: str = "") -> None:
        """Records a definite failure (the operation may still have landed somewhere)."""
        self._complete(op, now_ms, "fail")
        op.error = error

    def unknown(self, op: Op, now_ms: int) -> None:
        """Records an indefinite outcome: timeout or connection lost."""
        self._complete(op, now_ms, "unknown")

    def precondition_failed(self, op: Op, now_ms: int, context: Context | None = None) -> None:
        """Records a conditional write or delete refused because its condition did not hold (nothing was
        written); `context` is the key's current context if the answer carried it."""
        if op.condition is None:
            raise ValueError(f"op {op.id}: only a conditional {op.kind} can fail its precondition")
        self._complete(op, now_ms, "precondition_failed")
        op.context = context


class Held(NamedTuple):
    """One version a node holds: its dot, its context and its value (None for a tombstone)."""

    dot: Dot
    context: Context
    value: bytes | None


FinalState = Mapping[str, Sequence[tuple[Dot, Context, bytes | None]]]
"""Per key, the versions held after convergence (`Held`, or plain tuples of the same shape)."""


def held_versions(versions: VersionSet) -> list[Held]:
    """A key's `VersionSet` as the checker's versions."""
    return [Held(v.dot, v.context.as_dict(), v.value) for v in versions.versions]


def check_converged(states_by_node: Mapping[str, FinalState]) -> list[str]:
    """The keys (sorted) whose version sets are not identical on every node (a missing key counts as empty)."""
    canonical: dict[str, set[frozenset[tuple[Dot, tuple[tuple[str, int], ...], bytes | None]]]] = defaultdict(set)
    keys = {key for state in states_by_node.values() for key in state}
    for state in states_by_node.values():
        for key in keys:
            canonical[key].add(
                frozenset(
                    ((dot[0], dot[1]), tuple(sorted(ctx.items())), value) for dot, ctx, value in state.get(key, ())
                )
            )
    return sorted(key for key, variants in canonical.items() if len(variants) > 1)


class StaleRead(NamedTuple):
    """A read that missed writes it had to observe (only those no other missed write superseded)."""

    read: Op
    missed: tuple[Op, ...]


class Resurrection(NamedTuple):
    """A live final version of `key` that the ok write or delete `by` had superseded."""

    key: str
    dot: Dot
    value: bytes
    by: Op


@dataclass
class Report:
    """What `check` found. `ok` when nothing was lost, read stale or resurrected."""

    mode: str
    ops: int = 0
    lost: list[Op] = field(default_factory=list)
    overwritten: list[Op] = field(default_factory=list)
    stale_reads: list[StaleRead] = field(default_factory=list)
    resurrected: list[Resurrection] = field(default_factory=list)
    unknown_outcomes: int = 0

    @property
    def ok(self) -> bool:
        return not self.lost and not self.stale_reads and not self.resurrected

    def summary(self, examples: int = 3) -> str:
        """Counts on one line, then up to `examples` cases of each violation."""
        counts = f"lost {len(self.lost)}"
        if self.mode == "lww":
            counts += f", overwritten {len(self.overwritten)} (lww)"
        counts += f", stale reads {len(self.stale_reads)}, resurrected {len(self.resurrected)}"
        lines = [
            f"{'ok' if self.ok else 'FAILED'} ({self.mode}): {self.ops} ops, {counts}, "
            f"{self.unknown_outcomes} unknown outcomes"
        ]
        lines += [f"  lost: {op.describe()}" for op in self.lost[:examples]]
        for stale in self.stale_reads[:examples]:
            lines.append(f"  stale: {stale.read.describe()}, seen {[dot for dot, _ in stale.read.seen]}")
            lines += [f"    missed {op.describe()}" for op in stale.missed[:examples]]
        lines += [
            f"  resurrected: {r.key!r} {r.dot} superseded by {r.by.describe()}" for r in self.resurrected[:examples]
        ]
        return "\n".join(lines)


def check(history: History | Sequence[Op], final: FinalState, mode: str | Resolution) -> Report:
    """Checks a history against the converged final state; see the module docstring for the rules.

    Args:
        history: the operations (a `History` or its `ops`).
        final: per key, the versions every node holds after convergence.
        mode: 'siblings' or 'lww' (or a `Resolution`).
    """
    mode = mode.value if isinstance(mode, Resolution) else mode
    if mode not in ("siblings", "lww"):
        raise ValueError(f"unknown mode {mode!r}; 'siblings' or 'lww'")
    ops = history.ops if isinstance(history, History) else list(history)
    report = Report(mode, ops=len(ops))
    report.unknown_outcomes = sum(1 for op in ops if op.outcome in (None, "unknown"))
    lww = mode == "lww"
    for op in ops:
        if not op.is_write or op.outcome != "ok":
            continue
        assert op.dot is not None
        versions = final.get(op.key, ())
        if any(dot == op.dot or covers(ctx, op.dot) for dot, ctx, _ in versions):
            pass
        elif lww and any(dot > op.dot for dot, _, _ in versions):
            report.overwritten.append(op)
        else:
            report.lost.append(op)
        if op.given:
            report.resurrected += [
                Resurrection(op.key, dot, value, op)
                for dot, _, value in versions
                if value is not None and covers(op.given, dot)
            ]
    report.stale_reads = _stale_reads(ops, lww)
    return report


# ------------------------------------------------------------------ stale reads


def _read_class(read: Op) -> str | None:
    """Which writes a read must observe, as a class name shared with `_write_classes` (None: none)."""
    if read.level in ("local", "linearizable"):
        return None  # "linearizable": checked by dsm.sim.linearizability instead
    if read.level == "region_quorum":
        return f"region_quorum:{read.region}"
    if read.level == "quorum":
        return "quorum"
    return "every_region"  # each_region_quorum and all: a majority of every region


def _write_classes(write: Op, regions: Iterable[str]) -> list[str]:
    """The read classes whose replica sets must meet the write's."""
    if write.level in ("local", "linearizable"):
        return []
    if write.level == "region_quorum":
        return [f"region_quorum:{write.region}", "every_region"]
    if write.level == "quorum":
        return ["quorum", "every_region"]
    return [*(f"region_quorum:{region}" for region in regions), "quorum", "every_region"]


def _add(frontier: dict[Dot, Op], write: Op, lww: bool) -> None:
    """Adds a write to the unsuperseded writes a class of reads must observe (per key)."""
    assert write.dot is not None
    if lww:
        # A read observed W when it saw any dot >= W's: only the largest dot matters.
        if frontier and max(frontier) > write.dot:
            return
        frontier.clear()
    else:
        if any(covers(other.given, write.dot) for other in frontier.values()):
            return
        for dot in [dot for dot in frontier if covers(write.given, dot)]:
            del frontier[dot]
    frontier[write.dot] = write


def _observed(read: Op, write: Op, lww: bool, deletes: Sequence[Op]) -> bool:
    assert write.dot is not None and read.complete_ms is not None
    dot = write.dot
    if covers(read.context, dot) or any(seen == dot for seen, _ in read.seen):
        return True
    if lww:
        known = [seen for seen, _ in read.seen]
        if read.context:
            known += [(t, node) for node, t in read.context.items()]
        if known and max(known) >= dot:
            return True
    if read.seen:
        return False
    if write.kind == "delete":
        return True
    if read.context is not None:
        return False
    assert read.complete_ms is not None
    return any(
        d.invoke_ms < read.complete_ms
        and (
            d.outcome not in ("ok", "precondition_failed")
            or covers(d.given, dot)
            or (lww and d.dot is not None and d.dot > dot)
        )
        for d in deletes
    )


def _stale_reads(ops: Sequence[Op], lww: bool) -> list[StaleRead]:
    """Sweeps reads in invocation order, adding each write to its classes' frontiers once it completed."""
    regions = sorted({op.region for op in ops})
    writes = sorted(
        (op for op in ops if op.is_write and op.outcome == "ok" and op.level != "local"),
        key=lambda op: op.complete_ms or 0,
    )
    reads = sorted(
        (op for op in ops if op.kind == "read" and op.outcome == "ok" and op.level != "local"),
        key=lambda op: op.invoke_ms,
    )
    deletes: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind == "delete":
            deletes[op.key].append(op)
    frontiers: dict[tuple[str, str], dict[Dot, Op]] = defaultdict(dict)
    stale: list[StaleRead] = []
    added = 0
    for read in reads:
        while added < len(writes) and (writes[added].complete_ms or 0) < read.invoke_ms:
            write = writes[added]
            added += 1
            for name in _write_classes(write, regions):
                _add(frontiers[write.key, name], write, lww)
        cls = _read_class(read)
        frontier = frontiers.get((read.key, cls)) if cls is not None else None
        if not frontier:
            continue
        missed = tuple(w for w in frontier.values() if not _observed(read, w, lww, deletes[read.key]))
        if missed:
            stale.append(StaleRead(read, missed))
    stale.sort(key=lambda s: s.read.id)
    return stale
