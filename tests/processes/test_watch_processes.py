"""Watches that resume, against real `dsm node run` processes on loopback, through the public `AsyncClient`:
a cursor resumed on another node after 30 writes (through a sync point anti-entropy left), a watch that
outlives a restart of its node (SIGTERM, a final line, then a same-node replay), a watch whose node was
SIGKILLed (failover to a member holding a sync point of it: a replay, no resync; to one that joined after it
died: a resync), a consumer too slow for its stream (a final line with its cursor, then a resume), a cursor
taken during a partition (a relay cuts one node off) resumed on both sides once healed, and `dsm watch`. In
each, every key's final state is what the caller ends up with."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from dsm.client import AsyncClient, WatchStream
from procs import Proc, eventually, procs_fixture  # noqa: F401 (the `procs` fixture)
from relay import Relay

pytestmark = [pytest.mark.usefixtures("loopback_hosts"), pytest.mark.slow]

#: What the caller wrote: key -> value (None: deleted).
Expected = dict[str, bytes | None]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cluster(
    procs: list[Proc], tmp_path: Path, n: int = 3, http_ports: Iterable[int] = (), env: dict[str, str] | None = None
) -> list[Proc]:
    ports = list(http_ports)
    extra = ["--http", f"127.0.0.1:{ports[0]}"] if ports else None
    first = Proc("n1", "127.0.0.1", tmp_path, [], env=env, extra=extra)
    procs.append(first)
    for i in range(2, n + 1):
        procs.append(Proc(f"n{i}", f"127.0.0.{i}", tmp_path, [first.listen], env=env))
    eventually(lambda: all(len([m for m in p.client.members() if m["state"] == "alive"]) == n for p in procs))
    return list(procs)


def metrics(p: Proc) -> str:
    with urllib.request.urlopen(p.url + "/metrics", timeout=10) as response:
        return str(response.read().decode())


def sync_point_peers(p: Proc) -> int:
    """The members `p` keeps anti-entropy sync points of."""
    for line in metrics(p).splitlines():
        if line.startswith("dsm_anti_entropy_sync_point_peers "):
            return int(float(line.split()[1]))
    raise AssertionError("no dsm_anti_entropy_sync_point_peers metric")


def held(p: Proc, expected: Expected) -> bool:
    """Whether node `p` reads every key as `expected` says."""
    for key, value in expected.items():
        got = p.client.get(key)
        if (got.value if got is not None else None) != value:
            return False
    return True


def state(seen: dict[str, dict[str, Any]]) -> Expected:
    """The final state a watch's caller holds: key -> value (None: deleted)."""
    return {k: None if e["deleted"] else base64.b64decode(e["value"]) for k, e in seen.items()}


async def follow(stream: WatchStream, seen: dict[str, dict[str, Any]], done: Any, timeout_s: float = 60) -> list[Any]:
    """Reads `stream` into `seen` (key -> last event) until `done(seen)`; returns every item read."""
    items: list[Any] = []
    async with asyncio.timeout(timeout_s):
        while not done(seen):
            item = await anext(stream)
            items.append(item)
            if "key" in item:
                seen[item["key"]] = item
    return items


def writes(targets: list[Proc], count: int, expected: Expected, prefix: str = "w/") -> None:
    """`count` writes through `targets` in turn: overwrites of 12 keys, every fifth one a delete."""
    for i in range(count):
        p, key = targets[i % len(targets)], f"{prefix}{i % 12:02}"
        if i % 5 == 4:
            p.client.delete(key)
            expected[key] = None
        else:
            value = f"{i}".encode()
            p.client.put(key, value)
            expected[key] = value


async def test_a_cursor_resumes_on_another_node_after_30_writes(procs: list[Proc], tmp_path: Path) -> None:
    n1, n2, n3 = cluster(procs, tmp_path)
    expected: Expected = {}
    seen: dict[str, dict[str, Any]] = {}
    # n2 has reconciled with n1 (it does as soon as it joins, then every second here): it keeps a sync point of
    # n1 from before the cursor below.
    eventually(lambda: sync_point_peers(n2) == 2)
    async with AsyncClient(n1.url) as c1:
        stream = c1.watch("w/", values=True)
        await stream.start()
        n1.client.put("w/start", b"0")
        expected["w/start"] = b"0"
        await follow(stream, seen, lambda s: "w/start" in s)
        cursor = stream.cursor
        await stream.aclose()
    assert cursor is not None
    writes([n1, n3], 30, expected)
    n1.client.put("other", b"not under the prefix")
    eventually(lambda: held(n2, expected))
    async with AsyncClient(n2.url) as c2:
        resumed = c2.watch("w/", since=cursor, values=True)
        items = await follow(resumed, seen, lambda s: state(s) == expected)
        # Another node cannot replay n1's history: it replays its own changes since its sync point of n1
        # (no resync of the prefix), and the caller is whole.
        assert not any("resync" in item for item in items)
        assert 'dsm_watch_resumes_total{plan="sync_point"} 1.0' in metrics(n2)
        assert state(seen) == expected and "other" not in seen
        assert resumed.serving == n2.url
        # Live from there: a later write arrives once.
        n3.client.put("w/late", b"late")
        await follow(resumed, seen, lambda s: "w/late" in s)
        await resumed.aclose()


