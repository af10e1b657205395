"""Messages larger than a chunk (`dsm.net.chunks`): splitting, reassembly and its checks, the node-wide
reassembly budget, and the transport carrying them between real sockets (plain and sealed), refusing a
corrupt or out-of-order sequence from a faulty peer and waiting for budget instead of growing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from dsm.core.messages import DataItem, Ping, Push
from dsm.net import chunks, wire
from dsm.net.chunks import Budget, ChunkError, Reassembly, split
from dsm.net.security import Keyring
from dsm.net.transport import Transport
from dsm.net.wire import ChunkFirst, ChunkNext, MessageType

PART = 1000
SECRET = "chunks-test-secret-000001"


def body_of(size: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"body-{seed}".encode()).digest(size)


def reassemble(parts: list[ChunkFirst | ChunkNext], assembly: Reassembly) -> tuple[int, bytearray] | None:
    done = None
    for chunk in parts:
        if isinstance(chunk, ChunkFirst):
            assembly.begin(chunk)
        done = assembly.add(chunk)
    return done


# ------------------------------------------------------------------ splitting and reassembly


def test_a_body_splits_into_parts_and_reassembles_intact() -> None:
    body = body_of(3 * PART + 1)
    parts = list(split(7, MessageType.PUSH, body, PART))
    assert [type(p) for p in parts] == [ChunkFirst, ChunkNext, ChunkNext, ChunkNext]
    first = parts[0]
    assert isinstance(first, ChunkFirst)
    assert (first.message_id, first.chunk_count, first.type_id, first.total) == (7, 4, MessageType.PUSH, len(body))
    assert first.sha256 == hashlib.sha256(body).digest()
    assert [len(p.part) for p in parts] == [PART, PART, PART, 1]
    assembly = Reassembly(10 * PART)
    assert reassemble(parts, assembly) == (MessageType.PUSH, bytearray(body))
    assert not assembly.active
    # The next message on the connection (a larger id) is accepted after it.
    assert reassemble(list(split(8, MessageType.PUSH, body, PART)), assembly) == (MessageType.PUSH, body)


def test_every_chunk_is_a_frame_well_under_the_limit() -> None:
    body = body_of(3 * chunks.PART_BYTES + 5)
    frames = [wire.encode_frame(c) for c in split(1, MessageType.PUSH, body)]
    assert len(frames) == 4
    assert max(len(f) for f in frames) < chunks.PART_BYTES + 200 < wire.MAX_FRAME
    decoded = [wire.decode_frame(f[wire.LENGTH.size :]) for f in frames]
    assert reassemble(decoded, Reassembly(chunks.MESSAGE_MAX_BYTES)) == (MessageType.PUSH, body)


def test_a_corrupt_chunk_fails_the_checksum() -> None:
    body = body_of(3 * PART)
    parts = list(split(1, MessageType.PUSH, body, PART))
    middle = parts[1]
    assert isinstance(middle, ChunkNext)
    flipped = bytes([middle.part[0] ^ 1]) + middle.part[1:]
    parts[1] = middle._replace(part=flipped)
    with pytest.raises(ChunkError) as caught:
        reassemble(parts, Reassembly(10 * PART))
    assert caught.value.reason == "chunk_checksum"


@pytest.mark.parametrize(
    "order",
    [
        pytest.param([0, 2, 3], id="missing"),
        pytest.param([0, 1, 1, 2, 3], id="repeated"),
        pytest.param([0, 2, 1, 3], id="reordered"),
        pytest.param([1, 2, 3], id="no-first"),
    ],
)
def test_a_missing_repeated_or_reordered_chunk_is_refused(order: list[int]) -> None:
    parts = list(split(1, MessageType.PUSH, body_of(4 * PART), PART))
    with pytest.raises(ChunkError) as caught:
        reassemble([parts[i] for i in order], Reassembly(10 * PART))
    assert caught.value.reason == "chunk_sequence"


def test_a_message_that_ends_early_is_never_delivered() -> None:
    parts = list(split(1, MessageType.PUSH, body_of(4 * PART), PART))
    assembly = Reassembly(10 * PART)
    assert reassemble(parts[:3], assembly) is None
    assert assembly.active  # the transport closes a connection that stops here (chunk_timeout, or its end)


def test_an_oversize_declared_length_is_refused_before_anything_is_reserved() -> None:
    parts = list(split(1, MessageType.PUSH, body_of(10 * PART + 1), PART))
    assembly = Reassembly(10 * PART)
    first = parts[0]
    assert isinstance(first, ChunkFirst)
    with pytest.raises(ChunkError) as caught:
        assembly.begin(first)
    assert caught.value.reason == "chunk_too_large" and assembly.total == 0
    # A first chunk that lies about its length (smaller than the parts) is caught at the overrun.
    small = first._replace(total=first.total - 1)
    with pytest.raises(ChunkError) as caught:
        reassemble([small, *parts[1:]], Reassembly(100 * PART))
    assert caught.value.reason == "chunk_sequence"


def test_interleaved_message_ids_are_refused() -> None:
    one = list(split(1, MessageType.PUSH, body_of(3 * PART, 1), PART))
    two = list(split(2, MessageType.PUSH, body_of(3 * PART, 2), PART))
    # A second message beginning inside the first.
    with pytest.raises(ChunkError) as caught:
        reassemble([one[0], one[1], two[0]], Reassembly(10 * PART))
    assert caught.value.reason == "chunk_sequence"
    # A chunk of another message inside the first.
    with pytest.raises(ChunkError) as caught:
        reassemble([one[0], two[1]], Reassembly(10 * PART))
    assert caught.value.reason == "chunk_sequence"
    # An id that does not increase (a replayed message on a plain connection).
    assembly = Reassembly(10 * PART)
    assert reassemble(two, assembly) is not None
    with pytest.raises(ChunkError) as caught:
        reassemble(one, assembly)
    assert caught.value.reason == "chunk_sequence"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"chunk_count": 0}, id="no-chunks"),
        pytest.param({"chunk_count": 5000}, id="more-chunks-than-bytes"),
        pytest.param({"sha256": b"short"}, id="bad-digest"),
        pytest.param({"type_id": MessageType.CHUNK_FIRST}, id="nested"),
        pytest.param({"type_id": 66}, id="handshake-inside"),
    ],
)
def test_a_malformed_first_chunk_is_refused(change: dict[str, Any]) -> None:
    first = next(split(1, MessageType.PUSH, body_of(3 * PART), PART))
    assert isinstance(first, ChunkFirst)
    with pytest.raises(ChunkError) as caught:
        Reassembly(10 * PART).begin(first._replace(**change))
    assert caught.value.reason == "chunk_sequence"


# ------------------------------------------------------------------ the budget


async def test_the_budget_serves_waiters_in_order_and_never_exceeds_its_limit() -> None:
    budget = Budget(10)
    await budget.acquire(6)
    order: list[str] = []

    async def take(name: str, size: int) -> None:
        await budget.acquire(size)
        order.append(name)
        assert budget.used <= budget.limit

    big = asyncio.create_task(take("big", 10))
    await asyncio.sleep(0)
    small = asyncio.create_task(take("small", 1))  # would fit now, but waits behind the first waiter
    await asyncio.sleep(0)
    assert order == [] and budget.waiting == 2
    budget.release(6)
    await big
    assert order == ["big"] and budget.used == 10
    budget.release(10)
    await small
    assert order == ["big", "small"] and budget.used == 1


async def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    budget = Budget(10)
    await budget.acquire(8)
    first = asyncio.create_task(budget.acquire(5))
    second = asyncio.create_task(budget.acquire(2))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)  # 8 + 2 fit once the first waiter is gone
    assert budget.used == 10 and budget.waiting == 0


# ------------------------------------------------------------------ over real sockets


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[str, Any]] = []

    def __call__(self, peer: str, message: Any) -> None:
        self.got.append((peer, message))

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        await until(lambda: len(self.got) >= count, timeout)


async def until(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def make(node_id: str, host: str, secret: str | None = None, **kw: Any) -> tuple[Transport, Inbox]:
    inbox = Inbox()
    t = Transport(node_id, f"{host}:0", inbox, Keyring(secret), **kw)
    await t.start()
    return t, inbox


def big_push(size: int, seed: int = 0) -> Push:
    return Push("a", 0, (DataItem(seed, f"k{seed}", body_of(size, seed)),))


@pytest.mark.usefixtures("loopback_hosts")
@pytest.mark.parametrize("secret", [None, SECRET], ids=["plain", "sealed"])
async def test_a_message_larger_than_a_frame_arrives_intact_between_other_messages(secret: str | None) -> None:
    a, _ = await make("a", "127.0.0.1", secret, write_buffer=1 << 16)
    b, ib = await make("b", "127.0.0.2", secret)
    try:
        huge = big_push(10 * 1024 * 1024 + 3)  # above the 8 MiB frame
        a.send("b", b.addr, Ping(1, "a", "b", ()))
        a.send("b", b.addr, huge)
        a.send("b", b.addr, Ping(2, "a", "b", ()))
        await ib.wait_for(3, timeout=30)
        assert [type(m).__name__ for _, m in ib.got] == ["Ping", "Push", "Ping"]
        assert ib.got[1][1] == huge
        assert a.stats.dropped == {} and b.stats.rejected == {}
        assert b.reassembly.used == 0  # given back once delivered
    finally:
        await a.close()
        await b.close()


@pytest.mark.usefixtures("loopback_hosts")
async def test_a_message_above_the_limit_is_not_sent() -> None:
    a, _ = await make("a", "127.0.0.1", max_message_bytes=2 * 1024 * 1024)
    b, ib = await make("b", "127.0.0.2")
    try:
        a.send("b", b.addr, big_push(3 * 1024 * 1024))
        a.send("b", b.addr, Ping(1, "a", "b", ()))
        await ib.wait_for(1)
        assert [type(m) for _, m in ib.got] == [Ping] and a.stats.dropped["too_large"] == 1
    finally:
        await a.close()
        await b.close()


@pytest.fixture
def faulty_split(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Makes every sender of this test a faulty peer: `faults` lists how its next chunked messages go wrong."""
    faults: list[str] = []
    honest = chunks.split

    def split_badly(message_id: int, type_id: int, body: bytes, part_bytes: int = chunks.PART_BYTES) -> Any:
        parts = list(honest(message_id, type_id, body, part_bytes))
        fault = faults.pop(0) if faults else ""
        if fault == "corrupt":
            last = parts[-1]
            parts[-1] = last._replace(part=b"\xff" + last.part[1:])
        elif fault == "missing":
            del parts[1]
        elif fault == "oversize":
            first = parts[0]
            assert isinstance(first, ChunkFirst)
            parts[0] = first._replace(total=64 << 20)
        elif fault == "stall":
            parts = parts[:2]
        return iter(parts)

    monkeypatch.setattr(chunks, "split", split_badly)
    yield faults


