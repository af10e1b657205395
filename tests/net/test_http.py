"""The HTTP API over real loopback HTTP: key operations, contexts, siblings, listing, errors, token,
members, topology, metrics, OpenAPI, garbage requests."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from dsm import EpidemicStorage, StorageConfig, StorageFactory
from dsm.api import http as http_api
from dsm.api.http import CONTEXT_HEADER, create_app
from dsm.core import watch_cursor
from dsm.core.messages import DataItem
from dsm.net.runtime import Runtime
from dsm.node.watches import End
from dsm.storage.sqlite import SQLiteStore


async def node(tmp_path: Path, **settings: object) -> EpidemicStorage:
    settings.setdefault("listen_addr", "")
    settings.setdefault("node_id", "h1")
    factory = StorageFactory(StorageConfig(**settings))  # type: ignore[arg-type]
    return await factory.create_epidemic_storage(backing_storage=SQLiteStore(tmp_path / "h1.db"))


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    storage = await node(
        tmp_path,
        conflict_resolution="siblings",
        max_value_bytes=1000,
        listen_addr="127.0.0.1:0",
        probe_interval_ms=200,
        probe_timeout_ms=100,
    )
    assert isinstance(storage.network, Runtime)
    async with TestClient(TestServer(create_app(storage, storage.network))) as c:
        yield c
    await storage.close()


async def test_put_get_delete_with_contexts_and_siblings(client: TestClient) -> None:  # type: ignore[type-arg]
    r = await client.put("/v1/kv/a/b c", data=b"\x00one")
    assert r.status == 200 and (await r.json())["key"] == "a/b c"
    first_context = r.headers[CONTEXT_HEADER]
    r = await client.get("/v1/kv/a/b c")
    assert r.status == 200 and await r.read() == b"\x00one"
    assert r.headers["Content-Type"] == "application/octet-stream"
    # A blind write makes a sibling; a write that carries the read's context resolves both.
    await client.put("/v1/kv/a/b c", data=b"two")
    r = await client.get("/v1/kv/a/b c")
    assert r.status == 300
    body = await r.json()
    assert sorted(base64.b64decode(s["value"]) for s in body["siblings"]) == [b"\x00one", b"two"]
    assert body["siblings"][0]["writer"] == "h1" and body["context"] == r.headers[CONTEXT_HEADER]
    r = await client.put("/v1/kv/a/b c", data=b"merged", headers={CONTEXT_HEADER: body["context"]})
    assert r.status == 200 and r.headers[CONTEXT_HEADER] != first_context
    r = await client.get("/v1/kv/a/b c")
    assert r.status == 200 and await r.read() == b"merged"
    r = await client.delete("/v1/kv/a/b c", headers={CONTEXT_HEADER: r.headers[CONTEXT_HEADER]})
    assert r.status == 200
    r = await client.get("/v1/kv/a/b c")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_removing_a_member_of_a_standalone_node_is_a_404(client: TestClient) -> None:  # type: ignore[type-arg]
    r = await client.delete("/v1/members/n9")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_a_context_read_from_another_key_is_a_clear_400(client: TestClient) -> None:  # type: ignore[type-arg]
    await client.put("/v1/kv/one", data=b"1")
    other = (await client.get("/v1/kv/one")).headers[CONTEXT_HEADER]
    for method in ("put", "delete"):
        r = await getattr(client, method)("/v1/kv/two", data=b"2", headers={CONTEXT_HEADER: other})
        assert r.status == 400
        error = (await r.json())["error"]
        assert error["code"] == "invalid_context" and "another key" in error["message"]
    assert (await client.get("/v1/kv/two")).status == 404  # nothing was written


async def test_listing_by_prefix_with_paging_skips_deleted_keys(client: TestClient) -> None:  # type: ignore[type-arg]
    for key in ("user/1", "user/2", "user/3", "user/4", "other"):
        await client.put(f"/v1/kv/{key}", data=b"x")
    read = await client.get("/v1/kv/user/2")  # siblings mode: a delete supersedes what its context saw
    await client.delete("/v1/kv/user/2", headers={CONTEXT_HEADER: read.headers[CONTEXT_HEADER]})
    r = await client.get("/v1/kv", params={"prefix": "user/", "limit": "2"})
    page = await r.json()
    assert page == {"keys": ["user/1", "user/3"], "next": "user/3"}
    r = await client.get("/v1/kv", params={"prefix": "user/", "limit": "2", "after": page["next"]})
    assert await r.json() == {"keys": ["user/4"], "next": None}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("put", "/v1/kv/k", {"data": b"x" * 1001}, 413, "too_large"),
        ("put", "/v1/kv/k", {"params": {"consistency": "strong"}}, 400, "bad_consistency"),
        ("get", "/v1/kv/k", {"params": {"consistency": "QUORUM"}}, 400, "bad_consistency"),
        ("put", "/v1/kv/k", {"data": b"v", "headers": {CONTEXT_HEADER: "garbage!"}}, 400, "invalid_context"),
        ("get", "/v1/kv/" + "k" * 2000, {}, 400, "invalid_key"),
        ("get", "/v1/kv", {"params": {"limit": "zero"}}, 400, "bad_limit"),
        ("get", "/v1/kv", {"params": {"limit": "100000"}}, 400, "bad_limit"),
        ("post", "/v1/kv/k", {"data": b"v"}, 405, "method_not_allowed"),
        ("get", "/nowhere", {}, 404, "not_found"),
    ],
)
async def test_bad_requests_get_json_4xx(
    client: TestClient, method: str, path: str, kwargs: dict, status: int, code: str
) -> None:  # type: ignore[type-arg]
    r = await getattr(client, method)(path, **kwargs)
    assert r.status == status, await r.text()
    assert (await r.json())["error"]["code"] == code


async def test_garbage_http_is_refused_and_the_node_keeps_serving(client: TestClient) -> None:  # type: ignore[type-arg]
    host, port = client.server.host, client.server.port
    for garbage in (
        b"\x16\x03\x01\x02\x00garbage",
        b"GET / HTTP/9.9\r\n\r\n",
        b"PUT /v1/kv/k HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(garbage)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(200), 5)
        writer.close()
        assert (answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]) or answer == b"", answer
    r = await client.get("/health")
    assert r.status == 200 and (await r.json())["status"] == "ok"


async def test_members_topology_metrics_and_openapi(client: TestClient) -> None:  # type: ignore[type-arg]
    await client.put("/v1/kv/m", data=b"1")
    members = (await (await client.get("/v1/members")).json())["members"]
    assert [(m["id"], m["state"]) for m in members] == [("h1", "alive")]
    topology = await (await client.get("/v1/topology")).json()
    assert topology["node_id"] == "h1" and topology["near"] == []
    text = await (await client.get("/metrics")).text()
    assert 'dsm_operation_seconds_count{op="put"} 1.0' in text
    assert 'dsm_members{state="alive"} 1.0' in text
    assert "dsm_gossip_interval_seconds" in text and "dsm_connections" in text
    assert 'dsm_event_loop_lag_seconds_bucket{le="+Inf"}' in text and "dsm_event_loop_lag_max_seconds" in text
    assert "dsm_anti_entropy_repaired_keys" in text and "dsm_anti_entropy_entries" in text
    assert "dsm_anti_entropy_held_total 0.0" in text
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.") and "/v1/kv/{key}" in spec["paths"]


async def test_a_bearer_token_guards_everything_but_health(tmp_path: Path) -> None:
    storage = await node(tmp_path)
    try:
        async with TestClient(TestServer(create_app(storage, token="s3cret-token"))) as c:
            r = await c.put("/v1/kv/k", data=b"v")
            assert r.status == 401 and (await r.json())["error"]["code"] == "unauthorized"
            r = await c.put("/v1/kv/k", data=b"v", headers={"Authorization": "Bearer wrong"})
            assert r.status == 401
            r = await c.put("/v1/kv/k", data=b"v", headers={"Authorization": "Bearer s3cret-token"})
            assert r.status == 200
            assert (await c.get("/health")).status == 200
    finally:
        await storage.close()


async def test_a_watch_streams_local_and_replicated_changes_under_its_prefix(tmp_path: Path) -> None:
    storage = await node(tmp_path)
    try:
        async with TestClient(TestServer(create_app(storage))) as c:
            assert (await c.get("/v1/watch", params={"limit": "0"})).status == 400
            assert (await c.get("/v1/watch", params={"values": "2"})).status == 400
            bad_cursor = await c.get("/v1/watch", params={"since": "not-a-cursor"})
            assert bad_cursor.status == 400 and (await bad_cursor.json())["error"]["code"] == "invalid_input"
            # (A store's first cursors, before its first commit, are resumed with a resync: the stamps its
            # clock may give after a restart are not bounded yet.)
            await c.put("/v1/kv/before", data=b"0")
            stream = await c.get("/v1/watch", params={"prefix": "user:"})
            assert stream.status == 200 and stream.headers["Content-Type"] == "application/x-ndjson"
            start = json.loads(await asyncio.wait_for(stream.content.readline(), 5))
            assert list(start) == ["cursor"]  # where the watch starts, before any change
            await c.put("/v1/kv/user:1", data=b"a")
            await c.put("/v1/kv/other", data=b"b")  # not under the prefix
            await c.delete("/v1/kv/user:1")
            # A replicated write (as the runtime merges it): another node's version of user:2.
            (tmp_path / "other").mkdir()
            other = await node(tmp_path / "other", node_id="h2")
            remote = await other.put("user:2", b"from h2")
            await other.close()
            stored = await other_versions(tmp_path / "other" / "h1.db", "user:2")
            await storage.merge([DataItem(0, "user:2", stored)])
            lines = [json.loads(await asyncio.wait_for(stream.content.readline(), 5)) for _ in range(3)]
            assert [(x["key"], x["deleted"], x["local"], x["writer"]) for x in lines] == [
                ("user:1", False, True, "h1"),
                ("user:1", True, True, "h1"),
                ("user:2", False, False, "h2"),
            ]
            assert lines[2]["timestamp"] == remote.timestamp
            assert all(
                set(x) == {"key", "timestamp", "writer", "deleted", "expired", "local", "digest", "cursor"}
                for x in lines
            )
            stream.close()
            # Resumed from the start's cursor, with values: the keys changed since, each once, current state.
            resumed = await c.get("/v1/watch", params={"prefix": "user:", "since": start["cursor"], "values": "1"})
            replayed = [json.loads(await asyncio.wait_for(resumed.content.readline(), 5)) for _ in range(3)]
            assert list(replayed[0]) == ["cursor"]
            assert [(x["key"], x["deleted"], x.get("value")) for x in replayed[1:]] == [
                ("user:1", True, None),
                ("user:2", False, base64.b64encode(b"from h2").decode()),
            ]
            resumed.close()
            # On a node that does not know the cursor: a resync in the stream.
            foreign = watch_cursor.encode(watch_cursor.Cursor("elsewhere", 1, 1))
            resync = await c.get("/v1/watch", params={"prefix": "user:", "since": foreign})
            lines = [json.loads(await asyncio.wait_for(resync.content.readline(), 5)) for _ in range(5)]
            assert lines[0] == {"cursor": foreign} and lines[1] == {"resync": "begin"}
            assert [(x["key"], x["deleted"]) for x in lines[2:4]] == [("user:1", True), ("user:2", False)]
            assert lines[4]["resync"] == "end" and watch_cursor.decode(lines[4]["cursor"]).node == "h1"
            resync.close()
    finally:
        await storage.close()


async def test_a_slow_watch_ends_with_a_final_cursor(tmp_path: Path) -> None:
    storage = await node(tmp_path)
    try:
        watch = storage.watch("", limit=2)
        for i in range(3):
            await storage.put(f"k{i}", b"v")
        items = [item async for item in watch]
        assert [i.key for i in items[:2]] == ["k0", "k1"]  # type: ignore[union-attr]
        assert items[2] == End("overflow", items[1].cursor)  # type: ignore[union-attr]
        assert watch.closed
        quiet = storage.watch("k")
    finally:
        await storage.close()
    ends = [c async for c in quiet]  # a close ends every watch with its cursor
    assert len(ends) == 1 and isinstance(ends[0], End) and ends[0].reason == "shutdown"


async def other_versions(path: Path, key: str) -> bytes:
    store = SQLiteStore(path)
    await store.open()
    try:
        encoded = await store.read(key)
        assert encoded is not None
        return encoded
    finally:
        await store.close()


async def test_a_quiet_watch_sends_heartbeats_and_a_gone_client_is_let_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_api, "WATCH_HEARTBEAT_S", 0.05)
    storage = await node(tmp_path)
    try:
        async with TestClient(TestServer(create_app(storage))) as c:
            stream = await c.get("/v1/watch")
            start = json.loads(await asyncio.wait_for(stream.content.readline(), 5))
            # Nothing changed: a heartbeat, a progress line with the (same) cursor.
            assert json.loads(await asyncio.wait_for(stream.content.readline(), 5)) == start
            await c.put("/v1/kv/k", data=b"v")
            line = start
            while list(line) == ["cursor"]:
                line = json.loads(await asyncio.wait_for(stream.content.readline(), 5))
            assert line["key"] == "k"
            # Progress lines after it carry the cursor after the change.
            assert json.loads(await asyncio.wait_for(stream.content.readline(), 5)) == {"cursor": line["cursor"]}
            assert len(storage.watches) == 1
            stream.close()  # the client goes away: its watch is released
            for _ in range(200):
                if not len(storage.watches):
                    break
                await asyncio.sleep(0.01)
            assert not len(storage.watches)
    finally:
        await storage.close()
