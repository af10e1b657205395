"""Connection security between nodes: the handshake, per-session keys and sealed (AEAD) frames.

Without a cluster secret, each side of a new connection sends a plain `Hello` (its node id, an empty key
id, a nonce) and then plain frames. With one:

1. Each side sends `Hello` with the *key id* of its secret (8 bytes of SHA-256 over it: which secret, not
   the secret) and 16 fresh random bytes. The acceptor answers only if it holds a secret with that key
   id (its current one or one it still accepts); otherwise the connection is closed (`AuthError`).
2. Both derive two session keys with HKDF-SHA256 from the secret, salted with both nonces: one per
   direction. Every later frame is sealed with ChaCha20-Poly1305 (from `cryptography`): the body is
   encrypted, the header (version, flags, type) is authenticated with it, and the 96-bit AEAD nonce is
   the direction's frame counter (0, 1, 2, ...). A frame that was altered, replayed, reordered, dropped
   from the middle, or copied from another connection fails to open: the keys differ per connection and
   the counter only moves forward, so no frame is ever accepted twice.
3. The connecting side's first sealed frame is `Auth` (its node id): nothing else from it is accepted
   before that opens, so a process without the secret cannot join or inject; and it cannot read, since
   every frame to it is sealed with keys it cannot derive. (A connection carries frames one way, from
   the side that opened it: see `dsm.net.transport`.)

Rotating the secret without downtime (`Keyring(current, accepted)`: a node connects with `current` and
accepts it and every `accepted` one):
  1. add the new secret to the accepted ones on every node (rolling restart);
  2. make it the current one on every node, the old one accepted;
  3. once every node runs step 2, drop the old secret.
At every moment each node accepts the secret every other node connects with.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dsm.net import wire
from dsm.net.wire import FLAG_SEALED, HEADER, Auth, FrameError, Hello

NONCE_BYTES = 16
KEY_ID_BYTES = 8
TAG_BYTES = 16
#: Shortest secret accepted (bytes, UTF-8): a guessable secret would make the rest pointless.
MIN_SECRET_BYTES = 16


class AuthError(FrameError):
    """The peer could not prove it holds the cluster secret (or sent a frame that does not open)."""

    def __init__(self, detail: str) -> None:
        super().__init__("auth", detail)


def key_id(secret: bytes) -> bytes:
    """Names a secret without revealing it."""
    return hashlib.sha256(b"dsm key id\x00" + secret).digest()[:KEY_ID_BYTES]


class Keyring:
    """The secret a node connects with and those it accepts. No secret: connections are plain."""

    def __init__(self, current: str | bytes | None = None, accepted: Sequence[str | bytes] = ()) -> None:
        secrets = [s for s in (current, *accepted) if s]
        for secret in secrets:
            if len(_as_bytes(secret)) < MIN_SECRET_BYTES:
                raise ValueError(f"a cluster secret needs at least {MIN_SECRET_BYTES} bytes")
        if accepted and not current:
            raise ValueError("accepted secrets need a current cluster secret")
        self.current = _as_bytes(current) if current else None
        self._by_id = {key_id(s): s for s in map(_as_bytes, secrets)}

    @property
    def enabled(self) -> bool:
        return self.current is not None

    def current_id(self) -> bytes:
        return key_id(self.current) if self.current is not None else b""

    def secret_for(self, peer_key_id: bytes) -> bytes | None:
        """The secret a peer's Hello names, or None without a secret; AuthError if it cannot be used."""
        if self.current is None:
            if peer_key_id:
                raise AuthError("the peer uses a cluster secret and this node has none")
            return None
        if not peer_key_id:
            raise AuthError("the peer has no cluster secret")
        secret = self._by_id.get(peer_key_id)
        if secret is None:
            raise AuthError(f"the peer's cluster secret ({peer_key_id.hex()}) is not one this node accepts")
        return secret


def _as_bytes(secret: str | bytes | None) -> bytes:
    if isinstance(secret, bytes):
        return secret
    if isinstance(secret, str):
        return secret.encode()
    raise TypeError("a cluster secret is a str or bytes")


