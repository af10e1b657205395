"""The Noise protocol framework's `Noise_NNpsk0_25519_ChaChaPoly_SHA256`, the handshake under `dsm.net.security`.

Noise (revision 34, https://noiseprotocol.org/noise.html) builds handshakes from a small set of tokens whose
security properties have been analysed (e.g. by Kobeissi et al., "Noise Explorer", and Girol et al.,
"A Spectral Analysis of Noise"). The pattern here is NNpsk0:

    -> psk, e
    <- e, ee

Both sides hold a pre-shared key (the cluster secret); each sends a fresh X25519 ephemeral key. The psk is
mixed in before anything else, so every key derived afterwards depends on it; the `ee` Diffie-Hellman gives
forward secrecy (a secret that leaks later does not decrypt recorded sessions). The *prologue*, data both
sides must agree on without sending it, is hashed into the transcript `h` first: a handshake whose two sides
saw different prologues fails at the first payload, since every payload is encrypted with `h` as associated
data.

This module is the framework's state machines written from the specification (sections 5 and 9: CipherState,
SymmetricState, HandshakeState for this one pattern) over `cryptography`'s X25519 and ChaCha20-Poly1305 and
the standard library's SHA-256 HMAC. It knows nothing of frames or node ids: `dsm.net.security` carries its
messages and chooses the prologue. Checked against the cacophony test vectors in tests/net/test_handshake_noise.py.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PROTOCOL_NAME = b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
HASH_BYTES = 32
DH_BYTES = 32
KEY_BYTES = 32
TAG_BYTES = 16
PSK_BYTES = 32
#: The largest nonce a CipherState uses (2**64 - 1 is reserved by the specification).
NONCE_MAX = (1 << 64) - 2
#: Largest Noise message (the specification's limit; ours are far smaller).
MESSAGE_MAX = 65535


class NoiseError(ValueError):
    """A handshake message that is malformed or does not decrypt (another psk, another prologue, altered)."""


def _hkdf(chaining_key: bytes, material: bytes, outputs: int) -> tuple[bytes, ...]:
    """The specification's HKDF (section 4.3): HMAC-SHA256 extract, then 2 or 3 chained expansions."""
    temp = hmac.digest(chaining_key, material, "sha256")
    out: list[bytes] = []
    previous = b""
    for i in range(1, outputs + 1):
        previous = hmac.digest(temp, previous + bytes([i]), "sha256")
        out.append(previous)
    return tuple(out)


