"""The Redis-protocol front door (`dsm.api.resp`) on a real node and real sockets, driven by real Redis
clients: redis-py (its asyncio client, RESP2 and RESP3) and Debian's redis-cli; and by raw sockets for what
no well-behaved client sends (garbage, oversized requests, half-sent commands, idle and unread connections).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError

from dsm import StorageConfig, StorageFactory
from dsm.api.resp import PIPELINE_MAX, RespLimits
from dsm.api.resp_commands import decode_cursor, encode_cursor, match_prefix, start_resp
from dsm.net.certs import ClusterCA
from dsm.net.tls import contexts
from dsm.node import EpidemicStorage
from resp_support import make_node, raw, started
from support import skip_or_fail

TOKEN = "resp-token-0123456789"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[EpidemicStorage]:
    storage = await make_node(tmp_path)
    yield storage
    await storage.close()


@pytest.fixture
async def port(node: EpidemicStorage) -> AsyncIterator[int]:
    server, bound = await start_resp(node, "127.0.0.1", 0)
    yield bound
    await server.close()


@pytest.mark.parametrize("protocol", [2, 3])
async def test_redis_py_reads_and_writes_through_the_front_door(
    node: EpidemicStorage, port: int, protocol: int
) -> None:
    r = aioredis.Redis(port=port, protocol=protocol)
    try:
        assert await r.ping() is True
        assert await r.set("user:1", b"\x00binary\xff") is True
        assert await r.get("user:1") == b"\x00binary\xff"
        assert (await node.get("user:1")).value == b"\x00binary\xff"  # type: ignore[union-attr]
        assert await r.get("absent") is None
        # Overwrites replace (siblings mode: a SET supersedes what the node holds, no sibling is made).
        await r.set("user:1", b"second")
        found = await node.get("user:1")
        assert found is not None and [s.value for s in found.siblings] == [b"second"]
        # NX and XX are the conditional writes.
        assert await r.set("lock", b"a", nx=True) is True
        assert await r.set("lock", b"b", nx=True) is None
        assert await r.set("nothing", b"x", xx=True) is None
        assert await r.set("lock", b"c", xx=True) is True
        assert await r.get("lock") == b"c" and await r.get("nothing") is None
        # Several keys.
        assert await r.mset({"a": b"1", "b": b"2", "c": b"3"}) is True
        assert await r.mget("a", "absent", "c") == [b"1", None, b"3"]
        assert await r.exists("a", "b", "absent", "a") == 3
        assert await r.delete("a", "absent") == 1
        assert await r.get("a") is None and await r.exists("a") == 0
        # Expiry.
        assert await r.ttl("b") == -1 and await r.ttl("absent") == -2
        await r.set("session", b"s", ex=100)
        assert 98 <= await r.ttl("session") <= 100 and 98_000 <= await r.pttl("session") <= 100_000
        await r.set("short", b"s", px=150)
        assert await r.get("short") == b"s"
        await asyncio.sleep(0.25)
        assert await r.get("short") is None and await r.ttl("short") == -2
        assert await r.expire("b", 50) is True and 48 <= await r.ttl("b") <= 50
        assert await r.expire("b", 80, gt=True) is True and await r.ttl("b") > 60
        assert await r.expire("b", 10, gt=True) is False
        assert await r.expire("absent", 10) is False
        await r.set("keep", b"k", ex=200)
        await r.set("keep", b"k2", keepttl=True)
        assert await r.get("keep") == b"k2" and 190 <= await r.ttl("keep") <= 200
        assert await r.expire("keep", 0) is True and await r.get("keep") is None  # 0: deleted
        # Connection commands.
        assert await r.echo(b"hello") == b"hello"
        assert await r.client_setname("worker-1") is True and await r.client_getname() in ("worker-1", b"worker-1")
        assert await r.execute_command("SELECT", 0) in (True, b"OK", "OK")
        with pytest.raises(ResponseError, match="out of range"):
            await r.execute_command("SELECT", 1)
        assert "redis_version" in await r.info()
        assert await r.command_count() >= 20 and "get" in await r.command()
        with pytest.raises(ResponseError, match="unknown command"):
            await r.hset("h", "f", "v")
        with pytest.raises(ResponseError, match="syntax error"):
            await r.execute_command("SET", "k", "v", "EX")
        with pytest.raises(ResponseError, match="invalid expire time"):
            await r.set("k", b"v", ex=0)
    finally:
        await r.aclose()


async def test_scan_walks_a_prefix_in_pages_with_cursors_any_node_could_continue(port: int) -> None:
    r = aioredis.Redis(port=port)
    try:
        keys = {f"user:{i:03}" for i in range(45)} | {f"other:{i}" for i in range(5)}
        await r.mset({k: b"v" for k in keys})
        assert {k.decode() async for k in r.scan_iter(match="user:*", count=7)} == {
            k for k in keys if k.startswith("user:")
        }
        assert {k.decode() async for k in r.scan_iter()} == keys
        cursor, page = await r.scan(0, match="user:*", count=10)
        assert len(page) == 10 and cursor != 0
        assert decode_cursor(str(cursor).encode()) == page[-1].decode()
        assert await r.scan(0, match="other:3") == (0, [b"other:3"])  # an exact key
        with pytest.raises(ResponseError, match="prefix pattern"):
            await r.scan(0, match="user:?1")
        with pytest.raises(ResponseError, match="invalid cursor"):
            await r.scan(12345)
    finally:
        await r.aclose()


def test_cursors_and_patterns() -> None:
    for key in ("a", "user:ä/1", "x" * 1000, "中"):
        assert decode_cursor(encode_cursor(key)) == key
    assert decode_cursor(b"0") == ""
    assert match_prefix(b"user:*") == ("user:", None)
    assert match_prefix(b"*") == ("", None)
    assert match_prefix(b"exact") == ("exact", "exact")


async def test_twenty_four_clients_racing_for_one_key_with_nx_one_wins(port: int) -> None:
    clients = [aioredis.Redis(port=port) for _ in range(24)]
    try:
        won = await asyncio.gather(*(c.set("leader", f"c{i}".encode(), nx=True) for i, c in enumerate(clients)))
        winners = [i for i, w in enumerate(won) if w]
        assert len(winners) == 1 and all(w is None for w in won if not w)
        assert await clients[0].get("leader") == f"c{winners[0]}".encode()
    finally:
        for c in clients:
            await c.aclose()


async def test_a_token_is_required_when_the_node_has_one(node: EpidemicStorage) -> None:
    server, port = await started(node, RespLimits(), token=TOKEN)
    try:
        # redis-py retries authentication failures (as connection errors) with backoff: not here.
        anonymous = aioredis.Redis(port=port, retry=Retry(NoBackoff(), 0))
        with pytest.raises(AuthenticationError):
            await anonymous.get("k")
        await anonymous.aclose()
        wrong = aioredis.Redis(port=port, password="wrong", retry=Retry(NoBackoff(), 0))
        with pytest.raises(AuthenticationError):
            await wrong.ping()
        await wrong.aclose()
        for protocol in (2, 3):  # AUTH, and HELLO 3 AUTH default <token>
            authed = aioredis.Redis(port=port, password=TOKEN, protocol=protocol)
            assert await authed.set("k", b"v") is True and await authed.get("k") == b"v"
            await authed.aclose()
        assert server.errors["NOAUTH"] >= 1 and server.errors["WRONGPASS"] >= 1
    finally:
        await server.close()


async def test_redis_cli_against_the_front_door(node: EpidemicStorage) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        skip_or_fail("redis-cli is not installed (Debian: apt-get install redis-tools)")
    server, port = await started(node, RespLimits(), token=TOKEN)

    async def run(*args: str, stdin: bytes | None = None) -> str:
        proc = await asyncio.create_subprocess_exec(
            cli, "-p", str(port), "--user", "default", "--pass", TOKEN, "--no-auth-warning", *args,  # type: ignore[arg-type]
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
        assert proc.returncode == 0, err
        return out.decode()

    try:
        assert await run("SET", "greeting", "hello world") == "OK\n"
        assert await run("GET", "greeting") == "hello world\n"
        assert await run("SET", "greeting", "again", "NX") == "\n"  # nil
        assert (await run("-3", "HELLO", "3")).startswith("server redis\nversion 7.0.0\nproto 3\n")
        # Commands read from standard input, one per line, answered in order.
        assert await run(stdin=b"SET a 1\nSET b 2\nMGET a b nope\nDEL a b\n") == "OK\nOK\n1\n2\n\n2\n"
        for i in range(12):
            await node.put(f"scan:{i:02}", b"v")
        listed = await run("--scan", "--pattern", "scan:*")
        assert sorted(listed.split()) == [f"scan:{i:02}" for i in range(12)]
        assert "ERR unknown command 'LPUSH'" in await run("LPUSH", "l", "x")
    finally:
        await server.close()


async def test_garbage_and_oversized_requests_get_an_error_and_the_connection_is_closed(node: EpidemicStorage) -> None:
    server, port = await started(node, RespLimits(request_max_bytes=10_000))
    try:
        got = await raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.startswith(b"-ERR Protocol error") and got.endswith(b"\r\n")
        got = await raw(port, b"*2\r\n:1\r\n:2\r\n")  # integers, not bulk strings
        assert got.startswith(b"-ERR Protocol error: expected '$', got b':'")
        got = await raw(port, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$50000\r\n" + b"x" * 20_000)
        assert got.startswith(b"-ERR Protocol error: a request larger than 10000 bytes")
        # The requests before a bad one are run and answered first, in order; then the error and the close.
        got = await raw(port, b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\nGARBAGE\r\n")
        assert got.startswith(b"+PONG\r\n+OK\r\n-ERR Protocol error")
        assert (await node.get("a")).value == b"1"  # type: ignore[union-attr]
        # A complete request of a legal size works on the same server afterwards.
        assert await raw(port, b"*1\r\n$4\r\nPING\r\n", until_closed=False) == b"+PONG\r\n"
        assert server.closed["protocol_error"] == 4
        # A value over max_value_bytes is refused by the store with a clear error, the connection kept.
        big = b"v" * (node.config.max_value_bytes + 1)
        server2, port2 = await started(node, RespLimits())
        r = aioredis.Redis(port=port2)
        with pytest.raises(ResponseError, match="value"):
            await r.set("big", big)
        assert await r.ping() is True
        await r.aclose()
        await server2.close()
    finally:
        await server.close()


async def test_idle_and_half_sent_connections_are_closed(node: EpidemicStorage) -> None:
    server, port = await started(node, RespLimits(idle_timeout_s=0.3, request_timeout_s=0.3))
    try:
        assert await raw(port, b"") == b""  # idle: closed by the node
        assert await raw(port, b"*2\r\n$3\r\nGET\r\n$5\r\nab") == b""  # half a command: closed
        assert server.closed["idle_timeout"] >= 1 and server.closed["request_timeout"] >= 1
    finally:
        await server.close()


async def test_a_connection_over_the_cap_is_refused_with_an_error(node: EpidemicStorage) -> None:
    server, port = await started(node, RespLimits(max_connections=2))
    try:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert await raw(port, b"*1\r\n$4\r\nPING\r\n") == b"-ERR max number of clients reached\r\n"
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.05)
        assert await raw(port, b"*1\r\n$4\r\nPING\r\n", until_closed=False) == b"+PONG\r\n"
        assert server.closed["max_connections"] == 1
    finally:
        await server.close()


async def test_a_long_pipeline_is_answered_in_order(port: int) -> None:
    n = 3 * PIPELINE_MAX + 17  # past the bound: the node stops reading until it has answered
    commands = b"".join(
        b"*3\r\n$3\r\nSET\r\n$%d\r\nk%d\r\n$%d\r\n%d\r\n" % (len(b"k%d" % i), i, len(b"%d" % i), i) for i in range(n)
    )
    commands += b"".join(b"*2\r\n$3\r\nGET\r\n$%d\r\nk%d\r\n" % (len(b"k%d" % i), i) for i in range(n))
    commands += b"*1\r\n$4\r\nQUIT\r\n"
    got = await raw(port, commands, timeout=60)
    expected = b"+OK\r\n" * n + b"".join(b"$%d\r\n%d\r\n" % (len(b"%d" % i), i) for i in range(n)) + b"+OK\r\n"
    assert got == expected


async def test_a_client_that_does_not_read_its_replies_is_let_go(node: EpidemicStorage) -> None:
    server, port = await started(node, RespLimits(request_timeout_s=0.5))
    try:
        await node.put("big", b"x" * (1 << 20))
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * 64)  # 64 MiB of replies it will not read
        await writer.drain()

        async def let_go() -> bool:
            return server.closed["send_timeout"] == 1

        for _ in range(200):
            if await let_go():
                break
            await asyncio.sleep(0.05)
        assert await let_go()
        writer.close()
    finally:
        await server.close()


async def test_tls_with_the_http_apis_certificate(tmp_path: Path) -> None:
    files = ClusterCA(tmp_path / "ca").node("t1", "127.0.0.1")
    config = StorageConfig(
        node_id="t1", listen_addr="", data_dir=str(tmp_path / "d"), tls_cert_file=files.cert,
        tls_key_file=files.key, tls_ca_file=files.ca,
    )  # fmt: skip
    node = await StorageFactory(config).create_epidemic_storage()
    server, port = await start_resp(node, "127.0.0.1", 0, ssl_context=contexts(config).http_server)
    try:
        r = aioredis.Redis(port=port, ssl=True, ssl_ca_certs=files.ca)
        assert await r.set("secret", b"s") is True and await r.get("secret") == b"s"
        await r.aclose()
        assert await raw(port, b"*1\r\n$4\r\nPING\r\n") == b""  # plaintext: no reply, the handshake fails
    finally:
        await server.close()
        await node.close()


async def test_pipelined_plain_writes_run_together_and_keep_their_order(tmp_path: Path) -> None:
    # In 'lww' mode consecutive plain SETs of a pipeline run at once: a key written several times must keep
    # the last value, and a read after them must see it.
    node = await make_node(tmp_path, "lww")
    server, port = await start_resp(node, "127.0.0.1", 0)
    try:
        n = 2 * PIPELINE_MAX + 5
        sets = b"".join(b"*3\r\n$3\r\nSET\r\n$4\r\nsame\r\n$%d\r\n%d\r\n" % (len(b"%d" % i), i) for i in range(n))
        mixed = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        mixed += b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nb\r\n*3\r\n$3\r\nSET\r\n$1\r\nj\r\n$1\r\nc\r\n"
        mixed += b"*3\r\n$4\r\nMGET\r\n$1\r\nk\r\n$1\r\nj\r\n"
        got = await raw(port, sets + b"*2\r\n$3\r\nGET\r\n$4\r\nsame\r\n" + mixed + b"*1\r\n$4\r\nQUIT\r\n", timeout=60)
        last = b"%d" % (n - 1)
        expected = b"+OK\r\n" * n + b"$%d\r\n%s\r\n" % (len(last), last)
        expected += b"+OK\r\n$1\r\na\r\n+OK\r\n+OK\r\n*2\r\n$1\r\nb\r\n$1\r\nc\r\n+OK\r\n"
        assert got == expected
        found = await node.get("same")
        assert found is not None and found.value == last
    finally:
        await server.close()
        await node.close()
