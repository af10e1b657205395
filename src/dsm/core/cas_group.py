"""The acceptor group of a key for conditional writes (issue 19): the `size` members that follow the key's
ring position clockwise, among the members this node knows of that did not leave (dead members still
count, as for consistency levels: a death never changes a group, so it never moves a quorum).

This is the fixed-membership rule: two nodes with the same member table compute the same group. Keeping
quorums intersecting while members join or leave (the handover of the design note) is a later step; until
then conditional writes are safe only while membership does not change.
"""

from __future__ import annotations

import functools
import hashlib

from dsm.core.ring import Directory, MemberTable, State, position

#: Members of a key's acceptor group (a majority of them must answer each phase).
GROUP_SIZE = 3


def cas_group(directory: Directory, table: MemberTable, key: str, size: int = GROUP_SIZE) -> tuple[str, ...]:
    """The node ids of `key`'s acceptor group, nearest first (fewer when fewer members are known): a walk
    clockwise round the ring from the key's position (a member at that very position first), O(log n +
    the members skipped) rather than a sort of every member."""
    members: list[str] = []
    for slot in directory.walk(position(key) - 1, 1):
        if table.raw_state(slot) not in (State.UNKNOWN, State.LEFT):
            members.append(directory.infos[slot].node_id)
            if len(members) == size:
                break
    return tuple(members)


@functools.lru_cache(maxsize=1 << 12)
def group_digest(group: tuple[str, ...]) -> int:
    """A 63-bit digest of a group (its members in order), carried by prepares and accepts so that an acceptor
    whose own view gives the key another group refuses: every phase that succeeds then has a majority of the
    group it used agreeing on that group at that moment. This refuses proposers whose view of the members is
    incomplete or behind while a membership change spreads; it does not by itself move acceptor state to a
    new group (the handover of docs/design/conditional-writes.md, section 2.5)."""
    raw = hashlib.blake2b("\x00".join(group).encode(), digest_size=8).digest()
    return int.from_bytes(raw, "big") >> 1
