"""Consistency levels: which members a write or read must reach, and when enough of them have answered.

A level names one or more *groups* of members and how many of each must answer:
- `local`: this node alone (1 of 1).
- `region_quorum`: a majority of the members of the coordinator's region.
- `quorum`: a majority of all members.
- `each_region_quorum`: a majority in every region (one group per region).
- `all`: every member.

Who counts (the denominator): every member this node knows of that has not left, whatever its state:
alive, suspect or dead. A member that is only unreachable or suspected still counts, otherwise the side
of a partition that cannot see the other would count only itself and believe it is a majority; only a
member that left gracefully (or that an operator removed, which is recorded as a leave) no longer counts.

Quorums intersect only when both requests see the same membership: a member that joins between a write
and a read, or two coordinators whose views differ (gossip has not reached one yet), can make two
majorities miss each other for a while. Joins are rare next to requests; anti-entropy and read repair
close such gaps afterwards.

A write at a level returns once enough members have *durably stored* it (the coordinator counts itself:
its own commit comes first). A read gathers version sets from enough members, merges them and repairs the
members whose set differs from the merge (`stale`). With majorities in the same group for both, any read
quorum intersects any write quorum, so a read at `region_quorum` observes the latest write acknowledged
at `region_quorum` in that region (and the same for `quorum`, `each_region_quorum` and `all`).

Pure: the caller passes the membership view; timing out is the caller's business.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from dsm.core.versions import Resolution, VersionSet


class Level(Enum):
    """A consistency level (its value is the name used in configuration, HTTP and the command line)."""

    LOCAL = "local"
    REGION_QUORUM = "region_quorum"
    QUORUM = "quorum"
    EACH_REGION_QUORUM = "each_region_quorum"
    ALL = "all"


LEVEL_NAMES = tuple(level.value for level in Level)


def parse_level(name: object) -> Level:
    """The level called `name`; ValueError for anything else."""
    if isinstance(name, Level):
        return name
    if isinstance(name, str):
        try:
            return Level(name)
        except ValueError:
            pass
    raise ValueError(f"unknown consistency level {name!r}; one of {', '.join(LEVEL_NAMES)}")


@dataclass(frozen=True, slots=True)
class Group:
    """`needed` of `members` must answer; `name` says which group (a region, or "all")."""

    name: str
    members: frozenset[str]
    needed: int


def majority(n: int) -> int:
    return n // 2 + 1


def groups(level: Level, me: str, my_region: str, members: Iterable[tuple[str, str, bool]]) -> tuple[Group, ...]:
    """The groups a request at `level` must satisfy.

    Args:
        level: the level.
        me: this node's id (always a member of its own groups).
        my_region: this node's region.
        members: (node id, region, counts) of every member this node knows of, itself included or not;
            `counts` is False for a member that left (or was removed), True for every other state.
    """
    if level is Level.LOCAL:
        return (Group(my_region, frozenset((me,)), 1),)
    by_region: dict[str, set[str]] = {my_region: {me}}
    for node_id, region, counts in members:
        if counts and node_id != me:
            by_region.setdefault(region, set()).add(node_id)
    if level is Level.REGION_QUORUM:
        mine = by_region[my_region]
        return (Group(my_region, frozenset(mine), majority(len(mine))),)
    if level is Level.EACH_REGION_QUORUM:
        return tuple(Group(region, frozenset(ids), majority(len(ids))) for region, ids in sorted(by_region.items()))
    everyone = frozenset(node for ids in by_region.values() for node in ids)
    needed = len(everyone) if level is Level.ALL else majority(len(everyone))
    return (Group("all", everyone, needed),)


class Tally:
    """Answers received for one request, against its groups."""

    def __init__(self, level: Level, groups: tuple[Group, ...]) -> None:
        self.level = level
        self.groups = groups
        #: Every member that can count towards the level.
        self.members: frozenset[str] = frozenset().union(*(g.members for g in groups))
        self.answered: set[str] = set()

    def add(self, node_id: str) -> bool:
        """Counts an answer from `node_id` (once); returns whether the level is now met."""
        if node_id in self.members:
            self.answered.add(node_id)
        return self.met

    @property
    def met(self) -> bool:
        return all(len(self.answered & g.members) >= g.needed for g in self.groups)

    @property
    def received(self) -> int:
        """Answers that count towards some group."""
        return len(self.answered)

    @property
    def required(self) -> int:
        """The fewest answers that could meet the level (the sum over groups: a member is in one region,
        so the groups of `each_region_quorum` do not overlap, and the other levels have one group)."""
        return sum(g.needed for g in self.groups)

    def shortfall(self) -> dict[str, tuple[int, int]]:
        """Per group that is not met: (answers, needed)."""
        return {
            g.name: (len(self.answered & g.members), g.needed)
            for g in self.groups
            if len(self.answered & g.members) < g.needed
        }


def merge_answers(held: Mapping[str, VersionSet], resolution: Resolution) -> tuple[VersionSet, list[str]]:
    """A read's answer: the join of the version sets the members answered with (`held`: member -> its
    set, empty when it does not hold the key), and the members whose set differs from it, which read repair
    sends it to."""
    merged = VersionSet()
    for versions in held.values():
        merged = merged.merge(versions, resolution)
    return merged, [node for node, versions in held.items() if versions.versions != merged.versions]


__all__ = ["LEVEL_NAMES", "Group", "Level", "Tally", "groups", "majority", "merge_answers", "parse_level"]
