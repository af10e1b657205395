"""Faults against real `dsm node run` processes on loopback: a process with the wrong cluster secret, malformed
frames on the peer port, garbage HTTP on the API port, and a whole cluster stopped (SIGKILL and SIGTERM) and
restarted from its data directories without losing an acknowledged write."""

from __future__ import annotations

import contextlib
import random
import re
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import dsm
from dsm.client import Client
from dsm.core import messages as m
from dsm.net import security, wire
from dsm.net.security import Keyring
from dsm.net.transport import split_addr
from procs import ENV, Proc, eventually, holds, procs_fixture  # noqa: F401 (the `procs` fixture)

pytestmark = pytest.mark.usefixtures("loopback_hosts")

SECRET = ENV["DSM_CLUSTER_SECRET"]
OTHER_SECRET = "another-cluster-secret-000002"
REJECTED = re.compile(r'^dsm_connections_rejected_total\{reason="([^"]+)"\} (\S+)$', re.MULTILINE)


def metrics(p: Proc) -> str:
    with urllib.request.urlopen(p.url + "/metrics", timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode())


def rejected(p: Proc) -> dict[str, float]:
    """The node's `dsm_connections_rejected_total` counters by reason."""
    return {reason: float(value) for reason, value in REJECTED.findall(metrics(p))}


def alive_ids(p: Proc) -> set[str]:
    return {member["id"] for member in p.client.members() if member["state"] == "alive"}


def member_ids(p: Proc) -> set[str]:
    return {member["id"] for member in p.client.members()}


def closed_by_peer(sock: socket.socket, timeout: float = 15.0) -> bool:
    """Reads (and drops) whatever comes until the other side closes: True, or False if it is still open
    after `timeout` s."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True  # closed with our unread bytes in its buffer: a reset
    except TimeoutError:
        return False
    return False


# --------------------------------------------------------------------------------------------- wrong secret


@pytest.mark.slow
def test_a_process_with_another_secret_never_joins_nor_exchanges_writes(procs: list[Proc], tmp_path: Path) -> None:
    g1 = Proc("g1", "127.0.0.1", tmp_path, [])
    procs.append(g1)
    g2 = Proc("g2", "127.0.0.2", tmp_path, [g1.listen])
    procs.append(g2)
    eventually(lambda: alive_ids(g1) == alive_ids(g2) == {"g1", "g2"})
    before = rejected(g1).get("auth", 0)

    # It never joins: it prints `waiting`, never `ready` (test_rejoin_processes checks what it says and refuses).
    intruder = Proc(
        "intruder", "127.0.0.3", tmp_path, [g1.listen], env={"DSM_CLUSTER_SECRET": OTHER_SECRET}, until="waiting"
    )
    procs.append(intruder)
    # Its join reaches g1 and is refused there, at the handshake, as an authentication failure.
    eventually(lambda: rejected(g1).get("auth", 0) > before)

    intruder.client.put("from-intruder", b"injected")
    g1.client.put("from-g1", b"good")
    # The good nodes replicate between themselves (the control for the window below)...
    eventually(lambda: holds(g2, "from-g1", b"good"))
    # ...while for several gossip, membership-sync and anti-entropy periods nothing crosses the secret.
    window_end = time.monotonic() + 4.0
    while time.monotonic() < window_end:
        assert member_ids(g1) == member_ids(g2) == {"g1", "g2"}
        assert member_ids(intruder) == {"intruder"}
        assert g1.client.get("from-intruder") is None
        assert g2.client.get("from-intruder") is None
        assert intruder.client.get("from-g1") is None
        time.sleep(0.1)

    g2.client.put("from-g2", b"still replicating")
    eventually(lambda: holds(g1, "from-g2", b"still replicating"))
    assert g1.client.get("from-intruder") is None and intruder.client.get("from-g2") is None
    assert rejected(g1)["auth"] > before
    # The intruder's side of the story: it never got a member to answer it.
    assert alive_ids(intruder) == {"intruder"}


# ------------------------------------------------------------------------------------------ malformed frames


def _send_frame(sock: socket.socket, frame: bytes) -> None:
    # The node may have closed already (on an oversized length, before the rest arrived): the caller checks.
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        sock.sendall(frame)


def _read_frame(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed mid-frame")
            data += chunk
        return data

    return exactly(wire.frame_length(exactly(wire.LENGTH.size)))


def _handshake(sock: socket.socket) -> security.Channel:
    """Connects as a node holding the cluster secret would: Handshake, the node's reply, a sealed Confirm."""
    sock.settimeout(10)
    initiator = security.Initiator(Keyring(SECRET), "intruder", "")
    sock.sendall(initiator.first_frame())
    channel, confirm = initiator.finish(_read_frame(sock))
    sock.sendall(confirm)
    return channel


