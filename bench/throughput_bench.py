"""Throughput of real nodes (issue "Real nodes"): a 3-node DSM cluster against a 3-member etcd, one load generator.

DSM: three `dsm node run` processes on loopback (started through dsm.localcluster: the default SQLite store,
each in its own temporary directory, production-default intervals, a random cluster secret). etcd 3.4: three
members started as /work/shared/peers/etcd_bench.sh does, on free ports of their own, data in a temporary
directory. Both clusters run all along and are driven by the same load generator with the same concurrency,
their phases alternating within each repetition (medians over --reps repetitions are reported):

  write   PUT /v1/kv/{key}?consistency=local (100-byte body)  |  etcd: POST /v3/kv/put {"key","value"} (base64)
  read    GET /v1/kv/{key}?consistency=local of keys written   |  etcd: POST /v3/kv/range, serializable (the
          in the write phase, chosen at random                 |  counterpart of `local`) and linearizable
                                                               |  (etcd's default) as a third row

Concurrency C (default 64) is C closed-loop clients, each with its own keep-alive HTTP/1.1 connection to one
node (client i talks to node i mod 3), so the load is spread evenly. Most reads go to another node than the
one that took the write; a read that finds nothing is counted as `missing`.

The load generator is G processes (default 2, multiprocessing), each running its share of the clients on
uvloop with a minimal HTTP/1.1 client on asyncio's Protocol: about 35-60 us of CPU per request here, against
about 270 us for aiohttp's client (`--client aiohttp`), which on this machine takes a core from the nodes.
Every phase reports the CPU of the generator processes, of the nodes (/proc/<pid>/stat, utime+stime) and of
the whole machine (/proc/stat), in cores (1.0 = one core busy for the whole phase), so a generator-bound run
shows itself: on this 2-core machine the nodes and the generator share two cores.

With --profile, two extra phases (not in the table: py-spy slows the node it samples) run DSM writes and
then reads while `py-spy record --format raw --function` samples node n1; the hot spots (self and
inclusive share of samples, by function) go to the output and the JSON, the raw stacks to /tmp.

Reproduce: .venv/bin/python bench/throughput_bench.py --duration 10 --reps 3 --concurrency 64 --profile
Options: --ops N (operations per phase instead of --duration), --generators G, --skip-etcd, --skip-dsm,
         --client raw|aiohttp, --profile-s 15, --json bench/results/throughput.json,
         --consistency LEVEL (the DSM requests' ?consistency=, default local; the nodes all sit in the default
         region, so region_quorum and quorum both mean 2 of 3, each_region_quorum too, all 3 of 3)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing as mp
import os
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from common import pct
from dsm.localcluster import LocalCluster

RESULTS = Path(__file__).resolve().parent / "results"
HZ = os.sysconf("SC_CLK_TCK")
VALUE = random.Random(1).randbytes(50).hex().encode()  # 100 bytes, the same in every process
TARGETS = {"dsm write": 5000, "dsm read": 10000}


# ---------------------------------------------------------------------------------------------- processes


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (utime + stime, every thread) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, summed over its cores (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / HZ, total / HZ


class CpuWindow:
    """CPU of some processes and of the machine between start() and stop(), in cores."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.c0 = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}
        self.m0 = machine_cpu()

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        used = {name: proc_cpu_s(pid) - self.c0[name] for name, pid in self.pids.items()}
        busy, total = machine_cpu()
        cores = (total - self.m0[1]) / wall
        return {
            "wall_s": wall,
            "per_process_cores": {name: s / wall for name, s in used.items()},
            "processes_cores": sum(used.values()) / wall,
            "machine_busy_cores": (busy - self.m0[0]) / wall,
            "machine_cores": round(cores),
        }


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def http_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def stop_processes(procs: list[subprocess.Popen[bytes]], label: str) -> None:
    """SIGTERM to the processes this benchmark started, then SIGKILL to any still running after 10 s."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if procs:
        print(f"{label}: stopped pids {[p.pid for p in procs]}")


def metric(url: str, name: str) -> float:
    """One unlabelled sample of a node's Prometheus metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise ValueError(f"{name} not in {url}/metrics")


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(OSError, ValueError):
            if check():
                return time.monotonic() - start
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


# ------------------------------------------------------------------------------------------ the systems