@pytest.mark.usefixtures("loopback_hosts")
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("corrupt", "chunk_checksum"),
        ("missing", "chunk_sequence"),
        ("oversize", "chunk_too_large"),
        ("stall", "chunk_timeout"),
    ],
)
async def test_a_bad_chunk_sequence_closes_that_connection_only(
    faulty_split: list[str], fault: str, reason: str
) -> None:
    b, ib = await make("b", "127.0.0.2", max_message_bytes=32 << 20, chunk_timeout=0.5)
    a, _ = await make("a", "127.0.0.1")
    c, _ = await make("c", "127.0.0.3")
    try:
        faulty_split.append(fault)
        a.send("b", b.addr, big_push(3 * chunks.PART_BYTES, 1))
        await until(lambda: bool(b.stats.rejected))
        assert b.stats.rejected == {reason: 1}
        await until(lambda: b.reassembly.used == 0)  # the closed connection's reservation was given back
        # Nothing of the bad message was delivered; another member, and the faulty one once it reconnects,
        # are served as before (a message it wrote on the closed connection is lost, as on any reset).
        good = big_push(3 * chunks.PART_BYTES, 2)
        c.send("b", b.addr, good)
        await ib.wait_for(1, timeout=10)
        assert [m for _, m in ib.got] == [good]

        async def reached() -> None:
            while not any(isinstance(m, Ping) for _, m in ib.got):
                a.send("b", b.addr, Ping(5, "a", "b", ()))
                await asyncio.sleep(0.1)

        await asyncio.wait_for(reached(), 10)
        assert b.stats.rejected == {reason: 1}
    finally:
        for t in (a, b, c):
            await t.close()


