"""Keys that expire over the HTTP API and the Python client: `PUT /v1/kv/{key}?ttl_ms=N` (the node's wall clock
is the test's), then 404 and left out of listings; `ttl_ms` checked (a number from 1 to max_ttl_ms, never on
a DELETE or a GET); `AsyncClient.put(..., ttl_ms=)`; a watch stream's `"expired": true` line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from dsm import EpidemicStorage, NodeInfo, StorageConfig
from dsm.api.http import create_app
from dsm.client import AsyncClient, ClientError
from dsm.core.hlc import physical_ms
from dsm.storage.sqlite import SQLiteStore

START = 1_800_000_000_000


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Clock]]:  # type: ignore[type-arg]
    clock = Clock(START)
    config = StorageConfig(node_id="h1", listen_addr="", max_ttl_ms=60_000)
    storage = EpidemicStorage(config, NodeInfo(), SQLiteStore(tmp_path / "h1.db"), wall_ms=clock)
    await storage.start()
    async with TestClient(TestServer(create_app(storage))) as client:
        yield client, clock
    await storage.close()


async def test_a_put_with_ttl_ms_expires(served: tuple[TestClient, Clock]) -> None:  # type: ignore[type-arg]
    client, clock = served
    r = await client.put("/v1/kv/s/1?ttl_ms=30000", data=b"v")
    assert r.status == 200
    await client.put("/v1/kv/s/2?consistency=local", data=b"kept")
    r = await client.get("/v1/kv/s/1")
    assert r.status == 200 and await r.read() == b"v"
    clock.ms += 30_001
    r = await client.get("/v1/kv/s/1")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    assert (await (await client.get("/v1/kv?prefix=s/")).json())["keys"] == ["s/2"]


@pytest.mark.parametrize(
    ("method", "query", "code"),
    [
        ("put", "ttl_ms=0", "invalid_input"),
        ("put", "ttl_ms=60001", "invalid_input"),
        ("put", "ttl_ms=-1", "invalid_input"),
        ("put", "ttl_ms=30s", "invalid_input"),
        ("put", "ttl_ms=1&ttl_ms=2", "duplicate_parameter"),
        ("delete", "ttl_ms=1000", "invalid_input"),
        ("get", "ttl_ms=1000", "unknown_parameter"),
    ],
)
async def test_a_bad_or_misplaced_ttl_ms_is_a_400(
    served: tuple[TestClient, Clock],  # type: ignore[type-arg]
    method: str,
    query: str,
    code: str,
) -> None:
    client, _ = served
    r = await getattr(client, method)(f"/v1/kv/k?{query}", data=b"v")
    assert r.status == 400 and (await r.json())["error"]["code"] == code
    assert (await client.get("/v1/kv/k")).status == 404  # nothing was written


async def test_the_async_client_puts_with_a_ttl(served: tuple[TestClient, Clock]) -> None:  # type: ignore[type-arg]
    client, clock = served
    async with AsyncClient(str(client.make_url("")).rstrip("/")) as c:
        ack = await c.put("lease", b"v", ttl_ms=5_000)
        got = await c.get("lease")
        assert got is not None and got.value == b"v" and got.context == ack.context
        assert got.siblings[0].expires_ms == physical_ms(ack.timestamp) + 5_000  # the X-DSM-Expires header
        await c.put("plain", b"p")
        plain = await c.get("plain")
        assert plain is not None and plain.siblings[0].expires_ms == 0
        with pytest.raises(ClientError) as refused:
            await c.put("lease", b"v", ttl_ms=0)
        assert refused.value.status == 400 and refused.value.code == "invalid_input"
        clock.ms += 5_001
        assert await c.get("lease") is None


async def test_a_watch_stream_reports_an_expiry_as_an_expired_line(served: tuple[TestClient, Clock]) -> None:  # type: ignore[type-arg]
    client, clock = served
    stream = await client.get("/v1/watch?prefix=s/")
    assert list(json.loads(await asyncio.wait_for(stream.content.readline(), 10))) == ["cursor"]
    r = await client.put("/v1/kv/s/1?ttl_ms=1000", data=b"v")
    timestamp = (await r.json())["timestamp"]
    written = json.loads(await asyncio.wait_for(stream.content.readline(), 10))
    assert (written["key"], written["expired"]) == ("s/1", False)
    clock.ms = physical_ms(timestamp) + 1_000
    await client.put("/v1/kv/s/2", data=b"kick")  # a commit wakes the watch at once
    lines = [json.loads(await asyncio.wait_for(stream.content.readline(), 10)) for _ in range(2)]
    expired = next(line for line in lines if line["key"] == "s/1")
    assert expired["expired"] is True and expired["deleted"] is True and expired["timestamp"] == timestamp
    stream.close()


async def test_siblings_carry_their_expiry(tmp_path: Path) -> None:
    clock = Clock(START)
    config = StorageConfig(node_id="h2", listen_addr="", conflict_resolution="siblings")
    storage = EpidemicStorage(config, NodeInfo(), SQLiteStore(tmp_path / "h2.db"), wall_ms=clock)
    await storage.start()
    try:
        async with TestClient(TestServer(create_app(storage))) as client:
            ack = await (await client.put("/v1/kv/k?ttl_ms=1000", data=b"short")).json()
            await client.put("/v1/kv/k", data=b"forever")  # blind: a sibling
            r = await client.get("/v1/kv/k")
            assert r.status == 300
            siblings = {s["writer"] + ":" + str(s.get("expires_ms")) for s in (await r.json())["siblings"]}
            assert siblings == {f"h2:{physical_ms(ack['timestamp']) + 1_000}", "h2:None"}
            clock.ms += 1_000  # the expired sibling is hidden: one value left
            r = await client.get("/v1/kv/k")
            assert r.status == 200 and await r.read() == b"forever" and "X-DSM-Expires" not in r.headers
    finally:
        await storage.close()
