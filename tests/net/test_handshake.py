"""The node handshake (`dsm.net.security`) as an on-path attacker without the secret would try it, in memory:
a connection meant for one member taken to another, a replayed first message, spliced and reordered
frames, and every clear field of the handshake altered (the transcript binds them)."""

from __future__ import annotations

import os

import pytest

from dsm.core.messages import Ping
from dsm.net import security, wire
from dsm.net.noise import NNpsk0, NoiseError
from dsm.net.security import AuthError, Initiator, Keyring, RefusedError, Responder, WrongNodeError

SECRET = "handshake-test-secret-0001"
OTHER = "handshake-other-secret-002"


def body(frame: bytes) -> bytes:
    return frame[wire.LENGTH.size :]


def connect(a: Initiator, b: Responder) -> tuple[security.Channel, security.Channel, bytes]:
    """Runs a whole handshake in memory: (a's channel, b's channel, a's Confirm frame)."""
    b.receive(body(a.first_frame()))
    channel_a, confirm = a.finish(body(b.reply()))
    channel_b = b.confirm(body(confirm)) if b.needs_confirm else b.channel
    return channel_a, channel_b, confirm


def refused(responder: Responder, frame: bytes) -> bytes:
    """The Refuse frame `responder` answers `frame` with (it must refuse it)."""
    with pytest.raises(wire.FrameError) as caught:
        responder.receive(body(frame))
    return security.refusal(caught.value)


@pytest.mark.parametrize("secret", [SECRET, None])
def test_a_connection_meant_for_another_member_is_refused_and_the_initiator_learns_why(secret: str | None) -> None:
    keyring = Keyring(secret)
    a = Initiator(keyring, "a", "b")
    answer = refused(Responder(keyring, "c"), a.first_frame())
    with pytest.raises(RefusedError) as caught:
        a.finish(body(answer))
    assert caught.value.code == "wrong_node" and "this is 'c', not 'b'" in str(caught.value)
    # A node that dials itself (its own address under another name) is refused too.
    assert wire.decode_frame(
        body(refused(Responder(keyring, "a"), Initiator(keyring, "a", "").first_frame()))
    ).code == ("wrong_node")


def test_rewriting_the_dialled_id_breaks_the_transcript() -> None:
    keyring = Keyring(SECRET)
    a = Initiator(keyring, "a", "b")
    first = wire.decode_frame(body(a.first_frame()))
    # The attacker makes c believe the connection was for it, or for whoever answers ("").
    for dialled in ("c", ""):
        forged = wire.encode_frame(first._replace(dialled_id=dialled))
        answer = refused(Responder(keyring, "c"), forged)
        assert wire.decode_frame(body(answer)).code == "wrong_secret"  # its first message no longer opens


def test_without_a_secret_the_initiator_still_notices_another_member_answering() -> None:
    a = Initiator(Keyring(), "a", "b")
    first = wire.decode_frame(body(a.first_frame()))
    c = Responder(Keyring(), "c")
    c.receive(body(wire.encode_frame(first._replace(dialled_id=""))))  # plain: nothing binds it
    with pytest.raises(WrongNodeError, match="dialled 'b', reached 'c'"):
        a.finish(body(c.reply()))


def test_a_replayed_first_message_gets_an_answer_but_never_a_channel() -> None:
    keyring = Keyring(SECRET)
    a = Initiator(keyring, "a", "b")
    first = a.first_frame()
    b = Responder(keyring, "b")
    b.receive(body(first))
    reply = b.reply()
    _, confirm = a.finish(body(reply))
    assert b.confirm(body(confirm)).sealed  # the honest connection is up
    # The attacker replays the recorded first message and confirmation to b on a new connection.
    again = Responder(keyring, "b")
    again.receive(body(first))  # it cannot tell yet
    assert again.reply() != reply  # a fresh ephemeral key: other session keys
    with pytest.raises(AuthError, match="does not open"):
        again.confirm(body(confirm))


