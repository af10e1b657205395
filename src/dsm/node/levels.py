"""Reads and writes at consistency levels above `local`, as a node's front door sees them: the request is
coordinated by the core's `Coordinator` through the network runtime (`Levels`), and its outcome becomes a
result or a `ConsistencyError` here, counted by (operation, level, outcome) for the metrics. A standalone
node (no network) is the only member of every level's groups: its own commit or read meets it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from dsm.core.consistency import Level
from dsm.core.coordinator import LevelDone
from dsm.core.dissemination import update_id
from dsm.core.encoding import encode_versions
from dsm.core.messages import DataItem
from dsm.core.versions import VersionSet
from dsm.errors import ConsistencyError
from dsm.types import WriteResult


class Levels(Protocol):
    """What consistency levels above `local` need of the runtime (`dsm.net.runtime.Runtime`, which drives
    the core's `dsm.core.coordinator.Coordinator`)."""

    @property
    def read_repairs(self) -> int:
        """Members (this node included) that reads at a level found stale and repaired."""
        ...

    async def write_at(self, level: Level, items: Sequence[DataItem], timeout_ms: int) -> LevelDone:
        """Waits until enough members stored `items` (durable here already), or `timeout_ms`."""
        ...

    async def read_at(self, level: Level, key: str, own: VersionSet, timeout_ms: int) -> LevelDone:
        """Reads `key` at `level` with this node's `own` version set first (repairs the stale)."""
        ...


class LevelRequests:
    """A node's requests at levels (see the module docstring).

    Args:
        node_id: this node.
        timeout_ms: `consistency_timeout_ms`.
        network: the runtime, or None for a standalone node.
    """

    def __init__(self, node_id: str, timeout_ms: int, network: Levels | None) -> None:
        self.node_id = node_id
        self.timeout_ms = timeout_ms
        self.network = network
        #: Requests above `local`, by (operation, level, outcome "ok" / "unmet").
        self.stats: Counter[tuple[str, str, str]] = Counter()

    @property
    def read_repairs(self) -> int:
        return 0 if self.network is None else self.network.read_repairs

    async def write(self, level: Level, result: WriteResult) -> None:
        """Waits until enough members stored the write `result` acknowledged here."""
        if self.network is not None:
            item = DataItem(
                update_id(result.key, result.timestamp, self.node_id), result.key, encode_versions(result.versions)
            )
            done = await self.network.write_at(level, [item], self.timeout_ms)
            if not done.ok:
                raise self._unmet("write", done)
        self.stats[("write", level.value, "ok")] += 1

    async def read(self, level: Level, key: str, own: VersionSet) -> VersionSet:
        """The merge of the version sets of enough members (this node's first, `own`); the coordinator
        repairs the stale ones."""
        if self.network is not None:
            done = await self.network.read_at(level, key, own, self.timeout_ms)
            if not done.ok:
                raise self._unmet("read", done)
            assert done.versions is not None
            own = done.versions
        self.stats[("read", level.value, "ok")] += 1
        return own

    def _unmet(self, operation: str, done: LevelDone) -> ConsistencyError:
        tally = done.tally
        self.stats[(operation, tally.level.value, "unmet")] += 1
        # Until a member answered its join, this node's view is a new node's (itself only) or the one it saved
        # before a restart, and nobody may hear its requests: the coordinator refuses rather than meet a level
        # on a view that may be its own alone. The counts say what the level would need.
        joining = done.reason == "not_joined"
        detail = f"this node has not joined its cluster yet ({tally.required} members needed)" if joining else ""
        return ConsistencyError(
            tally.level.value, operation, tally.received, tally.required, tally.shortfall(), detail,
            cause="not_joined" if joining else "",
        )  # fmt: skip