def _frame(type_id: int, body: bytes, flags: int = 0, version: int = wire.PROTOCOL_VERSION) -> bytes:
    """A frame whose length field is right for what follows it."""
    return wire.LENGTH.pack(wire.HEADER.size + len(body)) + wire.HEADER.pack(version, flags, type_id) + body


def test_malformed_frames_close_their_connection_and_the_node_goes_on(procs: list[Proc], tmp_path: Path) -> None:
    n1 = Proc("f1", "127.0.0.1", tmp_path, [])
    procs.append(n1)
    n2 = Proc("f2", "127.0.0.2", tmp_path, [n1.listen])
    procs.append(n2)
    eventually(lambda: alive_ids(n1) == alive_ids(n2) == {"f1", "f2"})
    before = rejected(n1)
    host, port = split_addr(n1.listen)
    rng = random.Random(20240605)
    key = security.key_id(SECRET.encode())
    hello_body = security.Initiator(Keyring(SECRET), "intruder", "").first_frame()[wire.PREFIX :]

    # What each connection sends, and the rejection reason it must be counted under (None: any reason; the
    # node reads random bytes as whatever frame their first bytes announce).
    attacks: list[tuple[str, bytes, str | None]] = [
        ("random garbage", rng.randbytes(4096), None),
        ("an HTTP request on the peer port", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "too_large"),
        ("a length over MAX_FRAME, nothing after it", wire.LENGTH.pack(wire.MAX_FRAME + 1), "too_large"),
        ("the largest length field", wire.LENGTH.pack(0xFFFFFFFF) + rng.randbytes(64), "too_large"),
        ("a length shorter than the header", wire.LENGTH.pack(2) + b"\x01\x00", "truncated"),
        (
            "a frame of another protocol version",
            _frame(wire.MessageType.HANDSHAKE, hello_body, version=99),
            "bad_version",
        ),
        ("a frame with unknown flags", _frame(wire.MessageType.HANDSHAKE, hello_body, flags=0x80), "bad_flags"),
        ("a Handshake whose body is not msgpack", _frame(wire.MessageType.HANDSHAKE, b"\xc1\xc1\xc1"), "bad_body"),
        ("a Handshake of the wrong arity", _frame(wire.MessageType.HANDSHAKE, b"\x92\xa1x\xc4\x00"), "bad_body"),
        (
            "a Handshake with fields of the wrong types",
            _frame(wire.MessageType.HANDSHAKE, b"\x94\x01\x02\x03\x04"),
            "bad_field",
        ),
        (
            "a Handshake with a short Noise message",
            wire.encode_frame(wire.Handshake("intruder", "", key, b"n")),
            "auth",
        ),
        ("a first frame that is not a Handshake", wire.encode_frame(m.Unlink("intruder")), "handshake"),
    ]
    for what, payload, _reason in attacks:
        with socket.create_connection((host, port), timeout=10) as sock:
            _send_frame(sock, payload)
            assert closed_by_peer(sock), f"{what}: the node kept the connection open"

    # Past the handshake with the right secret, a frame that does not open, a plain frame, a sealed frame
    # with a bad body: each closes the connection.
    with socket.create_connection((host, port), timeout=10) as sock:
        _handshake(sock)
        sock.sendall(_frame(wire.MessageType.PING, rng.randbytes(64), flags=wire.FLAG_SEALED))
        assert closed_by_peer(sock), "a sealed frame that does not open: the connection stayed open"
    with socket.create_connection((host, port), timeout=10) as sock:
        _handshake(sock)
        sock.sendall(wire.encode_frame(m.Unlink("intruder")))
        assert closed_by_peer(sock), "a plain frame on a sealed connection: the connection stayed open"
    with socket.create_connection((host, port), timeout=10) as sock:
        channel = _handshake(sock)
        sock.sendall(channel.encode(m.Ping("not an int", 1, 2, ())))
        assert closed_by_peer(sock), "a sealed Ping with fields of the wrong types: the connection stayed open"
    attacks_after_handshake = {"auth": 2, "bad_field": 1}

    # Every connection was counted under its reason.
    expected: dict[str, int] = {}
    for _what, _payload, reason in attacks:
        if reason is not None:
            expected[reason] = expected.get(reason, 0) + 1
    for reason, count in attacks_after_handshake.items():
        expected[reason] = expected.get(reason, 0) + count
    after = rejected(n1)
    for reason, count in expected.items():
        assert after.get(reason, 0) - before.get(reason, 0) >= count, (reason, before, after)
    total = len(attacks) + sum(attacks_after_handshake.values())
    assert sum(after.values()) - sum(before.values()) >= total, (before, after)

    # The node still serves its API and replicates both ways with its peer.
    assert n1.client.health()["status"] == "ok"
    n1.client.put("after-frames-1", b"one")
    n2.client.put("after-frames-2", b"two")
    eventually(lambda: holds(n2, "after-frames-1", b"one") and holds(n1, "after-frames-2", b"two"))
    assert alive_ids(n1) == alive_ids(n2) == {"f1", "f2"}
    assert n1.proc.poll() is None


