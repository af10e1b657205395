"""Connection security between nodes: the handshake, who is talking to whom, and sealed (AEAD) frames.

Sans-IO: `Initiator` and `Responder` take frames and give frames; `dsm.net.transport` moves them. A
connection carries frames one way (from the side that opened it, see `dsm.net.transport`), after this
handshake (docs/network.md has the full protocol and its threat model):

    initiator -> responder   Handshake(initiator_id, dialled_id, key_id, noise1)         plain
    responder -> initiator   HandshakeReply(responder_id, noise2)  or  Refuse(code, why)  plain
    initiator -> responder   Confirm(handshake_hash)                                     sealed
    initiator -> responder   the core's messages                                         sealed

With a cluster secret, noise1/noise2 are the two messages of Noise_NNpsk0_25519_ChaChaPoly_SHA256
(`dsm.net.noise`): the secret is the pre-shared key, each side adds a fresh X25519 ephemeral key, and the
prologue both sides hash into the transcript before anything else is

    "dsm/" || protocol version || initiator id || dialled id || key id       (each id length-prefixed)

so the transcript binds the protocol version, both node ids (the responder's id is also noise2's encrypted
payload, which matters when the initiator dialled an address without knowing its member), both ephemeral
keys and the secret. Each side checks what it can before going on:
- the responder refuses a dialled id other than its own (a connection redirected to another member), an
  initiator id equal to its own, a key id it holds no secret for, and a noise1 that does not decrypt;
- the initiator refuses a reply from another node than the one it dialled, or whose noise2 does not
  decrypt (the responder does not hold the secret, or the transcripts differ): key confirmation of the
  responder;
- the responder accepts nothing before the initiator's Confirm opens with the session key and names the
  same transcript hash: key confirmation of the initiator. A recorded Handshake replayed by an attacker
  gets a reply with a fresh ephemeral key, and without the initiator's ephemeral private key nobody can
  derive the session keys to produce the Confirm.
Every frame after the handshake is sealed with ChaCha20-Poly1305 under the direction's key from the Noise
split, with its header (version, flags, type) as associated data and the frame counter as nonce: a frame
altered, replayed, reordered, dropped from the middle or copied from another connection does not open.

Without a secret (plain mode) the same frames carry empty Noise fields and frames are plain: node ids are
still exchanged and checked (a misdirected connection is noticed), but nothing is authenticated.

A refusal (`Refuse`) is plain and unauthenticated: it tells the initiator why (`RefusedError.code`), which
is only a diagnosis; an attacker who could forge one could as well drop the connection.

Versions: a node speaks the protocol versions `wire.MIN_PROTOCOL_VERSION` to `wire.PROTOCOL_VERSION`. The
initiator proposes its newest, as the version of its Handshake frame and in the prologue (so the transcript
binds it); a responder that speaks it answers in it, and the connection's every frame carries it (`Channel`).
A responder that does not refuses (`VersionError`, code "version") saying which versions it speaks, in the
version proposed so that the initiator can read it; the initiator then connects again proposing the newest
version both speak, or gives up with both ranges logged. A node of v0.1.0 spoke exactly 2 and refused any
other with "protocol version N (this node speaks 2)", which the initiator reads the same way (`spoken`).
An on-path attacker can forge a refusal (it is plain) and so make two nodes speak an older version they both
speak, never one outside their ranges: every version in a range must be safe to speak.

Rotating the secret without downtime (`Keyring(current, accepted)`: a node connects with `current` and
accepts it and every `accepted` one; the initiator names its secret by key id, so the responder picks it):
  1. add the new secret to the accepted ones on every node (rolling restart);
  2. make it the current one on every node, the old one accepted;
  3. once every node runs step 2, drop the old secret.
At every moment each node accepts the secret every other node connects with.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from typing import Any

from dsm.net import wire
from dsm.net.noise import TAG_BYTES, CipherState, NNpsk0, NoiseError
from dsm.net.wire import (
    FLAG_SEALED,
    HEADER,
    PROTOCOL_VERSION,
    Confirm,
    FrameError,
    Handshake,
    HandshakeReply,
    Refuse,
)

KEY_ID_BYTES = 8
#: Shortest secret accepted (bytes, UTF-8): a guessable secret would make the rest pointless.
MIN_SECRET_BYTES = 16
#: Why a responder refuses a handshake (`Refuse.code`); each is also a reason of
#: `dsm.net.transport.CONNECT_FAILURES`.
REFUSAL_CODES = ("wrong_secret", "wrong_node", "tls", "version", "handshake")
#: Longest explanation a refusal carries (characters).
REFUSAL_DETAIL_MAX = 200


class HandshakeError(FrameError):
    """A handshake that cannot go on. `reason` is the metrics label (as for every FrameError); `code` says
    why in the terms of REFUSAL_CODES: what a responder tells the initiator, what the initiator reports."""

    code = "handshake"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.detail = detail


class AuthError(HandshakeError):
    """The peer could not prove it holds the cluster secret (or sent a frame that does not open)."""

    code = "wrong_secret"

    def __init__(self, detail: str) -> None:
        super().__init__("auth", detail)


class WrongNodeError(HandshakeError):
    """The peer is not the member this side expected (a redirected connection, or a misconfiguration)."""

    code = "wrong_node"

    def __init__(self, detail: str) -> None:
        super().__init__("wrong_node", detail)


class CertificateNodeError(HandshakeError):
    """A TLS certificate that names no node id where one is required (`tls_require_node_id`)."""

    code = "tls"

    def __init__(self, detail: str) -> None:
        super().__init__("tls_node_id", detail)


class VersionError(HandshakeError):
    """The two sides speak no protocol version in common (see "Versions" in the module docstring)."""

    code = "version"

    def __init__(self, detail: str) -> None:
        super().__init__("bad_version", detail)


class RefusedError(HandshakeError):
    """The responder refused our handshake (`Refuse`); `code` is its reason (one of REFUSAL_CODES)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__("refused", f"the peer refused the handshake ({code}): {detail}")
        self.code = code if code in REFUSAL_CODES else "handshake"


