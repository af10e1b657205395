"""Versions of one key and their merge: siblings, dominance, last-writer-wins.

A `Version` is one write: its *dot* (the writer's HLC timestamp and the writer's node id, unique in the
cluster), the causal context the writer had seen (a `VersionVector`) and the value, or `None` for a
tombstone (a delete). A `VersionSet` is what a replica stores for a key.

Rules:
- Version `v` is *dominated* by `w` when `w`'s context covers `v`'s dot: `w` was written by someone who had
  read `v`. The merge of two sets is the union (identified by dot) without the dominated versions.
- Contexts are *causally closed* within what a replica holds: a set's context (`VersionSet.context`) that covers
  a version also covers everything that version's context covers. (A single version's context may cover, by a
  node's entry, an older version of that node no longer held anywhere beside it without that version's context:
  what the merge compares is held versions, and against those it is closed.) Contexts handed to clients are
  joins of whole read results (`VersionSet.context`), and
  `write` only ever adds whole closures and closes the new version's context over every version the replica
  holds that it covers (`closed`: an entry added for an expired or superseded sibling also covers its node's
  older versions held beside it; without their contexts, merges in different orders kept or dropped what
  those had superseded), so dominance is transitive. Then the merge keeps the maximal
  elements of the union under a strict partial order, which makes it commutative, associative and
  idempotent (a join-semilattice): replicas that have seen the same versions hold the same set, whatever
  the order of arrival. (Cutting contexts to a size bound breaks closure, and with it associativity and
  the guarantee that a superseded value stays gone; contexts are therefore never cut.)
- A vector entry (node, t) stands for "every write that `node` coordinated for this key up to t". That is
  sound because replicas exchange a key's *whole version set*, never single versions: a coordinator writes
  on its own full copy of the key, so any set holding one of its versions also holds its older concurrent
  siblings, or something that dominates them. The replication protocol must keep this rule.
- Expiry: a version may carry `expires_ms`, an absolute Unix ms after which its value reads as absent
  (`live_at`, at the reading node's wall clock). Expiry is never part of the merge: dominance, LWW order and
  the cut ignore it, so replicas that read a key at slightly different moments never differ in what they
  store. An expired value is dead like a tombstone: `purgeable` counts its death from `expires_ms`. In
  SIBLINGS mode a local write supersedes the versions already expired at its wall clock (`write`), so dead
  siblings do not use up the sibling bounds, unless its writer's entry would also cover a live older version
  of that writer held beside it (a vector entry covers all of a node's older writes).
- Size bound: a context holds at most one entry per node that ever coordinated a write of the key (clients
  never appear in it), so it is bounded by the cluster's size, as with Dynamo-style vector clocks.
- Because a writer advances its clock past every timestamp in the context it writes with, a version always
  has a larger dot than any version it dominates. So the largest dot of a set is never dominated.
- Resolution `LWW` keeps only that largest dot: the winner by (HLC timestamp, node id), identical on every
  node; the merge is then a maximum over a total order, again a semilattice. `SIBLINGS` keeps every
  undominated version until a write that has read them supersedes them.
- Sibling sets are bounded, so that a key's whole version set always fits in what nodes send each other
  (`dsm.net.chunks`; the largest message is derived from these bounds, see `StorageConfig.max_message_bytes`):
  - On the write path: a coordinator whose write would leave more than `max_siblings` versions, or more
    value bytes than its byte bound, supersedes the oldest ones by adding their closures to the new
    version's context, exactly as if the client had read them.
  - Everywhere a set is made (`VersionSet.of`: every merge and every write), in SIBLINGS mode: the set keeps
    its newest versions, by dot, while they hold at most `SIBLINGS_MAX_BYTES` of values and
    `SIBLINGS_META_MAX_BYTES` of dots and contexts (`meta_bytes`); the first version beyond either bound and
    every older one are dropped (the newest always stays, even alone above them). This *cut* is what bounds
    sets merged from concurrent writes on several coordinators, which no single write saw together. The
    bounds are constants of the protocol, the same on every node.
- The cut keeps the merge commutative and idempotent, but not associative: a version cut on one replica can
  survive on another that never held the newer ones, and come back (and stay) if the merged set has room for
  it. Replicas still converge once writes stop. A merge keeps only versions one of its sides held, so the
  versions held anywhere (the pool) only shrink, and at some point stop changing. Take the pool's undominated
  versions newest first, u0, u1, ...: u0 is never cut (the newest stays) and reaches every replica. When
  every replica holds u0 .. u(k-1), any version between those and u(k) is dominated by one of them wherever
  it is held, so u(k) comes right after them in every merge that sees it: it fits (else every merge would
  cut it, and the pool would shrink) and reaches every replica too. So all replicas end holding the pool's
  undominated versions, the same set. A version cut is gone like one superseded by `max_siblings`, oldest
  first; a context read from a cut set covers its writer's older versions too (vector entries), which
  supersedes them as the cut did.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from dsm.core.hlc import pack, physical_ms
from dsm.core.vclock import VersionVector

#: Most value bytes a key's version set keeps in SIBLINGS mode (its newest versions; the newest always stays,
#: so a single value up to `max_value_bytes` does too). Part of the protocol: the same on every node.
SIBLINGS_MAX_BYTES = 4 * 1024 * 1024
#: Most bytes of dots and contexts (`meta_bytes`) a key's version set keeps in SIBLINGS mode, likewise. With
#: the value bound, it bounds the encoded size of every stored set, whatever the number of coordinators.
SIBLINGS_META_MAX_BYTES = 1024 * 1024


class Resolution(Enum):
    """How concurrent versions of a key are resolved."""

    LWW = "lww"
    SIBLINGS = "siblings"


class Dot(NamedTuple):
    """The identity of one write: the writer's HLC timestamp, then its node id (the LWW order).

    A named tuple: it is built for every version decoded on every read, and tuples compare in exactly the
    last-writer-wins order.
    """

    timestamp: int
    node: str


@dataclass(frozen=True, slots=True)
class Version:
    """One write of a key.

    Attributes:
        dot: who wrote it, and when.
        context: what the writer had seen of this key.
        value: the bytes written, or None for a tombstone.
        expires_ms: Unix ms from which the value reads as absent (0: never; always 0 for a tombstone).
    """

    dot: Dot
    context: VersionVector
    value: bytes | None
    expires_ms: int = 0

    # Invariant (checked where versions are made, `write` and the decoder, not here on the read path):
    # a version's context never covers its own dot.

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    def dominated_by(self, other: Version) -> bool:
        return other.context.covers(self.dot.timestamp, self.dot.node)

    def meta_bytes(self) -> int:
        """About the bytes of this version's encoding apart from its value: dot, context, msgpack headers
        (an upper bound for ASCII node ids, which config enforces)."""
        # An expiry adds at most 9 bytes (msgpack uint64); without one the size is exactly as before, so the
        # cut of sets without expiries is unchanged.
        extra = 9 if self.expires_ms else 0
        return 24 + extra + len(self.dot.node) + sum(len(node) + 14 for node, _ in self.context.entries)

    def alive_at(self, now_ms: int) -> bool:
        """Whether this version holds a value that has not expired at `now_ms` (Unix ms)."""
        return self.value is not None and (self.expires_ms == 0 or now_ms < self.expires_ms)

    def tiebreak(self) -> tuple[tuple[tuple[str, int], ...], bool, bytes, int]:
        """Orders two versions that carry one dot."""
        # Two versions with one dot should not exist; if a faulty peer sends one, every node picks the
        # same copy, so the merge stays deterministic.
        return (self.context.entries, self.value is not None, self.value or b"", self.expires_ms)


@dataclass(frozen=True, slots=True)
class VersionSet:
    """The versions a replica holds for one key, newest dot first. Build with `VersionSet.of`."""

    versions: tuple[Version, ...] = ()

    @staticmethod
    def of(versions: Iterable[Version], resolution: Resolution = Resolution.SIBLINGS) -> VersionSet:
        """The canonical set of the given versions: deduplicated by dot, dominated ones dropped, and in SIBLINGS
        mode the oldest beyond the size bounds cut (see the module docstring)."""
        by_dot: dict[Dot, Version] = {}
        for version in versions:
            seen = by_dot.get(version.dot)
            if seen is None or version.tiebreak() > seen.tiebreak():
                by_dot[version.dot] = version
        ordered = sorted(by_dot.values(), key=lambda v: v.dot, reverse=True)
        if resolution is Resolution.LWW:
            return VersionSet(tuple(ordered[:1]))
        kept = tuple(v for v in ordered if not any(v.dominated_by(w) for w in ordered if w is not v))
        return VersionSet(_cut(kept))

    def merge(self, other: VersionSet, resolution: Resolution) -> VersionSet:
        """The join of two sets (commutative, associative, idempotent)."""
        if not other.versions:
            return self if resolution is Resolution.SIBLINGS else VersionSet.of(self.versions, resolution)
        return VersionSet.of((*self.versions, *other.versions), resolution)

    def __len__(self) -> int:
        return len(self.versions)

    def __bool__(self) -> bool:
        return bool(self.versions)

    @property
    def winner(self) -> Version | None:
        """The version with the largest dot: the last-writer-wins choice, the same on every node."""
        return self.versions[0] if self.versions else None

    @property
    def live(self) -> tuple[Version, ...]:
        """The versions that are not tombstones, newest first."""
        return tuple(v for v in self.versions if v.value is not None)

    def live_at(self, now_ms: int) -> tuple[Version, ...]:
        """The versions holding a value that has not expired at `now_ms` (the reading node's wall clock, Unix
        ms), newest first: what a read at that moment returns."""
        return tuple(v for v in self.versions if v.alive_at(now_ms))

    @property
    def max_timestamp(self) -> int:
        return self.versions[0].dot.timestamp if self.versions else 0

    def context(self) -> VersionVector:
        """The causal context of a read of this set: covers every version in it and what they had seen."""
        pairs: list[tuple[str, int]] = []
        for version in self.versions:
            pairs.append((version.dot.node, version.dot.timestamp))
            pairs.extend(version.context.entries)
        return VersionVector.of(pairs)


def _cut(versions: tuple[Version, ...]) -> tuple[Version, ...]:
    """The newest of `versions` (newest first) within the size bounds; the newest always stays."""
    if len(versions) < 2:
        return versions
    values = meta = 0
    for i, version in enumerate(versions):
        values += len(version.value or b"")
        meta += version.meta_bytes()
        if i and (values > SIBLINGS_MAX_BYTES or meta > SIBLINGS_META_MAX_BYTES):
            return versions[:i]
    return versions


def write(
    current: VersionSet,
    dot: Dot,
    context: VersionVector,
    value: bytes | None,
    resolution: Resolution,
    max_siblings: int,
    max_bytes: int | None = None,
    *,
    expires_ms: int = 0,
    now_ms: int = 0,
) -> VersionSet:
    """The coordinator's write: a new version merged into the key's current set.

    Args:
        current: what this replica holds for the key.
        dot: the new version's identity; its timestamp must exceed every timestamp in `current` and
            `context` (the caller issues it from the hybrid logical clock after observing both).
        context: what the client had read (empty for a blind write); causally closed.
        value: the bytes, or None for a delete.
        resolution: LWW or SIBLINGS.
        max_siblings: the most versions the key may hold after this write (SIBLINGS).
        max_bytes: the most value bytes the key's versions may hold after this write (SIBLINGS; None: no
            bound). The new value always stays, even alone above the bound.
        expires_ms: the new version's expiry (Unix ms; 0: never). Must be 0 for a delete.
        now_ms: the coordinator's wall clock (SIBLINGS: versions expired by then are superseded, as if the
            client had read them; 0: none are).

    Returns:
        the key's new version set, which contains the new version.
    """
    assert max_siblings >= 1
    assert dot.timestamp > current.max_timestamp and dot.timestamp > context.max_timestamp()
    assert expires_ms >= 0 and not (expires_ms and value is None), "a tombstone never expires"
    if resolution is Resolution.LWW:
        # The context's timestamps are all below the dot's (asserted above), so it cannot cover the dot. It
        # is closed over the versions it covers: a read of an LWW winner lists only the winner, whose node's
        # entry can cover an older version of that node that this replica still holds, and that version's
        # own context must then be covered too (a causally closed context).
        return VersionSet((Version(dot, closed(context, current.versions), value, expires_ms),))
    survivors = sorted(
        (v for v in current.versions if not context.covers(v.dot.timestamp, v.dot.node)), key=lambda v: v.dot
    )
    if now_ms and any(0 < v.expires_ms <= now_ms for v in survivors):
        # An expired version is semantically absent: it is superseded like a version the client had read
        # (its whole closure joins the context, which stays causally closed). Not when its node has an older
        # version here that is still alive: the node's entry would cover that one too, and a value nobody read
        # would go; the expired one then stays (reads skip it) until a read supersedes it or it is purged.
        def costless(expired: Version) -> bool:
            node, timestamp = expired.dot.node, expired.dot.timestamp
            return not any(v.dot.node == node and v.dot.timestamp < timestamp and v.alive_at(now_ms) for v in survivors)

        superseded = [v for v in survivors if 0 < v.expires_ms <= now_ms and costless(v)]
        for version in superseded:
            closure = VersionVector.of([(version.dot.node, version.dot.timestamp)])
            context = context.merge(version.context).merge(closure)
        survivors = [v for v in survivors if not context.covers(v.dot.timestamp, v.dot.node)]
    excess = len(survivors) + 1 - max_siblings
    if max_bytes is not None:
        # Also supersede the oldest while the values held would exceed the byte bound (a key's whole
        # version set must fit in one message to replicate).
        held = len(value or b"") + sum(len(v.value or b"") for v in survivors)
        extra = 0
        for version in survivors:
            if held <= max_bytes:
                break
            held -= len(version.value or b"")
            extra += 1
        excess = max(excess, extra)
    if excess > 0:
        # The oldest survivors are superseded as if the client had read them: their whole closure (dot and
        # context) joins the new version's context, which keeps contexts causally closed.
        for oldest in survivors[:excess]:
            context = context.merge(oldest.context).merge(VersionVector.of([(oldest.dot.node, oldest.dot.timestamp)]))
    # Closed over every held version the context now covers: an expired or cut version's node entry (a
    # timestamp) also covers that node's older versions held here, whose contexts the new version must then
    # carry, or a merge that drops them by it would forget what they had superseded, and merges in another
    # order would keep it (found by tests/core/test_expiry.py's merge laws).
    new = Version(dot, closed(context, current.versions), value, expires_ms)
    assert not new.context.covers(dot.timestamp, dot.node), "a version cannot cover itself"
    return VersionSet.of((*current.versions, new), resolution)


def closed(context: VersionVector, versions: Iterable[Version]) -> VersionVector:
    """`context` with the contexts of the `versions` it covers folded in, until it covers no more of them whose
    context it lacks (causally closed over them)."""
    pending = list(versions)
    while True:
        covered = [v for v in pending if context.covers(v.dot.timestamp, v.dot.node)]
        if not covered:
            return context
        for version in covered:
            context = context.merge(version.context)
        # Only the versions folded in leave: one the merged contexts now cover is folded in the next pass.
        pending = [v for v in pending if not any(v is c for c in covered)]


def death(version: Version) -> int:
    """When `version` died, as an HLC timestamp: a tombstone at its dot, a value at its expiry (`pack`ed);
    0 for a value that never expires (it is not dead)."""
    if version.value is None:
        return version.dot.timestamp
    return pack(version.expires_ms) if version.expires_ms else 0


def death_ms(version: Version) -> int:
    """When `version` died, Unix ms (see `death`; 0: it never dies)."""
    return physical_ms(version.dot.timestamp) if version.value is None else version.expires_ms


def purgeable(versions: VersionSet, before: int) -> bool:
    """True when every version of the set is dead (a tombstone, or a value whose expiry has passed) and the
    newest death is older than `before` (an HLC timestamp, so the grace period counts from the death): the
    key was deleted or expired long enough ago that it may be purged (see docs/consistency.md)."""
    if not versions.versions:
        return False
    newest = 0
    for version in versions.versions:
        died = death(version)
        if not died:
            return False
        newest = max(newest, died)
    return newest < before
