"""The checks a node runs on its store when it opens it: whose store it is, where its clock must start, and
whether it was away too long to rejoin with its data.

Clock floor: the store's metadata holds `hlc_reserved` (Unix ms), and every stored timestamp is at most
that (`dsm.core.replica` moves it ahead in the same transaction as the write that needs it, and a clean
close sets it to just above the last timestamp). On start, if the reservation is not behind the wall clock
(a crash within the reservation window, or a wall clock that went back), the exact newest stored timestamp
is read (`max_timestamp`, a scan) and the clock starts above it. So a reopened node never issues a
timestamp at or below one it stored, and never jumps ahead of the wall clock further than it must.

Absence: the store records since when it takes part in the cluster and when the node last ran (the
tombstone sweep dates it). A networked node whose data was last seen longer ago than `tombstone_grace_ms`
may hold keys whose deletes the others purged since: it refuses to start (`StaleReplicaError`) or, with
`stale_replica = 'discard'`, empties the store and rejoins as new (see docs/consistency.md, "Safe deletes").
"""

from __future__ import annotations

import logging
import secrets

from dsm.config import StorageConfig
from dsm.core.hlc import MAX_TIMESTAMP, physical_ms
from dsm.core.replica import HLC_RESERVE_MS, META_HLC, Replica
from dsm.errors import ForeignStoreError, StaleReplicaError, StorageCorruptError
from dsm.storage.base import BackingStore

log = logging.getLogger("dsm.node")

#: Unix ms: when this store started taking part in the cluster (set when the store is new or was emptied),
#: and the last time the node was running (written by the tombstone sweep, and on a clean close).
META_MEMBER_SINCE = "member_since_ms"
META_LAST_SEEN = "last_seen_ms"
#: The id of the node that owns the store (written at its first start; see `ForeignStoreError`).
META_NODE_ID = "node_id"
#: A random 64-bit number naming this store's history of commit stamps (`Commit.stamp`), which watch cursors
#: carry: written when the store is new (or predates it) and again when it is emptied (`stale_replica =
#: 'discard'`), so a cursor from before cannot be replayed against a history it does not belong to.
META_EPOCH = "store_epoch"
#: This store's start count: the `run` of the ballots its conditional writes propose (`dsm.core.ballot`).
META_CAS_RUN = "cas_run"
#: Set by a snapshot's restore (`dsm.node.snapshot`): the store holds no acceptor state of conditional
#: writes, so its node must not answer as an acceptor (it would have forgotten its promises).
META_ACCEPTOR_RESTORED = "acceptor_restored_ms"


async def check_owner(store: BackingStore, config: StorageConfig) -> str | None:
    """Refuses a store another node id wrote, unless `adopt_store` (see `ForeignStoreError`); records this
    node's id in a store that has none yet (a new store, or one from before ids were recorded). Returns the
    previous owner of an adopted store, else None."""
    node_id = config.node_id
    raw = await store.read_meta(META_NODE_ID)
    owner = raw.decode("utf-8", "replace") if raw is not None else None
    if owner == node_id:
        return None
    if owner is not None and not config.adopt_store:
        raise ForeignStoreError(owner, node_id, store.url)
    if owner is not None:
        log.warning("node %s adopts the store %s of node %s (adopt_store)", node_id, store.url, owner)
    await store.write([], {META_NODE_ID: node_id.encode("utf-8")})
    return owner


async def restore_clock(store: BackingStore, replica: Replica, wall_ms: int) -> None:
    """Starts the replica's clock above every stored timestamp (see "Clock floor")."""
    raw = await store.read_meta(META_HLC)
    if raw is None:
        return
    try:
        reserved = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        reserved = -1
    if not 0 <= reserved <= physical_ms(MAX_TIMESTAMP) - HLC_RESERVE_MS:
        raise StorageCorruptError(f"{store.url}: bad {META_HLC} metadata {raw[:40]!r}")
    if replica.restore_floor(reserved, wall_ms):
        replica.clock.advance_to(await store.max_timestamp())


async def meta_ms(store: BackingStore, name: str) -> int | None:
    """A metadata blob holding Unix ms, or None (`StorageCorruptError` if unreadable)."""
    raw = await store.read_meta(name)
    if raw is None:
        return None
    try:
        return int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise StorageCorruptError(f"{store.url}: bad {name} metadata {raw[:40]!r}") from None


async def check_absence(store: BackingStore, config: StorageConfig, now: int, networked: bool) -> int:
    """Dates this store's membership, and refuses (or empties) one that was away longer than the grace
    period (see "Absence"); returns since when the store takes part in the cluster (Unix ms)."""
    since = await meta_ms(store, META_MEMBER_SINCE)
    last = await meta_ms(store, META_LAST_SEEN)
    grace = config.tombstone_grace_ms
    if networked and last is not None and now - last > grace:
        if config.stale_replica != "discard":
            raise StaleReplicaError(now - last, grace)
        log.warning(
            "node %s: data last seen %.1f h ago, beyond tombstone_grace_ms: emptying the store to rejoin",
            config.node_id, (now - last) / 3_600_000,
        )  # fmt: skip
        while keys := [key for key, _ in await store.scan("", None, 10_000)]:
            await store.write([], None, keys)
        since = None
    fresh = since is None  # a new store, or one just emptied: a new history of commit stamps
    if since is None:
        since = now
    stamp = str(now).encode("ascii")
    meta = {META_MEMBER_SINCE: str(since).encode("ascii"), META_LAST_SEEN: stamp}
    if fresh or await store.read_meta(META_EPOCH) is None:
        meta[META_EPOCH] = str(secrets.randbits(64)).encode("ascii")
    await store.write([], meta)
    return since


async def store_epoch(store: BackingStore) -> int:
    """The store's epoch (`META_EPOCH`, written by `check_absence`; `StorageCorruptError` if unreadable)."""
    raw = await store.read_meta(META_EPOCH)
    try:
        epoch = int((raw or b"").decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        epoch = -1
    if not 0 <= epoch < 2**64:
        raise StorageCorruptError(f"{store.url}: bad {META_EPOCH} metadata {(raw or b'')[:40]!r}")
    return epoch


async def next_run(store: BackingStore) -> int:
    """Counts this start (durably, before the node proposes anything): ballots are unique across restarts
    even when the clock floor was not moved since the last ones (a node proposing for keys it holds no
    acceptor state of commits nothing)."""
    run = (await meta_ms(store, META_CAS_RUN) or 0) + 1
    await store.write([], {META_CAS_RUN: str(run).encode("ascii")})
    return run
