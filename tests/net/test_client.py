"""The Python clients against a node's HTTP API served on loopback (a real server, real sockets)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from dsm import StorageConfig, StorageFactory
from dsm.api.http import create_app
from dsm.client import AnswerLostError, AsyncClient, Client, ClientError, OutcomeUnknownError, UnreachableError
from dsm.storage.sqlite import SQLiteStore
from dsm.types import ReadResult, WriteResult
from support import Hangup


async def _serve(tmp_path: Path, ready: threading.Event, stop: asyncio.Event, box: dict[str, object]) -> None:
    factory = StorageFactory(StorageConfig(listen_addr="", node_id="c1", conflict_resolution="siblings"))
    storage = await factory.create_epidemic_storage(backing_storage=SQLiteStore(tmp_path / "c1.db"))
    runner = web.AppRunner(create_app(storage, token="tok-123"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    box["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    ready.set()
    await stop.wait()
    await runner.cleanup()
    await storage.close()


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[str]:
    """A node serving HTTP on its own event loop in a thread (so the blocking client can be used)."""
    loop = asyncio.new_event_loop()
    ready, stop, box = threading.Event(), asyncio.Event(), {}
    thread = threading.Thread(target=loop.run_until_complete, args=(_serve(tmp_path, ready, stop, box),))
    thread.start()
    assert ready.wait(10)
    yield str(box["url"])
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def test_blocking_client_round_trip(server_url: str) -> None:
    with Client(server_url, token="tok-123") as c:
        ack = c.put("user/ä 1", b"v1")
        got = c.get("user/ä 1")
        assert got is not None and got.value == b"v1" and got.context == ack.context
        assert got.siblings[0].writer == "c1" and got.siblings[0].timestamp == ack.timestamp
        c.put("user/ä 1", b"v2")  # blind: a sibling
        both = c.get("user/ä 1")
        assert both is not None and sorted(s.value for s in both.siblings) == [b"v1", b"v2"]
        assert isinstance(both, ReadResult) and isinstance(ack, WriteResult)  # the library's own types
        assert both.conflict and both.newest == both.siblings[0] and both.value == both.siblings[0].value
        with pytest.raises(LookupError):
            ack.versions  # noqa: B018 (the version set does not travel over HTTP)
        c.put("user/ä 1", b"v3", context=both.context)
        resolved = c.get("user/ä 1")
        assert resolved is not None and [s.value for s in resolved.siblings] == [b"v3"]
        c.delete("user/ä 1", context=resolved.context)
        assert c.get("user/ä 1") is None
        c.put("user/2", b"x")
        assert c.list(prefix="user/").keys == ["user/2"]
        assert c.health()["status"] == "ok"
        with pytest.raises(ClientError) as caught:
            c.put("k", b"v", consistency="bogus")
        assert caught.value.status == 400 and caught.value.code == "bad_consistency"
    with Client(server_url) as anonymous, pytest.raises(ClientError) as caught:
        anonymous.get("user/2")
    assert caught.value.status == 401


def test_unreachable_node_raises_a_typed_error() -> None:
    with Client("http://127.0.0.1:9", timeout=2) as c, pytest.raises(UnreachableError):
        c.get("k")


@pytest.fixture
async def async_url(tmp_path: Path) -> AsyncIterator[str]:
    factory = StorageFactory(StorageConfig(listen_addr="", node_id="c2"))
    storage = await factory.create_epidemic_storage(backing_storage=SQLiteStore(tmp_path / "c2.db"))
    runner = web.AppRunner(create_app(storage))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()
    await storage.close()


async def test_async_client_with_concurrent_writers(async_url: str) -> None:
    async with AsyncClient(async_url) as c:
        acks = await asyncio.gather(*(c.put(f"k{i}", str(i).encode()) for i in range(64)))
        assert len({a.timestamp for a in acks}) == 64
        values = await asyncio.gather(*(c.get(f"k{i}") for i in range(64)))
        assert [v.value if v else None for v in values] == [str(i).encode() for i in range(64)]
        page = await c.list(limit=10)
        assert page.keys == sorted(f"k{i}" for i in range(64))[:10] and page.next == page.keys[-1]
        assert await c.get("missing") is None
        # A standalone node is the only member: every level is met by its own commit.
        ack = await c.put("k", b"v", consistency="quorum")
        assert (await c.get("k", consistency="all")).value == b"v"  # type: ignore[union-attr]
        assert ack.timestamp > 0
        with pytest.raises(ClientError, match="bad_consistency"):
            await c.put("k", b"v", consistency="strong")
    async with AsyncClient("http://127.0.0.1:9", timeout=2) as dead:
        with pytest.raises(UnreachableError):
            await dead.get("k")


async def test_async_client_watches_changes_under_a_prefix(async_url: str) -> None:
    async with AsyncClient(async_url) as c, AsyncClient(async_url) as writer:
        changes = c.watch("user/")
        first = asyncio.ensure_future(anext(changes))
        await writer.put("other", b"x")  # not under the prefix
        # Changes count from the moment the stream is open: write until the watch reports one.
        for i in range(100):
            await writer.put("user/1", str(i).encode())
            done, _ = await asyncio.wait({first}, timeout=0.1)
            if done:
                break
        got = first.result()
        assert (got["key"], got["deleted"], got["local"], got["writer"]) == ("user/1", False, True, "c2")
        await writer.delete("user/1")
        while not got["deleted"]:
            got = await asyncio.wait_for(anext(changes), 10)
            assert got["key"] == "user/1"
        await changes.aclose()


async def test_a_key_the_node_cannot_take_is_refused_before_sending(async_url: str) -> None:
    from dsm.errors import InvalidKeyError

    with Client(async_url) as c:
        for bad in ("", None, "\ud800"):
            with pytest.raises(InvalidKeyError):
                c.put(bad, b"v")  # type: ignore[arg-type]
    async with AsyncClient(async_url) as ac:
        with pytest.raises(InvalidKeyError):
            await ac.get("")


@pytest.mark.parametrize("conditional", [False, True])
def test_a_conditional_write_is_never_sent_twice(conditional: bool) -> None:
    """A plain write whose connection breaks before the answer is sent again (it is idempotent: see
    dsm.clientcore), once per retry round; a conditional one is not (its first copy may have been applied,
    and the second would fail its condition): the caller gets AnswerLostError, an unknown outcome (both an
    OutcomeUnknownError and an UnreachableError)."""
    server = Hangup()
    expected = UnreachableError if not conditional else OutcomeUnknownError
    with Client(server.url, timeout=5, retries=2, backoff_s=0.01) as client, pytest.raises(expected) as caught:
        client.put("k", b"v", if_absent=conditional)
    assert server.requests == (1 if conditional else 3)
    assert isinstance(caught.value, UnreachableError)
    assert isinstance(caught.value, AnswerLostError) == conditional

    async def run() -> None:
        async with AsyncClient(server.url, timeout=5, retries=2, backoff_s=0.01) as client:
            with pytest.raises(expected):
                await client.put("k", b"v", if_absent=conditional)

    server.requests = 0
    asyncio.run(run())
    assert server.requests == (1 if conditional else 3)
    server.close()