class CipherState:
    """A key and its nonce counter (section 5.1). ChaCha20-Poly1305's 96-bit nonce is 32 zero bits then the
    64-bit counter, little-endian; the counter moves by one per message, so a message can be opened once,
    in order, and nowhere else."""

    __slots__ = ("_aead", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self._aead = ChaCha20Poly1305(key) if key is not None else None
        self.n = 0

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    def _nonce(self) -> bytes:
        if self.n > NONCE_MAX:
            raise NoiseError("the nonce counter is exhausted")  # 2**64 messages: never in practice
        return b"\x00\x00\x00\x00" + self.n.to_bytes(8, "little")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        sealed = self._aead.encrypt(self._nonce(), plaintext, ad)
        self.n += 1
        return sealed

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """The plaintext; NoiseError if it does not open (the counter then stays where it was)."""
        if self._aead is None:
            return ciphertext
        try:
            plain = self._aead.decrypt(self._nonce(), ciphertext, ad)
        except InvalidTag:
            raise NoiseError("a message that does not decrypt") from None
        self.n += 1
        return plain


class SymmetricState:
    """The chaining key `ck`, the transcript hash `h` and the current cipher (section 5.2)."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME) -> None:
        if len(protocol_name) <= HASH_BYTES:
            self.h = protocol_name.ljust(HASH_BYTES, b"\x00")
        else:
            self.h = hashlib.sha256(protocol_name).digest()
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, material: bytes) -> None:
        self.ck, temp_k = _hkdf(self.ck, material, 2)
        self.cipher = CipherState(temp_k[:KEY_BYTES])

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key_and_hash(self, material: bytes) -> None:
        self.ck, temp_h, temp_k = _hkdf(self.ck, material, 3)
        self.mix_hash(temp_h)
        self.cipher = CipherState(temp_k[:KEY_BYTES])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """(initiator -> responder, responder -> initiator) transport ciphers."""
        k1, k2 = _hkdf(self.ck, b"", 2)
        return CipherState(k1[:KEY_BYTES]), CipherState(k2[:KEY_BYTES])


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class NNpsk0:
    """One side of an NNpsk0 handshake (section 7, with the psk modifier of section 9).

    The initiator calls `write_message` then `read_message`; the responder `read_message` then
    `write_message`. After the second message `finished` is true and `split()` gives this side's
    (send, receive) ciphers; `handshake_hash` is the final transcript hash `h` (section 11.2), the same on
    both sides exactly when they saw the same prologue and messages.

    Args:
        initiator: which side this is.
        psk: the 32-byte pre-shared key.
        prologue: data both sides must agree on (hashed in first, never sent).
        ephemeral: the ephemeral private key to use (test vectors only; by default a fresh one).
    """

    def __init__(
        self, initiator: bool, psk: bytes, prologue: bytes = b"", ephemeral: X25519PrivateKey | None = None
    ) -> None:
        if len(psk) != PSK_BYTES:
            raise ValueError(f"a Noise psk is {PSK_BYTES} bytes")
        self.initiator = initiator
        self._psk = psk
        self._e = ephemeral if ephemeral is not None else X25519PrivateKey.generate()
        self._re: X25519PublicKey | None = None
        self._state = SymmetricState()
        self._state.mix_hash(prologue)
        self._step = 0  # messages written or read so far
        self._result: tuple[CipherState, CipherState] | None = None

    @property
    def finished(self) -> bool:
        return self._result is not None

    @property
    def handshake_hash(self) -> bytes:
        return self._state.h

    def write_message(self, payload: bytes = b"") -> bytes:
        """The next message this side sends, carrying `payload` (encrypted)."""
        if self._step != (0 if self.initiator else 1):
            raise NoiseError("not this side's turn to write")
        state = self._state
        if self.initiator:  # -> psk, e
            state.mix_key_and_hash(self._psk)
            e = _public_bytes(self._e)
            state.mix_hash(e)
            state.mix_key(e)
            message = e + state.encrypt_and_hash(payload)
        else:  # <- e, ee
            e = _public_bytes(self._e)
            state.mix_hash(e)
            state.mix_key(e)
            state.mix_key(self._dh())
            message = e + state.encrypt_and_hash(payload)
        self._step += 1
        if not self.initiator:
            self._result = state.split()
        return message

    def read_message(self, message: bytes) -> bytes:
        """The payload of the other side's next message; NoiseError if it is malformed or does not decrypt."""
        if self._step != (1 if self.initiator else 0):
            raise NoiseError("not this side's turn to read")
        if not DH_BYTES + TAG_BYTES <= len(message) <= MESSAGE_MAX:
            raise NoiseError(f"a handshake message of {len(message)} bytes")
        state = self._state
        re = message[:DH_BYTES]
        try:
            self._re = X25519PublicKey.from_public_bytes(re)
        except ValueError:
            raise NoiseError("a malformed ephemeral key") from None
        if not self.initiator:  # -> psk, e
            state.mix_key_and_hash(self._psk)
            state.mix_hash(re)
            state.mix_key(re)
        else:  # <- e, ee
            state.mix_hash(re)
            state.mix_key(re)
            state.mix_key(self._dh())
        payload = state.decrypt_and_hash(message[DH_BYTES:])
        self._step += 1
        if self.initiator:
            self._result = state.split()
        return payload

    def _dh(self) -> bytes:
        assert self._re is not None
        try:
            return self._e.exchange(self._re)
        except ValueError:  # a low-order point: the shared secret would be all zeros
            raise NoiseError("an ephemeral key of low order") from None

    def split(self) -> tuple[CipherState, CipherState]:
        """This side's (send, receive) transport ciphers, once the handshake finished."""
        if self._result is None:
            raise NoiseError("the handshake has not finished")
        to_responder, to_initiator = self._result
        return (to_responder, to_initiator) if self.initiator else (to_initiator, to_responder)