# ------------------------------------------------------------------------------------------ a flood of refusals

#: A node id that, printed raw, would start a log line of its own.
FORGED_ID = "n9\n2024-01-01 00:00:00,000 WARNING dsm.net: member n3 dead"
#: A log line that the forged id would have produced (what must never appear).
FORGED_LINE = re.compile(r"^\S+ \S+ WARNING dsm\.net: member n3 dead", re.MULTILINE)
#: The most log lines a burst of refusals may cost: one per reason (a handful here), whatever the burst.
LOG_LINES_MAX = 8


def _log_lines(stderr: str, since: str) -> list[str]:
    """The log lines (each starting with a date) after the first one containing `since`."""
    lines = [line for line in stderr.splitlines() if re.match(r"^\d{4}-\d\d-\d\d ", line)]
    start = next(i for i, line in enumerate(lines) if since in line)
    return lines[start + 1 :]


def test_a_flood_of_bad_handshakes_is_counted_not_logged_line_by_line(procs: list[Proc], tmp_path: Path) -> None:
    node = Proc("q1", "127.0.0.1", tmp_path, [], extra=["--log-level", "INFO"])
    procs.append(node)
    before = rejected(node)
    host, port = split_addr(node.listen)
    burst = 300

    def attack(payload: bytes) -> None:
        for _ in range(burst):
            with socket.create_connection((host, port), timeout=10) as sock:
                _send_frame(sock, payload)
                answer = wire.decode_frame(_read_frame(sock))
                assert isinstance(answer, wire.Refuse), f"the node answered {answer!r}"
                assert closed_by_peer(sock)

    # (On 8b9edb9 each refusal logged a WARNING: the node's stderr pipe, which nobody reads until it stops,
    # filled after about 400 and the node stalled in its logging, leaving these connections open.)
    # A length no handshake frame has; then a Handshake whose claimed node id would forge a log line, signed
    # with the right secret and with another one (the id is checked before the secret is).
    attack(b"\xff\xff\xff\xff")
    for secret in (SECRET, OTHER_SECRET):
        initiator = security.Initiator(Keyring(secret), FORGED_ID, "")
        attack(initiator.first_frame())
    # A well-formed id with another secret: refused for the secret.
    attack(security.Initiator(Keyring(OTHER_SECRET), "q9", "").first_frame())

    # Every refusal is counted under its reason ...
    after = rejected(node)
    assert after.get("too_large", 0) - before.get("too_large", 0) == burst, after
    assert after.get("bad_field", 0) - before.get("bad_field", 0) == 2 * burst, after
    assert after.get("auth", 0) - before.get("auth", 0) == burst, after
    # ... and the node still serves.
    node.client.put("after-flood", b"ok")
    assert holds(node, "after-flood", b"ok")
    assert node.stop(signal.SIGTERM) == 0

    # The log got a few lines for 1,200 refusals, and the forged id never made a line of its own.
    logged = _log_lines(node.stderr, "HTTP on ")
    refusals = [line for line in logged if "closing connection" in line]
    assert 1 <= len(refusals) <= LOG_LINES_MAX, "\n".join(logged[:20])
    assert not FORGED_LINE.search(node.stderr), node.stderr[-3000:]
    assert "member n3 dead" not in node.stderr, node.stderr[-3000:]


# ----------------------------------------------------------------------------------------------- garbage HTTP


