"""Canonical byte encodings of versions, version sets and client contexts, and their digests.

Replicas compare digests of what they store to find differences (anti-entropy), so two replicas holding
the same version set must produce the same bytes: versions are encoded newest dot first, vector entries
sorted by node id, with msgpack's shortest integer forms. Decoding validates shape and types and raises
`DecodeError` (a `ValueError`) for anything else; callers turn it into the error that blames the right side
(a corrupt store, a bad client token, a bad peer frame).

Layout (msgpack): a version set is `[FORMAT, [version, ...]]`; a version is
`[timestamp, node, [node, counter, node, counter, ...], value-or-nil]`, with a 5th field `expires_ms` (Unix ms,
positive) only for a value that expires: versions without an expiry encode (and digest) exactly as before
expiries existed, and a 5th field of 0, or one on a tombstone, is not canonical. A client context token is the
URL-safe base64 (no padding) of `[FORMAT, key tag, [node, counter, ...]]`, where the key tag is an 8-byte
hash of the key it was read from: a vector's entries count a coordinator's writes across all keys, so a
context applied to another key would supersede versions its reader never saw; the tag makes that an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

import msgpack

from dsm.core.hlc import MAX_TIMESTAMP, physical_ms
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Version, VersionSet

FORMAT = 1
#: The latest expiry a version may carry (Unix ms): the clock's range.
MAX_EXPIRES_MS = physical_ms(MAX_TIMESTAMP)


class DecodeError(ValueError):
    """Bytes that are not a valid DSM encoding."""


def _flat(vector: VersionVector) -> list[Any]:
    out: list[Any] = []
    for node, counter in vector.entries:
        out.append(node)
        out.append(counter)
    return out


_EMPTY_VECTOR = VersionVector()


def _vector(flat: Any) -> VersionVector:
    if not isinstance(flat, list) or len(flat) % 2:
        raise DecodeError("a version vector must be a flat list of node, counter pairs")
    if not flat:
        return _EMPTY_VECTOR
    pairs = []
    previous = ""
    for i in range(0, len(flat), 2):
        node, counter = flat[i], flat[i + 1]
        if not isinstance(node, str) or not node or type(counter) is not int or not 0 < counter <= MAX_TIMESTAMP:
            raise DecodeError(f"bad version vector entry {node!r}: {counter!r}")
        if node <= previous:
            raise DecodeError("version vector entries must be sorted by node id, each node once")
        previous = node
        pairs.append((node, counter))
    return VersionVector(tuple(pairs))


def encode_versions(versions: VersionSet) -> bytes:
    """The canonical bytes of a version set."""
    body = [
        [v.dot.timestamp, v.dot.node, _flat(v.context), v.value, v.expires_ms]
        if v.expires_ms
        else [v.dot.timestamp, v.dot.node, _flat(v.context), v.value]
        for v in versions.versions
    ]
    return msgpack.packb([FORMAT, body], use_bin_type=True)  # type: ignore[no-any-return]


def decode_versions(data: bytes) -> VersionSet:
    """Parses `encode_versions` output, accepting only canonical encodings.

    Canonical: the format tag is the integer 1; versions are in strictly descending dot order (so no dot
    appears twice); no version is dominated by another of the set; contexts are lists of entries sorted by
    node id; timestamps fit the clock's range. Anything else is not what a DSM node writes, and accepting it
    would let two replicas with the same versions hold different bytes (and digests).

    Raises:
        DecodeError: the bytes are not a canonical version set.
    """
    try:
        doc = msgpack.unpackb(data)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise DecodeError(f"not a msgpack version set: {exc}") from exc
    if not isinstance(doc, list) or len(doc) != 2 or type(doc[0]) is not int or doc[0] != FORMAT:
        raise DecodeError("not a version set of a known format")
    if not isinstance(doc[1], list):
        raise DecodeError("a version set's versions must be a list")
    versions: list[Version] = []
    previous: Dot | None = None
    for item in doc[1]:
        if not isinstance(item, list) or not 4 <= len(item) <= 5:
            raise DecodeError("a version must have 4 or 5 fields")
        if len(item) == 4:
            timestamp, node, context, value = item
            expires_ms = 0
        else:
            timestamp, node, context, value, expires_ms = item
            if type(expires_ms) is not int or not 0 < expires_ms <= MAX_EXPIRES_MS:
                raise DecodeError(f"bad version expiry {expires_ms!r}")
            if value is None:
                raise DecodeError("a tombstone cannot expire")
        if type(timestamp) is not int or not 0 < timestamp <= MAX_TIMESTAMP or not isinstance(node, str) or not node:
            raise DecodeError(f"bad version dot {timestamp!r}, {node!r}")
        if value is not None and not isinstance(value, bytes):
            raise DecodeError("a version value must be bytes or nil")
        dot = Dot(timestamp, node)
        if previous is not None and not dot < previous:
            raise DecodeError("versions must be in strictly descending dot order")
        previous = dot
        vector = _vector(context)
        if vector.entries and vector.covers(timestamp, node):
            raise DecodeError("a version's context covers its own dot")
        versions.append(Version(dot, vector, value, expires_ms))
    if len(versions) > 1:
        for v in versions:
            if any(v.dominated_by(w) for w in versions if w is not v):
                raise DecodeError("a version set holds a version that another of its versions supersedes")
    return VersionSet(tuple(versions))


def digest(key: str, encoded_versions: bytes) -> int:
    """A signed 64-bit digest of one stored key and its encoded version set (for anti-entropy). The NUL between
    them is unambiguous for the keys a store holds: client keys have no NUL (`dsm.node.checks.check_key`), the
    node's own records one, first; a key with a NUL inside could share a digest with another entry."""
    h = hashlib.blake2b(key.encode(), digest_size=8, person=b"dsm-key")
    h.update(b"\x00")
    h.update(encoded_versions)
    return int.from_bytes(h.digest(), "big", signed=True)


def _key_tag(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8, person=b"dsm-ctx").digest()


def encode_context(vector: VersionVector, key: str) -> str:
    """The opaque token a client gets from a read of `key` and may pass back to a write of `key`."""
    packed = msgpack.packb([FORMAT, _key_tag(key), _flat(vector)], use_bin_type=True)
    return base64.urlsafe_b64encode(packed).rstrip(b"=").decode("ascii")


def decode_context(token: str, max_bytes: int, key: str) -> VersionVector:
    """Parses a context token for a write of `key`.

    Args:
        token: what `encode_context` produced.
        max_bytes: the largest token accepted, checked before decoding.
        key: the key being written; the token must have been read from it.

    Raises:
        DecodeError: the token is oversized, malformed, or was read from another key.
    """
    if len(token) > max_bytes:
        raise DecodeError(f"context token is {len(token)} bytes; at most {max_bytes} are accepted")
    if not token.isascii():
        raise DecodeError("context token must be ASCII (URL-safe base64)")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = msgpack.unpackb(raw)
    except (ValueError, binascii.Error, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise DecodeError(f"context token is not valid: {exc}") from exc
    if not isinstance(doc, list) or len(doc) != 3 or type(doc[0]) is not int or doc[0] != FORMAT:
        raise DecodeError("context token is not of a known format")
    if doc[1] != _key_tag(key):
        raise DecodeError(f"context token was read from another key, not {key[:100]!r}")
    return _vector(doc[2])
