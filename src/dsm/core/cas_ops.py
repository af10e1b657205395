"""Conditional operations on one key's register state, the change functions of CASPaxos (issue 19).

The register state of a key is its `VersionSet`. An operation is evaluated on the state a Paxos round
chose last (after *absorbing* the plain writes the acceptors hold, `absorb`), in the order the round took
them:
- `IfAbsent(v)` holds when the key holds no live value (absent, or tombstones only);
- `IfMatch(context, v)` holds when the state's context equals `context`: the key is exactly what the read
  that returned that context saw (`v` None: a conditional delete);
- `Put(v)` always holds (an unconditional write ordered with the conditional ones); `Read()` changes nothing.
A holding write supersedes everything the state holds: its version's context is the whole state's context,
and its dot is newer than every version in it (the clock is advanced past them first, as `Replica` does for
any write), so after a conditional write the key holds exactly one version. An operation that does not hold
leaves the state unchanged; the round still accepts that (identity) state, so a refusal is itself a chosen,
linearizable answer (the lesson of CASSANDRA-12126).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum
from typing import NamedTuple

from dsm.core.encoding import DecodeError, decode_context, encode_context
from dsm.core.hlc import HybridLogicalClock, physical_ms
from dsm.core.messages import CasRequest
from dsm.core.vclock import VersionVector
from dsm.core.versions import SIBLINGS_MAX_BYTES, Dot, Resolution, VersionSet, write


class IfAbsent(NamedTuple):
    """Write `value` (expiring `ttl_ms` after the write; 0: never) only if the key holds no live value."""

    value: bytes
    ttl_ms: int = 0


class IfMatch(NamedTuple):
    """Write `value` (None: delete) only if the key is still exactly what a read with `context` saw."""

    context: VersionVector
    value: bytes | None
    ttl_ms: int = 0


class Put(NamedTuple):
    """Write `value` (None: delete) unconditionally, in the order of the conditional operations."""

    value: bytes | None
    ttl_ms: int = 0


class Read(NamedTuple):
    """Read the state, in the order of the conditional operations."""


Operation = IfAbsent | IfMatch | Put | Read


class Outcome(Enum):
    """What an operation did: wrote (`APPLIED`), found its condition false (`FAILED`), or read (`READ`)."""

    APPLIED = "applied"
    FAILED = "failed"
    READ = "read"


def holds(operation: Operation, state: VersionSet, now_ms: int = 0) -> bool:
    """Whether `operation`'s condition holds on `state` at the wall clock `now_ms` (a read's always does); a
    value expired by then counts as absent."""
    if isinstance(operation, IfAbsent):
        return not (state.live_at(now_ms) if now_ms else state.live)
    if isinstance(operation, IfMatch):
        return state.context() == operation.context
    return True


def absorb(state: VersionSet, rows: Iterable[VersionSet], resolution: Resolution) -> VersionSet:
    """The chosen state joined with the plain writes the acceptors' data rows hold: a plain write enters the
    conditional order at the first round that sees it on an acceptor."""
    for row in rows:
        state = state.merge(row, resolution)
    return state


def evaluate(
    state: VersionSet,
    operations: Sequence[Operation],
    clock: HybridLogicalClock,
    wall_ms: int,
    node: str,
    resolution: Resolution,
    max_siblings: int,
) -> tuple[VersionSet, list[Outcome]]:
    """Applies `operations` in order to `state`; returns the new state and each operation's outcome. A
    holding write's dot comes from `clock` (advanced past the state first) with `node` as writer."""
    outcomes: list[Outcome] = []
    for operation in operations:
        state, outcome = apply(state, operation, clock, wall_ms, node, resolution, max_siblings)
        outcomes.append(outcome)
    return state, outcomes


def apply(
    state: VersionSet,
    operation: Operation,
    clock: HybridLogicalClock,
    wall_ms: int,
    node: str,
    resolution: Resolution,
    max_siblings: int,
) -> tuple[VersionSet, Outcome]:
    """One operation of `evaluate`: the new state and its outcome (an applied write's version is the new
    state's newest, `state.max_timestamp` with writer `node`)."""
    if isinstance(operation, Read):
        return state, Outcome.READ
    if not holds(operation, state, wall_ms):
        return state, Outcome.FAILED
    if state.versions:
        clock.advance_to(state.max_timestamp)
    dot = Dot(clock.now(wall_ms), node)
    ttl_ms = operation.ttl_ms if operation.value is not None else 0
    expires_ms = physical_ms(dot.timestamp) + ttl_ms if ttl_ms else 0
    written = write(
        state, dot, state.context(), operation.value, resolution, max_siblings, SIBLINGS_MAX_BYTES,
        expires_ms=expires_ms, now_ms=wall_ms,
    )  # fmt: skip
    return written, Outcome.APPLIED


#: Most bytes of a context token a forwarded operation may carry (a client's context is far smaller).
CONTEXT_MAX_BYTES = 1 << 20
_KINDS = {IfAbsent: 0, IfMatch: 1, Put: 2, Read: 3}


def cas_request(request: int, source: str, key: str, operation: Operation, timeout_ms: int) -> CasRequest:
    """The message that forwards `operation` to the key's home."""
    value = None if isinstance(operation, Read) else operation.value
    context = encode_context(operation.context, key) if isinstance(operation, IfMatch) else ""
    kind = _KINDS[type(operation)]
    ttl_ms = 0 if isinstance(operation, Read) else operation.ttl_ms
    return CasRequest(request, source, key, kind, value is not None, value or b"", context, timeout_ms, ttl_ms)


def request_operation(message: CasRequest) -> Operation:
    """The operation a forwarded request carries.

    Raises:
        DecodeError: the request is malformed (unknown kind, a value where none belongs, a bad context).
    """
    value = message.value if message.has_value else None
    ttl_ms = message.ttl_ms
    if ttl_ms < 0 or (ttl_ms and value is None):
        raise DecodeError("a conditional request's ttl_ms must be positive, and only with a value")
    if message.kind == 3 and value is None and not ttl_ms:
        return Read()
    if message.kind == 2:
        return Put(value, ttl_ms)
    if message.kind == 0 and value is not None:
        return IfAbsent(value, ttl_ms)
    if message.kind == 1:
        return IfMatch(decode_context(message.context, CONTEXT_MAX_BYTES, message.key), value, ttl_ms)
    raise DecodeError(f"malformed conditional request of kind {message.kind}")