def _http_status(http_addr: str, request: bytes) -> int | None:
    """Sends raw bytes to the HTTP port and returns the status of the answer, or None when the node closed
    the connection without one."""
    host, port = split_addr(http_addr)
    with socket.create_connection((host, port), timeout=10) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(request)
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    if not data:
        return None
    status_line = data.split(b"\r\n", 1)[0]
    assert re.fullmatch(rb"HTTP/1\.[01] \d{3}( .*)?", status_line), data[:200]
    return int(status_line.split()[1])


MAX_VALUE = 1024
#: Where dsm's own modules are: a traceback frame under it in a node's log is a failure of the node's code.
DSM_SOURCE = str(Path(dsm.__file__).parent)


def _request(method: str, target: str, body: bytes = b"", headers: str = "") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def test_garbage_http_gets_a_4xx_never_a_500(procs: list[Proc], tmp_path: Path) -> None:
    node = Proc("h1", "127.0.0.1", tmp_path, [], env={"DSM_MAX_VALUE_BYTES": str(MAX_VALUE)})
    procs.append(node)
    node.client.put("kept", b"before")
    rng = random.Random(7)
    big = b"v" * (MAX_VALUE + 1)
    chunked = f"{len(big):x}\r\n".encode() + big + b"\r\n0\r\n\r\n"
    cases: list[tuple[str, bytes, set[int | None]]] = [
        ("a nonsense request line", b"HELLO THERE\r\n\r\n", {400, None}),
        ("binary garbage", rng.randbytes(2048) + b"\r\n\r\n", {400, None}),
        ("an HTTP version that does not exist", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", {400, 505, None}),
        ("an oversized header", _request("GET", "/health", headers="X-Big: " + "a" * 100_000 + "\r\n"), {400, 431}),
        ("ten thousand headers", _request("GET", "/health", headers="X-H: v\r\n" * 10_000), {400, 431}),
        ("an oversized URL", _request("GET", "/v1/kv/" + "k" * 100_000), {400, 414}),
        ("a method that does not exist", _request("FROB", "/v1/kv/x"), {400, 405, 501}),
        ("a method with bad characters", _request("G@T", "/v1/kv/x"), {400, 405, 501}),
        ("a method the path does not take", _request("PATCH", "/v1/kv/x", b"v"), {405}),
        ("POST on a key", _request("POST", "/v1/kv/x", b"v"), {405}),
        ("a bad Content-Length", _request("PUT", "/v1/kv/x", headers="Content-Length: abc\r\n"), {400}),
        ("a value over max_value_bytes", _request("PUT", "/v1/kv/x", big), {413}),
        (
            "a chunked value over max_value_bytes",
            _request("PUT", "/v1/kv/x", headers="Transfer-Encoding: chunked\r\n") + chunked,
            {413},
        ),
        ("a PUT with a bad consistency", _request("PUT", "/v1/kv/x?consistency=bogus", b"v"), {400}),
        ("a GET with a bad consistency", _request("GET", "/v1/kv/kept?consistency=bogus"), {400}),
        ("a DELETE with a bad consistency", _request("DELETE", "/v1/kv/kept?consistency=%00%ff"), {400}),
        ("a bad context", _request("PUT", "/v1/kv/x", b"v", headers="X-DSM-Context: !!not base64!!\r\n"), {400}),
        ("a key with a NUL", _request("PUT", "/v1/kv/a%00b", b"v"), {400}),
        ("a key over max_key_bytes", _request("PUT", "/v1/kv/" + "k" * 2000, b"v"), {400}),
        ("a bad listing limit", _request("GET", "/v1/kv?limit=-5"), {400}),
        ("an unknown path", _request("GET", "/v2/nothing"), {404}),
    ]
    for what, request, allowed in cases:
        status = _http_status(node.http, request)
        assert status in allowed, f"{what}: HTTP {status}, expected one of {allowed}"
        assert status is None or 400 <= status < 500, f"{what}: HTTP {status}"

    # At the limit exactly a value is taken (so the 413 above was the configured limit, not another one).
    assert _http_status(node.http, _request("PUT", "/v1/kv/at-limit", b"v" * MAX_VALUE)) == 200
    # Nothing refused was written, and the node serves normal requests.
    assert node.client.get("x") is None
    assert holds(node, "kept", b"before")
    assert holds(node, "at-limit", b"v" * MAX_VALUE)
    node.client.put("after", b"garbage")
    assert holds(node, "after", b"garbage")
    assert node.client.health()["status"] == "ok"
    assert node.stop(signal.SIGTERM) == 0
    # No request went through a failing handler of the node (a traceback with a frame in dsm's own code).
    assert DSM_SOURCE not in node.stderr, node.stderr


def test_unparseable_http_is_not_logged_as_an_error(procs: list[Proc], tmp_path: Path) -> None:
    node = Proc("h2", "127.0.0.1", tmp_path, [])
    procs.append(node)
    for request in (
        _request("GET", "/health", headers="X-Big: " + "a" * 100_000 + "\r\n"),
        _request("PUT", "/v1/kv/x", headers="Content-Length: abc\r\n"),
        b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
    ):
        assert _http_status(node.http, request) == 400
    assert node.client.health()["status"] == "ok"
    # Counted instead of logged as an error with a traceback (aiohttp's default).
    metrics = urllib.request.urlopen(node.url + "/metrics", timeout=10).read().decode()
    counted = sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("dsm_http_bad_requests_total")
    )
    assert counted == 3, metrics
    assert node.stop(signal.SIGTERM) == 0
    assert "Traceback" not in node.stderr and " ERROR " not in node.stderr, node.stderr


