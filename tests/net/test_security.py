"""Sealed connections: the handshake's channels, wrong or missing secrets, tampering, replay, rotation."""

from __future__ import annotations

import pytest

from dsm.core.messages import Ack, DataItem, Ping, Push
from dsm.net import security, wire
from dsm.net.security import AuthError, Keyring

OLD = "old-secret-0123456789"
NEW = "new-secret-abcdefghij"


def handshake(a: Keyring, b: Keyring, dialled: str = "b") -> tuple[security.Channel, security.Channel]:
    """a connects to b (frames passed in memory); returns (a's channel, b's channel) once b confirmed a."""
    initiator = security.Initiator(a, "a", dialled)
    responder = security.Responder(b, "b")
    responder.receive(initiator.first_frame()[4:])
    channel_a, confirm = initiator.finish(responder.reply()[4:])
    channel_b = responder.confirm(confirm[4:]) if responder.needs_confirm else responder.channel
    assert initiator.peer_id == "b" and responder.peer_id == "a"
    return channel_a, channel_b


def test_sealed_frames_round_trip_and_hide_the_body() -> None:
    a, b = handshake(Keyring(NEW), Keyring(NEW))
    assert a.sealed and b.sealed
    ping = Ping(1, "a", "node-with-a-long-name", ())
    frame = a.encode(ping)
    assert b"node-with-a-long-name" in wire.encode_frame(ping)
    assert b"node-with-a-long-name" not in frame  # the body is encrypted
    assert b.decode(frame[4:]) == ping
    # Each direction has its own key: what b would seal opens on a (the channel is symmetric in code).
    assert a.decode(b.encode(Ack(1, "b", ()))[4:]) == Ack(1, "b", ())


def test_plain_connections_without_a_secret() -> None:
    a, b = handshake(Keyring(), Keyring())
    assert not a.sealed
    assert b.decode(a.encode(Ping(1, "a", "b", ()))[4:]) == Ping(1, "a", "b", ())


@pytest.mark.parametrize(
    ("ours", "theirs", "text"),
    [
        (Keyring("x" * 16), Keyring(NEW), "not one this node accepts"),
        (Keyring(), Keyring(NEW), "no cluster secret"),
        (Keyring(NEW), Keyring(), "this node has none"),
    ],
)
def test_a_node_without_the_right_secret_is_refused(ours: Keyring, theirs: Keyring, text: str) -> None:
    with pytest.raises(AuthError, match=text) as caught:
        handshake(ours, theirs)
    assert caught.value.reason == "auth" and caught.value.code == "wrong_secret"


def test_replayed_altered_and_cross_connection_frames_are_rejected() -> None:
    a, b = handshake(Keyring(NEW), Keyring(NEW))
    first = a.encode(Ping(1, "a", "b", ()))
    assert b.decode(first[4:]).seq == 1
    with pytest.raises(AuthError):  # the same frame again
        b.decode(first[4:])
    second = bytearray(a.encode(Ping(2, "a", "b", ())))
    second[-1] ^= 1
    with pytest.raises(AuthError):  # one bit flipped
        b.decode(bytes(second[4:]))
    _, other_b = handshake(Keyring(NEW), Keyring(NEW))
    with pytest.raises(AuthError):  # a valid frame from another connection
        other_b.decode(first[4:])
    head = bytearray(a.encode(Ping(3, "a", "b", ())))
    head[7] ^= 2  # the type field is authenticated too
    with pytest.raises(wire.FrameError):
        b.decode(bytes(head[4:]))


def test_handshake_frames_are_refused_once_the_channel_is_up() -> None:
    a, b = handshake(Keyring(NEW), Keyring(NEW))
    with pytest.raises(wire.FrameError, match="handshake frame after the handshake"):
        b.decode(a.encode(wire.Confirm(b"h" * 32))[4:])
    plain_a, plain_b = handshake(Keyring(), Keyring())
    with pytest.raises(wire.FrameError, match="handshake frame after the handshake"):
        plain_b.decode(plain_a.encode(wire.Refuse("handshake", "x"))[4:])


def test_rotation_steps_keep_every_pair_of_nodes_connected() -> None:
    before = Keyring(OLD)
    step1 = Keyring(OLD, [NEW])  # accepts the new one too
    step2 = Keyring(NEW, [OLD])  # connects with the new one, still accepts the old
    after = Keyring(NEW)
    # During each step, nodes are a mix of that step and the one before it.
    for x, y in ((before, step1), (step1, step2), (step2, after)):
        for a, b in ((x, y), (y, x), (x, x), (y, y)):
            ca, cb = handshake(a, b)
            assert cb.decode(ca.encode(Ping(1, "a", "b", ()))[4:]).seq == 1
    with pytest.raises(AuthError):  # skipping step 1 would cut nodes off
        handshake(after, before)


def test_weak_or_inconsistent_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Keyring("short")
    with pytest.raises(ValueError, match="need a current"):
        Keyring(None, [NEW])


def test_a_refused_oversized_frame_leaves_the_channel_usable() -> None:
    a, b = handshake(Keyring(NEW), Keyring(NEW))
    with pytest.raises(wire.FrameError, match="too_large"):
        a.encode(Push("a", 0, (DataItem(1, "k", b"x" * wire.MAX_FRAME),)))
    assert b.decode(a.encode(Ping(1, "a", "b", ()))[4:]).seq == 1
