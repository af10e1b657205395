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

How a node resumes (`plan`): on the cursor's own node and epoch, and no older than the tombstone grace period
(a purged tombstone is gone from the rows, so an older cursor could miss a delete), `SAME_NODE`: replay the
rows changed after the stamp. Anywhere else, `RESYNC`: the current state of every key under the prefix,
between `{"resync": "begin"}` and `{"resync": "end"}` lines, in the same stream: always correct, O(prefix).
Sync points left by anti-entropy (resuming on another node from its own rows) are a later step.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from enum import Enum

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
    """How a node resumes a watch from a cursor (`plan`)."""

    #: Replay this node's rows changed after the cursor's stamp, then go live.
    SAME_NODE = "same_node"
    #: The current state of every key under the prefix (marked begin and end), then live.
    RESYNC = "resync"


def plan(cursor: Cursor, node_id: str, epoch: int, wall_ms: int, tombstone_grace_ms: int) -> Plan:
    """How the node `node_id` (store `epoch`) resumes from `cursor` at wall time `wall_ms`."""
    if cursor.node != node_id or cursor.epoch != epoch:
        return Plan.RESYNC
    if physical_ms(cursor.stamp) < wall_ms - tombstone_grace_ms:
        return Plan.RESYNC  # tombstones purged since may be missing from the rows
    return Plan.SAME_NODE


def position(stamp: int, more_at_stamp: bool) -> int:
    """The stamp a cursor after an event of a commit stamped `stamp` holds: `stamp` when it was the last event
    of that stamp, else one below (the commit's other keys are still to come: a resume from the cursor
    replays them, and this one again, a recognisable duplicate)."""
    return stamp - 1 if more_at_stamp else stamp