def failure_code(exc: FrameError) -> str:
    """The REFUSAL_CODES reason of a failed handshake (a frame error that is no HandshakeError: "handshake")."""
    return exc.code if isinstance(exc, HandshakeError) else "handshake"


# ---------------------------------------------------------------------------------------------- secrets


@functools.lru_cache(maxsize=64)
def _psk(secret: bytes) -> bytes:
    # A slow, memory-hard derivation (scrypt, about 40 ms once per secret and process): the key id and the
    # handshake let whoever records them test guesses of the secret offline, and this makes each guess cost
    # that much. Use a random secret all the same (e.g. 32 random bytes in hex).
    return hashlib.scrypt(secret, salt=b"dsm cluster secret v2", n=1 << 14, r=8, p=1, dklen=32)


def key_id(secret: bytes) -> bytes:
    """Names a secret without revealing it (8 bytes of a hash of its derived key)."""
    return hashlib.sha256(b"dsm key id\x00" + _psk(secret)).digest()[:KEY_ID_BYTES]


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
        self._by_id = {key_id(s): _psk(s) for s in map(_as_bytes, secrets)}

    @property
    def enabled(self) -> bool:
        return self.current is not None

    def current_id(self) -> bytes:
        return key_id(self.current) if self.current is not None else b""

    def current_psk(self) -> bytes | None:
        return _psk(self.current) if self.current is not None else None

    def psk_for(self, peer_key_id: bytes) -> bytes | None:
        """The pre-shared key of the secret a peer's key id names, None without a secret; AuthError if this
        node cannot use it."""
        if self.current is None:
            if peer_key_id:
                raise AuthError("the peer uses a cluster secret and this node has none")
            return None
        if not peer_key_id:
            raise AuthError("the peer has no cluster secret")
        psk = self._by_id.get(peer_key_id)
        if psk is None:
            raise AuthError(f"the peer's cluster secret ({peer_key_id.hex()}) is not one this node accepts")
        return psk


def _as_bytes(secret: str | bytes | None) -> bytes:
    if isinstance(secret, bytes):
        return secret
    if isinstance(secret, str):
        return secret.encode()
    raise TypeError("a cluster secret is a str or bytes")


def spoken(detail: str) -> tuple[int, int] | None:
    """The versions a refusal says its node speaks (`wire.speaks`: "speaks 2-3", or v0.1.0's "speaks 2")."""
    found = re.search(r"speaks (\d+)(?:-(\d+))?", detail)
    if found is None:
        return None
    low = int(found.group(1))
    return low, int(found.group(2) or low)


def prologue(initiator_id: str, dialled_id: str, key: bytes, version: int = PROTOCOL_VERSION) -> bytes:
    """What both sides hash into the transcript first (never sent as such; see the module docstring)."""
    parts = [initiator_id.encode(), dialled_id.encode(), key]
    return b"dsm/" + bytes([version]) + b"".join(len(p).to_bytes(2, "big") + p for p in parts)


# ---------------------------------------------------------------------------------------------- frames


