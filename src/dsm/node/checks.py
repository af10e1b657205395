"""Validation of what callers pass a node: keys, values, contexts, time-to-live, levels, metadata. A caller's
mistake is raised at once, with a typed error that says what is allowed (`InvalidKeyError`, `InvalidValueError`,
`InvalidContextError`, `InvalidInputError`); nothing is written."""

from __future__ import annotations

import json
from collections.abc import Mapping

from dsm.config import StorageConfig
from dsm.core.consistency import Level, parse_level
from dsm.core.encoding import DecodeError, decode_context
from dsm.core.replica import Replica
from dsm.core.vclock import VersionVector
from dsm.errors import (
    ClockSkewError,
    InvalidContextError,
    InvalidInputError,
    InvalidKeyError,
    InvalidValueError,
)

#: Bounds of a node's metadata: pairs, and bytes of its JSON.
METADATA_MAX_PAIRS = 64
METADATA_MAX_BYTES = 4096
NO_CONTEXT = VersionVector()


def check_key(key: object, config: StorageConfig) -> str:
    """A client key: a non-empty str of valid Unicode without NUL, at most `max_key_bytes` in UTF-8."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"a key must be str, not {type(key).__name__}")
    if not key:
        raise InvalidKeyError("a key must not be empty")
    if "\x00" in key:
        raise InvalidKeyError("a key must not contain NUL characters")
    if key.isascii():
        size = len(key)
    else:
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidKeyError("a key must be valid Unicode (no lone surrogates)") from None
    if size > config.max_key_bytes:
        raise InvalidKeyError(f"key is {size} bytes in UTF-8; at most {config.max_key_bytes} (max_key_bytes)")
    return key


def check_value(value: object, config: StorageConfig) -> bytes:
    """A value: bytes-like, at most `max_value_bytes`."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidValueError(f"a value must be bytes, bytearray or memoryview, not {type(value).__name__}")
    try:
        data = bytes(value)
    except (ValueError, TypeError) as exc:  # a released memoryview, for one
        raise InvalidValueError(f"the value cannot be read as bytes: {exc}") from None
    if len(data) > config.max_value_bytes:
        raise InvalidValueError(f"value is {len(data)} bytes; at most {config.max_value_bytes} (max_value_bytes)")
    return data


def check_context(context: object, key: str, config: StorageConfig, replica: Replica, wall_ms: int) -> VersionVector:
    """A context token a read of `key` returned (None: a blind write), not from the future."""
    if context is None:
        return NO_CONTEXT
    if not isinstance(context, str):
        raise InvalidContextError(f"a context must be the str token a read returned, not {type(context).__name__}")
    try:
        vector = decode_context(context, config.max_context_bytes, key)
        replica.check_context(vector, wall_ms)
    except DecodeError as exc:
        raise InvalidContextError(str(exc)) from None
    except ClockSkewError as exc:
        raise InvalidContextError(f"context names a timestamp from the future: {exc}") from None
    return vector


def check_ttl(ttl_ms: object, config: StorageConfig) -> int:
    """A time-to-live: None (0: the value never expires) or an int from 1 to `max_ttl_ms`."""
    if ttl_ms is None:
        return 0
    if not isinstance(ttl_ms, int) or isinstance(ttl_ms, bool):
        raise InvalidInputError(f"ttl_ms must be an int, not {type(ttl_ms).__name__}")
    if not 1 <= ttl_ms <= config.max_ttl_ms:
        raise InvalidInputError(f"ttl_ms is {ttl_ms}; it must be from 1 to {config.max_ttl_ms} (max_ttl_ms)")
    return ttl_ms


def check_level(consistency: str | Level) -> Level:
    """A consistency level, by name or as a `Level`."""
    try:
        return parse_level(consistency)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None


def check_listing(prefix: object, after: object, limit: object) -> None:
    """The arguments of a key listing."""
    if not isinstance(prefix, str) or not isinstance(after, str) or "\x00" in prefix + after:
        raise InvalidKeyError("prefix and after must be strings without NUL characters")
    if not isinstance(limit, int) or limit < 1:
        raise InvalidInputError("limit must be an integer of at least 1")


def check_watch(prefix: object, limit: object) -> None:
    """The arguments of a watch."""
    if not isinstance(prefix, str):
        raise InvalidInputError(f"prefix must be a str, not {type(prefix).__name__}")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise InvalidInputError(f"limit must be a positive int, not {limit!r}")


def metadata_bytes(metadata: object) -> bytes:
    """The canonical JSON of a node's metadata, checked: a mapping of str to str, at most
    METADATA_MAX_PAIRS pairs and METADATA_MAX_BYTES bytes (InvalidInputError otherwise)."""
    if not isinstance(metadata, Mapping):
        raise InvalidInputError(f"metadata must be a mapping of str to str, not {type(metadata).__name__}")
    if len(metadata) > METADATA_MAX_PAIRS:
        raise InvalidInputError(f"metadata holds {len(metadata)} pairs; at most {METADATA_MAX_PAIRS}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise InvalidInputError("metadata keys and values must be str")
    encoded = json.dumps(dict(sorted(metadata.items())), separators=(",", ":")).encode()
    if len(encoded) > METADATA_MAX_BYTES:
        raise InvalidInputError(f"metadata is {len(encoded)} bytes as JSON; at most {METADATA_MAX_BYTES}")
    return encoded


def prefix_end(prefix: str) -> str | None:
    """The smallest key above every key starting with `prefix` (None: no bound)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1 if last + 1 != 0xD800 else 0xE000)
        prefix = prefix[:-1]
    return None
