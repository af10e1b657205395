"""The acceptor's rules of the per-key Paxos rounds (CASPaxos) that conditional writes run (issue 19).

Per key an acceptor keeps one `AcceptorState`: the highest ballot it promised, the ballot and the register
state (an encoded `VersionSet`) it accepted last, and the highest ballot it knows chosen. The rules, one
pure function per message, state in and state out:
- prepare(b): promise `b` if it is above every ballot promised so far (and so above the accepted one), and
  answer with the accepted ballot and state; otherwise refuse with the ballot promised;
- accept(b, v): accept `v` at `b` if `b` is at least the ballot promised; otherwise refuse;
- commit(b, v): remember that `b` was chosen, and take `v` as accepted at `b` when an accept at `b` would
  still have been taken (so the member an accept left out catches up); the chosen state itself also goes
  into the data store as an ordinary version set.
What it keeps true: `promised` never goes down, `accepted <= promised`, and a reply that depends on a new
state is sent only after that state is durable (the driver writes it first: these functions only decide).
A ballot whose clock reading is more than `max_clock_offset_ms` ahead of this node's wall clock is refused:
one runaway clock would otherwise make everyone promise a ballot nobody may reach and stall the key. Skew
then only decides who wins a race, never what is chosen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import msgpack

from dsm.core.ballot import ZERO, Ballot
from dsm.core.hlc import physical_ms
from dsm.core.messages import CasAccept, CasAccepted, CasCommit, CasPrepare, CasPromise

#: Why a prepare or accept was refused.
REFUSED_BALLOT = "ballot"
REFUSED_SKEW = "skew"
#: Most bytes of an encoded acceptor state read back (its value is one version set, bounded like any row).
STATE_MAX_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class AcceptorState:
    """One key's acceptor state (see the module docstring)."""

    promised: Ballot = ZERO
    accepted: Ballot = ZERO
    #: The register state accepted at `accepted` (an encoded `VersionSet`; empty before any accept).
    value: bytes = b""
    committed: Ballot = ZERO


@dataclass(frozen=True, slots=True)
class Vote:
    """An acceptor's answer: `ok`, else `reason` and the ballot it promised (so the proposer can move past
    it); a promise carries the accepted ballot and state."""

    ok: bool
    promised: Ballot
    accepted: Ballot = ZERO
    value: bytes = b""
    reason: str = ""


def prepare(
    state: AcceptorState, ballot: Ballot, wall_ms: int, max_offset_ms: int
) -> tuple[AcceptorState | None, Vote]:
    """The answer to a prepare at `ballot`, and the new state to make durable first (None: unchanged)."""
    if _skewed(ballot, wall_ms, max_offset_ms):
        return None, Vote(False, state.promised, reason=REFUSED_SKEW)
    if ballot <= state.promised:
        return None, Vote(False, state.promised, reason=REFUSED_BALLOT)
    return replace(state, promised=ballot), Vote(True, ballot, state.accepted, state.value)


def accept(
    state: AcceptorState, ballot: Ballot, value: bytes, wall_ms: int, max_offset_ms: int, then: Ballot = ZERO
) -> tuple[AcceptorState | None, Vote]:
    """The answer to an accept of `value` at `ballot`, and the new state to make durable first. With `then` (a
    ballot above `ballot`, not skewed) the acceptor also promises it: an accept is then the prepare of the
    proposer's next round too, whose state is the one accepted here (nothing else can be accepted in between:
    every ballot below `then` is refused from now on)."""
    if _skewed(ballot, wall_ms, max_offset_ms):
        return None, Vote(False, state.promised, reason=REFUSED_SKEW)
    if ballot < state.promised:
        return None, Vote(False, state.promised, reason=REFUSED_BALLOT)
    promised = then if then > ballot and not _skewed(then, wall_ms, max_offset_ms) else ballot
    return AcceptorState(promised, ballot, value, state.committed), Vote(True, promised)


def commit(state: AcceptorState, ballot: Ballot, value: bytes) -> AcceptorState | None:
    """Records that `value` was chosen at `ballot` (None: nothing new). An acceptor that has neither accepted
    anything at or above `ballot` nor promised above it also takes `value` as accepted at `ballot`: exactly
    what the round's accept would have done had it been asked or had its accept arrived (an accept is
    allowed to arrive late), so the member an accept's first wave left out (`cas_proposer`) or whose accept
    was lost holds the key's latest state as an acceptor too, not only in its data row."""
    if ballot > state.accepted and ballot >= state.promised:
        return AcceptorState(ballot, ballot, value, max(state.committed, ballot))
    if ballot <= state.committed:
        return None
    return replace(state, committed=ballot)


def _skewed(ballot: Ballot, wall_ms: int, max_offset_ms: int) -> bool:
    return physical_ms(ballot.timestamp) - wall_ms > max_offset_ms


