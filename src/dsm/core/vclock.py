"""Version vectors: the causal context carried by every version.

A version vector maps a writer's node id to the largest timestamp of that writer's writes that a context
has seen (timestamps are the writers' hybrid-logical-clock readings, strictly increasing per writer, so
"seen up to t" is meaningful). A context *covers* a dot (timestamp, writer) when its entry for the writer
is at least the dot's timestamp.

Invariants:
- A vector is immutable, has no zero entries and keeps its entries sorted by node id, so equal vectors
  compare, hash and encode identically on every node.
- `merge` is the pointwise maximum: commutative, associative and idempotent.
- Size bound: a vector holds at most one entry per node that ever coordinated a write of the key (clients
  never appear), so its size is bounded by the cluster's. Vectors are never cut: see `versions.py` for why
  a cut would break the merge.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum


class Ordering(Enum):
    """How two version vectors relate."""

    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


@dataclass(frozen=True, slots=True)
class VersionVector:
    """An immutable version vector; build it with `VersionVector.of(...)`."""

    entries: tuple[tuple[str, int], ...] = ()

    @staticmethod
    def of(mapping: Mapping[str, int] | Iterable[tuple[str, int]] = ()) -> VersionVector:
        """Builds a vector from node→timestamp pairs; zero entries are dropped, duplicates take the max."""
        items = mapping.items() if isinstance(mapping, Mapping) else mapping
        merged: dict[str, int] = {}
        for node, counter in items:
            assert counter >= 0, counter
            if counter > merged.get(node, 0):
                merged[node] = counter
        return VersionVector(tuple(sorted(merged.items())))

    def get(self, node: str) -> int:
        """The entry for `node` (0 when absent)."""
        for name, counter in self.entries:
            if name == node:
                return counter
        return 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self.entries)

    def covers(self, timestamp: int, node: str) -> bool:
        """True when this context has seen the write (`timestamp`, `node`)."""
        return self.get(node) >= timestamp

    def merge(self, other: VersionVector) -> VersionVector:
        """The pointwise maximum of two vectors."""
        if not other.entries:
            return self
        if not self.entries:
            return other
        return VersionVector.of([*self.entries, *other.entries])

    def compare(self, other: VersionVector) -> Ordering:
        """Compares two vectors: BEFORE (self happened before other), AFTER, EQUAL or CONCURRENT."""
        mine, theirs = self.as_dict(), other.as_dict()
        less = greater = False
        for node in mine.keys() | theirs.keys():
            a, b = mine.get(node, 0), theirs.get(node, 0)
            if a < b:
                less = True
            elif a > b:
                greater = True
        if less and greater:
            return Ordering.CONCURRENT
        if less:
            return Ordering.BEFORE
        if greater:
            return Ordering.AFTER
        return Ordering.EQUAL

    def max_timestamp(self) -> int:
        """The largest timestamp in the vector (0 when empty)."""
        return max((counter for _, counter in self.entries), default=0)