async def test_a_watch_outlives_a_restart_of_its_node(procs: list[Proc], tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    n1, n2 = cluster(procs, tmp_path, n=2, http_ports=[port])
    expected: Expected = {}
    seen: dict[str, dict[str, Any]] = {}
    async with AsyncClient(n1.url) as client:
        stream = client.watch("w/", values=True, retry_s=120)
        await stream.start()
        writes([n1], 10, expected)
        await follow(stream, seen, lambda s: state(s) == expected)
        assert await asyncio.to_thread(n1.stop, signal.SIGTERM) == 0
        # The node said goodbye with its cursor (a final line), then the client kept trying.
        with pytest.raises(TimeoutError):
            await follow(stream, seen, lambda s: False, timeout_s=1.0)
        assert stream.ends == {"shutdown": 1}
        writes([n2], 20, expected)  # while n1 is down
        restarted = await asyncio.to_thread(
            Proc, "n1", "127.0.0.1", tmp_path, [n2.listen], extra=["--http", f"127.0.0.1:{port}"]
        )
        procs[0] = restarted
        items = await follow(stream, seen, lambda s: state(s) == expected)
        # The cursor was n1's own and its store is the same: a replay, no resync.
        assert not any("resync" in item for item in items)
        assert stream.resumes >= 1 and stream.serving == restarted.url
        await stream.aclose()


@pytest.mark.parametrize("failover", ["reconciled", "joined_after"])
async def test_a_watch_fails_over_when_its_node_was_sigkilled(procs: list[Proc], tmp_path: Path, failover: str) -> None:
    """The stream's node dies without a word. A member that ran anti-entropy with it (every 300 ms here)
    keeps a sync point of it and resumes the cursor by replaying its own changes since (no resync); a member
    that joined after it died has none, and resyncs the prefix in the stream."""
    fast = {"DSM_ANTI_ENTROPY_INTERVAL_MS": "300"}
    n1, n2, n3 = cluster(procs, tmp_path, env=fast)
    expected: Expected = {}
    seen: dict[str, dict[str, Any]] = {}
    late_port = free_port("127.0.0.4")
    late_url = f"http://127.0.0.4:{late_port}"
    endpoints = [late_url] if failover == "joined_after" else [n2.url, n3.url]
    async with AsyncClient(n1.url) as client:
        stream = client.watch("w/", values=True, endpoints=endpoints, retry_s=120)
        await stream.start()
        writes([n1], 8, expected)
        await follow(stream, seen, lambda s: state(s) == expected)
        # The others hold sync points of n1 (and of each other); n1 changed nothing since the caller's cursor,
        # so every one of them covers it.
        eventually(lambda: sync_point_peers(n2) == 2 and sync_point_peers(n3) == 2)
        assert await asyncio.to_thread(n1.stop, signal.SIGKILL) == -signal.SIGKILL  # no final line
        serving = [n2, n3]
        if failover == "joined_after":
            late = await asyncio.to_thread(
                Proc, "n4", "127.0.0.4", tmp_path, [n2.listen], env=fast, extra=["--http", f"127.0.0.4:{late_port}"]
            )
            procs.append(late)
            serving = [late]
        writes([n2, n3], 30, expected)
        items = await follow(stream, seen, lambda s: state(s) == expected)
        assert state(seen) == expected and not stream.ends
        (node,) = [p for p in serving if p.url == stream.serving]
        if failover == "reconciled":
            assert not any("resync" in item for item in items)
            assert 'dsm_watch_resumes_total{plan="sync_point"} 1.0' in metrics(node)
        else:
            assert {"resync": "begin"} in items
            assert 'dsm_watch_resumes_total{plan="resync"} 1.0' in metrics(node)
        await stream.aclose()


async def test_a_consumer_too_slow_gets_a_final_cursor_and_resumes_from_it(procs: list[Proc], tmp_path: Path) -> None:
    (node,) = cluster(procs, tmp_path, n=1)
    host, port = node.http.rsplit(":", 1)
    # A reader with a tiny receive buffer that does not read while the writes go on.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    slow = http.client.HTTPConnection(host, int(port), timeout=60)
    slow.sock = sock
    slow.request("GET", "/v1/watch?prefix=s/&values=1&limit=20")
    response = slow.getresponse()
    assert response.status == 200
    start = json.loads(response.readline())
    assert list(start) == ["cursor"]
    expected: Expected = {}
    value = b"x" * 32_768
    for i in range(400):  # ~18 MB of lines with their values: more than every buffer on the way holds
        key = f"s/{i % 50:02}"
        node.client.put(key, value + str(i).encode())
        expected[key] = value + str(i).encode()
    lines = []
    deadline = time.monotonic() + 60
    while not lines or "end" not in lines[-1]:
        assert time.monotonic() < deadline
        lines.append(json.loads(response.readline()))
    slow.close()
    end = lines[-1]
    assert end["end"] == "overflow" and end["cursor"]
    events = [line for line in lines if "key" in line]
    assert 0 < len(events) < 400 and end["cursor"] == events[-1]["cursor"]
    seen = {e["key"]: e for e in events}
    async with AsyncClient(node.url) as client:
        resumed = client.watch("s/", since=end["cursor"], values=True)
        items = await follow(resumed, seen, lambda s: state(s) == expected)
        # The resume replays each key changed since, once (coalesced), not every write it missed.
        assert not any("resync" in item for item in items) and len(items) <= 50
        await resumed.aclose()
    assert state(seen) == expected
    counters = metrics(node)
    assert "dsm_watch_overflows_total 1.0" in counters
    assert 'dsm_watch_resumes_total{plan="same_node"} 1.0' in counters


def test_dsm_watch_prints_events_and_its_last_cursor_and_resumes_from_it(procs: list[Proc], tmp_path: Path) -> None:
    (node,) = cluster(procs, tmp_path, n=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | {"DSM_NODE_URL": node.url}
    command = [sys.executable, "-m", "dsm.cli", "watch", "c/"]
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert watcher.stdout is not None
        lines: list[dict[str, Any]] = []
        for i in range(100):  # until the watch is open and has seen a write
            node.client.put("c/a", str(i).encode())
            ready, _, _ = select.select([watcher.stdout], [], [], 0.1)
            if ready:
                lines.append(json.loads(watcher.stdout.readline()))
                break
        assert lines and lines[0]["key"] == "c/a"
    finally:
        watcher.send_signal(signal.SIGTERM)
        _, stderr = watcher.communicate(timeout=15)
    assert watcher.returncode == 0
    cursor = stderr.strip().rsplit("cursor=", 1)[1]
    node.client.put("c/b", b"after")
    resumed = subprocess.Popen([*command, "--since", cursor], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert resumed.stdout is not None
        keys = set()
        while "c/b" not in keys:
            keys.add(json.loads(resumed.stdout.readline())["key"])
    finally:
        resumed.send_signal(signal.SIGTERM)
        resumed.communicate(timeout=15)


async def test_a_cursor_resumes_across_a_healed_partition_on_either_side(procs: list[Proc], tmp_path: Path) -> None:
    """Three nodes that reach each other only through a relay; c is cut off from a and b while both sides
    take writes. A cursor c gave during the partition resumes, once healed, on a (a replay of a's changes
    since a sync point of c from before the partition) and on c itself (a replay of what anti-entropy
    brought), each ending with every key's final state, neither with a resync."""
    relay = Relay("127.0.0.9")
    try:
        hosts = {"a": "127.0.0.1", "b": "127.0.0.2", "c": "127.0.0.3"}
        nodes: dict[str, Proc] = {}
        for name, host in hosts.items():
            port = free_port(host)
            relay.routes[name] = f"{host}:{port}"
            env = {"DSM_ADVERTISE_ADDR": relay.listen(name)}
            nodes[name] = Proc(name, host, tmp_path, [relay.addrs["a"]] if nodes else [], port=port, env=env)
            procs.append(nodes[name])
        a, b, c = nodes["a"], nodes["b"], nodes["c"]

        def alive(p: Proc) -> set[str]:
            return {m["id"] for m in p.client.members() if m["state"] == "alive"}

        eventually(lambda: all(alive(p) == set(hosts) for p in nodes.values()), 30)
        expected: Expected = {}
        seen: dict[str, dict[str, Any]] = {}
        async with AsyncClient(c.url) as client:
            stream = client.watch("w/", values=True)
            await stream.start()
            writes([a], 6, expected)
            await follow(stream, seen, lambda s: state(s) == expected)
            eventually(lambda: sync_point_peers(a) == 2)  # a keeps sync points of b and c
            # The partition: nothing passes between c and the others.
            relay.drop_from, relay.drop_to = {hosts["c"]}, {"c"}
            relay.cut()
            side_a: Expected = {}
            writes([a, b], 20, side_a)
            side_c: Expected = {}
            writes([c], 7, side_c, prefix="w/c")
            await follow(stream, seen, lambda s: all(s.get(k, {}).get("timestamp") for k in side_c))
            cursor = stream.cursor
            await stream.aclose()
        assert cursor is not None and not held(c, side_a)  # c did not see side a's writes
        relay.drop_from, relay.drop_to = set(), set()
        relay.cut()
        expected |= side_a | side_c
        eventually(lambda: held(a, expected) and held(c, expected), 30)
        for node, plan in ((a, "sync_point"), (c, "same_node")):
            mirror = dict(seen)
            async with AsyncClient(node.url) as client:
                resumed = client.watch("w/", since=cursor, values=True)
                items = await follow(resumed, mirror, lambda s: state(s) == expected)
                assert not any("resync" in item for item in items)
                assert f'dsm_watch_resumes_total{{plan="{plan}"}} 1.0' in metrics(node)
                await resumed.aclose()
    finally:
        relay.close()
