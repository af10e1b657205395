"""The wire protocol between nodes: length-prefixed binary frames carrying the core's messages in msgpack.

Frame (big-endian):

    u32 length      bytes that follow this field (header + body [+ tag]); at most MAX_FRAME
    u8  version     the protocol version the connection speaks (negotiated by the handshake within
                    MIN_PROTOCOL_VERSION..PROTOCOL_VERSION; a frame of another version is refused)
    u8  flags       FLAG_SEALED: the body is encrypted and authenticated (see `dsm.net.security`)
    u16 type        a `MessageType` value (append-only: values are never reused or renumbered)
    body            msgpack array of the message's fields, in declaration order

The length is read and checked against the limit before the rest of the frame is read or anything is
allocated for it. The body is unpacked with msgpack's own limits (strings, bytes, arrays, maps no larger
than the frame), then every field is checked against the message's schema (`SCHEMAS`): a frame whose
fields have the wrong types or count raises `FrameError` naming what was wrong, so the core only ever sees
well-typed messages. Every node id a frame names (a handshake's ids, a message's source, a member in an
update) must follow the config's rule (`dsm.types.is_node_id`), and addresses, regions and reasons hold no
control characters: what a peer sends may be logged and shown, and must not be able to forge a log line.
Semantic checks (an unknown member, an out-of-range incarnation) stay in the core.

Adding a message: give it the next free `MessageType` value and a schema; never change an existing one
(old nodes ignore types they do not know: `UnknownType`, counted, the connection stays open).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack

from dsm.core import messages as m
from dsm.types import NODE_ID_RULE, is_node_id

#: The newest protocol version this build speaks, and the oldest. 2: the Noise handshake of
#: `dsm.net.security` (1 was the handshake of Hello/Auth, retired). Two nodes speak the highest version both
#: speak (`dsm.net.security`, "Versions"); a build that changes what a frame means raises PROTOCOL_VERSION
#: and keeps speaking the older ones it can, so a cluster upgrades one node at a time. 3: `DirectPush`, which
#: goes to a node of 2 as the `Push` it knows (`for_version`).
PROTOCOL_VERSION = 3
MIN_PROTOCOL_VERSION = 2
#: The versions a frame header can name at all (before a connection has settled on one).
ANY_VERSION = (1, 255)
#: Largest frame accepted or sent (everything after the length field). Anti-entropy answers are capped
#: at 1 MiB of entries (anti_entropy_max_bytes), membership answers at 1,024 entries; 8 MiB leaves room.
MAX_FRAME = 8 << 20
#: Largest frame accepted or sent before a connection is authenticated (the handshake's frames, everything
#: after the length field). Node ids are at most 128 bytes: the largest handshake frame takes about 330.
HANDSHAKE_FRAME_MAX = 512
FLAG_SEALED = 0x01
_KNOWN_FLAGS = FLAG_SEALED

LENGTH = struct.Struct(">I")
HEADER = struct.Struct(">BBH")
#: Bytes before the body: the length field and the header.
PREFIX = LENGTH.size + HEADER.size


class MessageType(enum.IntEnum):
    """Append-only: a value once shipped keeps its meaning forever."""

    PING = 1
    PING_REQ = 2
    ACK = 3
    NACK = 4
    JOIN = 5
    JOIN_REPLY = 6
    NEIGHBOR = 7
    LINK = 8
    LINK_REPLY = 9
    UNLINK = 10
    LEAVE = 11
    SYNC_DIGEST = 12
    SYNC_SUB_DIGESTS = 13
    SYNC_LEAVES = 14
    SYNC_ENTRIES = 15
    ROUTED = 16
    ROUTED_ACK = 17
    ROUTE_FAILED = 18
    PUSH = 19
    IHAVE = 20
    GRAFT = 21
    PRUNE = 22
    GOSSIP_DIGEST = 23
    GOSSIP_REPLY = 24
    GOSSIP_ITEMS = 25
    RECONCILE = 26
    REPLICATE = 27
    REPLICATED = 28
    READ_REQUEST = 29
    READ_REPLY = 30
    CAS_PREPARE = 31
    CAS_PROMISE = 32
    CAS_ACCEPT = 33
    CAS_ACCEPTED = 34
    CAS_COMMIT = 35
    CAS_REQUEST = 36
    CAS_RESULT = 37
    CAS_COMMITS = 38
    SYNC_POINT = 39
    DIRECT_PUSH = 40  # protocol 3 on
    # Connection control (dsm.net.security), not core messages: 64-71. A frame of one of these types on an
    # established connection is refused.
    HELLO_V1 = 64  # protocol 1 only (retired; never reuse)
    AUTH_V1 = 65  # protocol 1 only (retired; never reuse)
    HANDSHAKE = 66
    HANDSHAKE_REPLY = 67
    CONFIRM = 68
    REFUSE = 69
    # Large messages (dsm.net.chunks): a body larger than a chunk travels as a sequence of these frames.
    CHUNK_FIRST = 72
    CHUNK_NEXT = 73


#: The message types of connection control (dsm.net.security).
CONTROL_TYPES = range(64, 72)


class Handshake(NamedTuple):
    """The connecting side's first frame (plain): who it is, the member it dialled ("" when it dialled an
    address whose member it does not know), the key id of its cluster secret (empty without one) and the
    first Noise message (empty without a secret)."""

    initiator_id: str
    dialled_id: str
    key_id: bytes
    noise: bytes


class HandshakeReply(NamedTuple):
    """The accepting side's answer (plain): its node id and the second Noise message, whose encrypted
    payload is that node id again (empty without a secret)."""

    responder_id: str
    noise: bytes


class Confirm(NamedTuple):
    """The connecting side's first sealed frame: the transcript hash both sides computed. Nothing from the
    connection is accepted before it opens and matches (key confirmation)."""

    handshake_hash: bytes


class Refuse(NamedTuple):
    """The accepting side's last word on a handshake it refuses (plain, unauthenticated): a reason code
    (`dsm.net.security.REFUSAL_CODES`) and a short explanation, then it closes the connection."""

    code: str
    detail: str


class ChunkFirst(NamedTuple):
    """The first frame of a message sent in chunks (`dsm.net.chunks`): the message's id (increasing on a
    connection), how many chunks it takes, its own type, its body's length and SHA-256, and the first part."""

    message_id: int
    chunk_count: int
    type_id: int
    total: int
    sha256: bytes
    part: bytes