class Channel:
    """One connection's framing after the handshake: plain, or sealed with per-direction ciphers."""

    __slots__ = ("_open", "_seal", "sealed", "version")

    def __init__(
        self, seal: CipherState | None = None, open_: CipherState | None = None, version: int = PROTOCOL_VERSION
    ) -> None:
        self.sealed = seal is not None
        self._seal = seal
        self._open = open_
        #: The protocol version the handshake settled on: every frame carries it.
        self.version = version

    def encode(self, message: Any) -> bytes:
        """The frame carrying `message` (length field included). FrameError if it is too large."""
        if self._seal is None:
            return wire.encode_frame(message, self.version)
        type_id, body = wire.encode_body(message)
        # The size is checked before sealing: a refused frame must not use up a counter value.
        prefix = wire.header(type_id, FLAG_SEALED, HEADER.size + len(body) + TAG_BYTES, self.version)
        return prefix + self._seal.encrypt_with_ad(prefix[wire.LENGTH.size :], body)

    def decode(self, frame: bytes, *, control: bool = False) -> Any:
        """The message in `frame` (its bytes after the length field). Raises FrameError: AuthError for a frame
        that is not sealed as it must be or does not open; a connection-control frame unless `control`."""
        flags, type_id = wire.parse_header(frame, (self.version, self.version))
        if type_id in wire.CONTROL_TYPES and not control:
            raise FrameError("handshake", "a handshake frame after the handshake")
        if self._open is None:
            if flags & FLAG_SEALED:
                raise AuthError("a sealed frame on a plain connection")
            return wire.decode_body(type_id, frame[HEADER.size :])
        if not flags & FLAG_SEALED:
            raise AuthError("a plain frame on a sealed connection")
        try:
            body = self._open.decrypt_with_ad(frame[: HEADER.size], frame[HEADER.size :])
        except NoiseError:
            raise AuthError("a frame that does not open (wrong secret, altered, replayed or out of order)") from None
        return wire.decode_body(type_id, body)


def refusal(exc: FrameError, version: int = PROTOCOL_VERSION) -> bytes:
    """The Refuse frame a responder sends before closing a connection whose handshake failed with `exc`, in
    the version the initiator spoke (`Responder.answer_version`), so that it can read why."""
    detail = exc.detail if isinstance(exc, HandshakeError) else str(exc)
    return wire.encode_frame(Refuse(failure_code(exc), detail[:REFUSAL_DETAIL_MAX]), version)


def _plain_message(frame: bytes, versions: tuple[int, int] = wire.ANY_VERSION) -> Any:
    if len(frame) > wire.HANDSHAKE_FRAME_MAX:
        raise FrameError("too_large", f"a handshake frame of {len(frame)} bytes")
    flags, type_id = wire.parse_header(frame, versions)
    if flags & FLAG_SEALED:
        raise FrameError("handshake", "a sealed frame before the handshake (does the peer use a secret?)")
    return wire.decode_body(type_id, frame[HEADER.size :])


class Initiator:
    """The connecting side of one handshake.

    Args:
        keyring: this node's secrets (it connects with the current one).
        node_id: this node's id.
        dialled_id: the member it means to reach; "" when it dials an address whose member it does not know
            (a bootstrap address): then any node holding the secret may answer, and `peer_id` says which.
    """

    def __init__(self, keyring: Keyring, node_id: str, dialled_id: str, version: int = PROTOCOL_VERSION) -> None:
        self.node_id = node_id
        self.dialled_id = dialled_id
        #: The protocol version it proposes (bound into the transcript; the reply must be in it).
        self.version = version
        key = keyring.current_id()
        psk = keyring.current_psk()
        self._noise = NNpsk0(True, psk, prologue(node_id, dialled_id, key, version)) if psk is not None else None
        noise1 = self._noise.write_message() if self._noise is not None else b""
        self._first = Handshake(node_id, dialled_id, key, noise1)
        #: The responder's node id, once its reply is read.
        self.peer_id = ""

    def first_frame(self) -> bytes:
        """The Handshake frame to send first."""
        return wire.encode_frame(self._first, self.version)

    def finish(self, frame: bytes) -> tuple[Channel, bytes]:
        """Reads the responder's answer (a frame, after its length field): the connection's channel and the
        Confirm frame to send (b"" in plain mode).

        Raises:
            RefusedError: the responder refused, saying why.
            WrongNodeError: the responder is not the member dialled (or is this node).
            AuthError: its answer does not decrypt: it does not hold our secret, or the answer was altered.
            FrameError: a malformed answer.
        """
        message = _plain_message(frame)  # a refusal is read in whichever version it came
        if isinstance(message, Refuse):
            raise RefusedError(message.code, message.detail)
        if wire.frame_version(frame) != self.version:
            raise VersionError(f"a reply in protocol version {wire.frame_version(frame)} to {self.version}")
        if not isinstance(message, HandshakeReply):
            raise FrameError("handshake", f"expected a HandshakeReply, got {type(message).__name__}")
        responder = message.responder_id
        if responder == self.node_id:
            raise WrongNodeError("this node reached itself")
        if self.dialled_id and responder != self.dialled_id:
            raise WrongNodeError(f"dialled {self.dialled_id!r}, reached {responder!r}")
        self.peer_id = responder
        if self._noise is None:
            if message.noise:
                raise AuthError("the peer uses a cluster secret and this node has none")
            return Channel(version=self.version), b""
        try:
            payload = self._noise.read_message(message.noise)
        except NoiseError as exc:
            raise AuthError(f"the peer's answer does not open with our cluster secret ({exc})") from None
        if payload != responder.encode():
            raise FrameError("handshake", "the reply's sealed node id differs from its plain one")
        seal, open_ = self._noise.split()
        channel = Channel(seal, open_, self.version)
        return channel, channel.encode(Confirm(self._noise.handshake_hash))


