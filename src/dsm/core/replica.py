"""`Replica`: what one replica stores for a batch of writes and merges, decided as pure code.

This is the data path's write and merge rule, written once: the node's commit loop (`dsm.node`) and the
simulator's nodes (`dsm.sim.cluster`, over the real `MemoryStore`) both call it, so the simulator's
histories verify the rule the product runs. The caller reads the stored rows the batch needs (`reads`),
hands them to `apply` with a wall-clock reading, stores what comes back (`Commit`) in one transaction, and
tells the replica once it is durable (`stored`).

What `apply` decides, in queue order:
- A local write (`WriteOp`) gets a dot from the node's hybrid logical clock, advanced past every timestamp
  the key holds and its context names, so the new version is newer than what it supersedes; the new set
  is `versions.write` (context dominance, `max_siblings` and the sibling byte bound). In last-writer-wins
  the stored row is not needed (`reads` leaves it out): the clock has observed every stored timestamp, so
  the new dot wins whatever is stored. A write with `ttl_ms` stores the absolute expiry
  `physical_ms(dot) + ttl_ms` in its version (see `versions.py`: expiry is read-side only, never merged).
- A merge (`MergeOp`) joins remote version sets into the stored ones. It refuses (and counts, `MergeStats`)
  a set it cannot decode, one whose newest timestamp is more than `max_clock_offset_ms` ahead of the wall
  clock (`ClockSkewError`: a bad clock must not win every later last-writer-wins comparison), and one older
  than the tombstone grace period for a key this replica does not hold although it was a member when that
  version was written (the key was deleted here and its tombstone purged: taking it would bring a deleted
  key back). The clock observes what it accepts, so a later local write is newer than everything stored.
- A purge (the tombstone sweep's `MergeOp.purge`) deletes the keys whose versions are all dead (tombstones,
  or values whose expiry has passed) and died before its bound (`versions.purgeable`), checked against the
  row as it is in this batch, so a write that arrived meanwhile wins.
- Clock floor: every stored timestamp stays at or below a reservation kept in the store's metadata
  (`META_HLC`), moved ahead by `HLC_RESERVE_MS` in the same commit as the write that needs it; a restarted
  node starts its clock above it (see `dsm.node`).
- What is published: each key a local write changed, once per commit, with its whole version set (the
  unit replicas exchange, see `versions.py`), as a `DataItem` for dissemination; and, for watches, the
  `Change` of every key the commit changed.

A row this replica cannot decode is left for an operator: merges of it are refused, and in 'siblings' mode
the writes of that key fail alone (`StorageCorruptError`). In last-writer-wins a local write does not read
the row (the new version wins whatever is stored) and replaces it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dsm.core.dissemination import update_id
from dsm.core.encoding import DecodeError, decode_versions, digest, encode_versions
from dsm.core.hlc import HybridLogicalClock, pack, physical_ms
from dsm.core.messages import DataItem
from dsm.core.vclock import VersionVector
from dsm.core.versions import SIBLINGS_MAX_BYTES, Dot, Resolution, VersionSet, purgeable, write
from dsm.errors import ClockSkewError, DSMError, StorageCorruptError

#: How far ahead of the newest timestamp the clock floor is reserved, ms (one metadata write per period).
HLC_RESERVE_MS = 10_000
#: Metadata name of the clock floor (Unix ms).
META_HLC = "hlc_reserved"
#: Every client key sorts at or after this; keys below it are internal records (member metadata).
USER_KEYS_START = "\x01"
EMPTY = VersionSet()


@dataclass(frozen=True, slots=True)
class StoredKey:
    """One row of a store.

    Attributes:
        key: the key.
        versions: the canonical encoding of the key's version set (`dsm.core.encoding`).
        digest: signed 64-bit digest of (key, versions).
        timestamp: the largest version timestamp in `versions` (HLC).
        seq: the commit stamp of the commit that stored this row (`Commit.stamp`; 0: none).
        expires_ms: the moment the key becomes absent by expiry (`expiry_of`), None when it never does.
    """

    key: str
    versions: bytes
    digest: int
    timestamp: int
    seq: int = 0
    expires_ms: int | None = None


def expiry_of(versions: VersionSet) -> int | None:
    """The moment a key holding `versions` becomes absent by expiry (Unix ms; the store's indexed
    `expires_ms`): the latest expiry of its live values when every one of them expires, else None (a value
    that never expires, or no live value at all). In siblings mode a sibling that expires while another
    stays live changes nothing a reader sees, so it has no moment of its own."""
    latest = 0
    for version in versions.versions:
        if version.value is None:
            continue
        if not version.expires_ms:
            return None
        latest = max(latest, version.expires_ms)
    return latest or None


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    """The knobs of the write and merge rule (each as `StorageConfig` names and documents it)."""

    conflict_resolution: Resolution = Resolution.LWW
    max_siblings: int = 16
    max_clock_offset_ms: int = 10_000
    tombstone_grace_ms: int = 7 * 24 * 3_600_000

    @classmethod
    def from_config(cls, config: Any) -> ReplicaSettings:
        return cls(
            Resolution(config.conflict_resolution),
            config.max_siblings,
            config.max_clock_offset_ms,
            config.tombstone_grace_ms,
        )


@dataclass(slots=True)
class MergeStats:
    """What merges of remote writes did (the network runtime exports these as metrics)."""

    items: int = 0
    keys_changed: int = 0
    refused_skew: int = 0
    refused_corrupt: int = 0
    refused_expired: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    """A committed change of one key, as a watch reports it.

    Attributes:
        key: the key.
        timestamp: the hybrid-logical-clock timestamp of its newest version.
        writer: the node that accepted that version.
        deleted: no live value is left (the newest version is a delete).
        local: written through this node (False: it arrived from another replica).
        stamp: the commit stamp of the commit that stored it (`Commit.stamp`): a watch's position.
        digest: the stored row's digest (a client that mirrors the keys compares it).
    """

    key: str
    timestamp: int
    writer: str
    deleted: bool
    local: bool
    stamp: int = 0
    digest: int = 0


@dataclass(slots=True)
class WriteOp:
    """A local write (value None: a delete) with the context it supersedes; `apply` fills in the outcome."""

    key: str
    value: bytes | None
    context: VersionVector
    #: The value expires this long after the write's own timestamp, ms (0: never; a delete never expires).
    ttl_ms: int = 0
    #: Published by the request at a consistency level that follows the commit (`NodeCore.write_at`: its
    #: tree push then skips the members its `Replicate` carries the write to), not with the commit.
    deferred: bool = False
    #: The key's version set right after this write (its context is the write's result).
    after: VersionSet = EMPTY
    timestamp: int = 0
    #: Set when this write alone failed (its key's stored row is unreadable).
    error: DSMError | None = None


@dataclass(slots=True)
class MergeOp:
    """Remote version sets to join in, and the tombstone sweep's purge; `apply` fills in the outcome."""

    items: Sequence[DataItem] = ()
    #: Keys to delete if every version is still dead from before `purge_before` (an HLC timestamp: tombstones,
    #: expired values; `versions.purgeable`), and metadata to store.
    purge: Sequence[str] = ()
    purge_before: int = 0
    meta: Mapping[str, bytes] | None = None
    #: Keys this merge changed (purged keys included), and items it refused.
    changed: int = 0
    refused: int = 0


