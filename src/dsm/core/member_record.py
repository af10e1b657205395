"""The member table as a node keeps it across restarts: what is saved, and how it is read back.

A node that restarts must rejoin the cluster it belonged to, not start a new one of its own: a node that
believes itself alone meets every consistency level with its own answer. So the runtime saves the member
table (id, address, region, incarnation and state of every member this node knows) in the store's
metadata whenever it changed, and a restarting node reads it back (`Peer.restore`) and joins through the
members it knew, with or without bootstrap addresses (`Peer.join`).

Format: msgpack `[RECORD_VERSION, [[node_id, addr, region, incarnation, state], ...]]`. Decoding checks
every field (types, ranges, at most MAX_RECORD_MEMBERS entries) and raises ValueError for anything else:
a record that cannot be read is the store's corruption, reported by the runtime, never half applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgpack

from dsm.core.ring import MAX_INCARNATION, MemberInfo, MemberTable, State

RECORD_VERSION = 1
#: Most members a record holds (the simulator's largest clusters, with room).
MAX_RECORD_MEMBERS = 1_000_000


@dataclass(frozen=True, slots=True)
class StoredMember:
    """One member as a saved table knows it."""

    info: MemberInfo
    incarnation: int
    state: State


def encode(members: Iterable[StoredMember]) -> bytes:
    """The record of `members` (members whose state is UNKNOWN are left out)."""
    rows = [
        [m.info.node_id, m.info.addr, m.info.region, m.incarnation, int(m.state)]
        for m in members
        if m.state != State.UNKNOWN
    ]
    packed: bytes = msgpack.packb([RECORD_VERSION, rows], use_bin_type=True)
    return packed


def of_table(infos: Sequence[MemberInfo], table: MemberTable) -> bytes:
    """The record of a member table over its directory's `infos`: what `Peer.member_record` saves and the
    simulator's crashed nodes keep."""
    return encode(StoredMember(infos[slot], incarnation, State(state)) for slot, state, incarnation in table.entries())


def decode(data: bytes) -> list[StoredMember]:
    """The members of a record made by `encode`.

    Raises:
        ValueError: not such a record (another version, a malformed or out-of-range entry).
    """
    try:
        record = msgpack.unpackb(data, raw=False, strict_map_key=True, max_array_len=MAX_RECORD_MEMBERS)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueError(f"not a member record: {exc}") from None
    if not (isinstance(record, list) and len(record) == 2 and record[0] == RECORD_VERSION):
        raise ValueError("not a member record of version 1")
    rows = record[1]
    if not isinstance(rows, list):
        raise ValueError("a member record without a member list")
    members = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 5):
            raise ValueError(f"a malformed member entry: {row!r:.80}")
        node_id, addr, region, incarnation, state = row
        if not (isinstance(node_id, str) and node_id and isinstance(addr, str) and isinstance(region, str)):
            raise ValueError(f"a malformed member entry: {row!r:.80}")
        if not (isinstance(incarnation, int) and 0 <= incarnation <= MAX_INCARNATION):
            raise ValueError(f"member {node_id!r}: incarnation {incarnation!r} out of range")
        if not (isinstance(state, int) and State.ALIVE <= state <= State.LEFT):
            raise ValueError(f"member {node_id!r}: state {state!r} out of range")
        members.append(StoredMember(MemberInfo(node_id, addr, region), incarnation, State(state)))
    return members