def test_spliced_and_reordered_frames_do_not_open() -> None:
    keyring = Keyring(SECRET)
    a1, b1, confirm1 = connect(Initiator(keyring, "a", "b"), Responder(keyring, "b"))
    a2, b2, _ = connect(Initiator(keyring, "c", "b"), Responder(keyring, "b"))
    # Each connection's handshake went through; then the attacker swaps their frames.
    with pytest.raises(AuthError):
        b2.decode(body(a1.encode(Ping(1, "a", "b", ()))))
    with pytest.raises(AuthError):
        b1.decode(body(a2.encode(Ping(1, "c", "b", ()))))
    # A confirmation of one connection does not confirm another.
    i3, r3 = Initiator(keyring, "a", "b"), Responder(keyring, "b")
    r3.receive(body(i3.first_frame()))
    i3.finish(body(r3.reply()))
    with pytest.raises(AuthError):
        r3.confirm(body(confirm1))
    # Reordered: the second frame first.
    a4, b4, _ = connect(Initiator(keyring, "a", "b"), Responder(keyring, "b"))
    first, second = a4.encode(Ping(1, "a", "b", ())), a4.encode(Ping(2, "a", "b", ()))
    with pytest.raises(AuthError):
        b4.decode(body(second))
    assert b4.decode(body(first)).seq == 1  # (a refused frame does not move the counter)


def test_the_transcript_binds_the_initiator_id_the_key_and_the_version() -> None:
    rotating = Keyring(SECRET, [OTHER])
    a = Initiator(Keyring(SECRET), "a", "b")
    first = wire.decode_frame(body(a.first_frame()))
    for forged in (
        first._replace(initiator_id="m"),  # pose as another member
        first._replace(key_id=security.key_id(OTHER.encode())),  # make b use another of its secrets
        first._replace(noise=first.noise[:-1] + bytes([first.noise[-1] ^ 1])),
    ):
        answer = refused(Responder(rotating, "b"), wire.encode_frame(forged))
        assert wire.decode_frame(body(answer)).code == "wrong_secret"
    # The version is in the prologue: a responder of another protocol version could not open it either.
    psk = security._psk(SECRET.encode())
    other_version = NNpsk0(False, psk, security.prologue("a", "b", first.key_id, version=a.version - 1))
    with pytest.raises(NoiseError):
        other_version.read_message(first.noise)


def test_the_reply_is_bound_too() -> None:
    keyring = Keyring(SECRET)
    for dialled in ("b", ""):
        a = Initiator(keyring, "a", dialled)
        b = Responder(keyring, "b")
        b.receive(body(a.first_frame()))
        reply = wire.decode_frame(body(b.reply()))
        with pytest.raises((AuthError, wire.FrameError)):  # another id in the clear than the sealed one
            Initiator(keyring, "a", dialled).finish(body(wire.encode_frame(reply._replace(responder_id="c"))))
        altered = reply._replace(noise=reply.noise[:-1] + bytes([reply.noise[-1] ^ 1]))
        with pytest.raises(AuthError):
            a.finish(body(wire.encode_frame(altered)))


def test_an_answer_from_a_node_without_the_secret_is_refused_key_confirmation() -> None:
    a = Initiator(Keyring(SECRET), "a", "b")
    first = wire.decode_frame(body(a.first_frame()))
    # An impostor at b's address knows the public key id, not the secret: it cannot read the first message...
    with pytest.raises(NoiseError):
        NNpsk0(False, security._psk(OTHER.encode()), security.prologue("a", "b", first.key_id)).read_message(
            first.noise
        )
    # ...and whatever it answers (an ephemeral key of its own and some ciphertext) does not open.
    forged = wire.HandshakeReply("b", os.urandom(32) + os.urandom(len("b") + 16))
    with pytest.raises(AuthError, match="does not open with our cluster secret"):
        a.finish(body(wire.encode_frame(forged)))


@pytest.mark.parametrize("secret", [SECRET, None])
@pytest.mark.parametrize("claimed", ["n9\n2024-01-01 WARNING dsm.net: member n3 dead", "a b", "-a", "n1\n", "é"])
def test_a_handshake_naming_an_invalid_node_id_is_refused_as_a_bad_handshake(secret: str | None, claimed: str) -> None:
    # The config's rule for node ids (dsm.types.is_node_id) holds on the wire: a claimed id that is not one is
    # refused before the responder uses it, whether or not the secret is right.
    keyring = Keyring(secret)
    answer = wire.decode_frame(body(refused(Responder(keyring, "b"), Initiator(keyring, claimed, "").first_frame())))
    assert answer.code == "handshake" and "initiator_id must be a node id" in answer.detail
    # The reply's id too: the initiator refuses an answer naming an invalid responder.
    a = Initiator(keyring, "a", "")
    b = Responder(keyring, "b")
    b.receive(body(a.first_frame()))
    reply = wire.decode_frame(body(b.reply()))
    with pytest.raises(wire.FrameError, match="responder_id must be a node id"):
        a.finish(body(wire.encode_frame(reply._replace(responder_id=claimed))))
