"""The client and the `dsm` commands pointed at an HTTP server that is not a DSM node: they say so, instead of
reading its 404 as "not found" (or its page as a value).

The foreign server is a real one (the standard library's `http.server` on port 0, in a thread); the clients
are the library's `Client` and `AsyncClient` and the `dsm` command as a subprocess. A DSM node's absent key
still reads as absent (tests/test_cli.py and tests/net/test_client.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dsm.client import AsyncClient, Client, NotDSMError

DSM = [sys.executable, "-m", "dsm.cli"]


class _Site(BaseHTTPRequestHandler):
    """A plain web site: /index.html is a page, every other path the standard 404 page; no write allowed."""

    def do_GET(self) -> None:
        if self.path == "/index.html":
            page = b"<html><body>a web site</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
        else:
            self.send_error(404)  # text/html, as most servers answer

    def do_PUT(self) -> None:
        self.send_error(405)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _EverythingIsAPage(_Site):
    """A server that answers 200 with a page on every path (a catch-all route, a captive portal)."""

    def do_GET(self) -> None:
        self.path = "/index.html"
        super().do_GET()


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def site() -> Iterator[str]:
    yield from _serve(_Site)


@pytest.fixture
def portal() -> Iterator[str]:
    yield from _serve(_EverythingIsAPage)


def dsm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DSM, *args], capture_output=True, text=True, timeout=60)


def test_dsm_get_against_another_server_says_it_is_not_a_dsm_node(site: str) -> None:
    got = dsm("get", "k", "--node", site)
    assert got.returncode == 1 and "Traceback" not in got.stderr, got.stderr
    assert "not found" not in got.stderr
    assert f"the server at {site} is not a DSM node's HTTP API" in got.stderr and "HTTP 404" in got.stderr


@pytest.mark.parametrize("command", [["put", "k", "v"], ["delete", "k"], ["list"], ["members"], ["status"]])
def test_every_client_command_says_it(site: str, command: list[str]) -> None:
    result = dsm(*command, "--node", site)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"the server at {site} is not a DSM node's HTTP API" in result.stderr


def test_a_page_is_not_read_as_a_value(portal: str) -> None:
    got = dsm("get", "k", "--node", portal)
    assert got.returncode == 1 and "<html>" not in got.stdout, got.stdout
    assert f"the server at {portal} is not a DSM node's HTTP API" in got.stderr and "X-DSM-Context" in got.stderr
    listed = dsm("list", "--node", portal)
    assert (
        listed.returncode == 1 and "is not a DSM node's HTTP API" in listed.stderr and "Traceback" not in listed.stderr
    )


def test_the_clients_raise_not_dsm(site: str, portal: str) -> None:
    with Client(site) as client:
        with pytest.raises(NotDSMError) as caught:
            client.get("k")
        assert caught.value.status == 404 and caught.value.code == "not_dsm" and caught.value.where == site
        with pytest.raises(NotDSMError):
            client.put("k", b"v")
        with pytest.raises(NotDSMError):
            client.health()
    with Client(portal) as client, pytest.raises(NotDSMError):
        client.get("k")

    async def main() -> None:
        async with AsyncClient(site) as client:
            with pytest.raises(NotDSMError):
                await client.get("k")
            with pytest.raises(NotDSMError):
                await client.list()
        async with AsyncClient(portal) as client:
            with pytest.raises(NotDSMError):
                await client.get("k")
            with pytest.raises(NotDSMError):
                await client.members()

    asyncio.run(main())
