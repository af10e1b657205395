"""Bounded HTTP connections (issue 17): half-sent requests against a node limited to 1,024 open files, and
idle keep-alive connections.

(a) One `dsm node run` process is started with its open-files limit at 1,024 (soft and hard, set in the
child before it runs, as `prlimit --nofile=1024:1024` would), so the node cannot raise it. --held
connections (default 1,100) each send the start of a request (a request line and part of a header) and
nothing more, and hold it for --hold seconds (default: the header timeout + 5 s). Meanwhile a normal
client (in its own thread) opens a new connection every 100 ms and asks `GET /health` (Connection: close),
timed from connect to the end of the answer. Reported: how many of the held connections the node closed,
how many within its header timeout (time from connect to the close seen by the client, with 0.5 s allowed
for the client to see it), the normal client's latency (max, p99) and failures. Targets: every normal
request served within 1 s, >= 90 % of the held connections closed within the header timeout.

(b) A second node (default limits); --idle connections (default 200) each send one complete `GET /health`
with keep-alive, read the answer and go quiet. Reported: how many the node closed, the time from the
answer to the close (min, max): all should close after the idle timeout (not before: 0.1 s is allowed for
the answer's way to the client), within 0.5 s of it.

    .venv/bin/python bench/http_conn_bench.py --header-timeout-ms 10000 --idle-timeout-ms 5000

Writes bench/results/http-conn.json and prints a Markdown table. With PYTHONPATH pointing at an older
checkout's src, the same script measures that code (settings it does not know are ignored by it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import pct, stop_on_sigterm

RESULTS = Path(__file__).parent / "results"
SEE_CLOSE_S = 0.5  # time allowed for the client to see a close the node made at its deadline
#: The node starts an idle timer as it has written its answer, a moment before the client has read it.
EARLY_S = 0.1
PARTIAL = b"GET /v1/kv/some-key HTTP/1.1\r\nHost: node\r\nX-Half: "


class Node:
    """A `dsm node run` process on loopback, its log (INFO) in a file."""

    def __init__(self, workdir: Path, name: str, env: dict[str, str], open_files: int | None) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")}
        environ |= {"DSM_CLUSTER_SECRET": secrets.token_hex(16)} | env
        self.log_path = workdir / f"{name}.log"
        args = [sys.executable, "-m", "dsm.cli", "node", "run", "--node-id", name, "--listen", "127.0.0.1:0"]
        args += ["--http", "127.0.0.1:0", "--data-dir", str(workdir / name), "--log-level", "INFO"]

        def limit() -> None:
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=environ, preexec_fn=limit)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{name} did not start: {self.log_path.read_text()}")
        ready = json.loads(line)
        host, port = ready["http"].rsplit(":", 1)
        self.host, self.port = host, int(port)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.log_path.read_text()


async def hold_half_sent(host: str, port: int, opened: list[float], closed: list[float | None], i: int) -> None:
    """One half-sent request: connect, send the start, wait for the node to close (or the bench to end)."""
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return  # counted as never opened
    opened[i] = loop.time()
    try:
        writer.write(PARTIAL)
        await writer.drain()
        await reader.read()  # b"" (or a reset) once the node closes it
    except OSError:
        pass
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
    closed[i] = loop.time()
    writer.transport.abort()


def normal_client(host: str, port: int, stop: threading.Event, latencies: list[float], failures: list[str]) -> None:
    """A normal client in its own thread (so that the burst of half-sent connections in this process's event
    loop does not delay it): every 100 ms a new connection, GET /health, the whole answer, 5 s at most."""
    start = time.monotonic()
    while not stop.is_set():
        began = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
        except OSError as exc:
            failures.append(f"{began - start:.2f} s: {type(exc).__name__} {exc}")
        else:
            if answer.startswith(b"HTTP/1.1 200 "):
                latencies.append(time.monotonic() - began)
            else:
                failures.append(f"{began - start:.2f} s: {answer[:60]!r}")
        stop.wait(0.1)


def close_counts(host: str, port: int) -> dict[str, float]:
    """The node's dsm_http_connections_closed_total by reason (empty for a node without them)."""
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
            text = b""
            while chunk := sock.recv(65536):
                text += chunk
    except OSError:
        return {}
    found = re.findall(rb'dsm_http_connections_closed_total\{reason="(\w+)"\} (\S+)', text)
    return {reason.decode(): float(value) for reason, value in found}