def encode_state(state: AcceptorState) -> bytes:
    """The canonical bytes of an acceptor state (as stored)."""
    return bytes(msgpack.packb([list(state.promised), list(state.accepted), state.value, list(state.committed)]))


def decode_state(raw: bytes) -> AcceptorState:
    """An acceptor state read back from the store.

    Raises:
        ValueError: `raw` is not an encoded acceptor state.
    """
    if len(raw) > STATE_MAX_BYTES:
        raise ValueError(f"acceptor state of {len(raw)} bytes; at most {STATE_MAX_BYTES}")
    try:
        promised, accepted, value, committed = msgpack.unpackb(raw, use_list=True, max_bin_len=STATE_MAX_BYTES)
        if not isinstance(value, bytes):
            raise TypeError("value")
        ballots = [_ballot(b) for b in (promised, accepted, committed)]
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"not an acceptor state: {exc}") from None
    state = AcceptorState(ballots[0], ballots[1], value, ballots[2])
    if state.accepted > state.promised:
        raise ValueError("an acceptor state whose accepted ballot is above its promise")
    return state


def _ballot(raw: object) -> Ballot:
    if not isinstance(raw, list) or len(raw) != 3:
        raise TypeError("ballot")
    timestamp, node, run = raw
    if not (isinstance(timestamp, int) and isinstance(node, str) and isinstance(run, int)):
        raise TypeError("ballot")
    if timestamp < 0 or run < 0:
        raise ValueError("negative ballot")
    return Ballot(timestamp, node, run)


@dataclass(frozen=True, slots=True)
class Served:
    """What a driver does for an acceptor message: store `state` (if not None) durably, merge `chosen` (an
    encoded version set, if not empty) into the key's data row, then send `reply` (if not None)."""

    state: AcceptorState | None
    reply: CasPromise | CasAccepted | None
    chosen: bytes = b""


def serve(
    message: CasPrepare | CasAccept | CasCommit,
    state: AcceptorState,
    row: bytes | None,
    node_id: str,
    wall_ms: int,
    max_offset_ms: int,
) -> Served:
    """The acceptor's whole answer to `message`, given the key's acceptor `state` and its data `row` as
    stored here: what to store and what to reply (see `Served`)."""
    if isinstance(message, CasPrepare):
        new, vote = prepare(state, Ballot(*message.ballot), wall_ms, max_offset_ms)
        reply = CasPromise(
            message.seq, node_id, vote.ok, vote.promised, vote.accepted, vote.value, row if vote.ok and row else b""
        )
        return Served(new, reply)
    if isinstance(message, CasAccept):
        new, vote = accept(state, Ballot(*message.ballot), message.value, wall_ms, max_offset_ms, Ballot(*message.then))
        return Served(new, CasAccepted(message.seq, node_id, vote.ok, vote.promised))
    return Served(commit(state, Ballot(*message.ballot), message.value), None, message.value)


AcceptorMessage = CasPrepare | CasAccept | CasCommit


@dataclass(slots=True)
class ServedBatch:
    """What a driver does for a batch of acceptor messages: store `states` (key -> encoded state, the last
    state of each key that changed) and merge `chosen` (key, encoded version set) into the data rows, in one
    transaction, then send each message's reply (`replies[i]`, None: nothing to send)."""

    states: dict[str, bytes]
    chosen: list[tuple[str, bytes]]
    replies: list[CasPromise | CasAccepted | None]


def serve_all(
    messages: Sequence[AcceptorMessage],
    states: Mapping[str, bytes],
    rows: Mapping[str, bytes],
    node_id: str,
    wall_ms: int,
    max_offset_ms: int,
) -> ServedBatch:
    """Serves `messages` in order (a key's later message sees the state its earlier one left), given the
    stored acceptor states (`states`, by key, encoded) and data rows (`rows`) of their keys. A key whose
    stored state cannot be read gets no answer at all: this acceptor then counts as down for it, never as
    one that forgot its promises."""
    current: dict[str, AcceptorState | None] = {}
    changed: dict[str, bytes] = {}
    chosen: list[tuple[str, bytes]] = []
    replies: list[CasPromise | CasAccepted | None] = []
    for message in messages:
        key = message.key
        if key not in current:
            raw = states.get(key)
            try:
                current[key] = AcceptorState() if raw is None else decode_state(raw)
            except ValueError:
                current[key] = None
        state = current[key]
        if state is None:
            replies.append(None)
            continue
        served = serve(message, state, rows.get(key), node_id, wall_ms, max_offset_ms)
        if served.state is not None:
            current[key] = served.state
            changed[key] = encode_state(served.state)
        if served.chosen:
            chosen.append((key, served.chosen))
        replies.append(served.reply)
    return ServedBatch(changed, chosen, replies)
