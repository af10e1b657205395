"""Locks with fencing tokens, and fenced writes, built on conditional writes and expiry (docs/consistency.md,
"Locks"). Client side only: `Lock` over the blocking `dsm.client.Client`, `AsyncLock` over `AsyncClient`.

The recipe:
- **acquire**: `put("lock/<name>", holder, if_absent=True, ttl_ms=ttl)`. It succeeds only while no other
  holder's value is live (an expired one counts as absent). The **fencing token** is the acquiring write's
  timestamp: a later successful acquire is linearized after this one and its write is made on a state that
  holds this write or a successor of it, whose timestamps the new one exceeds (the proposer's clock is
  advanced past the state first), so tokens only grow, per lock.
- **renew**: `put(key, holder, if_match=<the context of the last write>, ttl_ms=ttl)`; a false condition
  means the lock was lost (it expired and was taken, or released): `LockLostError`. The token stays the
  acquire's.
- **release**: `delete(key, if_match=<the context of the last write>)`.

A holder can be paused (GC, SIGSTOP, a VM migration) past its TTL and go on believing it holds the lock; no
lease avoids that (Kleppmann, "How to do distributed locking", 2016). What makes the scheme safe is the
resource checking the token: `fenced_put(key, value, token)` stores `(token, value)` under `key` with a
conditional write that is refused when the key holds a larger token (`FencedError`), so a paused holder's
late write cannot overwrite what a later holder wrote. `fenced_get` reads it back.

One limit: the order of tokens rests on the key's previous versions. If the lock key stays deleted (or
expired) longer than `tombstone_grace_ms` and is purged, the next token is ordered only by the clocks (the
node's clock floor and wall clocks that did not go back by more than that); see docs/consistency.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import time
from dataclasses import dataclass

from dsm.client import AsyncClient, Client, ConditionFailedError
from dsm.errors import DSMError

__all__ = ["AsyncLock", "FencedError", "Lock", "LockLostError", "LockTimeoutError", "fenced_get", "fenced_put"]

#: Where locks live.
LOCK_PREFIX = "lock/"
#: A fenced value: an 8-byte big-endian token, then the value's bytes.
_TOKEN = struct.Struct(">Q")
#: First and longest wait between two attempts to acquire a held lock (s; doubling).
RETRY_MIN_S = 0.02
RETRY_MAX_S = 0.5


class LockLostError(DSMError):
    """The lock is no longer held: it expired and another holder took it, or it was released."""


class LockTimeoutError(DSMError):
    """The lock stayed held by another until the acquire's deadline."""


class FencedError(DSMError):
    """A fenced write was refused: the resource already holds a write with a larger token (a later holder's).

    Attributes:
        token: the refused write's token; current: the token the resource holds.
    """

    def __init__(self, key: str, token: int, current: int) -> None:
        self.token, self.current = token, current
        super().__init__(f"fenced write to {key!r} refused: token {token} is older than the stored {current}")


@dataclass
class _Held:
    token: int
    context: str


class _LockState:
    """What `Lock` and `AsyncLock` share: the key, the hold, and every decision but the I/O."""

    def __init__(self, name: str, holder: str, ttl_ms: int) -> None:
        self.key, self.holder, self.ttl_ms = LOCK_PREFIX + name, holder, ttl_ms
        self.value = holder.encode()
        self._held: _Held | None = None

    @property
    def token(self) -> int:
        """The fencing token of the current hold (`LockLostError` if none)."""
        return self._must_hold().token

    def _must_hold(self) -> _Held:
        if self._held is None:
            raise LockLostError(f"{self.key} is not held")
        return self._held

    def _taken(self, timestamp: int, context: str) -> int:
        self._held = _Held(timestamp, context)
        return timestamp

    def _wait(self, wait: float, deadline: float, timeout_s: float) -> float:
        """How long to wait before the next attempt to acquire (`LockTimeoutError` past the deadline)."""
        if time.monotonic() + wait > deadline:
            raise LockTimeoutError(f"{self.key} stayed held for {timeout_s:g} s") from None
        return wait

    def _lost(self) -> LockLostError:
        self._held = None
        return LockLostError(f"{self.key} was lost (expired and taken, or released)")