@contextlib.contextmanager
def dsm_cluster(nodes: int, workdir: str, extra_env: dict[str, str] | None = None) -> Iterator[LocalCluster]:
    """`nodes` real `dsm node run` processes on loopback, every one seeing every other alive."""
    env = {"DSM_CLUSTER_SECRET": secrets.token_hex(16)} | (extra_env or {})
    cluster = LocalCluster(os.path.join(workdir, "dsm"), env=env)
    try:
        cluster.up(nodes, peer_port=0, http_port=0)

        def converged() -> bool:
            return all(http_json(n.url + "/health")["members_alive"] >= nodes for n in cluster.nodes)

        waited = wait_until(converged, 60, f"every DSM node to see {nodes} alive members")
        print(f"DSM: {nodes} nodes up, all see {nodes} alive members ({waited:.1f} s after the last start)")
        yield cluster
    finally:
        stopped = cluster.down()
        print(f"DSM: stopped {', '.join(stopped) or 'nothing'}")


@contextlib.contextmanager
def etcd_cluster(workdir: str) -> Iterator[list[tuple[int, tuple[str, int]]]]:
    """A 3-member etcd cluster on free loopback ports; yields (pid, (host, client port)) per member."""
    ports = free_ports(6)
    client, peer = ports[:3], ports[3:]
    initial = ",".join(f"e{i}=http://127.0.0.1:{peer[i]}" for i in range(3))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(3):
            c, p = f"http://127.0.0.1:{client[i]}", f"http://127.0.0.1:{peer[i]}"
            args = ["etcd", "--name", f"e{i}", "--data-dir", os.path.join(workdir, "etcd", f"e{i}")]
            args += ["--listen-client-urls", c, "--advertise-client-urls", c]
            args += ["--listen-peer-urls", p, "--initial-advertise-peer-urls", p]
            args += ["--initial-cluster", initial, "--initial-cluster-state", "new"]
            args += ["--initial-cluster-token", "dsm-bench", "--log-level", "warn", "--logger", "zap"]
            os.makedirs(os.path.join(workdir, "etcd"), exist_ok=True)
            with open(os.path.join(workdir, "etcd", f"e{i}.log"), "wb") as log:
                procs.append(subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL))

        def healthy() -> bool:
            return all(http_json(f"http://127.0.0.1:{c}/health")["health"] == "true" for c in client)

        waited = wait_until(healthy, 60, "the etcd members to be healthy")
        print(f"etcd: 3 members healthy after {waited:.1f} s (client ports {client})")
        yield [(proc.pid, ("127.0.0.1", port)) for proc, port in zip(procs, client, strict=True)]
    finally:
        stop_processes(procs, "etcd")


# --------------------------------------------------------------------------------------- load generator


