"""Public value types of the front door: what a node is told about itself and what reads/writes return."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from dsm.core.encoding import encode_context
from dsm.core.hlc import physical_ms
from dsm.core.versions import VersionSet

#: What a node id is, in the config (`node_id`) and on the wire (every id a peer names, checked before
#: anything else reads it): 1-128 characters of A-Z a-z 0-9 . _ : @ -, the first a letter or digit. Nothing in
#: it can break a log line or need quoting in a URL path segment but ':' and '@'.
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
#: NODE_ID_PATTERN in words (for error messages).
NODE_ID_RULE = "1-128 characters of A-Z a-z 0-9 . _ : @ -, not starting with one of . _ : @ -"


def is_node_id(value: object) -> bool:
    """Whether `value` is a valid node id (NODE_ID_PATTERN, the whole string: no trailing newline)."""
    return isinstance(value, str) and NODE_ID_PATTERN.fullmatch(value) is not None


@dataclass(frozen=True)
class NodeInfo:
    """What a node advertises about itself.

    Attributes:
        addresses: host:port addresses other nodes may use to reach it (empty: the config's advertise
            address).
        region: its region (None: the config's region).
        metadata: free-form string pairs, shown to other members.
    """

    addresses: tuple[str, ...] = ()
    region: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sibling:
    """One value of a key, with who wrote it and when.

    Attributes:
        value: the bytes written.
        timestamp: the writer's hybrid-logical-clock timestamp (see `dsm.core.hlc`).
        writer: the node id that accepted the write.
        expires_ms: Unix ms from which the value reads as absent (0: it never expires).
    """

    value: bytes
    timestamp: int
    writer: str
    expires_ms: int = 0

    @property
    def written_at_ms(self) -> int:
        """The physical part of the timestamp: Unix milliseconds at the writer (approximately)."""
        return physical_ms(self.timestamp)


class ReadResult:
    """The result of a `get` of a key that holds a value: from the library (`EpidemicStorage.get`) and from the
    HTTP clients (`dsm.client`, built by `ReadResult.received` from what the node sent).

    Attributes:
        key: the key read.
        siblings: the concurrent values, newest (the last-writer-wins choice) first. Always one value in
            'lww' mode; possibly several in 'siblings' mode. Values that had expired at the moment of the
            read (`now_ms`, the serving node's wall clock) are left out; the context still covers them, so
            a write with it supersedes them too.
    """

    __slots__ = ("_context", "_now_ms", "_siblings", "_versions", "key")

    def __init__(
        self,
        key: str,
        versions: VersionSet | None = None,
        now_ms: int = 0,
        *,
        siblings: tuple[Sibling, ...] | None = None,
        context: str | None = None,
    ) -> None:
        # From the node: `versions` (the caller, `EpidemicStorage.get`, has checked that a live value exists;
        # this stays O(1) per read). From a client: the `siblings` and `context` the node sent (`received`).
        assert (versions is not None and versions.versions) or siblings, "a ReadResult needs a live value"
        self.key = key
        self._versions = versions
        self._now_ms = now_ms
        self._siblings = siblings
        self._context = context

    @classmethod
    def received(cls, key: str, siblings: tuple[Sibling, ...], context: str) -> ReadResult:
        """A read as a client receives it over HTTP: the live values (newest first) and the encoded context;
        the version set itself does not travel."""
        if not siblings:
            raise ValueError("a ReadResult needs at least one live value")
        return cls(key, siblings=siblings, context=context)

    def _held(self) -> VersionSet:
        assert self._versions is not None, "built from a VersionSet or from its siblings and context"
        return self._versions

    @property
    def siblings(self) -> tuple[Sibling, ...]:
        """The concurrent values, newest first (built on first use: most readers only want `value`)."""
        if self._siblings is None:
            self._siblings = tuple(
                Sibling(v.value, v.dot.timestamp, v.dot.node, v.expires_ms)
                for v in self._held().live_at(self._now_ms)
                if v.value is not None
            )
        return self._siblings

    @property
    def value(self) -> bytes:
        """The newest value: the winner by (timestamp, writer), the same on every node."""
        if self._siblings is not None:
            return self._siblings[0].value
        for version in self._held().versions:
            if version.value is not None and version.alive_at(self._now_ms):
                return version.value
        raise AssertionError("unreachable: checked in __init__")

    @property
    def newest(self) -> Sibling:
        """The newest value with its writer and timestamp: the first of `siblings`, without building the
        others."""
        if self._siblings is not None:
            return self._siblings[0]
        for version in self._held().versions:
            if version.value is not None and version.alive_at(self._now_ms):
                return Sibling(version.value, version.dot.timestamp, version.dot.node, version.expires_ms)
        raise AssertionError("unreachable: checked in __init__")

    @property
    def conflict(self) -> bool:
        """True when several concurrent values are held (siblings mode)."""
        if self._siblings is not None:
            return len(self._siblings) > 1
        live = 0
        for version in self._held().versions:
            if version.value is not None and version.alive_at(self._now_ms):
                live += 1
                if live > 1:
                    return True
        return False

    @property
    def context(self) -> str:
        """The opaque version context of this read. Pass it to `put`/`delete` to supersede what was read."""
        if self._context is None:
            self._context = encode_context(self._held().context(), self.key)
        return self._context

    def __repr__(self) -> str:
        return f"ReadResult(key={self.key!r}, siblings={self.siblings!r})"


class WriteResult:
    """The acknowledgement of a `put` or `delete`: durable on this node when returned. The HTTP clients build
    theirs with `WriteResult.received` (key, timestamp and the context the node sent).

    Attributes:
        key: the key written.
        timestamp: the new version's hybrid-logical-clock timestamp.
    """

    __slots__ = ("_context", "_versions", "key", "timestamp")

    def __init__(self, key: str, timestamp: int, versions: VersionSet | None, context: str | None = None) -> None:
        self.key = key
        self.timestamp = timestamp
        self._versions = versions
        self._context = context

    @classmethod
    def received(cls, key: str, timestamp: int, context: str) -> WriteResult:
        """An acknowledgement as a client receives it over HTTP: the version set does not travel."""
        return cls(key, timestamp, None, context)

    @property
    def versions(self) -> VersionSet:
        """The key's version set right after this write (what replicas exchange).

        Raises:
            LookupError: the result came over HTTP (`received`), where only the context travels.
        """
        if self._versions is None:
            raise LookupError("a write acknowledged over HTTP carries its context, not its version set")
        return self._versions

    @property
    def context(self) -> str:
        """The version context right after this write; pass it to the next write of the key to supersede it."""
        if self._context is None:
            self._context = encode_context(self.versions.context(), self.key)
        return self._context

    def __repr__(self) -> str:
        return f"WriteResult(key={self.key!r}, timestamp={self.timestamp})"