def hello(node_id: str, key: bytes) -> Hello:
    """This side's Hello, with a fresh nonce, using the secret named by `key` (b"": none)."""
    return Hello(node_id, key, os.urandom(NONCE_BYTES))


def accept(keyring: Keyring, node_id: str, theirs: Hello) -> tuple[Hello, Channel]:
    """Acceptor side: the Hello to answer with and the connection's channel (AuthError: refuse)."""
    secret = keyring.secret_for(theirs.key_id)
    ours = hello(node_id, theirs.key_id)
    return ours, session(secret, ours, theirs, initiator=False)


def connect(keyring: Keyring, ours: Hello, theirs: Hello) -> Channel:
    """Initiator side, once the acceptor's Hello arrived: the channel (AuthError: close)."""
    if theirs.key_id != ours.key_id:
        raise AuthError("the peer answered with another cluster secret")
    return session(keyring.secret_for(theirs.key_id), ours, theirs, initiator=True)


class Channel:
    """One connection's framing after the handshake: plain, or sealed with per-direction keys."""

    __slots__ = ("_open", "_received", "_seal", "_sent", "sealed")

    def __init__(self, send_key: bytes | None = None, receive_key: bytes | None = None) -> None:
        self.sealed = send_key is not None
        self._seal = ChaCha20Poly1305(send_key) if send_key is not None else None
        self._open = ChaCha20Poly1305(receive_key) if receive_key is not None else None
        self._sent = 0
        self._received = 0

    def encode(self, message: Any) -> bytes:
        """The frame carrying `message` (length field included)."""
        if self._seal is None:
            return wire.encode_frame(message)
        type_id, body = wire.encode_body(message)
        # The size is checked before sealing: a refused frame must not use up a counter value.
        prefix = wire.header(type_id, FLAG_SEALED, HEADER.size + len(body) + TAG_BYTES)
        sealed = self._seal.encrypt(self._sent.to_bytes(12, "big"), body, prefix[wire.LENGTH.size :])
        self._sent += 1
        return prefix + sealed

    def decode(self, frame: bytes) -> Any:
        """The message in `frame` (its bytes after the length field). Raises FrameError (AuthError for a
        frame that is not sealed as it must be, or does not open)."""
        flags, type_id = wire.parse_header(frame)
        if self._open is None:
            if flags & FLAG_SEALED:
                raise AuthError("a sealed frame on a plain connection")
            return wire.decode_body(type_id, frame[HEADER.size :])
        if not flags & FLAG_SEALED:
            raise AuthError("a plain frame on a sealed connection")
        try:
            body = self._open.decrypt(self._received.to_bytes(12, "big"), frame[HEADER.size :], frame[: HEADER.size])
        except InvalidTag:
            raise AuthError("a frame that does not open (wrong secret, altered, replayed or out of order)") from None
        self._received += 1
        return wire.decode_body(type_id, body)


def session(secret: bytes | None, ours: Hello, theirs: Hello, initiator: bool) -> Channel:
    """The channel for a connection once both Hellos are known."""
    if secret is None:
        return Channel()
    first, second = (ours, theirs) if initiator else (theirs, ours)
    keys = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=first.nonce + second.nonce,
        info=b"dsm/1 session " + ours.key_id,
    ).derive(secret)
    forward, backward = keys[:32], keys[32:]
    return Channel(forward, backward) if initiator else Channel(backward, forward)


def read_hello(frame: bytes) -> Hello:
    """The peer's first frame: a plain Hello, or FrameError."""
    message = wire.decode_frame(frame)
    if not isinstance(message, Hello):
        raise FrameError("handshake", f"expected Hello first, got {type(message).__name__}")
    if len(message.nonce) != NONCE_BYTES or len(message.key_id) not in (0, KEY_ID_BYTES):
        raise FrameError("handshake", "a Hello with a malformed nonce or key id")
    return message


def check_auth(message: Any, peer: Hello) -> None:
    """The first sealed frame must be the peer's Auth, naming the node its Hello named."""
    if not isinstance(message, Auth) or message.node_id != peer.node_id:
        raise AuthError(f"expected Auth from {peer.node_id!r} first")