class ChunkNext(NamedTuple):
    """A later chunk of the message `message_id`: its index (1 .. chunk_count - 1, in order) and its part."""

    message_id: int
    chunk_index: int
    part: bytes


class Encoded(NamedTuple):
    """A message already packed by `encode_body` (its type and body), framed as is without packing it again."""

    type_id: MessageType
    body: bytes


class FrameError(ValueError):
    """A frame that cannot be accepted. `reason` is a short stable label (for the metrics), the message
    says what exactly was wrong. The connection that sent it is closed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class UnknownType(FrameError):
    """A well-formed frame of a message type this node does not know (a newer peer): skipped, counted."""

    def __init__(self, type_id: int) -> None:
        super().__init__("unknown_type", f"message type {type_id}")
        self.type_id = type_id


# --- schemas: one checker per field; a checker returns the (possibly converted) value or raises ---

Check = Callable[[Any], Any]

_I64_MIN, _U64_MAX = -(1 << 63), (1 << 64) - 1


class _Bad(Exception):
    pass


def _int(value: Any) -> int:
    if type(value) is not int or not _I64_MIN <= value <= _U64_MAX:
        raise _Bad("an integer")
    return value


def _exact(kind: type[Any], what: str) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not kind:
            raise _Bad(what)
        return value

    return check


_str = _exact(str, "a string")
_bytes = _exact(bytes, "bytes")
_bool = _exact(bool, "a boolean")


def _opt_str(value: Any) -> Any:
    return None if value is None else _str(value)


def _id(value: Any) -> str:
    """A node id (`dsm.types.is_node_id`, the config's rule): ids are logged, shown and compared, and one that
    held a newline could forge a log line."""
    if not is_node_id(value):
        raise _Bad(f"a node id ({NODE_ID_RULE})")
    return str(value)


def _opt_id(value: Any) -> str:
    """A node id, or "" (none: a bootstrap address dialled, no origin, no hop yet)."""
    return "" if value == "" else _id(value)


def _text(value: Any) -> str:
    """A string without control characters (an address, a region, a reason): it may be logged."""
    if type(value) is not str or not value.isprintable():
        raise _Bad("a string without control characters")
    return value


def _any(value: Any) -> Any:
    return value  # bounded by the unpacker's limits (arrays arrive as tuples); its receiver checks it


def _tuple_of(item: Check) -> Check:
    def check(value: Any) -> tuple[Any, ...]:
        if type(value) is not tuple:
            raise _Bad("an array")
        return tuple(item(v) for v in value)

    return check


def _ints(value: Any) -> tuple[int, ...]:
    if type(value) is not tuple:
        raise _Bad("an array")
    for v in value:
        if type(v) is not int or not _I64_MIN <= v <= _U64_MAX:
            raise _Bad("an array of integers")
    return value


def _record(cls: type[NamedTuple], fields: tuple[Check, ...]) -> Check:
    arity = len(fields)

    def check(value: Any) -> Any:
        if type(value) is not tuple or len(value) != arity:
            raise _Bad(f"an array of {arity} ({cls.__name__})")
        return cls(*(f(v) for f, v in zip(fields, value, strict=True)))

    return check


_update = _record(m.Update, (_int, _id, _int, _text, _text, _opt_id))
_updates = _tuple_of(_update)
_items = _tuple_of(_record(m.DataItem, (_int, _str, _bytes)))
_strs = _tuple_of(_str)


def _run(value: Any) -> m.Run:
    if type(value) is not tuple or len(value) != 6:
        raise _Bad("an array of 6 (a run)")
    lo, hi, mode, shared, suffixes, values = value
    return (_str(lo), _opt_str(hi), _int(mode), _bytes(shared), _strs(suffixes), _bytes(values))


def _ballot(value: Any) -> tuple[int, str, int]:
    """A Paxos ballot (timestamp, node id or "" for the zero ballot, run)."""
    if type(value) is not tuple or len(value) != 3:
        raise _Bad("an array of 3 (a ballot)")
    timestamp, node, run = value
    if type(timestamp) is not int or type(run) is not int or not 0 <= timestamp <= _U64_MAX or not 0 <= run <= _U64_MAX:
        raise _Bad("a ballot of non-negative integers")
    return (timestamp, node if node == "" else _id(node), run)


def _entry(value: Any) -> tuple[str, bytes]:
    if type(value) is not tuple or len(value) != 2:
        raise _Bad("an array of 2 (key, versions)")
    return (_str(value[0]), _bytes(value[1]))


#: Message class and field checkers by type, in field order.
SCHEMAS: dict[MessageType, tuple[type[Any], tuple[Check, ...]]] = {
    MessageType.PING: (m.Ping, (_int, _id, _id, _updates)),
    MessageType.PING_REQ: (m.PingReq, (_int, _id, _id, _text, _updates)),
    MessageType.ACK: (m.Ack, (_int, _id, _updates)),
    MessageType.NACK: (m.Nack, (_int, _id)),
    MessageType.JOIN: (m.Join, (_id, _text, _text, _int)),
    MessageType.JOIN_REPLY: (m.JoinReply, (_id, _updates)),
    MessageType.NEIGHBOR: (m.Neighbor, (_id, _text, _text, _int)),
    MessageType.LINK: (m.Link, (_int, _id, _text, _text, _int)),
    MessageType.LINK_REPLY: (m.LinkReply, (_int, _id, _bool)),
    MessageType.UNLINK: (m.Unlink, (_id,)),
    MessageType.LEAVE: (m.Leave, (_id, _int)),
    MessageType.SYNC_DIGEST: (m.SyncDigest, (_id, _ints)),
    MessageType.SYNC_SUB_DIGESTS: (m.SyncSubDigests, (_id, _ints, _ints)),
    MessageType.SYNC_LEAVES: (m.SyncLeaves, (_id, _ints, _ints)),
    MessageType.SYNC_ENTRIES: (m.SyncEntries, (_id, _ints, _updates, _ints)),
    MessageType.ROUTED: (m.Routed, (_int, _id, _text, _id, _int, _any, _opt_id)),
    MessageType.ROUTED_ACK: (m.RoutedAck, (_int, _id, _id)),
    MessageType.ROUTE_FAILED: (m.RouteFailed, (_int, _id, _id, _int, _text)),
    MessageType.PUSH: (m.Push, (_id, _int, _items)),
    MessageType.DIRECT_PUSH: (m.DirectPush, (_id, _items)),
    MessageType.IHAVE: (m.IHave, (_id, _int, _ints)),
    MessageType.GRAFT: (m.Graft, (_id, _ints)),
    MessageType.PRUNE: (m.Prune, (_id,)),
    MessageType.GOSSIP_DIGEST: (m.GossipDigest, (_int, _id, _ints, _ints)),
    MessageType.GOSSIP_REPLY: (m.GossipReply, (_int, _id, _ints, _items)),
    MessageType.GOSSIP_ITEMS: (m.GossipItems, (_id, _items)),
    MessageType.RECONCILE: (m.Reconcile, (_int, _id, _tuple_of(_run), _tuple_of(_entry))),
    MessageType.REPLICATE: (m.Replicate, (_int, _id, _items)),
    MessageType.REPLICATED: (m.Replicated, (_int, _id, _bool)),
    MessageType.READ_REQUEST: (m.ReadRequest, (_int, _id, _strs)),
    MessageType.READ_REPLY: (m.ReadReply, (_int, _id, _tuple_of(_entry), _bool)),
    MessageType.CAS_PREPARE: (m.CasPrepare, (_int, _id, _str, _ballot, _int)),
    MessageType.CAS_PROMISE: (m.CasPromise, (_int, _id, _bool, _ballot, _ballot, _bytes, _bytes)),
    MessageType.CAS_ACCEPT: (m.CasAccept, (_int, _id, _str, _ballot, _bytes, _ballot, _int)),
    MessageType.CAS_ACCEPTED: (m.CasAccepted, (_int, _id, _bool, _ballot)),
    MessageType.CAS_COMMIT: (m.CasCommit, (_id, _str, _ballot, _bytes)),
    MessageType.CAS_REQUEST: (m.CasRequest, (_int, _id, _str, _int, _bool, _bytes, _str, _int, _int)),
    MessageType.CAS_RESULT: (m.CasResult, (_int, _id, _text, _bytes)),
    MessageType.CAS_COMMITS: (m.CasCommits, (_id, _tuple_of(_record(m.CommitEntry, (_str, _ballot, _bytes))))),
    MessageType.SYNC_POINT: (m.SyncPoint, (_int, _id, _int, _int)),
    MessageType.HANDSHAKE: (Handshake, (_id, _opt_id, _bytes, _bytes)),
    MessageType.HANDSHAKE_REPLY: (HandshakeReply, (_id, _bytes)),
    MessageType.CONFIRM: (Confirm, (_bytes,)),
    MessageType.REFUSE: (Refuse, (_text, _text)),
    MessageType.CHUNK_FIRST: (ChunkFirst, (_int, _int, _int, _int, _bytes, _bytes)),
    MessageType.CHUNK_NEXT: (ChunkNext, (_int, _int, _bytes)),
}

TYPE_OF: dict[type[Any], MessageType] = {cls: type_id for type_id, (cls, _) in SCHEMAS.items()}


# --- encoding ---


def encode_body(message: Any) -> tuple[MessageType, bytes]:
    """The message's type and its msgpack body (named tuples pack as arrays); an `Encoded` one as it is."""
    if type(message) is Encoded:
        return message.type_id, message.body
    type_id = TYPE_OF.get(type(message))
    if type_id is None:
        raise TypeError(f"no wire type for {type(message).__name__}")
    return type_id, msgpack.packb(message, use_bin_type=True)


def for_version(message: Any, version: int) -> Any:
    """`message` as a connection of protocol `version` carries it: a `DirectPush` (protocol 3) goes to a node
    of 2 as a `Push` from its coordinator, which that node passes on down its tree as it always did (its
    other members then get the write twice, and prune; nothing is lost)."""
    if version < 3 and type(message) is m.DirectPush:
        return m.Push(message.source, 0, message.items)
    return message


def header(type_id: int, flags: int, length: int, version: int = PROTOCOL_VERSION) -> bytes:
    """The length field and header of a frame whose header + body (+ tag) take `length` bytes."""
    if length > MAX_FRAME:
        raise FrameError("too_large", f"frame of {length} bytes (limit {MAX_FRAME})")
    return LENGTH.pack(length) + HEADER.pack(version, flags, type_id)


def encode_frame(message: Any, version: int = PROTOCOL_VERSION) -> bytes:
    """A plain (unsealed) frame carrying `message`, in protocol `version`."""
    type_id, body = encode_body(message)
    return header(type_id, 0, HEADER.size + len(body), version) + body


# --- decoding ---


def frame_length(prefix: bytes, limit: int = MAX_FRAME) -> int:
    """The length announced by a frame's first 4 bytes, checked against `limit` (MAX_FRAME; before the
    handshake HANDSHAKE_FRAME_MAX) before any read."""
    length: int = LENGTH.unpack(prefix)[0]
    if length > limit:
        raise FrameError("too_large", f"frame of {length} bytes announced (limit {limit})")
    if length < HEADER.size:
        raise FrameError("truncated", f"frame of {length} bytes is shorter than its header")
    return length


def parse_header(frame: bytes, versions: tuple[int, int] = (PROTOCOL_VERSION, PROTOCOL_VERSION)) -> tuple[int, int]:
    """(flags, type) of a frame (its bytes after the length field); checks the flags, and that its version
    is within `versions` (inclusive: a connection's own version once settled)."""
    version, flags, type_id = HEADER.unpack_from(frame)
    low, high = versions
    if not low <= version <= high:
        raise FrameError("bad_version", f"protocol version {version} ({speaks(low, high)})")
    if flags & ~_KNOWN_FLAGS:
        raise FrameError("bad_flags", f"unknown flags {flags:#x}")
    return flags, type_id


def frame_version(frame: bytes) -> int:
    """The protocol version a frame's header names."""
    version: int = HEADER.unpack_from(frame)[0]
    return version


def speaks(low: int, high: int) -> str:
    """How a refusal says which versions this node speaks (`dsm.net.security.spoken` reads it back; a node of
    v0.1.0 wrote "this node speaks 2")."""
    return f"this node speaks {low}" if low == high else f"this node speaks {low}-{high}"


def decode_body(type_id: int, body: bytes | bytearray) -> Any:
    """The message of type `type_id` packed in `body`, every field checked against its schema."""
    try:
        cls, fields = SCHEMAS[MessageType(type_id)]
    except (ValueError, KeyError):  # a type this node does not know, or a retired one
        raise UnknownType(type_id) from None
    size = len(body)
    try:
        value = msgpack.unpackb(
            body,
            use_list=False,
            raw=False,
            strict_map_key=True,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several types (ExtraData, FormatError, ValueError, ...)
        raise FrameError("bad_body", f"{cls.__name__}: undecodable msgpack ({type(exc).__name__})") from None
    if type(value) is not tuple or len(value) != len(fields):
        raise FrameError("bad_body", f"{cls.__name__}: expected an array of {len(fields)} fields")
    out = []
    for name, check, field_value in zip(cls._fields, fields, value, strict=True):
        try:
            out.append(check(field_value))
        except _Bad as exc:
            raise FrameError("bad_field", f"{cls.__name__}.{name} must be {exc}") from None
        except (TypeError, ValueError) as exc:  # e.g. a key not a str inside a payload
            raise FrameError("bad_field", f"{cls.__name__}.{name}: {exc}") from None
    return cls(*out)


def decode_frame(frame: bytes) -> Any:
    """The message in a plain frame (its bytes after the length field)."""
    flags, type_id = parse_header(frame)
    if flags & FLAG_SEALED:
        raise FrameError("sealed", "a sealed frame where a plain one was expected (is a cluster secret set?)")
    return decode_body(type_id, frame[HEADER.size :])
