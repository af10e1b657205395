"""Messages larger than a chunk: split into a sequence of frames by the sender, reassembled by the receiver.

A key's whole version set travels in one message, and a value may be larger than a frame (`max_value_bytes`
allows 64 MiB, a frame holds 8 MiB), so the transport carries any message whose packed body exceeds
`PART_BYTES` as chunks (`dsm.net.wire.ChunkFirst`, then `ChunkNext`):

- The first chunk names the message (an id, increasing on a connection), the number of chunks, the inner
  message type, the body's total length and its SHA-256; every chunk carries the next part of the body.
  Each chunk is an ordinary frame, sealed by the connection's channel like any other (with a secret the
  AEAD and its counter already refuse an altered, dropped, replayed or reordered frame); the SHA-256 checks
  the reassembled body end to end, also on a plain connection.
- A connection writes frames from one queue, one message at a time, so a message's chunks follow each other
  with nothing in between. The receiver holds at most one message in reassembly per connection and accepts
  exactly that order: first chunk, then indexes 1 .. count - 1 of the same id, then any frame. Anything else
  (a chunk of another id, a missing or repeated index, a plain frame inside a chunked message, a part that
  overruns the declared length, a wrong checksum) closes the connection with a counted reason
  (`ChunkError.reason`: chunk_sequence, chunk_too_large, chunk_checksum).
- Memory is bounded twice. A message declaring more than `max_message_bytes` is refused at its first chunk,
  before anything is reserved for it. And the bytes of all messages being reassembled on a node share one
  `Budget`: a connection whose first chunk does not fit waits for room without reading further (its sender's
  socket fills and its writes wait: backpressure), instead of the node growing without bound.

`split` and `Reassembly` are pure (bytes in, chunks or a body out); `Budget` is the one awaitable part.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Iterator

from dsm.config import KIB, MIB, message_max_bytes
from dsm.net.wire import ChunkFirst, ChunkNext, FrameError, MessageType

#: A packed message body larger than this travels in chunks of this size (bytes). Well under a frame, so a
#: chunk frame is never refused for its size, and small enough that a connection waiting for reassembly
#: room holds little.
PART_BYTES = 1 << 20
DIGEST_BYTES = 32
#: The transport's defaults, for a node whose settings are not passed: the largest message any configuration
#: derives (`max_value_bytes` 64 MiB, `max_key_bytes` 64 KiB), and config's reassembly_max_bytes default.
MESSAGE_MAX_BYTES = message_max_bytes(64 * MIB, 64 * KIB)
REASSEMBLY_MAX_BYTES = 128 * MIB
#: Inner types a chunked message may not have: connection control (64-71), and chunks themselves.
_NOT_INNER = frozenset((*range(64, 72), MessageType.CHUNK_FIRST, MessageType.CHUNK_NEXT))


class ChunkError(FrameError):
    """A chunked message that cannot be accepted; the connection that sent it is closed. `reason`:
    chunk_sequence (malformed or out of order), chunk_too_large (declares more than the limit),
    chunk_checksum (the reassembled body does not match its SHA-256), chunk_timeout (stalled midway)."""


def split(message_id: int, type_id: int, body: bytes, part_bytes: int = PART_BYTES) -> Iterator[ChunkFirst | ChunkNext]:
    """The chunks carrying `body` (a message of type `type_id`), first to last.

    Args:
        message_id: this message's id on its connection (larger than any sent before on it).
        type_id: the inner message's wire type.
        body: its packed body (more than `part_bytes`; a smaller one goes as one frame).
        part_bytes: the most body bytes one chunk carries.
    """
    assert part_bytes > 0 and body
    count = -(-len(body) // part_bytes)
    digest = hashlib.sha256(body).digest()
    yield ChunkFirst(message_id, count, type_id, len(body), digest, body[:part_bytes])
    for index in range(1, count):
        yield ChunkNext(message_id, index, body[index * part_bytes : (index + 1) * part_bytes])


class Reassembly:
    """The chunked message being received on one connection (at most one at a time).

    Feed it every chunk frame in arrival order: `begin` with a `ChunkFirst` (it says how many bytes to
    reserve), then `add` with that same chunk and each `ChunkNext`; the last `add` returns the inner type
    and the whole body, checked. Any error leaves the connection to be closed (the object is not reused).
    """

    __slots__ = (
        "_body",
        "_count",
        "_digest",
        "_hash",
        "_id",
        "_index",
        "_last_id",
        "_size",
        "_total",
        "_type",
        "max_bytes",
    )

    def __init__(self, max_message_bytes: int) -> None:
        self.max_bytes = max_message_bytes
        self._last_id = 0
        self._id = 0  # the message in reassembly (0: none)
        self._count = self._index = self._size = self._total = self._type = 0
        self._digest = b""
        self._hash = hashlib.sha256()
        self._body = bytearray()

    @property
    def active(self) -> bool:
        """A message has begun and not ended: the next frame must be its next chunk."""
        return self._id != 0

    @property
    def total(self) -> int:
        """Bytes of the message in reassembly (0 when none)."""
        return self._total if self._id else 0

    def begin(self, first: ChunkFirst) -> int:
        """Checks the first chunk of a message and returns the bytes to reserve for it (its total length).

        Raises:
            ChunkError: another message is in reassembly, the id does not increase, the declared length is
                above the limit, or the header is malformed.
        """
        if self._id:
            raise ChunkError("chunk_sequence", f"message {first.message_id} began inside message {self._id}")
        if first.message_id <= self._last_id:
            raise ChunkError("chunk_sequence", f"message id {first.message_id} after {self._last_id}")
        if first.total > self.max_bytes:
            raise ChunkError("chunk_too_large", f"a message of {first.total} bytes declared (limit {self.max_bytes})")
        if not 1 <= first.chunk_count <= first.total or len(first.sha256) != DIGEST_BYTES:
            raise ChunkError(
                "chunk_sequence", f"a malformed first chunk ({first.chunk_count} chunks, {first.total} bytes)"
            )
        if first.type_id in _NOT_INNER:
            raise ChunkError("chunk_sequence", f"a chunked message of type {first.type_id}")
        self._last_id = self._id = first.message_id
        self._count, self._index, self._size, self._type = first.chunk_count, 0, 0, first.type_id
        self._total = first.total
        self._digest = first.sha256
        self._hash = hashlib.sha256()
        return first.total

    def add(self, chunk: ChunkFirst | ChunkNext) -> tuple[int, bytearray] | None:
        """Takes the next chunk (the first one again after `begin`). Returns (inner type, body) once the last
        chunk is in and the body matches its length and SHA-256, else None.

        Raises:
            ChunkError: the chunk is not the one expected, overruns the declared length, or the body does not
                match its checksum.
        """
        if not self._id or chunk.message_id != self._id:
            raise ChunkError("chunk_sequence", f"a chunk of message {chunk.message_id} (expected {self._id or 'none'})")
        index = chunk.chunk_index if isinstance(chunk, ChunkNext) else 0
        if index != self._index:
            raise ChunkError("chunk_sequence", f"chunk {index} of message {self._id} (expected {self._index})")
        if index == 0:
            # Allocated once the caller reserved it (`begin`, then the budget): filled in place, never copied.
            self._body = bytearray(self._total)
        part = chunk.part
        end = self._size + len(part)
        last = index == self._count - 1
        if not part or end > self._total or (last and end != self._total):
            raise ChunkError(
                "chunk_sequence",
                f"chunk {index} of message {self._id}: {len(part)} bytes at {self._size} of {self._total}",
            )
        self._body[self._size : end] = part
        self._hash.update(part)
        self._size = end
        self._index += 1
        if not last:
            return None
        if self._hash.digest() != self._digest:
            raise ChunkError("chunk_checksum", f"message {self._id} of {end} bytes does not match its SHA-256")
        body, self._body = self._body, bytearray()
        self._id = 0
        return self._type, body


class Budget:
    """Bytes of chunked messages in reassembly on this node, at most `limit`.

    `acquire` waits, first come first served, until the bytes fit; `release` gives them back. A caller never
    holds more than one reservation at a time (a connection reassembles one message at a time), and no
    reservation is larger than the limit, so every waiter is eventually served.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        """Connections waiting for room now."""
        return len(self._waiters)

    async def acquire(self, size: int) -> None:
        """Reserves `size` bytes (at most the limit), waiting for them if needed."""
        assert 0 < size <= self.limit
        if not self._waiters and self.used + size <= self.limit:
            self.used += size
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, future)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(size)  # granted just as the wait was cancelled: give it back
            else:
                self._waiters.remove(entry)
                self._wake()  # a smaller waiter behind this one may fit now
            raise

    def release(self, size: int) -> None:
        """Gives back a reservation of `size` bytes."""
        self.used -= size
        assert self.used >= 0
        self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self.used + waiters[0][0] <= self.limit:
            size, future = waiters.popleft()
            self.used += size
            future.set_result(None)
