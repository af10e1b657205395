"""The wire codec: every core message round-trips; malformed, oversized and unknown frames raise typed errors."""

from __future__ import annotations

import struct
import typing

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsm.core import messages as m
from dsm.core.reconcile import encode_run
from dsm.net import wire

UPD = m.Update(1, "n1", 3, "127.0.0.2:7400", "eu", "n2")
ITEM = m.DataItem(-(1 << 63), "key", b"\x00\xffversions")
SAMPLES: list[typing.Any] = [
    m.Ping(1, "a", "b", (UPD, UPD)),
    m.PingReq(2, "a", "b", "127.0.0.3:7400", ()),
    m.Ack(3, "b", (UPD,)),
    m.Nack(4, "c"),
    m.Join("j", "127.0.0.9:7400", "us", 2),
    m.JoinReply("a", (UPD,) * 3),
    m.Neighbor("j", "127.0.0.9:7400", "us", 0),
    m.Link(5, "a", "addr", "eu", 1),
    m.LinkReply(5, "b", True),
    m.Unlink("a"),
    m.Leave("a", 7),
    m.SyncDigest("a", tuple(range(64))),
    m.SyncSubDigests("a", (1, 2), tuple(range(-16, 16))),
    m.SyncLeaves("a", (3,), ((1 << 64) - 1, -(1 << 63))),
    m.SyncEntries("a", (3,), (UPD,), (9, 8)),
    m.Routed(6, "a", "addr", "t", 2, {"op": "get", "keys": ("x",)}, "v"),
    m.RoutedAck(6, "a", "h"),
    m.RouteFailed(6, "a", "t", 3, "no route"),
    m.Push("a", 1, (ITEM, ITEM)),
    m.DirectPush("a", (ITEM,)),
    m.IHave("a", 2, (1, 2, 3)),
    m.Graft("a", (1,)),
    m.Prune("a"),
    m.GossipDigest(7, "a", (1, 2), (2,)),
    m.GossipReply(7, "b", (1,), (ITEM,)),
    m.GossipItems("a", (ITEM,)),
    wire.Handshake("a", "b", b"12345678", b"n" * 48),
    wire.HandshakeReply("b", b"n" * 64),
    wire.Confirm(b"h" * 32),
    wire.Refuse("wrong_node", "this is 'c', not 'b'"),
    m.Reconcile(
        8, "a", (encode_run("", None, 1, ["k1", "k2"], [1, 2, 3]), ("a", "b", 0, b"", (), b"")), (("k", b"v"),)
    ),
    m.Replicate(9, "a", (ITEM,)),
    m.Replicated(9, "b", True),
    m.ReadRequest(10, "a", ("k1", "k2")),
    m.ReadReply(10, "b", (("k1", b"v"),), True),
    m.CasPrepare(11, "a", "k", (5, "a", 1), 0x1234_5678_9ABC_DEF0),
    m.CasPromise(11, "b", True, (5, "a", 1), (0, "", 0), b"", b"row"),
    m.CasAccept(11, "a", "k", (5, "a", 1), b"state", (6, "a", 1), 7),
    m.CasAccepted(11, "b", False, (7, "c", 2)),
    m.CasCommit("a", "k", (5, "a", 1), b"state"),
    m.CasRequest(7, "a", "k", 1, True, b"v", "context-token", 2000, 30_000),
    m.CasResult(7, "b", "applied", b"state"),
    m.CasCommits("a", (m.CommitEntry("k", (5, "a", 1), b"state"), m.CommitEntry("j", (6, "a", 1), b""))),
    m.SyncPoint(8, "a", (1 << 64) - 1, 1 << 40),
]


def test_a_direct_push_is_sent_to_a_node_of_protocol_2_as_a_push_from_its_coordinator() -> None:
    direct = m.DirectPush("a", (ITEM,))
    assert wire.for_version(direct, 3) is direct
    assert wire.for_version(direct, 2) == m.Push("a", 0, (ITEM,))
    push = m.Push("a", 1, (ITEM,))
    assert wire.for_version(push, 2) is push


def test_every_core_message_has_a_wire_type_and_round_trips() -> None:
    in_union = set(typing.get_args(m.Message))
    # Connection-level messages (64 and up: the handshake's, the transport's) are not the core's.
    control = {cls for type_id, (cls, _) in wire.SCHEMAS.items() if type_id >= 64}
    assert in_union | control == set(wire.TYPE_OF), "a core message without a wire schema (or a stale one)"
    assert {type(s) for s in SAMPLES} >= in_union | {c for c in control if wire.TYPE_OF[c] in wire.CONTROL_TYPES}
    for message in SAMPLES:
        frame = wire.encode_frame(message)
        assert wire.frame_length(frame[:4]) == len(frame) - 4
        assert wire.decode_frame(frame[4:]) == message
    for type_id, (cls, fields) in wire.SCHEMAS.items():
        assert len(fields) == len(cls._fields), cls.__name__
        assert wire.TYPE_OF[cls] == type_id