def parse_response(buf: bytearray) -> tuple[int, bytes, int] | None:
    """(status, body, bytes used) of the first complete HTTP/1.1 response in `buf`, or None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    status, start = int(head[9:12]), end + 4
    i = head.find(b"\r\ncontent-length:")
    if i >= 0:
        j = head.find(b"\r\n", i + 2)
        n = int(head[i + 17 : j if j >= 0 else len(head)])
        return (status, bytes(buf[start : start + n]), start + n) if len(buf) >= start + n else None
    if b"\r\ntransfer-encoding: chunked" in head:
        body, pos = bytearray(), start
        while True:
            k = buf.find(b"\r\n", pos)
            if k < 0:
                return None
            size = int(bytes(buf[pos:k]).split(b";")[0], 16)
            if size == 0:
                return (status, bytes(body), k + 4) if len(buf) >= k + 4 else None
            if len(buf) < k + 4 + size:
                return None
            body += buf[k + 2 : k + 2 + size]
            pos = k + 4 + size
    return status, b"", start


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time: the cheapest client Python has."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None:
            return
        parsed = parse_response(self.buf)
        if parsed is not None:
            del self.buf[: parsed[2]]
            waiter, self.waiter = self.waiter, None
            if not waiter.done():
                waiter.set_result(parsed[:2])

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


def requests_for(
    system: str, op: str, host: str, consistency: str = "local"
) -> tuple[Callable[[str], bytes], Callable[[int, bytes], str]]:
    """(request bytes for a key, classification of a response: 'ok', 'missing' or 'status <n>').

    `consistency` is the level of DSM requests (`?consistency=`); etcd requests do not use it."""
    if system == "dsm":
        q = f"?consistency={consistency}"
        if op == "write":
            put = "PUT /v1/kv/{}" + q + " HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 100\r\n\r\n"
            return (lambda key: put.format(key).encode() + VALUE), written_ok
        get = "GET /v1/kv/{}" + q + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n"

        def read_ok(status: int, body: bytes) -> str:
            return "ok" if status == 200 and body == VALUE else "missing" if status == 404 else f"status {status}"

        return (lambda key: get.format(key).encode()), read_ok
    path, extra = {
        "write": ("/v3/kv/put", {"value": base64.b64encode(VALUE).decode()}),
        "read": ("/v3/kv/range", {"serializable": True}),
        "read_linearizable": ("/v3/kv/range", {}),
    }[op]
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: "

    def build(key: str) -> bytes:
        body = json.dumps({"key": base64.b64encode(key.encode()).decode(), **extra}).encode()
        return f"{head}{len(body)}\r\n\r\n".encode() + body

    def found(status: int, body: bytes) -> str:
        return ("ok" if b'"kvs"' in body else "missing") if status == 200 else f"status {status}"

    return build, written_ok if op == "write" else found


def written_ok(status: int, body: bytes) -> str:
    return "ok" if status == 200 else f"status {status}"


def key_of(phase_tag: str, conn: int, seq: int) -> str:
    return f"{phase_tag}-c{conn}-{seq}"


async def run_clients(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs this process's share of the closed-loop clients for one phase (see worker_main)."""
    loop = asyncio.get_running_loop()
    system, op, targets = spec["system"], spec["op"], spec["targets"]
    written: dict[int, int] = spec.get("written", {})
    written_conns = [c for c, n in written.items() if n > 0]
    rnd = random.Random(spec["seed"])
    lat = array("d")
    outcomes: Counter[str] = Counter()
    counts: dict[int, int] = {}
    errors: list[str] = []

    session: Any = None
    if spec["client"] == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), skip_auto_headers=["User-Agent"])

    async def client(conn: int) -> None:
        host, port = targets[conn % len(targets)]
        build, judge = requests_for(system, op, f"{host}:{port}", spec.get("consistency", "local"))
        proto: HttpConnection | None = None
        if session is None:
            _, proto = await loop.create_connection(HttpConnection, host, port)
        await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
        deadline = time.perf_counter() + spec["duration"] if spec["duration"] else float("inf")
        quota, seq = spec["ops_per_conn"] or 1 << 62, 0
        try:
            while seq < quota and time.perf_counter() < deadline:
                if op == "write":
                    key = key_of(spec["tag"], conn, seq)
                else:
                    c = rnd.choice(written_conns)
                    key = key_of(spec["tag"], c, rnd.randrange(written[c]))
                data = build(key)
                start = time.perf_counter()
                try:
                    if proto is not None:
                        if proto.closed:
                            _, proto = await loop.create_connection(HttpConnection, host, port)
                        status, body = await proto.request(data)
                    else:
                        status, body = await aiohttp_request(session, host, port, data)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    outcomes["error"] += 1
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.01)
                    seq += 1
                    continue
                lat.append(time.perf_counter() - start)
                outcomes[judge(status, body)] += 1
                seq += 1
        finally:
            counts[conn] = seq
            if proto is not None and proto.transport is not None:
                proto.transport.close()

    tasks = [asyncio.ensure_future(client(conn)) for conn in spec["conns"]]
    await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    limit = (spec["duration"] or 0) + spec["timeout"]
    done, pending = await asyncio.wait(tasks, timeout=limit)
    for t in pending:
        t.cancel()
        outcomes["timeout"] += 1
    for t in done:
        if t.exception() is not None:
            outcomes["error"] += 1
            errors.append(repr(t.exception()))
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    if session is not None:
        await session.close()
    return {
        "lat": lat.tobytes(),
        "outcomes": dict(outcomes),
        "counts": counts,
        "errors": errors,
        "wall_s": wall,
        "cpu_s": cpu,
    }


async def aiohttp_request(session: Any, host: str, port: int, data: bytes) -> tuple[int, bytes]:
    """Replays a request built for the raw client through aiohttp (the --client aiohttp generator)."""
    head, body = data.split(b"\r\n\r\n", 1)
    method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
    headers = {"Content-Type": "application/json"} if method == "POST" else {}
    async with session.request(method, f"http://{host}:{port}{target}", data=body or None, headers=headers) as r:
        return r.status, await r.read()


