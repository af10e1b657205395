"""HTTP sent to a node's peer port by mistake (`curl` or a browser given the wrong port) gets a 400 whose
one-line text names the HTTP API, instead of a connection closed without a word; the refusal is counted and
the port keeps serving its members.

A real node process and a real HTTP client (`urllib`, `http.client`); an in-process `Transport` over real
loopback sockets for the case where the HTTP address is known when the transport starts."""

from __future__ import annotations

import asyncio
import http.client
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dsm.core.messages import Ping
from dsm.net.security import Keyring
from dsm.net.transport import PeerLimits, Transport
from procs import Proc, eventually, procs_fixture  # noqa: F401  (the `procs` fixture)

pytestmark = pytest.mark.usefixtures("loopback_hosts")


def test_a_browser_on_a_nodes_peer_port_is_told_where_the_api_is(tmp_path: Path, procs: list[Proc]) -> None:
    node = Proc("h1", "127.0.0.1", tmp_path, [])
    procs.append(node)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://{node.listen}/v1/kv/k", timeout=10)
    answer = caught.value
    assert answer.code == 400 and answer.headers["Connection"] == "close"
    hint = answer.read().decode()
    assert hint.startswith("this is a DSM peer port") and hint.count("\n") == 1
    # The node was started with --http 127.0.0.1:0: its HTTP port is not known to the peer listener.
    assert "the HTTP API is on the node's --http address" in hint

    # Every method of the list, and the node still serves its API and counts each refusal.
    for method in ("GET", "PUT", "POST", "HEAD", "DELETE", "OPTIONS", "PATCH"):
        conn = http.client.HTTPConnection(*node.listen.rsplit(":", 1), timeout=10)
        conn.request(method, "/", body=b"x" if method in ("PUT", "POST", "PATCH") else None)
        response = conn.getresponse()
        assert response.status == 400, method
        body = response.read()
        assert method == "HEAD" or b"DSM peer port" in body, (method, body)
        conn.close()
    # `dsm get` given the peer port instead of the HTTP one shows the hint.
    got = subprocess.run(
        [sys.executable, "-m", "dsm.cli", "get", "k", "--node", node.listen], capture_output=True, text=True, timeout=60
    )
    assert got.returncode == 1 and "Traceback" not in got.stderr, got.stderr
    assert "is not a DSM node's HTTP API" in got.stderr and "this is a DSM peer port" in got.stderr
    metrics = urllib.request.urlopen(node.url + "/metrics", timeout=10).read().decode()
    assert 'dsm_connections_rejected_total{reason="http_request"} 9.0' in metrics


async def test_the_hint_names_the_http_address_when_known() -> None:
    limits = PeerLimits(http_addr="127.0.0.1:7480")
    node = Transport("a", "127.0.0.1:0", lambda peer, message: None, Keyring("http-hint-secret-000001"), limits=limits)
    await node.start()
    other = Transport("b", "127.0.0.1:0", lambda peer, message: None, Keyring("http-hint-secret-000001"))
    await other.start()
    try:

        def fetch() -> tuple[int, str]:
            try:
                urllib.request.urlopen(f"http://{node.addr}/", timeout=10)
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()
            raise AssertionError("the peer port answered 2xx")

        status, text = await asyncio.to_thread(fetch)
        assert status == 400 and text.endswith("the HTTP API is on http://127.0.0.1:7480\n")
        assert node.stats.rejected == {"http_request": 1}
        # A member's connection is not taken for HTTP: its frames still arrive.
        other.send("a", node.addr, Ping(1, "b", "a", ()))
        await asyncio.wait_for(_until(lambda: node.stats.frames_in["Ping"] == 1), 10)
        assert node.stats.rejected == {"http_request": 1}
    finally:
        await other.close()
        await node.close()


async def test_bytes_that_only_start_like_a_method_are_refused_as_before() -> None:
    node = Transport("a", "127.0.0.1:0", lambda peer, message: None, Keyring("http-hint-secret-000001"))
    await node.start()
    try:
        host, port = node.addr.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GETX / HTTP/1.1\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert not answer.startswith(b"HTTP/") and node.stats.rejected == {"too_large": 1}
    finally:
        await node.close()


async def _until(check: object) -> None:
    while not check():  # type: ignore[operator]
        await asyncio.sleep(0.01)