async def half_sent(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    header_s = args.header_timeout_ms / 1000
    hold_s = args.hold if args.hold else header_s + 5
    node = Node(workdir, "h1", {"DSM_HTTP_HEADER_TIMEOUT_MS": str(args.header_timeout_ms)}, open_files=1024)
    n = args.held
    opened: list[float] = [0.0] * n
    closed: list[float | None] = [None] * n
    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()
    client = threading.Thread(target=normal_client, args=(node.host, node.port, stop, latencies, failures))
    try:
        client.start()
        tasks = [asyncio.create_task(hold_half_sent(node.host, node.port, opened, closed, i)) for i in range(n)]
        await asyncio.sleep(hold_s)
        stop.set()
        closes = await asyncio.to_thread(close_counts, node.host, node.port)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        client.join()
    finally:
        log = node.stop()
    made = [i for i in range(n) if opened[i]]
    held_s = [closed[i] - opened[i] for i in made if closed[i] is not None]  # type: ignore[operator]
    in_time = sum(1 for s in held_s if s <= header_s + SEE_CLOSE_S)
    return {
        "held": n,
        "connected": len(made),
        "closed_by_node": len(held_s),
        "closed_within_header_timeout": in_time,
        "closed_within_header_timeout_pct": 100 * in_time / n,
        "held_s_max": max(held_s, default=0.0),
        "held_s_p50": pct(held_s, 50) if held_s else 0.0,
        "normal_requests": len(latencies) + len(failures),
        "normal_failures": len(failures),
        "normal_failure_reasons": failures,
        "normal_ms_max": 1000 * max(latencies, default=float("nan")),
        "normal_ms_p99": 1000 * pct(latencies, 99) if latencies else float("nan"),
        "normal_ms_p50": 1000 * pct(latencies, 50) if latencies else float("nan"),
        "header_timeout_s": header_s,
        "hold_s": hold_s,
        "node_closes": closes,
        "log_errors": sum(1 for line in log.splitlines() if " ERROR " in line),
        "log_limits": [
            line.split(": ", 1)[1] for line in log.splitlines() if "open files" in line or "HTTP on" in line
        ],
    }


async def hold_idle(host: str, port: int, answered: list[float], closed: list[float | None], i: int) -> None:
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: node\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1])
        await reader.readexactly(length)
        answered[i] = loop.time()
        await reader.read()  # then idle until the node closes it
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    except asyncio.CancelledError:
        return
    if answered[i]:
        closed[i] = loop.time()


async def idle(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    idle_s = args.idle_timeout_ms / 1000
    node = Node(workdir, "i1", {"DSM_HTTP_IDLE_TIMEOUT_MS": str(args.idle_timeout_ms)}, open_files=None)
    n = args.idle
    answered: list[float] = [0.0] * n
    closed: list[float | None] = [None] * n
    try:
        tasks = [asyncio.create_task(hold_idle(node.host, node.port, answered, closed, i)) for i in range(n)]
        await asyncio.sleep(idle_s + 5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        log = node.stop()
    after = [closed[i] - answered[i] for i in range(n) if answered[i] and closed[i] is not None]  # type: ignore[operator]
    return {
        "idle": n,
        "answered": sum(1 for a in answered if a),
        "closed_by_node": len(after),
        "closed_after_timeout": sum(1 for s in after if idle_s - EARLY_S <= s <= idle_s + SEE_CLOSE_S),
        "closed_early": sum(1 for s in after if s < idle_s - EARLY_S),
        "close_after_s_min": min(after, default=0.0),
        "close_after_s_max": max(after, default=0.0),
        "idle_timeout_s": idle_s,
        "log_errors": sum(1 for line in log.splitlines() if " ERROR " in line),
    }


def main() -> None:
    stop_on_sigterm()  # a `kill` of this bench stops its node on the way out
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--held", type=int, default=1100, help="half-sent requests held (a)")
    parser.add_argument("--hold", type=float, default=0.0, help="seconds to hold them (default: header timeout + 5)")
    parser.add_argument("--header-timeout-ms", type=int, default=10000)
    parser.add_argument("--idle", type=int, default=200, help="idle keep-alive connections (b)")
    parser.add_argument("--idle-timeout-ms", type=int, default=5000)
    parser.add_argument("--json", default=str(RESULTS / "http-conn.json"))
    parser.add_argument("--workdir", default="", help="keep the nodes' data and logs here (default: a temporary one)")
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds --held sockets itself
    with tempfile.TemporaryDirectory(prefix="dsm-http-conn-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        a = asyncio.run(half_sent(args, workdir))
        b = asyncio.run(idle(args, workdir))
    result = {"half_sent": a, "idle": b}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"(a) {a['held']} half-sent requests held {a['hold_s']:g} s, node limited to 1,024 open files")
    print("| measure | value | target |\n| --- | --- | --- |")
    print(f"| connections made | {a['connected']} of {a['held']} | |")
    print(
        f"| closed by the node within its header timeout ({a['header_timeout_s']:g} s) | "
        f"{a['closed_within_header_timeout']} ({a['closed_within_header_timeout_pct']:.1f} %) | >= 90 % |"
    )
    print(f"| closed by the node at all | {a['closed_by_node']} (longest held {a['held_s_max']:.2f} s) | |")
    print(
        f"| normal requests: served, failed | {a['normal_requests'] - a['normal_failures']}, "
        f"{a['normal_failures']} | 0 failed |"
    )
    print(
        f"| normal request latency p50 / p99 / max | {a['normal_ms_p50']:.1f} / {a['normal_ms_p99']:.1f} / "
        f"{a['normal_ms_max']:.1f} ms | max < 1000 ms |"
    )
    print(f"| ERROR lines in the node's log | {a['log_errors']} | 0 |")
    print(f"| the node's closes by reason | {a['node_closes']} | |")
    print(f"\n(b) {b['idle']} idle keep-alive connections, idle timeout {b['idle_timeout_s']:g} s")
    print("| measure | value | target |\n| --- | --- | --- |")
    print(f"| answered, then closed by the node | {b['answered']}, {b['closed_by_node']} | all |")
    print(
        f"| closed within [timeout, timeout + {SEE_CLOSE_S} s] | {b['closed_after_timeout']} "
        f"(early: {b['closed_early']}) | all, none early |"
    )
    print(f"| time from answer to close, min / max | {b['close_after_s_min']:.2f} / {b['close_after_s_max']:.2f} s | |")
    print("node log:", "; ".join(a["log_limits"]))


if __name__ == "__main__":
    main()
