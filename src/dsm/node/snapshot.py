"""Snapshots: an online, consistent, point-in-time copy of a node's store, and its restore into a new store.

**Save** (`save`): every row of the store read inside one read transaction (the store's consistent view,
`BackingStore.with_range_view`: SQLite's WAL snapshot, PostgreSQL's repeatable-read transaction, off the
event loop), written as it is read to a file: writes go on meanwhile and are not in it. The rows are the
replicated data (client keys, member records); a node's acceptor states of conditional writes are not (see
"Restore"). The file, format 1:

    b"DSMSNAP\\n"                       magic
    u32 length, then a JSON header     {"format", "node_id", "created_ms", "keys", "tombstone_grace_ms"}
    per row: u32 length, then msgpack  [key, encoded version set]
    u32 0                              end of rows
    32 bytes                           BLAKE2b-256 of every byte before it

**Restore** (`restore`): refuses a file that is not one (magic), is of a newer format, does not match its
checksum or its row count, and one older than the tombstone grace period (its deletes may have been purged
elsewhere since: the keys they deleted would come back) unless told to discard stale deletes, in which case
the tombstones' absence is accepted knowingly. It writes the rows into a new store in the data directory
through a standalone node of the snapshot's id (so rows, digests and commit stamps are made as any merge
makes them), then dates the store at the snapshot's time (`last_seen_ms`: a node started on it with the
same id rejoins like one that was away since then and catches up by anti-entropy) and marks it as holding no
acceptor state (`META_ACCEPTOR_RESTORED`): a restored acceptor has forgotten promises it made after the
snapshot, and answering as one could break conditional writes' safety, so such a node refuses acceptor
messages (it counts as down in its keys' groups) until the membership handover of conditional writes, which
would re-copy its states, exists.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from dsm.core.messages import DataItem
from dsm.errors import DSMError
from dsm.node.startup import META_ACCEPTOR_RESTORED, META_LAST_SEEN, META_MEMBER_SINCE

MAGIC = b"DSMSNAP\n"
FORMAT = 1
_LEN = struct.Struct(">I")
_DIGEST = 32
#: Rows read per batch from the store's view (bounds the memory a save holds).
BATCH = 1_000
#: Largest header and row accepted when reading a file back.
HEADER_MAX = 1 << 16
ROW_MAX = 256 << 20


class SnapshotError(DSMError):
    """A file that cannot be restored: not a snapshot, a newer format, corrupt, or too old (message says)."""


def write_from_view(view: Any, out: BinaryIO, node_id: str, created_ms: int, grace_ms: int) -> int:
    """Writes every row `view` (a consistent `RangeView`) holds to `out` as a snapshot file; returns the row
    count. Runs on the store's worker thread, inside its read transaction."""
    count, _ = view.fingerprint("", None)
    hasher = hashlib.blake2b(digest_size=_DIGEST)

    def put(data: bytes) -> None:
        hasher.update(data)
        out.write(data)

    header = json.dumps(
        {"format": FORMAT, "node_id": node_id, "created_ms": created_ms, "keys": count, "tombstone_grace_ms": grace_ms}
    ).encode()
    put(MAGIC + _LEN.pack(len(header)) + header)
    written = 0
    bounds = [lo for lo, _, _ in view.split("", None, max(1, count // 10_000))]
    for i, lo in enumerate(bounds):
        keys = [key for key, _ in view.digests(lo, bounds[i + 1] if i + 1 < len(bounds) else None)]
        for j in range(0, len(keys), BATCH):
            for key, versions in view.entries(keys[j : j + BATCH]):
                row = msgpack.packb([key, versions], use_bin_type=True)
                put(_LEN.pack(len(row)) + row)
                written += 1
    put(_LEN.pack(0))
    out.write(hasher.digest())
    if written != count:
        raise SnapshotError(f"the store's view changed while it was read ({written} rows, {count} announced)")
    return written


def read_header(path: Path) -> dict[str, Any]:
    """The header of a snapshot file, after checking its magic, format and checksum (SnapshotError)."""
    with path.open("rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise SnapshotError(f"{path} is not a DSM snapshot")
        header = _header(f, path)
    size = path.stat().st_size
    hasher = hashlib.blake2b(digest_size=_DIGEST)
    with path.open("rb") as f:
        remaining = size - _DIGEST
        if remaining <= 0:
            raise SnapshotError(f"{path} is truncated")
        while remaining > 0:
            chunk = f.read(min(1 << 20, remaining))
            if not chunk:
                raise SnapshotError(f"{path} is truncated")
            hasher.update(chunk)
            remaining -= len(chunk)
        if f.read(_DIGEST) != hasher.digest():
            raise SnapshotError(f"{path} is corrupt: its checksum does not match its contents")
    return header


def _header(f: BinaryIO, path: Path) -> dict[str, Any]:
    raw = f.read(_LEN.size)
    if len(raw) < _LEN.size or (length := _LEN.unpack(raw)[0]) > HEADER_MAX:
        raise SnapshotError(f"{path} has no readable header")
    try:
        header = json.loads(f.read(length))
        fmt = header["format"]
        if not isinstance(fmt, int) or not isinstance(header["node_id"], str) or not isinstance(header["keys"], int):
            raise TypeError
        int(header["created_ms"])
        int(header["tombstone_grace_ms"])
    except (ValueError, TypeError, KeyError):
        raise SnapshotError(f"{path} has no readable header") from None
    if fmt > FORMAT:
        raise SnapshotError(f"{path} is of snapshot format {fmt}; this version reads format {FORMAT} and older")
    return dict(header)


def rows(path: Path) -> Iterator[DataItem]:
    """The rows of a snapshot file whose header (and checksum) `read_header` accepted."""
    with path.open("rb") as f:
        f.read(len(MAGIC))
        _header(f, path)
        while True:
            raw = f.read(_LEN.size)
            if len(raw) < _LEN.size:
                raise SnapshotError(f"{path} is truncated")
            (length,) = _LEN.unpack(raw)
            if length == 0:
                return
            if length > ROW_MAX:
                raise SnapshotError(f"{path} holds a row of {length} bytes")
            try:
                key, versions = msgpack.unpackb(f.read(length), raw=False)
                if not isinstance(key, str) or not isinstance(versions, bytes):
                    raise TypeError
            except (ValueError, TypeError, msgpack.UnpackException):
                raise SnapshotError(f"{path} holds an unreadable row") from None
            yield DataItem(0, key, versions)


async def save(storage: Any, path: Path) -> dict[str, Any]:
    """Writes a snapshot of `storage` (an open `EpidemicStorage`) to `path` (made anew); its header."""
    config = storage.config
    created_ms = storage.commits.wall_ms()

    def run(view: Any) -> int:
        with path.open("wb") as out:
            return write_from_view(view, out, storage.node_id, created_ms, config.tombstone_grace_ms)

    keys = await storage.store.with_range_view(run)
    return {"format": FORMAT, "node_id": storage.node_id, "created_ms": created_ms, "keys": keys}


async def restore(path: Path, config: Any, now_ms: int, discard_stale_deletes: bool = False) -> dict[str, Any]:
    """Restores the snapshot at `path` into a new store as `config` (a `StorageConfig` whose data directory,
    or PostgreSQL database, holds no store yet) describes it; returns its header. See the module docstring.

    Raises:
        SnapshotError: the file cannot be restored, or the target already holds a store.
    """
    from dsm.factory import StorageFactory  # the node layer below the factory must not import it at load

    header = read_header(path)
    age = now_ms - int(header["created_ms"])
    grace = int(config.tombstone_grace_ms)
    if age > grace and not discard_stale_deletes:
        raise SnapshotError(
            f"{path} was taken {age / 3_600_000:.1f} h ago, more than tombstone_grace_ms ({grace / 3_600_000:.1f} h):"
            " deletes it misses may have been purged everywhere since, and the keys they deleted would come back;"
            " restore it anyway with --discard-stale-deletes"
        )
    config = config.replace(node_id=header["node_id"], listen_addr="")
    factory = StorageFactory(config)
    backing = factory.create_sql_storage()
    await backing.open()
    try:
        if await backing.scan("", None, 1) or await backing.read_meta(META_LAST_SEEN) is not None:
            raise SnapshotError("the target already holds a store: restore into an empty data directory")
    finally:
        await backing.close()
    node = await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage())
    try:
        batch: list[DataItem] = []
        restored = 0
        for item in rows(path):
            batch.append(item)
            if len(batch) >= BATCH:
                await node.merge(batch)
                restored += len(batch)
                batch = []
        if batch:
            await node.merge(batch)
            restored += len(batch)
    finally:
        await node.close()
    if restored != header["keys"]:
        raise SnapshotError(f"{path} holds {restored} rows, its header says {header['keys']}")
    created = str(int(header["created_ms"])).encode("ascii")
    backing = factory.create_sql_storage()
    await backing.open()
    try:
        meta = {META_LAST_SEEN: created, META_MEMBER_SINCE: created, META_ACCEPTOR_RESTORED: str(now_ms).encode()}
        await backing.write([], meta)
    finally:
        await backing.close()
    return header
