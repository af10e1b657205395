"""Sealed connections: the handshake, wrong or missing secrets, tampering, replay, rotation."""

from __future__ import annotations

import pytest

from dsm.core.messages import Ack, DataItem, Ping, Push
from dsm.net import security, wire
from dsm.net.security import AuthError, Keyring
from dsm.net.wire import Auth

OLD = "old-secret-0123456789"
NEW = "new-secret-abcdefghij"


def handshake(a: Keyring, b: Keyring) -> tuple[security.Channel, security.Channel]:
    """a connects to b; returns (a's channel, b's channel); both Auth frames exchanged and checked."""
    hello_a = security.hello("a", a.current_id())
    theirs = security.read_hello(wire.encode_frame(hello_a)[4:])
    hello_b, channel_b = security.accept(b, "b", theirs)
    channel_a = security.connect(a, hello_a, security.read_hello(wire.encode_frame(hello_b)[4:]))
    if channel_a.sealed:
        security.check_auth(channel_b.decode(channel_a.encode(Auth("a"))[4:]), hello_a)
        security.check_auth(channel_a.decode(channel_b.encode(Auth("b"))[4:]), hello_b)
    return channel_a, channel_b


def test_sealed_frames_round_trip_both_ways_and_hide_the_body() -> None:
    a, b = handshake(Keyring(NEW), Keyring(NEW))
    assert a.sealed and b.sealed
    ping = Ping(1, "a", "node-with-a-long-name", ())
    frame = a.encode(ping)
    assert b"node-with-a-long-name" in wire.encode_frame(ping)
    assert b"node-with-a-long-name" not in frame  # the body is encrypted
    assert b.decode(frame[4:]) == ping
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
    assert caught.value.reason == "auth"


def test_a_forged_key_id_without_the_secret_cannot_produce_frames_that_open() -> None:
    victim = Keyring(NEW)
    hello_x = security.hello("x", victim.current_id())  # the key id is public; the secret is not
    _, channel = security.accept(victim, "b", hello_x)
    forged = security.Channel(b"\x00" * 32, b"\x00" * 32).encode(Auth("x"))
    with pytest.raises(AuthError, match="does not open"):
        channel.decode(forged[4:])
    with pytest.raises(AuthError, match="plain frame"):
        channel.decode(wire.encode_frame(Auth("x"))[4:])


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


def test_auth_must_come_first_and_name_the_hello_sender() -> None:
    hello_a = security.hello("a", b"")
    with pytest.raises(AuthError, match="expected Auth"):
        security.check_auth(Ping(1, "a", "b", ()), hello_a)
    with pytest.raises(AuthError, match="expected Auth"):
        security.check_auth(Auth("mallory"), hello_a)
    with pytest.raises(wire.FrameError, match="expected Hello"):
        security.read_hello(wire.encode_frame(Auth("a"))[4:])
    with pytest.raises(wire.FrameError, match="malformed nonce"):
        security.read_hello(wire.encode_frame(wire.Hello("a", b"", b"short"))[4:])


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