def worker_main(pipe: Connection) -> None:
    """A generator process: runs one phase per message until it receives None."""
    import uvloop

    while True:
        spec = pipe.recv()
        if spec is None:
            return
        pipe.send(uvloop.run(run_clients(spec)))


class Generator:
    """G generator processes sharing `concurrency` clients (client i in process i mod G)."""

    def __init__(self, processes: int, concurrency: int, client: str) -> None:
        ctx = mp.get_context("spawn")
        self.concurrency, self.client = concurrency, client
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child,), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()

    def phase(
        self,
        system: str,
        op: str,
        targets: list[tuple[str, int]],
        node_pids: dict[str, int],
        *,
        tag: str,
        duration: float,
        ops: int,
        written: dict[int, int] | None = None,
        during: Callable[[], Any] | None = None,
        consistency: str = "local",
    ) -> dict[str, Any]:
        """Runs one phase on every generator process at once; returns its figures."""
        start_at = time.time() + 1.0  # time to connect before the clock starts
        per_conn = -(-ops // self.concurrency) if ops else 0
        for g, pipe in enumerate(self.pipes):
            spec = {
                "system": system,
                "op": op,
                "targets": targets,
                "conns": list(range(g, self.concurrency, len(self.pipes))),
                "start_at": start_at,
                "duration": 0.0 if ops else duration,
                "ops_per_conn": per_conn,
                "timeout": 120.0 if ops else 30.0,
                "tag": tag,
                "written": written or {},
                "seed": f"{tag}-{op}-{g}",
                "client": self.client,
                "consistency": consistency,
            }
            pipe.send(spec)
        pids = dict(node_pids) | {f"generator{g}": p.pid for g, p in enumerate(self.procs)}
        window = CpuWindow(pids)
        time.sleep(max(0.0, start_at - time.time()))
        window.start()
        extra = during() if during is not None else None
        parts = [pipe.recv() for pipe in self.pipes]
        cpu = window.stop()
        if extra is not None:
            extra.wait()
        lat = array("d")
        for part in parts:
            lat.frombytes(part["lat"])
        outcomes: Counter[str] = Counter()
        for part in parts:
            outcomes.update(part["outcomes"])
        wall = max(p["wall_s"] for p in parts)
        done = sum(outcomes.values())
        gen = [p["cpu_s"] / wall for p in parts]
        node_cores = sum(v for k, v in cpu["per_process_cores"].items() if not k.startswith("generator"))
        samples = list(lat)
        return {
            "system": system,
            "op": op,
            "consistency": consistency if system == "dsm" else None,
            "ops": done,
            "ok": outcomes.get("ok", 0),
            "outcomes": dict(outcomes),
            "errors": [e for p in parts for e in p["errors"]][:10],
            "wall_s": wall,
            "ok_per_s": outcomes.get("ok", 0) / wall,
            "ops_per_s": done / wall,
            "p50_ms": pct(samples, 50) * 1e3 if samples else None,
            "p99_ms": pct(samples, 99) * 1e3 if samples else None,
            "max_ms": max(samples) * 1e3 if samples else None,
            "generator_cores": sum(gen),
            "generator_cores_per_process": gen,
            "generator_us_per_op": sum(p["cpu_s"] for p in parts) / max(1, done) * 1e6,
            "node_cores": node_cores,
            "node_us_per_op": node_cores * wall / max(1, done) * 1e6,
            "cpu": cpu,
            # Whatever else ran on the machine meanwhile (this script's main process, other jobs).
            "other_cores": cpu["machine_busy_cores"] - node_cores - sum(gen),
            "written": {c: n for p in parts for c, n in p["counts"].items()},
        }


# ----------------------------------------------------------------------------------------------- profile


def py_spy() -> str:
    found = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(found):
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


class Profiler:
    """`py-spy record --format raw --function` of one pid for `seconds`, started when called."""

    def __init__(self, pid: int, seconds: float, out: str) -> None:
        self.pid, self.seconds, self.out = pid, seconds, out
        self.proc: subprocess.Popen[bytes] | None = None

    def __call__(self) -> Profiler:
        args = [py_spy(), "record", "--pid", str(self.pid), "--duration", str(int(self.seconds)), "--format", "raw"]
        args += ["--function", "--output", self.out]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def wait(self) -> None:
        assert self.proc is not None
        _, err = self.proc.communicate(timeout=self.seconds + 60)
        if self.proc.returncode != 0:
            print(f"py-spy exited with {self.proc.returncode}: {err.decode(errors='replace').strip()[-500:]}")


# Frames every stack of the node goes through (start-up, the event loop's entry): left out of the inclusive list.
FRAMEWORK = ("<frozen runpy>", "click/", "dsm/cli.py", "uvloop/__init__.py", "asyncio/runners.py", "threading.py")
# Where a sample's innermost frame is, by file: the self time of each part of the node.
AREAS = [
    ("aiohttp/", "HTTP server (aiohttp)"),
    ("dsm/api/", "HTTP handlers (dsm.api)"),
    ("dsm/storage/", "store (dsm.storage, SQLite calls)"),
    ("dsm/node.py", "front door and group commit (dsm.node)"),
    ("dsm/net/", "network runtime (dsm.net: transport, wire, security)"),
    ("dsm/core/", "protocol core (dsm.core)"),
    ("msgpack/", "msgpack"),
    ("cryptography/", "cryptography"),
    ("prometheus_client/", "metrics (prometheus_client)"),
    ("asyncio/runners.py", "event loop in C (uvloop: polling, callbacks, socket I/O)"),
]


def area_of(frame: str) -> str:
    return next((label for marker, label in AREAS if marker in frame), "other (stdlib, yarl, multidict, ...)")


def hot_spots(raw_path: str, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares of samples per function from py-spy's raw (collapsed stack) output.

    A thread-pool thread waiting for work (innermost frame: the executor's `_worker`) is idle, whatever
    py-spy decided: those samples are counted apart and left out of the shares."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = idle = 0
    with open(raw_path) as f:
        for line in f:
            stack, _, count_s = line.rstrip("\n").rpartition(" ")
            frames = [shorten(fr) for fr in stack.split(";") if fr and not fr.startswith("process ")]
            if not frames:
                continue
            count = int(count_s)
            if frames[-1].startswith("_worker (concurrent/futures/thread.py"):
                idle += count
                continue
            total += count
            own[frames[-1]] += count
            areas[area_of(frames[-1])] += count
            for fr in set(frames):
                if not fr.split(" (", 1)[-1].startswith(FRAMEWORK):
                    incl[fr] += count

    def rows(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [{"function": fn, "share": k / max(1, total), "samples": k} for fn, k in counter.most_common(n)]

    return {
        "samples": total,
        "idle_thread_pool_samples": idle,
        "self": rows(own, top),
        "inclusive": rows(incl, top),
        "areas": rows(areas, len(AREAS) + 1),
    }


def shorten(frame: str) -> str:
    """'put (dsm/node.py:120)' from 'put (/work/main/src/dsm/node.py:120)'; site-packages paths likewise."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("/site-packages/", "/src/", "/lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


# ------------------------------------------------------------------------------------------------ report


def row(r: dict[str, Any]) -> str:
    level = r.get("consistency") or "local"
    label = {"read": f"read ({level})" if r["system"] == "dsm" else "read (serializable)"}.get(r["op"], r["op"])
    if r["system"] == "dsm" and r["op"] == "write" and level != "local":
        label = f"write ({level})"
    bad = {k: v for k, v in r["outcomes"].items() if k != "ok"}
    gen = "+".join(f"{c:.2f}" for c in r["generator_cores_per_process"])
    return (
        f"| {r['system']} | {label} | {r['ok_per_s']:,.0f} | {r['p50_ms'] or 0:.2f} | {r['p99_ms'] or 0:.2f} | "
        f"{r['ok']:,} | {', '.join(f'{k} {v}' for k, v in bad.items()) or '0'} | {r['node_cores']:.2f} "
        f"({r['node_us_per_op']:.0f} us/op) | {gen} ({r['generator_us_per_op']:.0f} us/op) | "
        f"{r['cpu']['machine_busy_cores']:.2f} of {r['cpu']['machine_cores']} | {r['other_cores']:.2f} |"
    )


def print_table(results: list[dict[str, Any]], concurrency: int, generators: int, reps: int) -> None:
    print(
        f"\nmedians of {reps} repetitions; {concurrency} concurrent clients, {generators} generator processes;"
        " CPU in cores (1.00 = one core busy for the whole phase); others = the rest of the machine (other jobs)\n"
    )
    print(
        "| system | operation | ok/s | p50 ms | p99 ms | ok | failed | nodes CPU | generator CPU | machine busy"
        " | others |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(row(r))
    by = {f"{r['system']} {r['op']}": r for r in results}
    print()
    for name, target in TARGETS.items():
        if name in by:
            got = by[name]["ok_per_s"]
            print(f"target {name}: >= {target:,}/s, measured {got:,.0f}/s: {'met' if got >= target else 'NOT met'}")
    for op in ("write", "read"):
        if f"dsm {op}" in by and f"etcd {op}" in by:
            ratio = by[f"dsm {op}"]["ok_per_s"] / max(1e-9, by[f"etcd {op}"]["ok_per_s"])
            print(f"DSM / etcd {op}: {ratio:.2f}x")
    busiest = max((c for r in results for c in r["generator_cores_per_process"]), default=0.0)
    print(
        f"busiest generator process: {busiest:.2f} cores"
        + (" (close to a full core: the generator may be the bottleneck)" if busiest > 0.8 else "")
    )


def print_profile(name: str, spots: dict[str, Any]) -> None:
    print(
        f"\npy-spy, {name}: {spots['samples']} busy samples of node n1 (shares of those; "
        f"{spots['idle_thread_pool_samples']} samples of idle thread-pool threads left out)"
    )
    print("  by area (innermost frame):")
    for r in spots["areas"]:
        print(f"    {r['share']:6.1%}  {r['function']}")
    print("  self time:")
    for r in spots["self"][:12]:
        print(f"    {r['share']:6.1%}  {r['function']}")
    print("  inclusive (function and what it calls):")
    for r in spots["inclusive"][:15]:
        print(f"    {r['share']:6.1%}  {r['function']}")


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One phase's figures over repetitions: medians of the rates, latencies and CPU, sums of the counts."""
    med = statistics.median
    outcomes: Counter[str] = Counter()
    for r in runs:
        outcomes.update(r["outcomes"])
    first = runs[0]
    return {
        "system": first["system"],
        "op": first["op"],
        "consistency": first.get("consistency"),
        "reps": len(runs),
        "ok": sum(r["ok"] for r in runs),
        "outcomes": dict(outcomes),
        "errors": [e for r in runs for e in r["errors"]][:10],
        **{k: med(r[k] for r in runs) for k in MEDIAN_KEYS},
        "generator_cores_per_process": [
            med(r["generator_cores_per_process"][g] for r in runs)
            for g in range(len(first["generator_cores_per_process"]))
        ],
        "cpu": {
            "machine_busy_cores": med(r["cpu"]["machine_busy_cores"] for r in runs),
            "machine_cores": first["cpu"]["machine_cores"],
        },
    }


MEDIAN_KEYS = (
    "ok_per_s",
    "ops_per_s",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "generator_cores",
    "generator_us_per_op",
    "node_cores",
    "node_us_per_op",
    "other_cores",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per phase (default 10)")
    ap.add_argument("--ops", type=int, default=0, help="operations per phase instead of a duration")
    ap.add_argument("--reps", type=int, default=3, help="repetitions, DSM and etcd interleaved (medians reported)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--generators", type=int, default=2, help="load generator processes")
    ap.add_argument("--client", choices=["raw", "aiohttp"], default="raw")
    ap.add_argument("--nodes", type=int, default=3, help="DSM nodes (etcd always has 3 members)")
    ap.add_argument("--skip-etcd", action="store_true")
    ap.add_argument(
        "--node-env", action="append", default=[], metavar="DSM_X=V", help="a setting for the DSM nodes (repeatable)"
    )
    ap.add_argument("--skip-dsm", action="store_true")
    ap.add_argument("--profile", action="store_true", help="extra DSM phases under py-spy (node n1)")
    ap.add_argument("--profile-s", type=float, default=15.0)
    ap.add_argument("--json", default=str(RESULTS / "throughput.json"))
    ap.add_argument(
        "--consistency",
        choices=["local", "region_quorum", "quorum", "each_region_quorum", "all"],
        default="local",
        help="level of the DSM requests (?consistency=, default local)",
    )
    a = ap.parse_args()
    if a.profile and not a.skip_dsm:
        py_spy()
    runs: list[dict[str, Any]] = []
    profile: dict[str, Any] = {}
    meta: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/throughput_bench.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "args": vars(a),
        "value_bytes": len(VALUE),
        "consistency": a.consistency,
    }
    gen = Generator(a.generators, a.concurrency, a.client)
    workdir = tempfile.mkdtemp(prefix="dsm-throughput-")
    common: dict[str, Any] = {"duration": a.duration, "ops": a.ops}
    # Both systems run all along (the idle one costs a few % of a core) and their phases alternate, so a
    # burst of other work on this shared machine hits both sides rather than one.
    systems: dict[str, tuple[list[tuple[str, int]], dict[str, int]]] = {}
    try:
        with contextlib.ExitStack() as stack:
            if not a.skip_dsm:
                cluster = stack.enter_context(dsm_cluster(a.nodes, workdir, dict(e.split("=", 1) for e in a.node_env)))
                targets = [(n.http.rsplit(":", 1)[0], int(n.http.rsplit(":", 1)[1])) for n in cluster.nodes]
                systems["dsm"] = (targets, {n.node_id: n.pid for n in cluster.nodes})
            if not a.skip_etcd:
                members = stack.enter_context(etcd_cluster(workdir))
                systems["etcd"] = ([addr for _, addr in members], {f"e{i}": pid for i, (pid, _) in enumerate(members)})
            time.sleep(2)
            reads = {"dsm": ["read"], "etcd": ["read", "read_linearizable"]}
            for rep in range(a.reps):
                order = list(systems) if rep % 2 == 0 else list(reversed(systems))
                written: dict[str, dict[int, int]] = {}
                for name in order:
                    level = a.consistency if name == "dsm" else "local"
                    w = gen.phase(name, "write", *systems[name], tag=f"w{rep}", consistency=level, **common)
                    written[name] = w["written"]
                    runs.append(w)
                    print(f"rep {rep + 1}: {row(w)}", flush=True)
                time.sleep(1)  # the last direct updates land
                for name in order:
                    for op in reads[name]:
                        level = a.consistency if name == "dsm" else "local"
                        r = gen.phase(
                            name, op, *systems[name], tag=f"w{rep}", written=written[name], consistency=level, **common
                        )
                        runs.append(r)
                        print(f"rep {rep + 1}: {row(r)}", flush=True)
            for name, (_, pids) in systems.items():
                meta[f"{name}_rss_kib_after"] = {node: proc_rss_kib(pid) for node, pid in pids.items()}
            if "dsm" in systems:
                # The worst event-loop stall each node saw during the measured phases (its own metric).
                stalls = {n.node_id: metric(n.url, "dsm_event_loop_lag_max_seconds") for n in cluster.nodes}
                meta["dsm_event_loop_stall_max_ms"] = {k: round(v * 1000, 1) for k, v in stalls.items()}
                print(
                    f"DSM worst event-loop stall per node during the phases (ms): {meta['dsm_event_loop_stall_max_ms']}"
                )
            if a.profile and "dsm" in systems:
                targets, pids = systems["dsm"]
                got_written: dict[int, int] = {}
                for op in ("write", "read"):
                    out = f"/tmp/dsm-profile-{op}.txt"
                    got = gen.phase(
                        "dsm",
                        op,
                        targets,
                        pids,
                        tag="p",
                        duration=a.profile_s + 1,
                        ops=0,
                        written=got_written,
                        during=Profiler(pids["n1"], a.profile_s, out),
                        consistency=a.consistency,
                    )
                    got_written = got.pop("written")
                    spots = hot_spots(out)
                    profile[op] = {"under_profiler": got, "raw_stacks": out, **spots}
                    print(f"under py-spy: {row(got)}")
                    print_profile(f"DSM {op}s", spots)
    finally:
        gen.close()
        shutil.rmtree(workdir, ignore_errors=True)
    meta["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    for r in runs:
        r.pop("written")
    phases: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        phases.setdefault((r["system"], r["op"]), []).append(r)
    medians = [median_row(group) for group in phases.values()]
    print_table(medians, a.concurrency, a.generators, a.reps)
    for r in medians:
        if r["errors"]:
            print(f"{r['system']} {r['op']} errors: {r['errors']}")
    out = {**meta, "targets_per_s": TARGETS, "medians": medians, "runs": runs, "profile": profile}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
