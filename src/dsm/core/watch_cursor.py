"""Watch cursors: where a watch stream stands, as an opaque token a client hands back to resume, and the
choice of how a node resumes from one (pure: no I/O, no clock; the node's `dsm.node.watches` runs it).

A cursor names a position in one node's history of commits: `(node id, store epoch, stamp, expiry mark)`.
- `stamp` is a commit stamp of that node (`dsm.core.replica.Commit.stamp`) or a clock reading between two:
  "every change of a key under the watch's prefix committed on that node with a stamp up to here has been
  delivered". Each row records the stamp of the last commit that changed it (`StoredKey.seq`), so the node
  resumes with the rows of `seq > stamp`: the coalesced history, with no log and so no compaction window.
- `epoch` names the node's store (`dsm.node.startup.META_EPOCH`): a store emptied or replaced reuses stamps,
  so a cursor of another epoch is not resumed from the rows.
- `expiry_ms`: the wall time up to which the stream has delivered expiry events (0: none yet).

Text form: base64url without padding of `msgpack([FORMAT, node, epoch, stamp, expiry_ms])`; at most
`CURSOR_MAX_CHARS` characters (a node id is at most 128 bytes, so about 200 in practice).

How a node resumes (`choose`), never from a cursor older than the tombstone grace period (a purged tombstone
is gone from the rows, so an older cursor could miss a delete):
- on the cursor's own node and epoch, `SAME_NODE`: replay the rows changed after the stamp;
- on another node B, `SYNC_POINT`, when B holds a sync point `(A, epoch, a, b)` of the cursor's node A and
  epoch with `a <= stamp`: replay B's own rows changed after b. A sync
  point, left by an anti-entropy exchange between A and B (`dsm.core.reconcile`, "Sync points"), says that
  for every key B held at its stamp b, A at its stamp a held or dominated B's versions, or B's row changed
  after b; so every version B holds that A did not hold at the cursor's stamp is in a row B changed after b.
  Of several, the one with the largest b (the fewest duplicates: B's changes between b and the cursor's
  point, which the reader already has, come again with the same writer and timestamp);
- otherwise `RESYNC`: the current state of every key under the prefix, between `{"resync": "begin"}` and
  `{"resync": "end"}` lines, in the same stream: always correct, O(prefix).

`SyncPoints` holds a node's sync points: at most `SYNC_POINTS_PER_PEER` of each of at most `SYNC_POINT_PEERS`
peers, for its own store epoch; `encode`/`decode` give the bytes the node keeps them in (its store's metadata,
so they survive a restart). Per peer it keeps the first and the newest, and thins those between so they
stay spread out (a new one pushes out the one whose neighbours are closest): a recent cursor resumes from a
recent point (few duplicates), and an old one still finds a point at or before it, however many exchanges
ran since, rather than a resync.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

import msgpack

from dsm.core.hlc import MAX_TIMESTAMP, physical_ms

#: The first field of every cursor; a cursor of another format is refused.
FORMAT = 1
#: Longest cursor text accepted.
CURSOR_MAX_CHARS = 512
_UINT64 = 2**64


class CursorError(ValueError):
    """A cursor that is not one this code makes (the caller's mistake: refuse it with a clear message)."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """A watch stream's position (see the module docstring)."""

    node: str
    epoch: int
    stamp: int
    expiry_ms: int = 0

    def at(self, stamp: int) -> Cursor:
        """The same node, epoch and expiry mark at another stamp."""
        return Cursor(self.node, self.epoch, stamp, self.expiry_ms)


def encode(cursor: Cursor) -> str:
    """The cursor's text form."""
    packed = msgpack.packb([FORMAT, cursor.node, cursor.epoch, cursor.stamp, cursor.expiry_ms])
    return base64.urlsafe_b64encode(packed).rstrip(b"=").decode("ascii")


def decode(text: str) -> Cursor:
    """The cursor a text form names.

    Raises:
        CursorError: not a cursor (wrong type, size, encoding, format or field).
    """
    if not isinstance(text, str) or not 0 < len(text) <= CURSOR_MAX_CHARS:
        raise CursorError(f"a cursor is a non-empty string of at most {CURSOR_MAX_CHARS} characters")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        fields = msgpack.unpackb(raw, use_list=True, strict_map_key=True)
    except (binascii.Error, ValueError, msgpack.UnpackException) as exc:
        raise CursorError(f"not a cursor: {exc}") from None
    if not isinstance(fields, list) or len(fields) != 5 or fields[0] != FORMAT:
        raise CursorError("not a cursor of this version of DSM")
    _, node, epoch, stamp, expiry_ms = fields
    if not isinstance(node, str) or not node:
        raise CursorError("not a cursor: bad node id")
    for name, value in (("epoch", epoch), ("stamp", stamp), ("expiry", expiry_ms)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _UINT64:
            raise CursorError(f"not a cursor: bad {name}")
    if stamp > MAX_TIMESTAMP or expiry_ms > physical_ms(MAX_TIMESTAMP):
        raise CursorError("not a cursor: stamp or expiry out of range")
    return Cursor(node, epoch, stamp, expiry_ms)


class Plan(Enum):
    """How a node resumes a watch from a cursor (`choose`)."""

    #: Replay this node's rows changed after the cursor's stamp, then go live.
    SAME_NODE = "same_node"
    #: Replay this node's rows changed after a sync point's stamp of its own, then go live.
    SYNC_POINT = "sync_point"
    #: The current state of every key under the prefix (marked begin and end), then live.
    RESYNC = "resync"


class HeldSyncPoint(NamedTuple):
    """A sync point a node keeps: `peer` at `peer_stamp` of its store `peer_epoch` held or dominated every
    version this node held at `own_stamp`, but for rows this node changed after `own_stamp`."""

    peer: str
    peer_epoch: int
    peer_stamp: int
    own_stamp: int


class Resume(NamedTuple):
    """How to resume: the plan, and for a replay the stamp of this node's rows to replay after."""

    plan: Plan
    after: int = 0


def choose(
    cursor: Cursor,
    node_id: str,
    epoch: int,
    wall_ms: int,
    tombstone_grace_ms: int,
    sync_points: Iterable[HeldSyncPoint] = (),
) -> Resume:
    """How the node `node_id` (store `epoch`, holding `sync_points`) resumes from `cursor` at wall time
    `wall_ms` (see the module docstring)."""
    if physical_ms(cursor.stamp) < wall_ms - tombstone_grace_ms:
        return Resume(Plan.RESYNC)  # tombstones purged since may be missing from the rows
    if cursor.node == node_id:
        return Resume(Plan.SAME_NODE, cursor.stamp) if cursor.epoch == epoch else Resume(Plan.RESYNC)
    # How old b is does not matter: a tombstone B purged after b was either held by A at the cursor's point
    # (the reader saw the delete, and B no longer holds the key either) or reached A after it, which is the
    # limit a same-node replay has too (docs/consistency.md, "Watches").
    usable = [
        p.own_stamp
        for p in sync_points
        if p.peer == cursor.node and p.peer_epoch == cursor.epoch and p.peer_stamp <= cursor.stamp
    ]
    return Resume(Plan.SYNC_POINT, max(usable)) if usable else Resume(Plan.RESYNC)


def plan(cursor: Cursor, node_id: str, epoch: int, wall_ms: int, tombstone_grace_ms: int) -> Plan:
    """How the node `node_id` (store `epoch`, no sync points) resumes from `cursor` at wall time `wall_ms`."""
    return choose(cursor, node_id, epoch, wall_ms, tombstone_grace_ms).plan


#: Sync points kept per peer (spread out, see the module docstring), and peers kept (the most recently heard
#: from).
SYNC_POINTS_PER_PEER = 6
SYNC_POINT_PEERS = 64
#: The first field of `SyncPoints.encode`.
SYNC_POINTS_FORMAT = 1


class SyncPoints:
    """A node's sync points (see the module docstring), for its store `epoch`."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._by_peer: OrderedDict[str, list[HeldSyncPoint]] = OrderedDict()

    def add(self, point: HeldSyncPoint) -> None:
        """Keeps `point` (beyond the bounds, the point of its peer whose neighbours are closest, and the least
        recent peer, are forgotten; so are the points of another epoch of its peer)."""
        held = self._by_peer.pop(point.peer, [])
        held = [p for p in held if p.peer_epoch == point.peer_epoch and p != point]
        held.append(point)
        held.sort(key=lambda p: (p.peer_stamp, p.own_stamp))
        while len(held) > SYNC_POINTS_PER_PEER:
            closest = min(range(1, len(held) - 1), key=lambda i: held[i + 1].peer_stamp - held[i - 1].peer_stamp)
            del held[closest]
        self._by_peer[point.peer] = held
        while len(self._by_peer) > SYNC_POINT_PEERS:
            self._by_peer.popitem(last=False)

    def of(self, peer: str) -> list[HeldSyncPoint]:
        """The sync points kept for `peer`, in stamp order."""
        return list(self._by_peer.get(peer, ()))

    def __len__(self) -> int:
        """The peers with a sync point kept."""
        return len(self._by_peer)

    def encode(self) -> bytes:
        """The bytes the node keeps them in."""
        points = [[p.peer, p.peer_epoch, p.peer_stamp, p.own_stamp] for held in self._by_peer.values() for p in held]
        return bytes(msgpack.packb([SYNC_POINTS_FORMAT, self.epoch, points]))

    @classmethod
    def decode(cls, raw: bytes | None, epoch: int) -> SyncPoints:
        """The sync points `encode` kept for the store `epoch` (none if `raw` is None, unreadable, or of another
        epoch: a store emptied since has another history of stamps)."""
        points = cls(epoch)
        if not raw:
            return points
        try:
            fields = msgpack.unpackb(raw, use_list=True, strict_map_key=True)
            version, kept_epoch, rows = fields
            if version != SYNC_POINTS_FORMAT or kept_epoch != epoch or not isinstance(rows, list):
                return points
            for peer, peer_epoch, peer_stamp, own_stamp in rows:
                if isinstance(peer, str) and all(type(v) is int for v in (peer_epoch, peer_stamp, own_stamp)):
                    points.add(HeldSyncPoint(peer, peer_epoch, peer_stamp, own_stamp))
        except (ValueError, TypeError, msgpack.UnpackException):
            return cls(epoch)
        return points


def position(stamp: int, more_at_stamp: bool) -> int:
    """The stamp a cursor after an event of a commit stamped `stamp` holds: `stamp` when it was the last event
    of that stamp, else one below (the commit's other keys are still to come: a resume from the cursor
    replays them, and this one again, a recognisable duplicate)."""
    return stamp - 1 if more_at_stamp else stamp