class Responder:
    """The accepting side of one handshake: `receive` the Handshake frame, then send `reply()`, then (with a
    secret) `confirm` the initiator's Confirm frame to get the channel."""

    def __init__(
        self,
        keyring: Keyring,
        node_id: str,
        versions: tuple[int, int] = (wire.MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
    ) -> None:
        self.keyring = keyring
        self.node_id = node_id
        #: The protocol versions it speaks; the one the initiator proposed, once read (the connection's if
        #: it is within them), in which a refusal is sent.
        self.versions = versions
        self.version = versions[1]
        #: The initiator's node id (bound by the handshake once it is confirmed).
        self.peer_id = ""
        #: Whether the initiator dialled this node by its id (else an address whose member it did not know).
        self.by_id = False
        self._noise: NNpsk0 | None = None
        self._channel: Channel | None = None

    def receive(self, frame: bytes) -> None:
        """Reads the initiator's Handshake frame (after its length field).

        Raises:
            WrongNodeError: it dialled another member (or this node dialled itself).
            AuthError: it does not use a secret this node accepts, or its message does not decrypt.
            FrameError: anything else (send `refusal(exc)`, then close).
        """
        proposed = wire.frame_version(frame)
        self.version = proposed if wire.ANY_VERSION[0] <= proposed else self.versions[1]
        low, high = self.versions
        if not low <= proposed <= high:
            raise VersionError(f"protocol version {proposed} proposed ({wire.speaks(low, high)})")
        message = _plain_message(frame)
        if not isinstance(message, Handshake):
            raise FrameError("handshake", f"expected a Handshake first, got {type(message).__name__}")
        if message.dialled_id and message.dialled_id != self.node_id:
            raise WrongNodeError(f"this is {self.node_id!r}, not {message.dialled_id!r}")
        if not message.initiator_id or message.initiator_id == self.node_id:
            raise WrongNodeError(f"a connection that claims to come from {message.initiator_id!r}")
        self.peer_id = message.initiator_id
        self.by_id = bool(message.dialled_id)
        psk = self.keyring.psk_for(message.key_id)
        if psk is None:
            if message.noise:
                raise FrameError("handshake", "a Noise message without a key id")
            self._channel = Channel(version=self.version)
            return
        self._noise = NNpsk0(
            False, psk, prologue(message.initiator_id, message.dialled_id, message.key_id, self.version)
        )
        try:
            self._noise.read_message(message.noise)
        except NoiseError as exc:
            raise AuthError(f"the handshake does not open with the cluster secret it names ({exc})") from None

    def reply(self) -> bytes:
        """The HandshakeReply frame to send."""
        if self._noise is None:
            return wire.encode_frame(HandshakeReply(self.node_id, b""), self.version)
        noise2 = self._noise.write_message(self.node_id.encode())
        seal, open_ = self._noise.split()
        self._channel = Channel(seal, open_, self.version)
        return wire.encode_frame(HandshakeReply(self.node_id, noise2), self.version)

    @property
    def needs_confirm(self) -> bool:
        return self._noise is not None

    @property
    def channel(self) -> Channel:
        """The channel of a plain connection (after `reply`)."""
        assert self._channel is not None and self._noise is None
        return self._channel

    def confirm(self, frame: bytes) -> Channel:
        """Reads the initiator's Confirm frame: the channel, or AuthError (the initiator did not prove it holds
        the secret, or saw another transcript)."""
        assert self._noise is not None and self._channel is not None
        if len(frame) > wire.HANDSHAKE_FRAME_MAX:
            raise FrameError("too_large", f"a handshake frame of {len(frame)} bytes")
        message = self._channel.decode(frame, control=True)
        if not isinstance(message, Confirm):
            raise AuthError(f"expected Confirm first, got {type(message).__name__}")
        if message.handshake_hash != self._noise.handshake_hash:
            raise AuthError("the initiator's transcript differs from ours")
        return self._channel
