"""The one hierarchy of errors DSM raises.

Every error a caller can see derives from `DSMError`. The tree says whose fault it is (in the manner of
h11's Local/RemoteProtocolError): `InvalidInputError` is the caller's misuse and is raised at once;
`StorageError` is the backing store's condition (unavailable, corrupt, read-only, locked);
`ClockSkewError` blames a remote clock; `ConfigError` names the bad configuration field. Invariants that
must never break are `assert`ed, not raised as these.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ClockSkewError",
    "ClosedError",
    "ConfigError",
    "ConsistencyError",
    "DSMError",
    "FeatureUnavailableError",
    "InvalidContextError",
    "InvalidInputError",
    "InvalidKeyError",
    "InvalidValueError",
    "OutcomeUnknownError",
    "PreconditionFailedError",
    "StaleReplicaError",
    "StorageCorruptError",
    "StorageError",
    "StorageLockedError",
    "StorageReadOnlyError",
    "StorageUnavailableError",
]


class DSMError(Exception):
    """Base class of every error DSM raises on purpose."""


class ConfigError(DSMError, ValueError):
    """A configuration value is invalid.

    Attributes:
        field: the name of the offending setting.
        value: the value that was given.
        allowed: a human description of what is allowed.
    """

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid config {field}={value!r}: {allowed}")


class InvalidInputError(DSMError, ValueError):
    """The caller passed something DSM does not accept (wrong type, too large, malformed)."""


class InvalidKeyError(InvalidInputError):
    """A key is not a `str`, is empty, is not valid UTF-8 or is longer than `max_key_bytes`."""


class InvalidValueError(InvalidInputError):
    """A value is not bytes-like or is longer than `max_value_bytes`."""


class InvalidContextError(InvalidInputError):
    """A version context token is malformed, oversized, or claims a time too far in the future."""


class ClockSkewError(DSMError):
    """A remote hybrid-logical-clock reading is further ahead of the local wall clock than allowed.

    Attributes:
        remote_ms: the physical part of the remote reading, in Unix milliseconds.
        local_ms: the local wall clock at the time, in Unix milliseconds.
        max_offset_ms: the configured bound (`max_clock_offset_ms`).
    """

    def __init__(self, remote_ms: int, local_ms: int, max_offset_ms: int) -> None:
        self.remote_ms = remote_ms
        self.local_ms = local_ms
        self.max_offset_ms = max_offset_ms
        super().__init__(
            f"remote clock is {remote_ms - local_ms} ms ahead of the local wall clock; "
            f"at most {max_offset_ms} ms (max_clock_offset_ms) is accepted"
        )


class ClosedError(DSMError):
    """The storage was closed; no further operations are accepted."""


class ConsistencyError(DSMError):
    """A consistency level was not met before its timeout.

    Not a rollback: a write stays durable on every member that stored it (the coordinator first) and keeps
    spreading; a read returned nothing. Retrying with the same context is safe.

    Attributes:
        level: the level asked for.
        operation: "write" or "read".
        received: members that answered in time (the coordinator included).
        required: the fewest answers that meet the level.
        shortfall: per group not met (a region, or "all"): (answers, needed).
        cause: why, for programs: "not_joined" when the node refused because it has not joined its cluster
            yet (nothing was asked of other members; a conditional operation wrote nothing), "" when too few
            members answered in time.
    """

    def __init__(
        self,
        level: str,
        operation: str,
        received: int,
        required: int,
        shortfall: dict[str, tuple[int, int]],
        reason: str = "",
        *,
        cause: str = "",
    ) -> None:
        self.level = level
        self.cause = cause
        self.operation = operation
        self.received = received
        self.required = required
        self.shortfall = shortfall
        kept = " (the write is durable where it landed and keeps spreading)" if operation == "write" else ""
        if reason:
            detail = reason
        else:
            groups = ", ".join(f"{name}: {got} of {need}" for name, (got, need) in sorted(shortfall.items()))
            detail = f"{received} members answered, {required} required ({groups})"
        super().__init__(f"{operation} at consistency {level!r} not met: {detail}{kept}")


class OutcomeUnknownError(ConsistencyError):
    """A conditional write (or linearizable operation) may or may not have taken effect: its accept was sent
    to the key's acceptor group but too few confirmed it in time. A later operation on the key will see it
    if it took effect. Read the key linearizably before retrying a non-idempotent change."""


class PreconditionFailedError(DSMError):
    """A conditional write's condition was false: the key holds a live value (`if_absent`), or it is no longer
    exactly what the read whose context was given returned (`if_match`). Nothing was written.

    Attributes:
        key: the key.
        context: the key's current version context (None when the key holds nothing at all): pass it as
            `if_match` to retry against the current state.
        exists: whether the key holds a live value.
    """

    def __init__(self, key: str, context: str | None, exists: bool) -> None:
        self.key, self.context, self.exists = key, context, exists
        state = "holds a value" if exists else "holds no value" if context else "does not exist"
        super().__init__(f"precondition failed on {key!r}: the key {state} and does not match the condition")


class StaleReplicaError(DSMError):
    """A node's data is older than the tombstone grace period: it was away from the cluster longer than
    `tombstone_grace_ms`, so the other members may have purged tombstones of keys it still holds, and its
    data would bring those deleted keys back. Start it with an empty data directory (it rejoins and copies
    the cluster's data), or with `stale_replica = "discard"`, which empties its store first."""

    def __init__(self, away_ms: int, grace_ms: int) -> None:
        self.away_ms, self.grace_ms = away_ms, grace_ms
        super().__init__(
            f"this node's data was last in the cluster {away_ms / 3_600_000:.1f} h ago, longer than "
            f"tombstone_grace_ms ({grace_ms / 3_600_000:.1f} h): keys deleted meanwhile could come back. Start "
            "it with an empty data directory, or set stale_replica = 'discard' (dsm node run --discard-stale-data)"
            " to empty its store and rejoin"
        )


class ForeignStoreError(DSMError):
    """The store was written by another node id: a node started on another node's data directory (or
    database) would serve that node's data under its own id and take its place in the cluster. Start it
    on its own store, or with `adopt_store = true` (dsm node run --adopt-store) to make the store its own."""

    def __init__(self, store_id: str, node_id: str, where: str) -> None:
        self.store_id, self.node_id = store_id, node_id
        super().__init__(
            f"the store {where} belongs to node {store_id!r}, not {node_id!r}: start {node_id!r} on its own "
            f"data directory, or with adopt_store = true (--adopt-store) to take the store over"
        )


class FeatureUnavailableError(DSMError):
    """A request needs a feature that not every member of the cluster supports yet (during a rolling upgrade:
    a member that cannot decode what the request would write would refuse it, again and again). Nothing was
    written; retry once every member runs a version that supports it (or has left).

    Attributes:
        feature: the feature ("ttl").
        members: the members that do not advertise it (yet).
    """

    def __init__(self, feature: str, members: list[str]) -> None:
        self.feature, self.members = feature, members
        shown = ", ".join(members[:10]) + (f" and {len(members) - 10} more" if len(members) > 10 else "")
        super().__init__(f"feature {feature!r} is not available: not every member supports it yet ({shown})")


class WatchOverflowError(DSMError):
    """A watch's reader fell further behind than its queue holds; the watch has ended."""


class StorageError(DSMError):
    """The backing store failed. Data already committed is untouched."""


class StorageUnavailableError(StorageError):
    """The backing store cannot be reached or opened (for example PostgreSQL is down)."""


class StorageCorruptError(StorageError):
    """The backing store's file or rows are not what DSM wrote (not a database, bad row encoding)."""


class StorageReadOnlyError(StorageError):
    """The backing store refuses writes (read-only file, directory or database)."""


class StorageLockedError(StorageError):
    """The store is in use: another node holds it (two nodes must never share one store), or the database
    stayed locked or busy beyond its timeout."""