Op = WriteOp | MergeOp


@dataclass(slots=True)
class Commit:
    """What one batch stores (in one transaction) and what it tells others once durable."""

    rows: list[StoredKey] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    meta: dict[str, bytes] = field(default_factory=dict)
    #: The keys local writes changed (key -> the timestamp of the write), and their writer (this node).
    written: dict[str, int] = field(default_factory=dict)
    writer: str = ""
    #: Keys of `written` whose last write in the batch is `WriteOp.deferred`: their items are published by the
    #: level request that follows, not with the commit.
    deferred: set[str] = field(default_factory=set)
    #: Remote items refused, with the reason (for the log; expired ones are not logged), and the keys of
    #: every refused item.
    refusals: list[tuple[str, str]] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)
    #: The keys that changed and their new sets (for `changes`).
    states: dict[str, VersionSet] = field(default_factory=dict)
    #: The clock floor this commit stores (0: unchanged); `Replica.stored` takes it once durable.
    reserved_ms: int = 0
    #: `published`, once made.
    items: list[DataItem] | None = None
    #: The commit stamp (0: the commit changed no row): a reading of this replica's clock, above every stamp
    #: of an earlier commit (restarts included, through the clock floor), stored as every row's `seq`. The
    #: rows changed after a stamp are what a watch resumed from it replays (`BackingStore.changed_since`).
    stamp: int = 0

    @property
    def published(self) -> list[DataItem]:
        """The keys local writes changed, each with its whole version set, for dissemination (made on first
        use: a standalone node never asks)."""
        if self.items is None:
            encoded = {row.key: row.versions for row in self.rows} if self.written else {}
            writer = self.writer
            self.items = [DataItem(update_id(k, ts, writer), k, encoded[k]) for k, ts in self.written.items()]
        return self.items

    def changes(self) -> list[Change]:
        """The change of every client key this commit stored, in commit order (for watches)."""
        out = []
        for row in self.rows:
            if row.key < USER_KEYS_START:
                continue  # an internal record (member metadata)
            versions = self.states[row.key]
            newest = max(versions.versions, key=lambda v: v.dot.timestamp)
            local = row.key in self.written
            change = Change(
                row.key, newest.dot.timestamp, newest.dot.node, not versions.live, local, self.stamp, row.digest
            )
            out.append(change)
        return out