class Lock(_LockState):
    """A lock over a blocking client (see the module docstring).

        with Lock(client, "jobs", holder="worker-1", ttl_ms=10_000) as lock:
            fenced_put(client, "jobs/state", b"...", lock.token)

    Args:
        client: the client.
        name: the lock's name (its key is `lock/<name>`).
        holder: who holds it (stored as the lock's value, shown to others).
        ttl_ms: how long the lock holds without a renewal.
    """

    def __init__(self, client: Client, name: str, holder: str, ttl_ms: int) -> None:
        super().__init__(name, holder, ttl_ms)
        self.client = client
        # Renewals and the release go one at a time: each writes with the context the one before left (a
        # renewal thread and a release would otherwise send the same stale context, and one of them fail).
        self._io = threading.Lock()

    def acquire(self, timeout_s: float = 10.0) -> int:
        """Takes the lock, waiting up to `timeout_s` while another holds it; returns the fencing token."""
        deadline, wait = time.monotonic() + timeout_s, RETRY_MIN_S
        while True:
            try:
                ack = self.client.put(self.key, self.value, if_absent=True, ttl_ms=self.ttl_ms)
                return self._taken(ack.timestamp, ack.context)
            except ConditionFailedError:
                time.sleep(self._wait(wait, deadline, timeout_s))
                wait = min(RETRY_MAX_S, wait * 2)

    def renew(self) -> None:
        """Extends the hold by `ttl_ms` from now (`LockLostError` if it was lost or released)."""
        with self._io:
            held = self._must_hold()
            try:
                context = self.client.put(self.key, self.value, if_match=held.context, ttl_ms=self.ttl_ms).context
            except ConditionFailedError:
                raise self._lost() from None
            held.context = context

    def release(self) -> None:
        """Gives the lock up (nothing happens if it was already lost)."""
        with self._io:
            held, self._held = self._held, None
            if held is not None:
                with contextlib.suppress(ConditionFailedError):  # expired and taken meanwhile: nothing of ours
                    self.client.delete(self.key, if_match=held.context)

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class AsyncLock(_LockState):
    """A lock over an `AsyncClient`: as `Lock`, with coroutines (`async with AsyncLock(...) as lock`)."""

    def __init__(self, client: AsyncClient, name: str, holder: str, ttl_ms: int) -> None:
        super().__init__(name, holder, ttl_ms)
        self.client = client
        self._io = asyncio.Lock()  # as `Lock`: renewals and the release one at a time

    async def acquire(self, timeout_s: float = 10.0) -> int:
        deadline, wait = time.monotonic() + timeout_s, RETRY_MIN_S
        while True:
            try:
                ack = await self.client.put(self.key, self.value, if_absent=True, ttl_ms=self.ttl_ms)
                return self._taken(ack.timestamp, ack.context)
            except ConditionFailedError:
                await asyncio.sleep(self._wait(wait, deadline, timeout_s))
                wait = min(RETRY_MAX_S, wait * 2)

    async def renew(self) -> None:
        async with self._io:
            held = self._must_hold()
            try:
                ack = await self.client.put(self.key, self.value, if_match=held.context, ttl_ms=self.ttl_ms)
            except ConditionFailedError:
                raise self._lost() from None
            held.context = ack.context

    async def release(self) -> None:
        async with self._io:
            held, self._held = self._held, None
            if held is not None:
                with contextlib.suppress(ConditionFailedError):  # expired and taken meanwhile: nothing of ours
                    await self.client.delete(self.key, if_match=held.context)

    async def __aenter__(self) -> AsyncLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


def encode_fenced(token: int, value: bytes) -> bytes:
    """A fenced value as stored: the token, then the value."""
    return _TOKEN.pack(token) + value


def decode_fenced(raw: bytes) -> tuple[int, bytes]:
    """(token, value) of a stored fenced value (ValueError if it is not one)."""
    if len(raw) < _TOKEN.size:
        raise ValueError("not a fenced value")
    return _TOKEN.unpack_from(raw)[0], raw[_TOKEN.size :]


def fenced_put(client: Client, key: str, value: bytes, token: int) -> None:
    """Writes `value` to `key` unless the key holds a write with a larger token (`FencedError`); equal
    tokens (the same hold) overwrite. Linearizable: a compare-and-set loop on the key."""
    while True:
        current = client.get(key, consistency="linearizable")
        if current is None:
            try:
                client.put(key, encode_fenced(token, value), if_absent=True)
                return
            except ConditionFailedError:
                continue  # someone wrote first: compare with it
        stored, _ = decode_fenced(current.value)
        if stored > token:
            raise FencedError(key, token, stored)
        try:
            client.put(key, encode_fenced(token, value), if_match=current.context)
            return
        except ConditionFailedError:
            continue


def fenced_get(client: Client, key: str) -> tuple[int, bytes] | None:
    """(token, value) of a fenced key, read linearizably; None if absent."""
    current = client.get(key, consistency="linearizable")
    return None if current is None else decode_fenced(current.value)
