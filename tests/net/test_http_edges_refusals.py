"""What the HTTP API refuses, on real `dsm node run` processes and raw sockets: a query parameter given twice
or one a route does not take (the health routes included), a body declared larger than max_value_bytes
(refused before it is read), a client that goes away in the middle of its body (a counted, quiet close), and
a flood of unparseable requests (every one counted, the log spared)."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

from procs import Proc, procs_fixture  # noqa: F401  (the `procs` fixture)
from test_http_edges import as_json, raw, request

#: A bound on how long the node may take to answer, so that a node that waits (for a body that never
#: comes) fails the test instead of hanging it; not a timing threshold: every answer here comes at once.
WAIT_S = 30.0


def metric(node: Proc, name: str, label: str) -> float:
    """One counter of the node's /metrics (0 when absent)."""
    _, _, body = raw(node.http, request("GET", "/metrics"))
    found = re.search(rf"^{name}\{{{label}\}} (\S+)$", body.decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_repeated_query_parameter_is_a_400(tmp_path: Path, procs: list[Proc]) -> None:
    node = Proc("d1", "127.0.0.1", tmp_path, [])
    procs.append(node)
    for method, target in (
        ("PUT", "/v1/kv/x?consistency=local&consistency=quorum"),
        ("PUT", "/v1/kv/x?consistency=local&consistency=local"),
        ("GET", "/v1/kv/x?consistency=quorum&consistency=local"),
        ("DELETE", "/v1/kv/x?consistency=local&consistency=all"),
        ("GET", "/v1/kv?prefix=a&prefix=b"),
        ("GET", "/v1/kv?limit=1&limit=1000"),
        ("GET", "/v1/watch?prefix=a&prefix=b"),
    ):
        status, _, body = raw(node.http, request(method, target, body=b"v" if method == "PUT" else b""))
        assert status == 400 and as_json(body)["error"]["code"] == "duplicate_parameter", (method, target, body)
    # Nothing was written by the refused PUTs; one parameter once is fine.
    assert node.client.get("x") is None
    status, _, _ = raw(node.http, request("PUT", "/v1/kv/x?consistency=local", body=b"v"))
    assert status == 200


def test_every_route_refuses_a_query_parameter_it_does_not_take(tmp_path: Path, procs: list[Proc]) -> None:
    node = Proc("d2", "127.0.0.1", tmp_path, [])
    procs.append(node)
    for method, path in (
        ("GET", "/health"),
        ("GET", "/health/live"),
        ("GET", "/health/ready"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/members"),
        ("GET", "/v1/topology"),
        ("DELETE", "/v1/members/d9"),
    ):
        status, _, body = raw(node.http, request(method, path + "?x=1"))
        assert status == 400 and as_json(body)["error"]["code"] == "unknown_parameter", (path, body)
        status, _, body = raw(node.http, request(method, path))
        assert status != 400, (path, body)  # the route itself answers (200, or 404 for the unknown member)


def test_a_body_declared_larger_than_max_value_bytes_is_refused_before_it_is_read(
    tmp_path: Path, procs: list[Proc]
) -> None:
    node = Proc("d3", "127.0.0.1", tmp_path, [], env={"DSM_MAX_VALUE_BYTES": "1024"})
    procs.append(node)
    host, port = node.http.rsplit(":", 1)
    for expect in (b"", b"Expect: 100-continue\r\n"):
        with socket.create_connection((host, int(port)), timeout=WAIT_S) as sock:
            # One byte of a body that declares 99,999,999,999: the answer comes without the rest.
            sock.sendall(b"PUT /v1/kv/x HTTP/1.1\r\nHost: n\r\nContent-Length: 99999999999\r\n" + expect + b"\r\nv")
            answer = b""
            while chunk := sock.recv(65536):  # until the node closes the connection
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]  # no "100 Continue" first
        assert as_json(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "too_large"
    # At the limit a declared body is read as before.
    status, _, _ = raw(node.http, request("PUT", "/v1/kv/x", body=b"v" * 1024))
    assert status == 200 and node.client.get("x") is not None


def test_a_client_gone_in_the_middle_of_its_body_is_counted_not_logged(tmp_path: Path, procs: list[Proc]) -> None:
    node = Proc("d4", "127.0.0.1", tmp_path, [])
    procs.append(node)
    host, port = node.http.rsplit(":", 1)
    sent = 5
    for i in range(sent):
        with socket.create_connection((host, int(port)), timeout=WAIT_S) as sock:
            sock.sendall(f"PUT /v1/kv/k{i} HTTP/1.1\r\nHost: n\r\nContent-Length: 10\r\n\r\nv".encode())
    counted = 0.0
    for _ in range(1000):  # each close is noticed as its handler reads (a liveness bound, not a timing)
        counted = metric(node, "dsm_http_connections_closed_total", 'reason="client_gone"')
        if counted >= sent:
            break
        time.sleep(0.01)
    assert counted == sent
    assert node.client.get("k0") is None
    node.client.put("after", b"ok")
    assert node.stop(signal.SIGTERM) == 0
    assert "Traceback" not in node.stderr and "Error handling request" not in node.stderr, node.stderr


def test_a_flood_of_unparseable_requests_is_counted_and_logged_once_per_kind(tmp_path: Path, procs: list[Proc]) -> None:
    node = Proc("d5", "127.0.0.1", tmp_path, [], extra=["--log-level", "INFO"])
    procs.append(node)
    burst = 300
    floods = (
        b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",  # HTTP version
        b"\xff\xfe garbage\r\n\r\n",  # a method that is not one (aiohttp logs those at DEBUG: never counted before)
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Forged: a\x00b\r\n\r\n",  # a NUL in a header
    )
    for payload in floods:
        for _ in range(burst):
            status, _, _ = raw(node.http, payload)
            assert status == 400
    total = sum(
        float(value)
        for value in re.findall(
            r"^dsm_http_bad_requests_total\{[^}]*\} (\S+)$",
            raw(node.http, request("GET", "/metrics"))[2].decode(),
            re.M,
        )
    )
    assert total == burst * len(floods)
    assert node.stop(signal.SIGTERM) == 0
    lines = [line for line in node.stderr.splitlines() if "unparseable HTTP request" in line]
    assert 1 <= len(lines) <= 2 * len(floods), "\n".join(lines[:20])