def test_message_type_values_are_append_only() -> None:
    # Shipped values never change: a renumbering would make old and new nodes misread each other.
    assert [(t.name, t.value) for t in wire.MessageType][:4] == [("PING", 1), ("PING_REQ", 2), ("ACK", 3), ("NACK", 4)]
    assert wire.MessageType.RECONCILE == 26
    assert (wire.MessageType.REPLICATE, wire.MessageType.READ_REPLY) == (27, 30)
    assert (wire.MessageType.CAS_COMMITS, wire.MessageType.SYNC_POINT) == (38, 39)
    # 64 and 65 were protocol 1's Hello and Auth: retired, never reused, undecodable.
    assert (wire.MessageType.HELLO_V1, wire.MessageType.AUTH_V1, wire.MessageType.HANDSHAKE) == (64, 65, 66)
    assert (wire.MessageType.HANDSHAKE_REPLY, wire.MessageType.CONFIRM, wire.MessageType.REFUSE) == (67, 68, 69)
    with pytest.raises(wire.UnknownType):
        wire.decode_frame(_frame(64, msgpack.packb(["a", b"", b"n" * 16])))
    assert len({t.value for t in wire.MessageType}) == len(wire.MessageType)


def test_oversized_length_is_refused_before_reading_the_frame() -> None:
    with pytest.raises(wire.FrameError) as caught:
        wire.frame_length(struct.pack(">I", wire.MAX_FRAME + 1))
    assert caught.value.reason == "too_large"
    with pytest.raises(wire.FrameError) as caught:
        wire.frame_length(struct.pack(">I", 2))
    assert caught.value.reason == "truncated"
    with pytest.raises(wire.FrameError, match="too_large"):
        wire.header(1, 0, wire.MAX_FRAME + 1)


def test_before_the_handshake_the_length_limit_is_a_few_hundred_bytes() -> None:
    assert wire.frame_length(struct.pack(">I", wire.HANDSHAKE_FRAME_MAX), wire.HANDSHAKE_FRAME_MAX) == 512
    with pytest.raises(wire.FrameError, match="limit 512") as caught:
        wire.frame_length(struct.pack(">I", wire.HANDSHAKE_FRAME_MAX + 1), wire.HANDSHAKE_FRAME_MAX)
    assert caught.value.reason == "too_large"
    # The largest handshake frames (node ids of 128 characters) fit.
    longest = "n" * 128
    for message in (
        wire.Handshake(longest, longest, b"k" * 8, b"e" * 48),
        wire.HandshakeReply(longest, b"e" * (32 + 128 + 16)),
    ):
        assert len(wire.encode_frame(message)) - 4 <= wire.HANDSHAKE_FRAME_MAX


def _frame(type_id: int, body: bytes, version: int = wire.PROTOCOL_VERSION, flags: int = 0) -> bytes:
    return wire.HEADER.pack(version, flags, type_id) + body


@pytest.mark.parametrize(
    ("frame", "reason", "text"),
    [
        (_frame(1, msgpack.packb([1, "a", "b", []]), version=9), "bad_version", "protocol version 9"),
        (_frame(1, msgpack.packb([1, "a", "b", []]), flags=0x80), "bad_flags", "unknown flags"),
        (_frame(1, msgpack.packb([1, "a", "b", []]), flags=wire.FLAG_SEALED), "sealed", "sealed"),
        (_frame(1, b"\xc1"), "bad_body", "undecodable"),
        (_frame(1, msgpack.packb([1, "a", "b", []]) + b"\x00"), "bad_body", "undecodable"),
        (_frame(1, msgpack.packb([1, "a", "b"])), "bad_body", "array of 4"),
        (_frame(1, msgpack.packb({"seq": 1})), "bad_body", "array of 4"),
        (_frame(1, msgpack.packb(["1", "a", "b", []])), "bad_field", "Ping.seq must be an integer"),
        (_frame(1, msgpack.packb([True, "a", "b", []])), "bad_field", "Ping.seq must be an integer"),
        (_frame(1, msgpack.packb([1, b"a", "b", []])), "bad_field", "Ping.source must be a node id"),
        (_frame(1, msgpack.packb([1, "a", "b", [[1, "x"]]])), "bad_field", "Ping.updates must be an array of 6"),
        (_frame(3, msgpack.packb([1, "a", [[1, "x", "3", "", "", ""]]])), "bad_field", "Ack.updates"),
        (_frame(9, msgpack.packb([1, "a", 1])), "bad_field", "LinkReply.accepted must be a boolean"),
        (_frame(12, msgpack.packb(["a", [1, "2"]])), "bad_field", "array of integers"),
        (_frame(19, msgpack.packb(["a", 0, [[1, "k", "not bytes"]]])), "bad_field", "Push.items"),
        (_frame(26, msgpack.packb([1, "a", [["", None, 0, b"", [], b""]], [["k"]]])), "bad_field", "entries"),
    ],
)
def test_malformed_frames_raise_typed_errors(frame: bytes, reason: str, text: str) -> None:
    with pytest.raises(wire.FrameError) as caught:
        wire.decode_frame(frame)
    assert caught.value.reason == reason
    assert text in str(caught.value)