# ------------------------------------------------------------------------------- a whole cluster restarted


def test_a_restarted_cluster_keeps_every_acknowledged_write(procs: list[Proc], tmp_path: Path) -> None:
    hosts = {"r1": "127.0.0.1", "r2": "127.0.0.2", "r3": "127.0.0.3"}
    first = Proc("r1", hosts["r1"], tmp_path, [])
    nodes = {"r1": first}
    for name in ("r2", "r3"):
        nodes[name] = Proc(name, hosts[name], tmp_path, [first.listen])
    procs.extend(nodes.values())
    eventually(lambda: all(alive_ids(p) == set(hosts) for p in nodes.values()))

    # 300 keys, 100 written on each node by its own writer thread at once; one in five is then updated
    # with the context of a read (on the same node), so its final value is the second one.
    acked: dict[str, dict[str, bytes]] = {name: {} for name in nodes}
    failures: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            with Client(nodes[name].url) as client:
                for i in range(100):
                    key = f"{name}/k{i:03d}"
                    value = f"{name}:{i}:first".encode()
                    client.put(key, value)
                    acked[name][key] = value
                    if i % 5 == 0:
                        got = client.get(key)
                        assert got is not None and got.value == value
                        value = f"{name}:{i}:second".encode()
                        client.put(key, value, context=got.context)
                        acked[name][key] = value
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(name,)) for name in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert sum(len(keys) for keys in acked.values()) == 300

    # Stop every node at once, without waiting for replication: r2 with SIGKILL, the others with SIGTERM.
    assert nodes["r2"].stop(signal.SIGKILL) == -signal.SIGKILL
    assert nodes["r1"].stop(signal.SIGTERM) == 0
    assert nodes["r3"].stop(signal.SIGTERM) == 0

    # r2 first, alone (no peer could hand it anything): it holds every write it acknowledged before SIGKILL.
    # Once it saved its member table it waits for r1 and r3 (issue 17) while serving local reads; before that
    # (a fast run) it starts as a cluster of its own: either way it answers.
    restarted = {"r2": Proc("r2", hosts["r2"], tmp_path, [], until="any")}
    procs.append(restarted["r2"])
    missing = [k for k, v in acked["r2"].items() if not holds(restarted["r2"], k, v)]
    assert not missing, f"r2 lost {len(missing)} acknowledged writes after SIGKILL: {missing[:10]}"
    for name in ("r1", "r3"):
        restarted[name] = Proc(name, hosts[name], tmp_path, [restarted["r2"].listen])
        procs.append(restarted[name])
    eventually(lambda: all(alive_ids(p) == set(hosts) for p in restarted.values()), timeout=30)

    every = {k: v for keys in acked.values() for k, v in keys.items()}
    confirmed: dict[str, set[str]] = {name: set() for name in restarted}

    def all_present() -> bool:
        for name, p in restarted.items():
            for key, value in every.items():
                if key in confirmed[name]:
                    continue
                if not holds(p, key, value):
                    return False
                confirmed[name].add(key)
        return True

    eventually(all_present, timeout=40)
    # A last full pass: every acknowledged write, with its final value, on every node.
    for name, p in restarted.items():
        wrong = [k for k, v in every.items() if not holds(p, k, v)]
        assert not wrong, f"{name}: {len(wrong)} acknowledged writes missing or stale: {wrong[:10]}"
        assert p.client.list(limit=1000).keys == sorted(every), name
