"""`dsm.net.noise` against an independent implementation: the cacophony test vector of
Noise_NNpsk0_25519_ChaChaPoly_SHA256.

The vector is from cacophony, the Haskell implementation of Noise (haskell-cryptography/cacophony,
vectors/cacophony.txt, as shipped in the Rust implementation snow's tests/vectors/cacophony.txt): fixed
ephemeral keys, prologue, psk and payloads; the two handshake messages, the handshake hash and four transport
messages must come out byte for byte (transport messages with empty associated data, as Noise sends them).
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dsm.net.noise import PROTOCOL_NAME, CipherState, NNpsk0, NoiseError

VECTOR = {
    "protocol_name": "Noise_NNpsk0_25519_ChaChaPoly_SHA256",
    "prologue": "4a6f686e2047616c74",
    "psk": "54686973206973206d7920417573747269616e20706572737065637469766521",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
    "handshake_hash": "f4d03dc34495c95729ea6de9e1b59004b59733102488b3e24bc441e0be208eaf",
    "messages": [
        (
            "4c756477696720766f6e204d69736573",
            "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944"
            "79b962b8aff8485742ac32f905ba45369e2465fb59e138a93d67a0d1266b6a54",
        ),
        (
            "4d757272617920526f746862617264",
            "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843"
            "d6062704d5a9c422a8e834423f8c1feada7e8d0d910a1a2cd030fb584221e3",
        ),
        ("462e20412e20486179656b", "e632c3763d7669067383433197a3baddf146e9e70ad4b4e9e59e0f"),
        ("4361726c204d656e676572", "64c6bee32ea91c8474bb4c21d7a700109ad45af77b29764ba5eb1e"),
        (
            "4a65616e2d426170746973746520536179",
            "e2fa0bed0603b62d3ccac2ecabbf3fe33f3e86514909b323361626266cb2471cc8",
        ),
        (
            "457567656e2042f6686d20766f6e2042617765726b",
            "0c01dc9cec1fe4ddd692e8dd32188aa351088dc91183639a53b57aa4692b5ebdef8b8ca111",
        ),
    ],
}


def _pair() -> tuple[NNpsk0, NNpsk0]:
    psk, prologue = bytes.fromhex(VECTOR["psk"]), bytes.fromhex(VECTOR["prologue"])
    initiator = NNpsk0(
        True, psk, prologue, X25519PrivateKey.from_private_bytes(bytes.fromhex(VECTOR["init_ephemeral"]))
    )
    responder = NNpsk0(
        False, psk, prologue, X25519PrivateKey.from_private_bytes(bytes.fromhex(VECTOR["resp_ephemeral"]))
    )
    return initiator, responder


def test_the_cacophony_vector_byte_for_byte() -> None:
    assert PROTOCOL_NAME.decode() == VECTOR["protocol_name"]
    messages = [(bytes.fromhex(p), bytes.fromhex(c)) for p, c in VECTOR["messages"]]
    initiator, responder = _pair()
    (p0, c0), (p1, c1) = messages[:2]
    assert initiator.write_message(p0) == c0
    assert responder.read_message(c0) == p0
    assert responder.write_message(p1) == c1
    assert initiator.read_message(c1) == p1
    assert initiator.finished and responder.finished
    assert initiator.handshake_hash == responder.handshake_hash == bytes.fromhex(VECTOR["handshake_hash"])
    i_send, i_receive = initiator.split()
    r_send, r_receive = responder.split()
    # Transport messages alternate, the initiator first (as in the vector file).
    for n, (payload, ciphertext) in enumerate(messages[2:]):
        send, receive = (i_send, r_receive) if n % 2 == 0 else (r_send, i_receive)
        assert send.encrypt_with_ad(b"", payload) == ciphertext
        assert receive.decrypt_with_ad(b"", ciphertext) == payload


def test_a_changed_prologue_or_psk_fails_at_the_first_message() -> None:
    psk, prologue = bytes.fromhex(VECTOR["psk"]), bytes.fromhex(VECTOR["prologue"])
    first = NNpsk0(True, psk, prologue).write_message(b"")
    for other_psk, other_prologue in ((psk, prologue + b"!"), (bytes(32), prologue)):
        with pytest.raises(NoiseError):
            NNpsk0(False, other_psk, other_prologue).read_message(first)
    NNpsk0(False, psk, prologue).read_message(first)  # the same inputs open it


def test_a_cipher_state_opens_each_message_once_and_in_order() -> None:
    key = bytes(range(32))
    seal, open_ = CipherState(key), CipherState(key)
    a, b = seal.encrypt_with_ad(b"h", b"first"), seal.encrypt_with_ad(b"h", b"second")
    with pytest.raises(NoiseError):
        open_.decrypt_with_ad(b"h", b)  # out of order
    assert open_.decrypt_with_ad(b"h", a) == b"first"
    with pytest.raises(NoiseError):
        open_.decrypt_with_ad(b"h", a)  # again
    with pytest.raises(NoiseError):
        open_.decrypt_with_ad(b"other", b)  # other associated data
    assert open_.decrypt_with_ad(b"h", b) == b"second"
