"""`dsm.lock.AsyncLock` over `AsyncClient` against three networked library nodes, each serving its HTTP API on
loopback (real TCP between the nodes and from the clients; SQLite stores): acquire, renew, release and
`async with`; holders contending for one lock through different nodes (one holds at a time, tokens grow); a
holder that stops renewing loses the lock to another when its TTL passes and learns it on renewal; an acquire
that times out; fenced writes with an AsyncLock's token (dsm.lock has only the blocking `fenced_put` /
`fenced_get`, run here in a thread with a blocking `Client`).

No assertion is on elapsed time: a short TTL is used only where the lock must expire (a waiting acquire
takes it then), and holds that must not expire during a test have a TTL far longer than the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from dsm.api.http import create_app
from dsm.client import AsyncClient, Client
from dsm.errors import FeatureUnavailableError
from dsm.lock import AsyncLock, FencedError, LockLostError, LockTimeoutError, fenced_get, fenced_put
from support import eventually, runtime_of
from test_conditional_cluster import start_cluster

pytestmark = pytest.mark.usefixtures("loopback_hosts")

#: A hold that must expire during the test (a waiting acquire then takes the lock).
SHORT_TTL_MS = 500
#: A hold that must not expire during the test: only a release frees it.
LONG_TTL_MS = 60_000
#: An acquire that is expected to succeed waits up to this long (far beyond SHORT_TTL_MS).
PATIENT_S = 20.0


@pytest.fixture
async def urls(tmp_path: Path) -> AsyncIterator[list[str]]:
    """The HTTP URLs of a three-node cluster (all alive, TTL writes allowed on every node)."""
    nodes = await start_cluster(tmp_path, 3)
    servers: list[TestServer] = []
    try:

        async def ttl_gate_open() -> bool:  # every member's feature record has reached every node
            for node in nodes:
                try:
                    await node.features.require("ttl")
                except FeatureUnavailableError:
                    return False
            return True

        await eventually(ttl_gate_open)
        for node in nodes:
            server = TestServer(create_app(node, runtime_of(node)), host="127.0.0.1")
            await server.start_server()
            servers.append(server)
        yield [str(server.make_url("")).rstrip("/") for server in servers]
    finally:
        for server in servers:
            await server.close()
        for node in nodes:
            await node.close()


@pytest.fixture
async def clients(urls: list[str]) -> AsyncIterator[list[AsyncClient]]:
    """One AsyncClient per node of `urls`."""
    made = [AsyncClient(url) for url in urls]
    try:
        yield made
    finally:
        for client in made:
            await client.close()


async def _holder_of(client: AsyncClient, name: str) -> tuple[bytes, int] | None:
    """(holder, timestamp of the stored write) of `lock/<name>`, read linearizably; None if free."""
    got = await client.get("lock/" + name, consistency="linearizable")
    if got is None:
        return None
    assert len(got.siblings) == 1
    return got.value, got.siblings[0].timestamp


async def test_acquire_renew_release_and_async_with(clients: list[AsyncClient]) -> None:
    lock = AsyncLock(clients[0], "jobs", holder="w1", ttl_ms=LONG_TTL_MS)
    with pytest.raises(LockLostError):
        _ = lock.token  # not held yet
    token = await lock.acquire(timeout_s=5)
    assert lock.token == token
    assert await _holder_of(clients[1], "jobs") == (b"w1", token)  # the token is the acquiring write's timestamp
    other = AsyncLock(clients[2], "jobs", holder="w2", ttl_ms=LONG_TTL_MS)
    with pytest.raises(LockTimeoutError):
        await other.acquire(timeout_s=0)  # one attempt, refused: held

    await lock.renew()
    assert lock.token == token  # the token stays the acquire's
    renewed = await _holder_of(clients[2], "jobs")
    assert renewed is not None and renewed[0] == b"w1" and renewed[1] > token  # a new write of the same holder
    await lock.renew()  # the renewal's context is kept: a second one matches it
    with pytest.raises(LockTimeoutError):
        await other.acquire(timeout_s=0)

    await lock.release()
    assert await _holder_of(clients[1], "jobs") is None
    with pytest.raises(LockLostError):
        _ = lock.token
    with pytest.raises(LockLostError):
        await lock.renew()
    await lock.release()  # releasing again does nothing

    second = await other.acquire(timeout_s=0)  # free at once: the first attempt takes it
    assert second > token
    await other.release()

    async with AsyncLock(clients[1], "jobs", holder="w3", ttl_ms=LONG_TTL_MS) as held:
        assert held.token > second
        assert await _holder_of(clients[0], "jobs") == (b"w3", held.token)
        with pytest.raises(LockTimeoutError):
            await other.acquire(timeout_s=0)
    assert await _holder_of(clients[2], "jobs") is None
    with pytest.raises(LockLostError):
        _ = held.token

    with pytest.raises(RuntimeError, match="inside"):  # an exception in the block releases the lock too
        async with AsyncLock(clients[2], "jobs", holder="w4", ttl_ms=LONG_TTL_MS):
            raise RuntimeError("inside")
    assert await _holder_of(clients[0], "jobs") is None


async def test_renewals_and_a_release_from_several_tasks_take_turns(clients: list[AsyncClient]) -> None:
    # A renewal task and the holder share one lock object: each write must carry the context the previous
    # one left, or one of two concurrent renewals fails (and the lock is wrongly reported lost while it is
    # still held), or a release sends a stale context and leaves the lock held until its TTL runs out.
    lock = AsyncLock(clients[0], "shared", holder="w1", ttl_ms=LONG_TTL_MS)
    token = await lock.acquire(timeout_s=5)
    await asyncio.gather(lock.renew(), lock.renew(), lock.renew())
    assert lock.token == token
    await asyncio.gather(lock.renew(), lock.release())
    assert await _holder_of(clients[1], "shared") is None  # released, whichever ran first


async def test_a_second_holder_acquires_only_after_the_first_releases(clients: list[AsyncClient]) -> None:
    first = AsyncLock(clients[0], "jobs", holder="first", ttl_ms=LONG_TTL_MS)
    second = AsyncLock(clients[1], "jobs", holder="second", ttl_ms=LONG_TTL_MS)
    token = await first.acquire(timeout_s=5)
    waiting = asyncio.create_task(second.acquire(timeout_s=PATIENT_S))
    try:
        # However long the second keeps trying, the first's hold (not expiring during the test) keeps it out;
        # the first's renewals and reads meanwhile see its hold unchanged.
        for _ in range(5):
            done, _pending = await asyncio.wait({waiting}, timeout=0.1)
            assert not done
            await first.renew()
            held = await _holder_of(clients[2], "jobs")
            assert held is not None and held[0] == b"first"
        await first.release()
        taken = await waiting
    finally:
        if not waiting.done():
            waiting.cancel()
    assert taken > token and second.token == taken
    assert await _holder_of(clients[2], "jobs") == (b"second", taken)
    await second.release()


async def test_contending_holders_hold_one_at_a_time_with_growing_tokens(clients: list[AsyncClient]) -> None:
    """Four holders, each through one of the three nodes, take the lock twice each around a read-modify-write
    of a counter (a conditional write on the context read, which would fail if another holder had written
    meanwhile): one in the block at a time, every update kept, and the tokens increase in the order the holds
    were taken."""
    inside: list[str] = []
    tokens: list[int] = []
    await clients[0].put("counter", b"0", if_absent=True)

    async def work(i: int) -> None:
        client = clients[i % 3]
        for _ in range(2):
            async with AsyncLock(client, "counter", holder=f"w{i}", ttl_ms=LONG_TTL_MS) as lock:
                inside.append(lock.holder)
                assert inside == [lock.holder]
                tokens.append(lock.token)
                got = await client.get("counter", consistency="linearizable")
                assert got is not None
                await asyncio.sleep(0)  # let the others run (and try to acquire) mid-update
                await client.put("counter", b"%d" % (int(got.value) + 1), if_match=got.context)
                inside.remove(lock.holder)

    await asyncio.gather(*(work(i) for i in range(4)))
    got = await clients[2].get("counter", consistency="linearizable")
    assert got is not None and got.value == b"8"
    assert len(tokens) == 8 and tokens == sorted(set(tokens))


async def test_a_holder_past_its_ttl_loses_the_lock_and_its_renewal_fails(clients: list[AsyncClient]) -> None:
    stale = AsyncLock(clients[0], "jobs", holder="stale", ttl_ms=SHORT_TTL_MS)
    token = await stale.acquire(timeout_s=5)
    # The stale holder stops renewing; the next acquire waits until its hold expires, then takes the lock.
    fresh = AsyncLock(clients[1], "jobs", holder="fresh", ttl_ms=LONG_TTL_MS)
    taken = await fresh.acquire(timeout_s=PATIENT_S)
    assert taken > token
    assert stale.token == token  # the stale holder still believes it holds the lock ...
    with pytest.raises(LockLostError):
        await stale.renew()  # ... until it renews: its condition (its own last write) no longer holds
    with pytest.raises(LockLostError):
        _ = stale.token
    with pytest.raises(LockLostError):
        await stale.renew()
    assert await _holder_of(clients[2], "jobs") == (b"fresh", taken)  # the failed renewal wrote nothing
    await fresh.renew()
    assert fresh.token == taken


async def test_a_release_past_the_ttl_leaves_the_next_holders_lock(clients: list[AsyncClient]) -> None:
    stale = AsyncLock(clients[2], "jobs", holder="stale", ttl_ms=SHORT_TTL_MS)
    token = await stale.acquire(timeout_s=5)
    fresh = AsyncLock(clients[0], "jobs", holder="fresh", ttl_ms=LONG_TTL_MS)
    taken = await fresh.acquire(timeout_s=PATIENT_S)
    assert taken > token
    await stale.release()  # its delete is conditional on its own write: refused, and not an error (documented)
    with pytest.raises(LockLostError):
        _ = stale.token
    assert await _holder_of(clients[1], "jobs") == (b"fresh", taken)
    third = AsyncLock(clients[1], "jobs", holder="third", ttl_ms=LONG_TTL_MS)
    with pytest.raises(LockTimeoutError):
        await third.acquire(timeout_s=0)
    await fresh.renew()
    await fresh.release()
    assert await third.acquire(timeout_s=0) > taken
    await third.release()


async def test_an_acquire_times_out_while_another_holds(clients: list[AsyncClient]) -> None:
    holder = AsyncLock(clients[0], "jobs", holder="holder", ttl_ms=LONG_TTL_MS)
    token = await holder.acquire(timeout_s=5)
    waiter = AsyncLock(clients[1], "jobs", holder="waiter", ttl_ms=LONG_TTL_MS)
    with pytest.raises(LockTimeoutError):
        await waiter.acquire(timeout_s=0.3)  # several attempts (backing off), all refused
    with pytest.raises(LockTimeoutError):
        await waiter.acquire(timeout_s=0)
    with pytest.raises(LockLostError):
        _ = waiter.token
    await waiter.release()  # never held: nothing is deleted
    assert await _holder_of(clients[2], "jobs") == (b"holder", token)
    await holder.renew()
    assert holder.token == token


async def test_a_fenced_write_with_a_stale_token_is_refused(urls: list[str], clients: list[AsyncClient]) -> None:
    """dsm.lock's fenced writes are blocking only: a blocking Client runs them in a thread (the nodes keep
    running on this loop), with the AsyncLocks' tokens."""
    with Client(urls[2]) as blocking:

        async def put(value: bytes, token: int) -> None:
            await asyncio.to_thread(fenced_put, blocking, "resource", value, token)

        stale = AsyncLock(clients[0], "jobs", holder="stale", ttl_ms=SHORT_TTL_MS)
        first = await stale.acquire(timeout_s=5)
        await put(b"from-stale", first)
        assert await asyncio.to_thread(fenced_get, blocking, "resource") == (first, b"from-stale")
        fresh = AsyncLock(clients[1], "jobs", holder="fresh", ttl_ms=LONG_TTL_MS)
        second = await fresh.acquire(timeout_s=PATIENT_S)  # after the stale hold expired
        assert second > first
        await put(b"from-fresh", second)
        with pytest.raises(FencedError) as refused:
            await put(b"late", stale.token)  # the stale holder still believes it holds the lock
        assert (refused.value.token, refused.value.current) == (first, second)
        await put(b"again", fresh.token)  # the same hold's token overwrites
        assert await asyncio.to_thread(fenced_get, blocking, "resource") == (second, b"again")
        await fresh.release()
