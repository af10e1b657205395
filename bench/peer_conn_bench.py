"""Bounded unauthenticated peer connections (issue 17): what 1,000 held connections to a node's peer port cost it.

One `dsm node run` process (a new cluster, with a cluster secret) is started; after a settle its RSS is
read (`/proc/<pid>/status`, VmRSS). Then --connections TCP connections (default 1,000) are opened to its
peer port from --hosts loopback addresses (127.0.0.10 and up, spread evenly) and held for --hold seconds
(default 6), each sending, by --send:
- `nothing`: connect and say nothing;
- `hello`: a valid first handshake frame, the same one on every connection (as an attacker replays one it
  recorded: the node answers each and waits for a key confirmation that never comes);
- `partial`: a length field announcing the largest handshake frame (512 bytes), then half of it;
- `large`: a length field announcing 8 MiB (the frame limit after the handshake) and --large-bytes of it
  (default 8 MiB less one byte: what a node of commit 3923955 read whole as a first frame; the bench holds
  that much per connection in its own buffers too, so use fewer connections or fewer bytes).
The node's RSS is sampled every 100 ms while they are held; reported: the largest growth over the
baseline, how many connections the node closed at once, at its handshake deadline or never, its rejection
counters (`dsm_connections_rejected_total`), and whether a legitimate peer still gets in: a second node
started (from 127.0.0.2) once all connections are held, bootstrapping from the first; the seconds until it
prints `ready` (joined). Target: at most 50 MB added with 1,000 held connections, and the peer joins.

    .venv/bin/python bench/peer_conn_bench.py --send hello --hosts 40

Adds the run to bench/results/peer-conn.json (under --label, by mode, hosts and connections) and prints a
Markdown row. The bench imports nothing of
dsm for the modes nothing, partial and large, so with PYTHONPATH pointing at an older checkout's src the
same script measures that code (use few connections with `large` there: each costs the old node 8 MiB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import stop_on_sigterm

RESULTS = Path(__file__).parent / "results"
HANDSHAKE_FRAME_MAX = 512
MAX_FRAME = 8 << 20


class Node:
    """A `dsm node run` process on loopback; its stdout lines are read by a thread (with the time each came)."""

    def __init__(self, workdir: Path, name: str, host: str, secret: str, bootstrap: str = "") -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")}
        environ["DSM_CLUSTER_SECRET"] = secret
        self.log_path = workdir / f"{name}.log"
        args = [sys.executable, "-m", "dsm.cli", "node", "run", "--node-id", name, "--listen", f"{host}:0"]
        args += ["--http", f"{host}:0", "--data-dir", str(workdir / name), "--log-level", "WARNING"]
        if bootstrap:
            args += ["--bootstrap", bootstrap]
        self.started = time.monotonic()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=environ, text=True)
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self._new = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new:
                self.lines.append((time.monotonic(), json.loads(line)))
                self._new.notify_all()

    def wait_for(self, event: str, timeout: float) -> tuple[float, dict[str, Any]]:
        """(seconds since start, the line) of the first `event` line; SystemExit if none in time."""
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                for at, line in self.lines:
                    if line.get("event") == event:
                        return at - self.started, line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise SystemExit(f"no {event} line: {self.log_path.read_text()[-2000:]}")
                self._new.wait(left)

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match is not None
        return int(match.group(1)) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def rejected(http: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {r: float(v) for r, v in re.findall(r'dsm_connections_rejected_total\{reason="([^"]+)"\} (\S+)', text)}


def first_bytes(send: str, secret: str, large_bytes: int) -> bytes:
    if send == "nothing":
        return b""
    if send == "partial":
        return HANDSHAKE_FRAME_MAX.to_bytes(4, "big") + bytes(HANDSHAKE_FRAME_MAX // 2)
    if send == "large":
        return MAX_FRAME.to_bytes(4, "big") + bytes(min(large_bytes, MAX_FRAME - 1))
    from dsm.net import security, wire  # the handshake of this checkout

    if hasattr(security, "Initiator"):
        return bytes(security.Initiator(security.Keyring(secret), "attacker", "").first_frame())
    # Commit 3923955's: Hello (node id, key id, nonce), after which the node waited for a sealed Auth.
    old: Any = security
    return bytes(wire.encode_frame(old.hello("attacker", old.key_id(secret.encode()))))


async def hold(host: str, port: int, source: str, data: bytes, hold_s: float, result: dict[str, int]) -> None:
    """One connection: connect, send `data`, wait for the node to close it (or the hold to end)."""
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    except OSError:
        result["not_connected"] += 1
        return
    opened = loop.time()
    try:
        if data:
            writer.write(data)
            await writer.drain()
        async with asyncio.timeout(hold_s):
            while await reader.read(65536):  # a refusal frame, then the end of the stream
                pass
        closed = loop.time() - opened
        result["closed_at_once" if closed < 0.5 else "closed_later"] += 1
    except TimeoutError:
        result["held_to_the_end"] += 1
    except OSError:
        result["closed_at_once" if loop.time() - opened < 0.5 else "closed_later"] += 1
    finally:
        writer.transport.abort()


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    secret = secrets.token_hex(16)
    node = Node(workdir, "p1", "127.0.0.1", secret)
    peer: Node | None = None
    try:
        _, ready = node.wait_for("ready", 60)
        host, port = ready["listen"].rsplit(":", 1)
        await asyncio.sleep(args.settle)
        baseline = node.rss_mb()
        data = first_bytes(args.send, secret, args.large_bytes)
        result = {"not_connected": 0, "closed_at_once": 0, "closed_later": 0, "held_to_the_end": 0}
        samples: list[float] = []
        sources = [f"127.0.0.{10 + i % args.hosts}" for i in range(args.connections)]
        tasks = [asyncio.create_task(hold(host, int(port), s, data, args.hold, result)) for s in sources]

        async def sample() -> None:
            while True:
                samples.append(node.rss_mb())
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        await asyncio.sleep(min(1.0, args.hold / 2))  # all connected (and the node answered them)
        peer = Node(workdir, "p2", "127.0.0.2", secret, bootstrap=ready["listen"])
        joined_s, _ = await asyncio.to_thread(peer.wait_for, "ready", 60)
        await asyncio.gather(*tasks)
        sampler.cancel()
        counters = rejected(ready["http"])
        return {
            "send": args.send,
            "large_bytes": args.large_bytes if args.send == "large" else 0,
            "connections": args.connections,
            "hosts": args.hosts,
            "hold_s": args.hold,
            "rss_baseline_mb": baseline,
            "rss_max_mb": max(samples),
            "rss_added_mb": max(samples) - baseline,
            "connections_outcome": result,
            "rejected": counters,
            "peer_ready_s": joined_s,
        }
    finally:
        if peer is not None:
            peer.stop()
        node.stop()


def main() -> None:
    stop_on_sigterm()  # a `kill` of this bench stops its nodes on the way out
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=40, help="source addresses 127.0.0.10 and up")
    parser.add_argument("--send", choices=("nothing", "hello", "partial", "large"), default="hello")
    parser.add_argument("--large-bytes", type=int, default=MAX_FRAME - 1, help="body bytes sent with --send large")
    parser.add_argument("--hold", type=float, default=6.0, help="seconds each connection is held at most")
    parser.add_argument("--label", default="now", help="key of the run in the results (e.g. the commit measured)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before the baseline RSS")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.connections + 256)), hard))
    with tempfile.TemporaryDirectory(prefix="peer-conn-") as tmp:
        out = asyncio.run(run(args, Path(tmp)))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "peer-conn.json"
    runs = json.loads(path.read_text()) if path.exists() else {}
    runs.setdefault(args.label, {})[f"{args.send}-{args.hosts}-hosts-{args.connections}"] = out
    path.write_text(json.dumps(runs, indent=2, sort_keys=True) + "\n")
    o = out["connections_outcome"]
    print(
        "| send | connections | hosts | RSS added (MB) | closed at once | closed later | held to the end | peer ready |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {args.send} | {args.connections} | {args.hosts} | {out['rss_added_mb']:.1f} | {o['closed_at_once']} | "
        f"{o['closed_later']} | {o['held_to_the_end']} | {out['peer_ready_s']:.2f} |"
    )
    print(json.dumps(out["rejected"]))


if __name__ == "__main__":
    main()
