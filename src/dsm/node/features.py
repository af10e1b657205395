"""Feature gates for rolling upgrades: a request that writes something older members cannot read waits until
every member says it can.

Each networked node publishes the features its build supports as an internal record (`\\x00features/<id>`,
JSON `{"features": [...]}`), replicated like a write, so every member holds every member's record; the
factory publishes it once the node has joined. `FeatureGate.require(feature)` looks up the records of the
members that have not left (alive, suspect and dead ones: a dead member may come back with its old build) and
raises `FeatureUnavailableError` naming those whose record is missing or lacks the feature. A member whose
record has not arrived yet blocks too, so just after a join a gated request may be refused for the moment
the record takes to spread (one gossip round). The limit: the gate sees the members this node knows of; a
node of an older build that joins while a gated write is made, before this node has heard of it, is not
counted (it then refuses that key's versions as corrupt, and keeps its older state of the key, until it is
upgraded).

Why: a version with an expiry is encoded with a 5th field that a node built before expiries existed refuses
as corrupt; it would keep the old value and anti-entropy would resend the key every round. So `ttl` writes
are refused (409 `feature_unavailable`) until the whole cluster can decode them. A positive answer is kept
for `GATE_CACHE_MS`, so a stream of gated writes costs one lookup per period, not one per write.

A standalone node (no network) is its own whole cluster: every feature it supports is available.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Protocol

from dsm.core.encoding import DecodeError, decode_versions
from dsm.core.peer import Peer
from dsm.core.ring import State
from dsm.core.vclock import VersionVector
from dsm.errors import FeatureUnavailableError
from dsm.node.commits import Commits

#: Internal records: a member's features, under this prefix and its node id (below every client key).
FEATURES_KEY_PREFIX = "\x00features/"
#: What this build supports.
SUPPORTED: tuple[str, ...] = ("ttl",)
#: How long a positive answer of `require` is kept, ms.
GATE_CACHE_MS = 1_000


class Members(Protocol):
    """What the gate reads of the network runtime (`dsm.net.runtime.Runtime`): its core's peer, whose member
    table lists the cluster (None before the runtime starts)."""

    @property
    def peer(self) -> Peer | None: ...


def member_ids(peer: Peer) -> list[str]:
    """The members of `peer`'s table that have not left (this node included)."""
    infos, left = peer.directory.infos, int(State.LEFT)
    return [infos[slot].node_id for slot, raw in enumerate(peer.table.states) if raw and raw != left]


def features_of(encoded: bytes | None) -> frozenset[str]:
    """The features a stored record lists (none if it is absent, deleted or unreadable)."""
    if encoded is None:
        return frozenset()
    try:
        newest = next((v.value for v in decode_versions(encoded).versions if v.value is not None), None)
        doc = json.loads(newest) if newest is not None else None
    except (DecodeError, ValueError):
        return frozenset()
    if not isinstance(doc, dict) or not isinstance(doc.get("features"), list):
        return frozenset()
    return frozenset(f for f in doc["features"] if isinstance(f, str))


class FeatureGate:
    """One node's published features and the check of the cluster's (see the module docstring).

    Args:
        commits: the node's local replica (its store, its clock, the commit queue).
        members: the network runtime (None: a standalone node).
        supported: the features this node publishes.
    """

    def __init__(self, commits: Commits, members: Members | None, supported: Sequence[str] = SUPPORTED) -> None:
        self.commits = commits
        self.members = members
        self.supported = tuple(supported)
        self._wall_ms: Callable[[], int] = commits.wall_ms
        #: Feature -> the wall time until which it is known to be available.
        self._open_until: dict[str, int] = {}

    @property
    def key(self) -> str:
        return FEATURES_KEY_PREFIX + self.commits.node_id

    async def publish(self) -> None:
        """Stores this node's record (superseding its previous one); nothing is written when unchanged."""
        value = json.dumps({"features": sorted(self.supported)}, separators=(",", ":")).encode()
        current = await self.commits.store.read(self.key)
        if current is not None:
            held = decode_versions(current)
            if len(held.versions) == 1 and held.versions[0].value == value:
                return
            context = held.context()
        else:
            context = VersionVector()  # nothing held: a blind write
        await self.commits.submit(self.key, value, context)

    async def require(self, feature: str) -> None:
        """Returns when every member that has not left advertises `feature`.

        Raises:
            FeatureUnavailableError: naming the members that do not (yet).
        """
        if feature not in self.supported:
            raise FeatureUnavailableError(feature, [self.commits.node_id])
        peer = self.members.peer if self.members is not None else None
        if peer is None:
            return  # standalone: this node is the whole cluster
        now = self._wall_ms()
        if self._open_until.get(feature, 0) > now:
            return
        ids = sorted(set(member_ids(peer)) - {self.commits.node_id})
        found = await self.commits.store.read_many([FEATURES_KEY_PREFIX + node_id for node_id in ids]) if ids else {}
        blocking = [node_id for node_id in ids if feature not in features_of(found.get(FEATURES_KEY_PREFIX + node_id))]
        if blocking:
            self._open_until.pop(feature, None)
            raise FeatureUnavailableError(feature, blocking)
        self._open_until[feature] = now + GATE_CACHE_MS
