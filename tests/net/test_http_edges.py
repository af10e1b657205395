"""The HTTP API at its edges, on real `dsm node run` processes and raw sockets: headers that are not UTF-8,
keys of every kind the library accepts, strict percent-decoding, the headers that go with 401/405/503, one
style of error code."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsm import StorageConfig, StorageFactory
from dsm.api import http as http_api
from dsm.api.http import create_app
from dsm.client import AsyncClient, Client
from dsm.storage.sqlite import SQLiteStore
from procs import Proc, procs_fixture  # noqa: F401  (the `procs` fixture)

TOKEN = "edge-token-0123456789"
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def raw(addr: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends `request` as it is on a new connection; the status, headers and body of the answer (read until
    the node closes the connection: requests here say `Connection: close`)."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def request(method: str, target: str, *headers: bytes, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: node", b"Connection: close", *headers]
    if body or method in ("PUT", "POST"):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


AUTH = f"Authorization: Bearer {TOKEN}".encode()


def as_json(body: bytes) -> Any:
    return json.loads(body)


def test_headers_that_are_not_utf8_get_a_4xx_and_no_traceback(tmp_path: Path, procs: list[Proc]) -> None:
    node = Proc("e1", "127.0.0.1", tmp_path, [], env={"DSM_HTTP_TOKEN": TOKEN})
    procs.append(node)
    cases = [
        # (request, the statuses it may get)
        (request("GET", "/v1/kv/k", b"Authorization: Bearer \xff\xfe"), {401}),
        (request("GET", "/v1/kv/k", b"Authorization: \xc3(" + TOKEN.encode()), {401}),
        (request("PUT", "/v1/kv/k", b"Authorization: Bearer " + TOKEN.encode() + b"\xff", body=b"v"), {401}),
        (request("GET", "/v1/members", b"Authorization: Bearer \x80"), {401}),
        (request("PUT", "/v1/kv/k", AUTH, b"X-DSM-Context: \xff\xfe\xfd", body=b"v"), {400}),
        (request("DELETE", "/v1/kv/k", AUTH, b"X-DSM-Context: caf\xe9"), {400}),
        (request("PUT", "/v1/kv/k", AUTH, b"Expect: \xff", body=b"v"), {417}),
        (request("PUT", "/nowhere", AUTH, b"Expect: \xff", body=b"v"), {404, 417}),
        (request("POST", "/v1/kv/k", AUTH, b"Expect: \xe9t\xe9", body=b"v"), {405, 417}),
        (request("PUT", "/v1/kv/k", AUTH, b"Content-Encoding: gzip", body=b"not gzip"), {400}),
        (request("PUT", "/v1/kv/k", AUTH, b"Content-Type: \xff/\xfe", body=b"v"), {200}),
        (request("GET", "/v1/kv?prefix=%ff", AUTH), {400}),
        (request("GET", "/health", b"Authorization: Bearer \xff"), {200}),
    ]
    for sent, allowed in cases:
        status, _, body = raw(node.http, sent)
        assert status in allowed, (sent, status, body)
        if status >= 400:
            assert SNAKE.match(as_json(body)["error"]["code"]), body
    assert node.stop() == 0
    assert "Traceback" not in node.stderr and "ERROR" not in node.stderr, node.stderr


#: Keys the library accepts that a URL has trouble with.
AWKWARD_KEYS = [
    "a\nb",
    "\r\n",
    "tab\there",
    "%",
    "a%ffb",
    "a%25ffb",
    "100%25",
    "a/b",
    "/leading",
    "trailing/",
    "a//b",
    ".",
    "..",
    "a/../b",
    "./x",
    "with space",
    "plus+sign",
    "q?x=1&y=2",
    "hash#frag",
    "ünïcödé",
    "emoji 🙂",
    "semi;colon",
    "back\\slash",
    "\x7f\x01",
    "k" * 1024,
]


def test_every_awkward_key_works_on_put_get_delete_and_list(tmp_path: Path, procs: list[Proc]) -> None:
    node = Proc("e2", "127.0.0.1", tmp_path, [])
    procs.append(node)
    with Client(node.url) as c:
        for i, key in enumerate(AWKWARD_KEYS):
            value = f"value {i}".encode()
            ack = c.put(key, value)
            assert ack.key == key
            got = c.get(key)
            assert got is not None and got.value == value, key
        assert sorted(c.list(limit=1000).keys) == sorted(AWKWARD_KEYS)
        # Each key names only itself: a%ffb and a%25ffb, a/b and a//b are different keys.
        for i, key in enumerate(AWKWARD_KEYS):
            got = c.get(key)
            assert got is not None and got.value == f"value {i}".encode(), key
        for key in AWKWARD_KEYS:
            c.delete(key)
            assert c.get(key) is None, key
        assert c.list(limit=1000).keys == []


def test_invalid_percent_encoding_and_unknown_parameters_are_a_400(tmp_path: Path, procs: list[Proc]) -> None:
    node = Proc("e3", "127.0.0.1", tmp_path, [])
    procs.append(node)
    status, _, _ = raw(node.http, request("PUT", "/v1/kv/a%25ffb", body=b"percent"))
    assert status == 200
    for target in ("/v1/kv/a%ffb", "/v1/kv/a%zz", "/v1/kv/a%", "/v1/kv/a%4", "/v1/kv/%c3%28"):
        for method in ("PUT", "GET", "DELETE"):
            status, _, body = raw(node.http, request(method, target, body=b"x" if method == "PUT" else b""))
            assert status == 400, (method, target, body)
            assert as_json(body)["error"]["code"] == "bad_encoding"
    for target in ("/v1/kv?prefix=%ff", "/v1/kv?after=%zz", "/v1/watch?prefix=%e9", "/v1/kv/k?consistency=loc%al"):
        status, _, body = raw(node.http, request("GET", target))
        assert status == 400 and as_json(body)["error"]["code"] == "bad_encoding", (target, body)
    # A parameter the path does not take (a typo would otherwise pass for a request at the default level).
    for target in ("/v1/kv/k?consistancy=quorum", "/v1/kv?prefx=a", "/v1/watch?after=a"):
        status, _, body = raw(node.http, request("GET", target))
        assert status == 400 and as_json(body)["error"]["code"] == "unknown_parameter", (target, body)
    # `a%25ffb` is the key `a%ffb`, the only one written.
    assert Client(node.url).list().keys == ["a%ffb"]
    status, _, body = raw(node.http, request("GET", "/v1/kv/a%25ffb"))
    assert status == 200 and body == b"percent"


def test_401_405_and_503_carry_their_headers(tmp_path: Path, procs: list[Proc]) -> None:
    node = Proc("e4", "127.0.0.1", tmp_path, [], env={"DSM_HTTP_TOKEN": TOKEN})
    procs.append(node)
    status, headers, _ = raw(node.http, request("GET", "/v1/kv/k"))
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    status, headers, _ = raw(node.http, request("GET", "/v1/kv/k", b"Authorization: Bearer wrong"))
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    for method, target, allow in (
        ("POST", "/v1/kv/k", "DELETE, GET, HEAD, PUT"),
        ("PUT", "/v1/kv", "DELETE, GET, HEAD"),
        ("GET", "/v1/members/n2", "DELETE"),
        ("DELETE", "/health", "GET, HEAD"),
    ):
        status, headers, body = raw(node.http, request(method, target, AUTH, body=b"x" if method != "GET" else b""))
        assert status == 405 and headers["allow"] == allow, (method, target, body)
        assert as_json(body)["error"]["code"] == "method_not_allowed"


async def test_a_closed_node_answers_503_with_retry_after(tmp_path: Path) -> None:
    storage = await StorageFactory(StorageConfig(listen_addr="", node_id="e5")).create_epidemic_storage(
        backing_storage=SQLiteStore(tmp_path / "e5.db")
    )
    async with TestClient(TestServer(create_app(storage))) as c:
        await storage.close()
        for method, path in (("put", "/v1/kv/k"), ("get", "/v1/kv/k"), ("delete", "/v1/kv/k"), ("get", "/health")):
            r = await getattr(c, method)(path, data=b"v" if method == "put" else None)
            assert r.status == 503 and r.headers["Retry-After"] == "1", (method, path)


def test_error_codes_are_snake_case_for_every_error_class() -> None:
    import dsm.errors as errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        exc = cls.__new__(cls)
        code = http_api.error_code(exc)
        assert SNAKE.match(code) and not code.endswith("_error"), (name, code)
    assert http_api.error_code(errors.InvalidKeyError("x")) == "invalid_key"
    assert http_api.error_code(errors.StorageUnavailableError("x")) == "storage_unavailable"


@pytest.fixture(scope="module")
def node_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A node serving HTTP on its own event loop in a thread, for the many requests of a property test."""
    directory = tmp_path_factory.mktemp("keys")
    box: dict[str, str] = {}
    ready, stop = threading.Event(), asyncio.Event()

    async def serve() -> None:
        factory = StorageFactory(StorageConfig(listen_addr="", node_id="e6"))
        storage = await factory.create_epidemic_storage(backing_storage=SQLiteStore(directory / "e6.db"))
        runner = web.AppRunner(create_app(storage))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        box["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
        ready.set()
        await stop.wait()
        await runner.cleanup()
        await storage.close()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    assert ready.wait(10)
    yield box["url"]
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.text(min_size=1, max_size=40).filter(lambda k: "\x00" not in k))
def test_any_key_round_trips_through_the_blocking_client(node_url: str, key: str) -> None:
    with Client(node_url) as c:
        c.put(key, key.encode())
        got = c.get(key)
        assert got is not None and got.key == key and got.value == key.encode()
        c.delete(key)
        assert c.get(key) is None


async def test_awkward_keys_through_the_async_client(node_url: str) -> None:
    async with AsyncClient(node_url) as c:
        for key in AWKWARD_KEYS:
            await c.put(key, b"async " + key.encode())
        for key in AWKWARD_KEYS:
            got = await c.get(key)
            assert got is not None and got.value == b"async " + key.encode(), key
            await c.delete(key)
            assert await c.get(key) is None, key