FORGED = "n9\n2024-01-01 00:00:00,000 WARNING dsm.net: member n3 dead"


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (wire.Handshake(FORGED, "", b"k" * 8, b""), "Handshake.initiator_id"),
        (wire.Handshake("", "", b"", b""), "Handshake.initiator_id"),
        (wire.Handshake("a", FORGED, b"", b""), "Handshake.dialled_id"),
        (wire.Handshake("a b", "", b"", b""), "Handshake.initiator_id"),
        (wire.Handshake("-a", "", b"", b""), "Handshake.initiator_id"),
        (wire.Handshake("a" * 129, "", b"", b""), "Handshake.initiator_id"),
        (wire.Handshake("n1\n", "", b"", b""), "Handshake.initiator_id"),  # a trailing newline too
        (wire.HandshakeReply(FORGED, b""), "HandshakeReply.responder_id"),
        (wire.Refuse("wrong_node", "why\nforged"), "Refuse.detail"),
        (m.Ping(1, FORGED, "b", ()), "Ping.source"),
        (m.Ping(1, "a", "b", (m.Update(1, FORGED, 0, "addr", "eu", ""),)), "Ping.updates"),
        (m.Ping(1, "a", "b", (m.Update(1, "n1", 0, "addr\r\n", "eu", ""),)), "Ping.updates"),
        (m.Join("j", "127.0.0.1:1", "eu\n", 0), "Join.region"),
        (m.Replicated(1, "n\u2028x", True), "Replicated.source"),
    ],
)
def test_node_ids_on_the_wire_follow_the_config_rule(message: typing.Any, field: str) -> None:
    # A node id a peer names is checked before anything reads (or logs) it, by the config's own rule.
    with pytest.raises(wire.FrameError) as caught:
        wire.decode_frame(wire.encode_frame(message)[4:])
    assert caught.value.reason == "bad_field"
    assert field in str(caught.value)


def test_valid_ids_and_empty_optional_ids_pass() -> None:
    for message in (
        wire.Handshake("node-1.eu:7@x", "", b"", b""),
        wire.Handshake("a" * 128, "B9", b"", b""),
        m.Routed(1, "a", "", "t", 0, None, ""),
        m.Ping(1, "a", "b", (m.Update(1, "n1", 0, "", "", ""),)),
    ):
        assert wire.decode_frame(wire.encode_frame(message)[4:]) == message


def test_unknown_type_is_its_own_error() -> None:
    with pytest.raises(wire.UnknownType) as caught:
        wire.decode_frame(_frame(999, msgpack.packb([])))
    assert caught.value.type_id == 999 and caught.value.reason == "unknown_type"


def test_a_claimed_huge_array_in_a_small_body_is_refused_without_allocating() -> None:
    # 0xdd: array32 announcing 2**32 - 1 elements in a 5-byte body: the unpacker's limits stop it.
    with pytest.raises(wire.FrameError, match="bad_body"):
        wire.decode_frame(_frame(1, b"\xdd\xff\xff\xff\xff"))


@settings(max_examples=300, deadline=None)
@given(type_id=st.integers(0, 40), body=st.binary(max_size=200))
def test_random_bodies_never_raise_anything_but_frame_errors(type_id: int, body: bytes) -> None:
    try:
        message = wire.decode_frame(_frame(type_id, body))
    except wire.FrameError:
        return
    assert type(message) in wire.TYPE_OF  # anything accepted is a well-typed core message
    assert wire.decode_frame(wire.encode_frame(message)[4:]) == message


def test_unsendable_objects_are_refused() -> None:
    with pytest.raises(TypeError, match="no wire type"):
        wire.encode_frame(("not", "a", "message"))