class Replica:
    """One replica's write and merge rule, with its clock (see the module docstring).

    Args:
        node_id: this node's id (the writer of its dots).
        settings: the rule's knobs.
        where: names the store in error messages (its URL).
    """

    def __init__(self, node_id: str, settings: ReplicaSettings, where: str = "") -> None:
        self.node_id = node_id
        self.settings = settings
        self.where = where
        self.clock = HybridLogicalClock(settings.max_clock_offset_ms)
        self.stats = MergeStats()
        #: The clock floor stored in the metadata (Unix ms); every stored timestamp is at or below it.
        self.reserved_ms = 0
        #: Unix ms since when this store takes part in the cluster (older remote versions of keys it does
        #: not hold may have been purged here, see `MergeOp`).
        self.member_since_ms = 0
        self.tombstones_purged = 0

    @property
    def resolution(self) -> Resolution:
        return self.settings.conflict_resolution

    # --- reading back a store

    def restore_floor(self, reserved_ms: int, wall_ms: int) -> bool:
        """Takes the clock floor read from the store; returns whether the caller must also advance the clock
        past the store's newest timestamp (`advance_to(max_timestamp)`): the reservation is not behind the
        wall clock (a crash within the reservation window, or a wall clock that went back)."""
        self.reserved_ms = reserved_ms
        return reserved_ms >= wall_ms

    def closing_meta(self) -> dict[str, bytes]:
        """The exact clock floor for a clean close (the next start then needs no scan)."""
        return {META_HLC: str(physical_ms(self.clock.last) + 1).encode("ascii")}

    # --- checks of what clients send

    def check_context(self, context: VersionVector, wall_ms: int) -> None:
        """Raises `ClockSkewError` if a client's context names a timestamp from the future. What this clock
        has issued or observed never is, however far ahead of the wall clock it runs."""
        newest = context.max_timestamp()
        if newest > self.clock.last:
            self.clock.check(newest, wall_ms)

    def decode(self, key: str, encoded: bytes) -> VersionSet:
        """A stored row's version set (`StorageCorruptError` if unreadable)."""
        try:
            return decode_versions(encoded)
        except DecodeError as exc:
            raise StorageCorruptError(f"{self.where}: stored versions of key {key!r} are unreadable: {exc}") from None

    def purge_candidates(self, page: Sequence[tuple[str, bytes]], before: int) -> list[str]:
        """The keys of a page of stored rows whose versions all died (deleted or expired) before `before` (an
        unreadable row is left for an operator: reads report it)."""
        keys = []
        for key, encoded in page:
            try:
                if purgeable(decode_versions(encoded), before):
                    keys.append(key)
            except DecodeError:
                continue
        return keys

    def purge_bound(self, wall_ms: int) -> int:
        """The timestamp below which dead versions (tombstones, expired values) may be purged now."""
        return pack(max(0, wall_ms - self.settings.tombstone_grace_ms))

    # --- the batch

    def reads(self, batch: Sequence[Op]) -> list[str]:
        """The stored rows `apply` needs for `batch` (each key once)."""
        lww = self.resolution is Resolution.LWW
        wanted: dict[str, None] = {}
        for op in batch:
            if isinstance(op, MergeOp):
                wanted.update((item.key, None) for item in op.items)
                wanted.update((key, None) for key in op.purge)
            elif not lww:
                wanted[op.key] = None
        return list(wanted)

    def apply(self, batch: Sequence[Op], found: Mapping[str, bytes], wall_ms: int) -> Commit:
        """Decides what `batch` stores, given the stored rows `found` of the keys `reads` named (absent
        keys left out), and fills in each op's outcome."""
        states: dict[str, VersionSet] = {}
        bad: dict[str, DSMError] = {}
        for key, encoded in found.items():
            try:
                states[key] = self.decode(key, encoded)
            except StorageCorruptError as exc:
                bad[key] = exc
        commit = Commit(writer=self.node_id)
        dirty: dict[str, None] = {}
        published = commit.written
        purged: dict[str, MergeOp] = {}
        last_dot = 0  # the timestamp of the batch's last local write
        for op in batch:
            if isinstance(op, MergeOp):
                self._merge(op, states, bad, dirty, wall_ms, commit)
                self._purge(op, states, dirty, purged)
                if op.meta:
                    commit.meta.update(op.meta)
            elif op.key in bad:
                op.error = bad[op.key]
            else:
                self._write(op, states, wall_ms)
                dirty[op.key] = None
                published[op.key] = last_dot = op.timestamp
                if op.deferred:
                    commit.deferred.add(op.key)
                else:
                    commit.deferred.discard(op.key)
        for key, purge in purged.items():
            if key in dirty:  # written again later in this batch: the new row stands, nothing is purged
                purge.changed -= 1
            else:
                commit.deletes.append(key)
        rows, kept = commit.rows, commit.states
        stamp = commit.stamp = self._stamp(last_dot, wall_ms) if dirty else 0
        for key in dirty:
            versions = kept[key] = states[key]
            encoded = encode_versions(versions)
            rows.append(
                StoredKey(key, encoded, digest(key, encoded), versions.max_timestamp, stamp, expiry_of(versions))
            )
        self._reserve(commit)
        return commit

    def _write(self, op: WriteOp, states: dict[str, VersionSet], wall_ms: int) -> None:
        clock = self.clock
        current = states.get(op.key, EMPTY)
        if current.versions or op.context.entries:
            clock.advance_to(max(current.max_timestamp, op.context.max_timestamp()))
        dot = Dot(clock.now(wall_ms), self.node_id)
        op.timestamp = dot.timestamp
        settings = self.settings
        # The expiry is absolute and counted from the dot's physical time (never before the write itself), so
        # every replica agrees on it; siblings already expired at this wall clock are superseded.
        expires_ms = physical_ms(dot.timestamp) + op.ttl_ms if op.ttl_ms else 0
        op.after = states[op.key] = write(
            current,
            dot,
            op.context,
            op.value,
            settings.conflict_resolution,
            settings.max_siblings,
            SIBLINGS_MAX_BYTES,
            expires_ms=expires_ms,
            now_ms=wall_ms,
        )

    def _merge(
        self,
        op: MergeOp,
        states: dict[str, VersionSet],
        bad: Mapping[str, DSMError],
        dirty: dict[str, None],
        wall_ms: int,
        commit: Commit,
    ) -> None:
        stats, clock, resolution = self.stats, self.clock, self.resolution
        expired_ms = wall_ms - self.settings.tombstone_grace_ms
        changed = refused = 0
        for item in op.items:
            stats.items += 1
            if item.key in bad:
                stats.refused_corrupt += 1  # our row is unreadable; leave it for an operator
                refused += 1
                commit.refused.add(item.key)
                continue
            try:
                remote = decode_versions(item.versions)
                clock.check(remote.max_timestamp, wall_ms)
            except DecodeError as exc:
                stats.refused_corrupt += 1
                refused += 1
                commit.refusals.append((item.key, str(exc)))
                commit.refused.add(item.key)
                continue
            except ClockSkewError as exc:
                stats.refused_skew += 1
                refused += 1
                commit.refusals.append((item.key, str(exc)))
                commit.refused.add(item.key)
                continue
            current = states.get(item.key)
            if current is None and self.member_since_ms < physical_ms(remote.max_timestamp) < expired_ms:
                stats.refused_expired += 1
                refused += 1
                commit.refused.add(item.key)
                continue
            current = current or EMPTY
            merged = current.merge(remote, resolution)
            if merged.versions == current.versions:
                continue
            states[item.key] = merged
            clock.advance_to(merged.max_timestamp)
            dirty[item.key] = None
            changed += 1
        stats.keys_changed += changed
        op.changed = changed
        op.refused = refused

    @staticmethod
    def _purge(
        op: MergeOp, states: dict[str, VersionSet], dirty: Mapping[str, None], purged: dict[str, MergeOp]
    ) -> None:
        """Marks for deletion the keys of `op.purge` that still hold only long-dead versions; a later write or
        merge of one in the same batch makes it a row again (see `apply`)."""
        for key in op.purge:
            current = states.get(key)
            if current is not None and key not in dirty and purgeable(current, op.purge_before):
                purged[key] = op
                del states[key]
                op.changed += 1

    def _stamp(self, last_dot: int, wall_ms: int) -> int:
        """The stamp of a commit that changes rows: a clock reading above every earlier one, so above every
        earlier stamp. The batch's last write dot is one when the clock has not moved since (no merge after
        it), which spares a commit of writes a second reading; otherwise a new reading."""
        clock = self.clock
        return last_dot if last_dot and last_dot == clock.last else clock.now(wall_ms)

    def _reserve(self, commit: Commit) -> None:
        """Moves the clock floor ahead in this commit if its newest timestamp reaches it."""
        newest_ms = physical_ms(self.clock.last)
        if newest_ms < self.reserved_ms:
            return
        commit.reserved_ms = newest_ms + HLC_RESERVE_MS
        commit.meta[META_HLC] = str(commit.reserved_ms).encode("ascii")

    def stored(self, commit: Commit) -> None:
        """Records that `commit` is durable (its clock floor now holds; its purges are done)."""
        if commit.reserved_ms:
            self.reserved_ms = commit.reserved_ms
        self.tombstones_purged += len(commit.deletes)
