"""The HTTP server's bounds on real `dsm node run` processes and raw sockets (functional, not timed: the
figures are in bench/http_conn_bench.py): a half-sent request is closed while normal requests are served,
an idle keep-alive connection is closed, a slow body gets a 408, a client that does not read its answer
is let go, the connection cap makes room by closing the oldest connection that is not busy and answers
503 + Retry-After when all are busy, and the node raises its open-files limit at start."""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsm.client import Client
from procs import ENV, Proc, procs_fixture  # noqa: F401  (the `procs` fixture)

#: Short deadlines, so that each close happens within the test; the waits below are liveness bounds.
FAST = {"DSM_HTTP_HEADER_TIMEOUT_MS": "300", "DSM_HTTP_IDLE_TIMEOUT_MS": "300", "DSM_HTTP_BODY_TIMEOUT_MS": "300"}
WAIT_S = 20.0


def connect(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=WAIT_S)


def closed_by_node(sock: socket.socket) -> bytes:
    """Reads until the node closes the connection (a socket timeout fails the test); what it sent."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def closes(node: Proc, reason: str) -> float:
    text = metrics(node)
    found = re.search(rf'dsm_http_connections_closed_total{{reason="{reason}"}} (\S+)', text)
    assert found, text
    return float(found.group(1))


def metrics(node: Proc) -> str:
    sock = connect(node.http)
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n")
    return closed_by_node(sock).decode()


def test_a_half_sent_request_is_closed_and_other_requests_are_served(tmp_path: Path, procs: list[Proc]) -> None:
    node = Proc("b1", "127.0.0.1", tmp_path, [], env=FAST)
    procs.append(node)
    half = connect(node.http)
    half.sendall(b"PUT /v1/kv/k HTTP/1.1\r\nHost: n\r\nContent-Le")  # and nothing more
    trickle = connect(node.http)
    with Client(node.url) as c:
        c.put("k", b"served")  # while both are held
        # A client that trickles its headers a byte at a time does not push its deadline back.
        for byte in b"GET /v1/kv/k HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
            try:
                trickle.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.02)
        else:
            raise AssertionError("a trickling client was never closed")
        assert closed_by_node(half) == b""  # closed without an answer
        got = c.get("k")
        assert got is not None and got.value == b"served"
    assert closes(node, "header_timeout") >= 2
    assert node.stop() == 0 and "Traceback" not in node.stderr


def test_an_idle_keepalive_connection_is_closed(tmp_path: Path, procs: list[Proc]) -> None:
    node = Proc("b2", "127.0.0.1", tmp_path, [], env=FAST)
    procs.append(node)
    sock = connect(node.http)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: n\r\n\r\n")  # keep-alive (HTTP/1.1's default)
    answer = closed_by_node(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"status": "ok"' in answer
    assert closes(node, "idle_timeout") >= 1


def test_a_body_slower_than_its_timeout_gets_a_408(tmp_path: Path, procs: list[Proc]) -> None:
    node = Proc("b3", "127.0.0.1", tmp_path, [], env=FAST)
    procs.append(node)
    sock = connect(node.http)
    sock.sendall(b"PUT /v1/kv/slow HTTP/1.1\r\nHost: n\r\nContent-Length: 100\r\n\r\n0123456789")
    answer = closed_by_node(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"code": "body_timeout"' in answer and b"Connection: close" in answer
    assert node.client.get("slow") is None  # nothing written
    assert closes(node, "body_timeout") == 1


def test_a_client_that_does_not_read_its_answer_is_let_go(tmp_path: Path, procs: list[Proc]) -> None:
    size = 24 * 1024 * 1024  # more than the sockets' buffers hold
    node = Proc("b6", "127.0.0.1", tmp_path, [], env={**FAST, "DSM_MAX_VALUE_BYTES": str(size)})
    procs.append(node)
    with Client(node.url, timeout=60) as c:
        c.put("big", b"x" * size)
    host, port = node.http.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(WAIT_S)
    sock.connect((host, int(port)))
    sock.sendall(b"GET /v1/kv/big HTTP/1.1\r\nHost: n\r\n\r\n")
    time.sleep(2)  # reads nothing, well past the node's 0.3 s
    received = len(closed_by_node(sock))
    assert received < size, received  # the node gave up sending and closed
    assert closes(node, "send_timeout") == 1
    assert node.stop() == 0 and "Traceback" not in node.stderr, node.stderr


def test_small_answers_a_client_leaves_unread_are_bounded_too(tmp_path: Path, procs: list[Proc]) -> None:
    # Small answers go out without a send timer while the socket's buffer is empty; a client that pipelines
    # requests and reads none fills it, and from then on the same bound applies.
    node = Proc("b7", "127.0.0.1", tmp_path, [], env=FAST)
    procs.append(node)
    with Client(node.url) as c:
        c.put("small", b"s" * 8000)
    host, port = node.http.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(WAIT_S)
    sock.connect((host, int(port)))
    sock.sendall(b"GET /v1/kv/small HTTP/1.1\r\nHost: n\r\n\r\n" * 2000)  # 16 MB of answers, none read
    time.sleep(2)
    received = len(closed_by_node(sock))
    assert received < 2000 * 8000, received
    assert closes(node, "send_timeout") == 1
    assert node.stop() == 0 and "Traceback" not in node.stderr, node.stderr


@pytest.fixture
def capped(tmp_path: Path, procs: list[Proc]) -> Iterator[Proc]:
    """A node that serves at most 4 HTTP connections, with deadlines long enough to hold them."""
    node = Proc("b4", "127.0.0.1", tmp_path, [], env={"DSM_HTTP_MAX_CONNECTIONS": "4"})
    procs.append(node)
    yield node


def test_at_the_cap_the_oldest_waiting_connection_makes_room(capped: Proc) -> None:
    quiet = [connect(capped.http) for _ in range(2)]  # connected first, and nothing sent yet
    time.sleep(0.2)
    held = [connect(capped.http) for _ in range(2)]
    for sock in held:
        sock.sendall(b"GET /v1/kv/k HTTP/1.1\r\nHost: n\r\n")  # half-sent
        time.sleep(0.1)  # in order: the first is the oldest
    with Client(capped.url) as c:
        assert c.health()["status"] == "ok"  # a fifth connection: served
    # The oldest connection that has sent something made room, not the older ones that have not sent a byte
    # (under a burst they are clients whose request is on its way).
    assert closed_by_node(held[0]) == b""
    for sock in (*quiet, held[1]):
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # still open
    assert closes(capped, "evicted") >= 1
    assert capped.stop() == 0 and "Traceback" not in capped.stderr, capped.stderr


def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(capped: Proc) -> None:
    watches = []
    for _ in range(4):
        sock = connect(capped.http)
        sock.sendall(b"GET /v1/watch HTTP/1.1\r\nHost: n\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")  # a stream: busy for as long as it is open
        watches.append(sock)
    refused = connect(capped.http)
    refused.sendall(b"GET /health HTTP/1.1\r\nHost: n\r\n\r\n")
    answer = closed_by_node(refused)
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert b"Retry-After: 1" in answer and b'"code": "too_many_connections"' in answer
    for sock in watches:
        sock.close()
    deadline = time.monotonic() + WAIT_S
    while True:  # the node sees the watches go (a heartbeat or the close), then serves again
        try:
            with Client(capped.url) as c:
                assert c.health()["status"] == "ok"
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert closes(capped, "refused") >= 1
    assert capped.stop() == 0 and "Traceback" not in capped.stderr, capped.stderr


def test_the_node_raises_its_open_files_limit_and_logs_both(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard open-files limit here is {hard}: nothing to raise")
    # Started with a soft limit of 1,024 (the common default) under a higher hard one.
    limit = (
        "import os, resource, sys; nofile = resource.RLIMIT_NOFILE; "
        "resource.setrlimit(nofile, (1024, resource.getrlimit(nofile)[1])); os.execv(sys.argv[1], sys.argv[1:])"
    )
    args = [sys.executable, "-c", limit, sys.executable, "-m", "dsm.cli", "node", "run", "--node-id", "b5"]
    args += ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir", str(tmp_path / "b5")]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | ENV
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] in ("ready", "waiting"), ready
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        soft_now, hard_now = re.search(r"Max open files\s+(\S+)\s+(\S+)", limits).groups()  # type: ignore[union-attr]
        assert soft_now == hard_now != "1024", limits
    finally:
        proc.terminate()
        proc.wait(15)
    log = proc.stderr.read()
    assert re.search(rf"open files: soft limit raised from 1024 to {soft_now} \(hard limit {hard_now}\)", log), log
