"""Helpers shared by the benchmarks, so that no benchmark imports another: percentiles and summaries, the
results directory, `dsm sim` runs, process and machine CPU and memory from /proc, real `dsm node run` clusters
and 3-member etcd clusters on loopback, py-spy profiles of a node summarised by function, and the HTTP load
generator (G processes of closed-loop clients on keep-alive connections) that
throughput_bench.py and levels_bench.py drive."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import multiprocessing as mp
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from dsm.localcluster import LocalCluster
from dsm.net.transport import split_addr

RESULTS = Path(__file__).resolve().parent / "results"
SIM_RESULTS = RESULTS / "sim"
HZ = os.sysconf("SC_CLK_TCK")
VALUE = random.Random(1).randbytes(50).hex().encode()  # 100 bytes, the same in every process

#: A `dsm sim` scenario: (name, arguments, seeds).
Scenario = tuple[str, list[str], list[int]]


# --------------------------------------------------------------------------------------------- statistics


def pct(samples: list[float], p: float) -> float:
    """The p-th percentile of `samples` (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(op: str, rate_per_s: float, latencies_s: list[float]) -> dict[str, float]:
    """`{op}_per_s`, `{op}_p50_us` and `{op}_p99_us` of one measured operation."""
    return {
        f"{op}_per_s": rate_per_s,
        f"{op}_p50_us": pct(latencies_s, 50) * 1e6,
        f"{op}_p99_us": pct(latencies_s, 99) * 1e6,
    }


# -------------------------------------------------------------------------------------------- simulations


def run_sim(name: str, args: list[str], seed: int) -> dict[str, Any]:
    """One `dsm sim` run in its own process (so its peak memory is its own); its JSON report, and its figure
    in bench/results/sim/<name>-seed<seed>.{json,png}."""
    SIM_RESULTS.mkdir(parents=True, exist_ok=True)
    stem = SIM_RESULTS / f"{name}-seed{seed}"
    cmd = [sys.executable, "-m", "dsm.cli", "sim", *args, "--seed", str(seed), "--quiet"]
    cmd += ["--json", f"{stem}.json", "--plot", f"{stem}.png"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    report: dict[str, Any] = json.loads(Path(f"{stem}.json").read_text())
    print(f"  {name} seed {seed}: {time.perf_counter() - started:.0f} s, checks {report['checks']}", flush=True)
    return report


def report_value(report: dict[str, Any], path: str) -> float | None:
    """The number at a dotted `path` of a `dsm sim` report (`"writes.time_to_all_s.p50"`), or None."""
    value: Any = report
    for key in path.split("."):
        if value is None:
            return None
        value = value.get(key)
    return value if isinstance(value, (int, float)) else None


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


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(OSError, ValueError):
            if check():
                return time.monotonic() - start
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def stop_on_sigterm() -> None:
    """Makes a SIGTERM (a `kill` of the bench) end the bench through its `finally` blocks, which stop what it
    started: DSM nodes are forked by `dsm.zygote` and etcd members are plain children, and without this both
    outlive a killed bench and load the next run's machine. Only from the main thread, and only over the default
    handler (a bench that set its own keeps it)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(*_: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the clean-up short
    sys.exit(143)


def http_targets(cluster: LocalCluster) -> list[tuple[str, int]]:
    """(host, port) of each node's HTTP API, in the cluster's order."""
    return [split_addr(n.http) for n in cluster.nodes]


@contextlib.contextmanager
def dsm_cluster(nodes: int, workdir: str, extra_env: dict[str, str] | None = None) -> Iterator[LocalCluster]:
    """`nodes` real `dsm node run` processes on loopback, every one seeing every other alive."""
    stop_on_sigterm()
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


# ------------------------------------------------------------------------------------------ the systems


@contextlib.contextmanager
def etcd_cluster(workdir: str) -> Iterator[list[tuple[int, tuple[str, int]]]]:
    """A 3-member etcd cluster on free loopback ports; yields (pid, (host, client port)) per member."""
    stop_on_sigterm()
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
    ("dsm/node/", "front door, group commit, conditional writes (dsm.node)"),
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


def print_profile(name: str, spots: dict[str, Any]) -> None:
    print(
        f"\npy-spy, {name}: {spots['samples']} busy samples (shares of those; "
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


class Workers:
    """`processes` spawned generator processes, each running `target(pipe)` (it answers a phase per message
    until it receives None); `close` ends them."""

    def __init__(self, processes: int, target: Callable[[Connection], None]) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=target, args=(child,), daemon=True)
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


class Generator(Workers):
    """G generator processes sharing `concurrency` clients (client i in process i mod G)."""

    def __init__(self, processes: int, concurrency: int, client: str) -> None:
        super().__init__(processes, worker_main)
        self.concurrency, self.client = concurrency, client

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