@pytest.mark.usefixtures("loopback_hosts")
async def test_connections_wait_for_reassembly_budget_instead_of_growing() -> None:
    part = chunks.PART_BYTES
    b, ib = await make("b", "127.0.0.2", max_message_bytes=4 * part, reassembly_max_bytes=4 * part)
    peak = 0
    acquire = b.reassembly.acquire

    async def watched(size: int) -> None:
        nonlocal peak
        await acquire(size)
        peak = max(peak, b.reassembly.used)

    b.reassembly.acquire = watched  # type: ignore[method-assign]
    senders = [(await make(name, f"127.0.0.{3 + i}"))[0] for i, name in enumerate("cdef")]
    try:
        for i, sender in enumerate(senders):  # four messages of 3 parts each: one fits the budget at a time
            for j in range(2):
                sender.send("b", b.addr, big_push(3 * part - 100, 10 * i + j))
        await ib.wait_for(8, timeout=60)
        assert peak <= 4 * part and b.reassembly.used == 0
        assert sorted(m.items[0].id for _, m in ib.got) == sorted(10 * i + j for i in range(4) for j in range(2))
        assert all(m.items[0].versions == body_of(3 * part - 100, m.items[0].id) for _, m in ib.got)
    finally:
        for t in (b, *senders):
            await t.close()
