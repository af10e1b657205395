"""Conditional writes on real nodes (issue 19): a 3-node DSM cluster against a 3-member etcd 3.4, side by side.

DSM: three `dsm node run` processes on loopback (dsm.localcluster: the default SQLite store, production
defaults, a random cluster secret). etcd 3.4 (Debian's etcd-server): three members on loopback as
/work/shared/peers/etcd_bench.sh starts them, driven through its JSON gateway (`/v3/kv/...`, base64 keys and
values), so that both systems are driven by the same minimal HTTP/1.1 client (one keep-alive connection per
client, client i on node i mod 3, G generator processes on uvloop). Values are decimal counters.

Workloads, each repeated --reps times with the DSM and etcd phases alternating (medians reported):

1. latency, one client, sequential (--latency-ops operations each):
   cas    DSM: PUT /v1/kv/k with If-Match: <the context of its previous write>, value + 1
          etcd: POST /v3/kv/txn {compare value == old, success put new, failure range}
   read   DSM: GET /v1/kv/k?consistency=linearizable  |  etcd: POST /v3/kv/range (linearizable, its default)
   put    DSM: PUT ?consistency=quorum                 |  etcd: POST /v3/kv/put   (the plain write, for scale)
2. uncontended throughput, --clients closed-loop clients for --duration s, each on a key of its own:
   cas    as above (If-Match chains / txn compare-and-swap increments)
   put    DSM: PUT ?consistency=quorum  |  etcd: put  (same clients, same keys' shape, a key of their own)
   After the phase every key is read back (linearizably): its value must equal its client's successes.
3. contention, --contenders clients on ONE key for --duration s, increments by compare-and-swap:
   DSM: a client holding no fresh context reads (GET ?consistency=linearizable), then PUT If-Match with
        value + 1; a 200 gives it the new context (it goes on without reading), a 412 sends it back to a read
        (the 412 carries the current context, not the value).
   etcd: range once, then txn {value == old ? put old + 1 : range}; a failed txn returns the current value,
        so the client retries at once.
   Reported: successful increments/s, the latency of one increment (first attempt to success, retries and
   reads included), each client's wins, Jain's fairness index of the wins ((sum x)^2 / (n sum x^2): 1 when
   all win equally, 1/n when one wins everything), and whether the final value (read linearizably) equals
   the number of successes (no lost updates; a DSM 503 outcome_unknown may have applied, so it is counted),
   and how many successful writes wrote a value another success had already written (duplicate wins: two
   clients both told 200 for the same increment, one of the two updates lost).

With --profile, one more DSM contended phase and one uncontended cas phase run (not in the table) while
`py-spy record` samples the busiest node (the key's home in the contended phase, n1 otherwise).

Reproduce: .venv/bin/python bench/cas_bench.py --reps 3 --duration 5 --profile
Options: --clients 32, --contenders 16, --latency-ops 300, --generators 2, --skip-etcd, --skip-dsm,
         --json bench/results/cas-bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from array import array
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    CpuWindow,
    HttpConnection,
    Profiler,
    Workers,
    dsm_cluster,
    etcd_cluster,
    hot_spots,
    http_targets,
    parse_response,
    pct,
    print_profile,
    proc_rss_kib,
    py_spy,
)

Address = tuple[str, int]


# ------------------------------------------------------------------------------------------- HTTP client


class Conn(HttpConnection):
    """One keep-alive HTTP/1.1 connection that also hands back the response's X-DSM-Context header."""

    def __init__(self) -> None:
        super().__init__()
        self.context: str | None = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None:
            return
        parsed = parse_response(self.buf)
        if parsed is None:
            return
        head = bytes(self.buf[: self.buf.find(b"\r\n\r\n")])
        del self.buf[: parsed[2]]
        i = head.lower().find(b"\r\nx-dsm-context:")
        context = head[i + 16 : head.find(b"\r\n", i + 2) if head.find(b"\r\n", i + 2) > 0 else len(head)].strip()
        self.context = context.decode() if i >= 0 else None
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result(parsed[:2])

    async def call(self, data: bytes) -> tuple[int, bytes, str | None]:
        status, body = await self.request(data)
        return status, body, self.context


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


#: What a compare-and-swap attempt ended as: (outcome, the token to compare with next, the value it stands
#: for or None if unknown). Outcomes: "ok", "failed" (the condition did not hold), "status <n>" (anything else).
Attempt = tuple[str, str | None, int | None]


class Dsm:
    """DSM's requests. The token of a key is the X-DSM-Context of its last read or write."""

    def __init__(self, host: str) -> None:
        self.host = host

    def _put(self, key: str, value: int, header: str, query: str = "") -> bytes:
        body = str(value).encode()
        head = f"PUT /v1/kv/{key}{query} HTTP/1.1\r\nHost: {self.host}\r\n{header}Content-Length: {len(body)}\r\n\r\n"
        return head.encode() + body

    async def create(self, conn: Conn, key: str, value: int) -> Attempt:
        status, _, context = await conn.call(self._put(key, value, "If-None-Match: *\r\n"))
        return ("ok" if status == 200 else "failed" if status == 412 else f"status {status}"), context, None

    async def cas(self, conn: Conn, key: str, token: str, value: int) -> Attempt:
        status, _, context = await conn.call(self._put(key, value, f"If-Match: {token}\r\n"))
        if status == 200:
            return "ok", context, value
        return ("failed" if status == 412 else f"status {status}"), None, None

    async def read(self, conn: Conn, key: str) -> Attempt:
        get = f"GET /v1/kv/{key}?consistency=linearizable HTTP/1.1\r\nHost: {self.host}\r\n\r\n"
        status, body, context = await conn.call(get.encode())
        if status == 200:
            return "ok", context, int(body)
        return f"status {status}", None, None

    async def put(self, conn: Conn, key: str, value: int) -> str:
        status, _, _ = await conn.call(self._put(key, value, "", "?consistency=quorum"))
        return "ok" if status == 200 else f"status {status}"


class Etcd:
    """etcd's requests through its JSON gateway. The token of a key is its value (the txn compares it)."""

    def __init__(self, host: str) -> None:
        self.host = host

    def _post(self, path: str, doc: dict[str, Any]) -> bytes:
        body = json.dumps(doc).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    async def create(self, conn: Conn, key: str, value: int) -> Attempt:
        outcome = await self.put(conn, key, value)
        return outcome, str(value), value

    async def cas(self, conn: Conn, key: str, token: str, value: int) -> Attempt:
        k = b64(key.encode())
        doc = {
            "compare": [{"key": k, "target": "VALUE", "result": "EQUAL", "value": b64(token.encode())}],
            "success": [{"request_put": {"key": k, "value": b64(str(value).encode())}}],
            "failure": [{"request_range": {"key": k}}],
        }
        status, body, _ = await conn.call(self._post("/v3/kv/txn", doc))
        if status != 200:
            return f"status {status}", None, None
        answer = json.loads(body)
        if answer.get("succeeded"):
            return "ok", str(value), value
        kvs = answer["responses"][0]["response_range"].get("kvs", [])
        current = base64.b64decode(kvs[0]["value"]).decode() if kvs else None
        return "failed", current, None if current is None else int(current)

    async def read(self, conn: Conn, key: str) -> Attempt:
        status, body, _ = await conn.call(self._post("/v3/kv/range", {"key": b64(key.encode())}))
        kvs = json.loads(body).get("kvs", []) if status == 200 else []
        if not kvs:
            return f"status {status}" if status != 200 else "missing", None, None
        current = base64.b64decode(kvs[0]["value"]).decode()
        return "ok", current, int(current)

    async def put(self, conn: Conn, key: str, value: int) -> str:
        doc = {"key": b64(key.encode()), "value": b64(str(value).encode())}
        status, _, _ = await conn.call(self._post("/v3/kv/put", doc))
        return "ok" if status == 200 else f"status {status}"


# ----------------------------------------------------------------------------------------------- clients


class Tally:
    """What one generator process saw in a phase."""

    def __init__(self) -> None:
        self.lat = array("d")  # per request (cas, read or put), or per increment in the contended phase
        self.read_lat = array("d")  # the contended phase's reads
        self.outcomes: Counter[str] = Counter()
        self.wins: dict[int, int] = {}
        self.won_values = array("q")  # the values the contended phase's successful writes wrote
        self.mismatched: list[str] = []


async def run_client(spec: dict[str, Any], conn_no: int, tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    host, port = spec["targets"][conn_no % len(spec["targets"])]
    ops: Dsm | Etcd = (Dsm if spec["system"] == "dsm" else Etcd)(f"{host}:{port}")
    _, conn = await loop.create_connection(Conn, host, port)
    workload, out, lat = spec["workload"], tally.outcomes, tally.lat
    key = spec["key"] if workload == "contended" else f"{spec['tag']}-{workload}-c{conn_no}"
    value, token = 0, None
    if workload == "cas":
        outcome, token, _ = await ops.create(conn, key, 0)
        assert outcome == "ok", f"creating {key}: {outcome}"
    elif workload == "read":
        key = f"{spec['tag']}-cas-c{conn_no}"  # written by the cas phase just before
    elif workload == "contended":
        token = None
    await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
    deadline = time.perf_counter() + spec["duration"] if spec["duration"] else float("inf")
    quota, done = spec["ops"] or 1 << 62, 0
    wins = 0
    try:
        while done < quota and time.perf_counter() < deadline:
            start = time.perf_counter()
            if workload == "put":
                out[await ops.put(conn, key, done + 1)] += 1
            elif workload == "read":
                outcome, _, _ = await ops.read(conn, key)
                out[outcome] += 1
            elif workload == "cas":
                assert token is not None
                outcome, got, _ = await ops.cas(conn, key, token, value + 1)
                out[outcome] += 1
                if outcome == "ok":
                    value, token = value + 1, got
                else:  # not expected uncontended: start again from a read
                    outcome, token, read = await ops.read(conn, key)
                    value = read if read is not None else value
            else:  # contended: one increment, retried until it wins or the phase ends
                won = False
                while not won and time.perf_counter() < deadline:
                    if token is None:
                        t = time.perf_counter()
                        outcome, token, read = await ops.read(conn, key)
                        tally.read_lat.append(time.perf_counter() - t)
                        out["read " + outcome] += 1
                        if read is None:
                            token = None
                            continue
                        value = read
                    outcome, got, current = await ops.cas(conn, key, token, value + 1)
                    out[outcome] += 1
                    if outcome == "ok":
                        won, value, token = True, value + 1, got
                        tally.won_values.append(value)
                    else:
                        token = got  # etcd's failed txn returns the current value; DSM's 412 sends us to a read
                        if current is not None:
                            value = current
                if not won:
                    break
                wins += 1
            lat.append(time.perf_counter() - start)
            done += 1
        if workload == "cas":  # no lost update: the key holds what this client's successes made it
            outcome, _, read = await ops.read(conn, key)
            if read != value:
                tally.mismatched.append(f"{key}: read {read} ({outcome}), expected {value}")
    finally:
        tally.wins[conn_no] = wins
        if conn.transport is not None:
            conn.transport.close()


async def run_share(spec: dict[str, Any]) -> dict[str, Any]:
    tally = Tally()
    tasks = [asyncio.ensure_future(run_client(spec, c, tally)) for c in spec["conns"]]
    await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    done, pending = await asyncio.wait(tasks, timeout=(spec["duration"] or 0) + 120)
    for t in pending:
        t.cancel()
        tally.outcomes["timeout"] += 1
    errors = [repr(t.exception()) for t in done if t.exception() is not None]
    return {
        "lat": tally.lat.tobytes(),
        "read_lat": tally.read_lat.tobytes(),
        "outcomes": dict(tally.outcomes),
        "wins": tally.wins,
        "won_values": tally.won_values.tobytes(),
        "mismatched": tally.mismatched,
        "errors": errors[:5],
        "wall_s": time.perf_counter() - wall0,
        "cpu_s": time.process_time() - cpu0,
    }


def worker_main(pipe: Connection) -> None:
    """A generator process: runs its share of one phase per message until it receives None."""
    import uvloop

    while True:
        spec = pipe.recv()
        if spec is None:
            return
        pipe.send(uvloop.run(run_share(spec)))


class Generator(Workers):
    """G generator processes; client i runs in process i mod G."""

    def __init__(self, processes: int) -> None:
        super().__init__(processes, worker_main)

    def phase(
        self,
        system: str,
        workload: str,
        targets: list[Address],
        pids: dict[str, int],
        *,
        clients: int,
        tag: str,
        duration: float = 0.0,
        ops: int = 0,
        key: str = "",
        during: Callable[[], Any] | None = None,
        metrics_urls: list[str] | None = None,
    ) -> dict[str, Any]:
        sent_before = messages_sent(metrics_urls or [])
        start_at = time.time() + 1.0  # time to connect (and create the keys) before the clock starts
        used = []
        for g, pipe in enumerate(self.pipes):
            conns = list(range(g, clients, len(self.pipes)))
            if conns:
                spec = {"system": system, "workload": workload, "targets": targets, "conns": conns, "tag": tag}
                pipe.send(spec | {"start_at": start_at, "duration": duration, "ops": ops, "key": key})
                used.append(pipe)
        window = CpuWindow(pids)
        time.sleep(max(0.0, start_at - time.time()))
        window.start()
        extra = during() if during is not None else None
        parts = [pipe.recv() for pipe in used]
        cpu = window.stop()
        sent = messages_sent(metrics_urls or []) - sent_before
        if extra is not None:
            extra.wait()
        lat, read_lat = array("d"), array("d")
        outcomes: Counter[str] = Counter()
        wins: dict[int, int] = {}
        won_values = array("q")
        for part in parts:
            won_values.frombytes(part["won_values"])
            lat.frombytes(part["lat"])
            read_lat.frombytes(part["read_lat"])
            outcomes.update(part["outcomes"])
            wins |= {int(c): n for c, n in part["wins"].items()}
        wall = max(p["wall_s"] for p in parts)
        samples = list(lat)
        row: dict[str, Any] = {
            "system": system,
            "workload": workload,
            "clients": clients,
            "done": len(samples),
            "per_s": len(samples) / wall,
            "outcomes": dict(outcomes),
            "p50_ms": pct(samples, 50) * 1e3 if samples else None,
            "p99_ms": pct(samples, 99) * 1e3 if samples else None,
            "wall_s": wall,
            "node_cores": {k: round(v, 3) for k, v in cpu["per_process_cores"].items()},
            "nodes_cores": cpu["processes_cores"],
            "node_us_per_op": cpu["processes_cores"] * wall / max(1, len(samples)) * 1e6,
            "generator_cores": sum(p["cpu_s"] for p in parts) / wall,
            "machine_busy_cores": cpu["machine_busy_cores"],
            "mismatched": [m for p in parts for m in p["mismatched"]],
            "errors": [e for p in parts for e in p["errors"]],
        }
        if metrics_urls:
            # Peer messages every node sent during the phase (key creation included), per operation done.
            row["messages_per_op"] = sum(sent.values()) / max(1, len(samples))
            row["messages_per_op_by_type"] = {k: round(n / max(1, len(samples)), 2) for k, n in sent.most_common(8)}
        if workload == "contended":
            won = [wins.get(c, 0) for c in range(clients)]
            row["wins"] = won
            row["jain"] = sum(won) ** 2 / (len(won) * sum(w * w for w in won)) if any(won) else None
            row["read_p50_ms"] = pct(list(read_lat), 50) * 1e3 if read_lat else None
            row["attempts_per_win"] = (outcomes["ok"] + outcomes["failed"]) / max(1, sum(won))
            # Two successful writes of the same value both started from the same state: one update lost.
            row["duplicate_wins"] = sum(n - 1 for n in Counter(won_values).values() if n > 1)
            row["won_values_max"] = max(won_values, default=0)
        return row


# ---------------------------------------------------------------------------------------------- checks


def messages_sent(urls: list[str]) -> Counter[str]:
    """Peer messages sent so far by type, summed over the nodes (their `dsm_messages_sent_total`)."""
    sent: Counter[str] = Counter()
    prefix = 'dsm_messages_sent_total{type="'
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(prefix):
                    kind, _, count = line[len(prefix) :].partition('"} ')
                    sent[kind] += int(float(count))
    return sent


def final_value(system: str, target: Address, key: str) -> int | None:
    """The key's value read linearizably, through a connection of its own."""

    async def read() -> int | None:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(Conn, *target)
        try:
            ops: Dsm | Etcd = (Dsm if system == "dsm" else Etcd)(f"{target[0]}:{target[1]}")
            return (await ops.read(conn, key))[2]
        finally:
            if conn.transport is not None:
                conn.transport.close()

    return asyncio.run(read())


# ------------------------------------------------------------------------------------------------ report

LATENCY = ("cas", "read", "put")
THROUGHPUT = ("cas", "put")
MEDIAN_KEYS = (
    "per_s",
    "p50_ms",
    "p99_ms",
    "nodes_cores",
    "generator_cores",
    "machine_busy_cores",
    "node_us_per_op",
    "messages_per_op",
)


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    med = statistics.median
    outcomes: Counter[str] = Counter()
    for r in runs:
        outcomes.update(r["outcomes"])
    first = runs[0]
    row = {
        "system": first["system"],
        "phase": first["phase"],
        "workload": first["workload"],
        "clients": first["clients"],
        "reps": len(runs),
        "outcomes": dict(outcomes),
        "mismatched": sum(len(r["mismatched"]) for r in runs),
        **{k: med(r[k] for r in runs) for k in MEDIAN_KEYS if all(r.get(k) is not None for r in runs)},
    }
    if first["workload"] == "contended":
        row["jain"] = med(r["jain"] for r in runs)
        row["attempts_per_win"] = med(r["attempts_per_win"] for r in runs)
        row["lost_updates"] = [r["lost_updates"] for r in runs]
        row["duplicate_wins"] = [r["duplicate_wins"] for r in runs]
        row["final_ok"] = [r["final_ok"] for r in runs]
        row["min_max_wins"] = [[min(r["wins"]), max(r["wins"])] for r in runs]
        if all(r.get("read_p50_ms") is not None for r in runs):
            row["read_p50_ms"] = med(r["read_p50_ms"] for r in runs)
    return row


def describe(r: dict[str, Any]) -> str:
    bad = {k: v for k, v in r["outcomes"].items() if k not in ("ok", "read ok")}
    text = f"{r['system']:4s} {r['phase']:10s} {r['workload']:9s} {r['per_s']:8,.0f}/s"
    text += f"  p50 {r.get('p50_ms') or 0:6.2f} ms  p99 {r.get('p99_ms') or 0:6.2f} ms"
    text += f"  nodes {r['nodes_cores']:.2f} cores ({r['node_us_per_op']:.0f} us/op)"
    text += f", generator {r['generator_cores']:.2f}"
    if r.get("messages_per_op") is not None:
        text += f"  {r['messages_per_op']:.1f} msgs/op"
    if "jain" in r:
        text += f"  Jain {r['jain'] or 0:.3f}  attempts/win {r['attempts_per_win']:.2f}"
    if "lost_updates" in r:
        text += f"  successes - final value {r['lost_updates']}, duplicate wins {r['duplicate_wins']}"
    if bad:
        text += f"  other outcomes {bad}"
    if r.get("mismatched"):
        text += f"  MISMATCHED {r['mismatched']}"
    return text


# -------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per throughput phase (default 5)")
    ap.add_argument("--latency-ops", type=int, default=300, help="sequential operations per latency phase")
    ap.add_argument("--clients", type=int, default=32, help="clients of the uncontended throughput phases")
    ap.add_argument("--contenders", type=int, default=16, help="clients on the one contended key")
    ap.add_argument("--generators", type=int, default=2, help="load generator processes")
    ap.add_argument("--skip-etcd", action="store_true")
    ap.add_argument("--skip-dsm", action="store_true")
    ap.add_argument("--profile", action="store_true", help="extra DSM phases under py-spy")
    ap.add_argument("--profile-s", type=float, default=10.0)
    ap.add_argument("--json", default=str(RESULTS / "cas-bench.json"))
    a = ap.parse_args()
    if a.profile and not a.skip_dsm:
        py_spy()
    meta: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/cas_bench.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "args": vars(a),
    }
    runs: list[dict[str, Any]] = []
    profile: dict[str, Any] = {}
    gen = Generator(a.generators)
    workdir = tempfile.mkdtemp(prefix="dsm-cas-bench-")
    systems: dict[str, tuple[list[Address], dict[str, int]]] = {}
    urls: dict[str, list[str]] = {}  # whose peer messages to count (DSM's nodes)
    try:
        with contextlib.ExitStack() as stack:
            if not a.skip_dsm:
                cluster = stack.enter_context(dsm_cluster(3, workdir))
                targets = http_targets(cluster)
                systems["dsm"] = (targets, {n.node_id: n.pid for n in cluster.nodes})
                urls["dsm"] = [n.url for n in cluster.nodes]
            if not a.skip_etcd:
                members = stack.enter_context(etcd_cluster(workdir))
                systems["etcd"] = ([addr for _, addr in members], {f"e{i}": pid for i, (pid, _) in enumerate(members)})
            time.sleep(2)

            def record(row: dict[str, Any], phase: str, rep: int) -> None:
                row |= {"phase": phase, "rep": rep}
                runs.append(row)
                print(f"rep {rep + 1}: {describe(row)}", flush=True)

            for rep in range(a.reps):
                order = list(systems) if rep % 2 == 0 else list(reversed(systems))
                for name in order:  # 1. latency, one client
                    for workload in LATENCY:
                        got = gen.phase(
                            name, workload, *systems[name], clients=1, tag=f"l{rep}", ops=a.latency_ops,
                            metrics_urls=urls.get(name),
                        )  # fmt: skip
                        record(got, "latency", rep)
                for name in order:  # 2. uncontended throughput
                    for workload in THROUGHPUT:
                        got = gen.phase(
                            name,
                            workload,
                            *systems[name],
                            clients=a.clients,
                            tag=f"t{rep}",
                            duration=a.duration,
                            metrics_urls=urls.get(name),
                        )
                        record(got, "throughput", rep)
                for name in order:  # 3. contention on one key
                    targets, pids = systems[name]
                    key = f"hot{rep}"
                    ops: type[Dsm] | type[Etcd] = Dsm if name == "dsm" else Etcd

                    async def create(target: Address, key: str = key, ops: Any = ops) -> str:
                        _, conn = await asyncio.get_running_loop().create_connection(Conn, *target)
                        outcome = (await ops(f"{target[0]}:{target[1]}").create(conn, key, 0))[0]
                        conn.transport.close()
                        return str(outcome)

                    assert asyncio.run(create(targets[0])) == "ok"
                    got = gen.phase(
                        name, "contended", targets, pids, clients=a.contenders, tag=f"c{rep}", duration=a.duration,
                        key=key, metrics_urls=urls.get(name),
                    )  # fmt: skip
                    final = final_value(name, targets[1], key)
                    unknown = got["outcomes"].get("status 503", 0)
                    got["final_value"], got["successes"] = final, sum(got["wins"])
                    # A lost update makes the final value smaller than the successes; an outcome_unknown that
                    # applied makes it larger, by at most the number of those.
                    got["lost_updates"] = got["successes"] - final if final is not None else None
                    got["final_ok"] = final is not None and got["successes"] <= final <= got["successes"] + unknown
                    got["home_guess"] = max(got["node_cores"], key=lambda k: got["node_cores"][k])
                    record(got, "contention", rep)
            for name, (_, pids) in systems.items():
                meta[f"{name}_rss_kib_after"] = {node: proc_rss_kib(pid) for node, pid in pids.items()}
            if a.profile and "dsm" in systems:
                targets, pids = systems["dsm"]
                last = [r for r in runs if r["system"] == "dsm" and r["workload"] == "contended"][-1]
                for workload, node in (("contended", last["home_guess"]), ("cas", "n1")):
                    out = f"/tmp/dsm-cas-profile-{workload}.txt"
                    key = "hotp"
                    if workload == "contended":
                        # The same key as the last measured phase, so the node profiled is its home.
                        key = f"hot{a.reps - 1}"
                    got = gen.phase(
                        "dsm", workload, targets, pids, clients=a.contenders if workload == "contended" else a.clients,
                        tag="p", duration=a.profile_s + 1, key=key, during=Profiler(pids[node], a.profile_s, out),
                    )  # fmt: skip
                    spots = hot_spots(out, top=25)
                    got["phase"] = "profiled"
                    profile[workload] = {"node": node, "under_profiler": got, "raw_stacks": out, **spots}
                    print(f"under py-spy ({node}): {describe(got)}")
                    print_profile(f"DSM {workload}, node {node}", spots)
    finally:
        gen.close()
        shutil.rmtree(workdir, ignore_errors=True)
    meta["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["phase"], r["workload"], r["system"]), []).append(r)
    medians = [median_row(g) for g in groups.values()]
    print(f"\nmedians of {a.reps} repetitions")
    for r in medians:
        print(describe(r))
    by = {(r["phase"], r["workload"], r["system"]): r for r in medians}
    for phase, workload in (("throughput", "cas"), ("contention", "contended")):
        d, e = by.get((phase, workload, "dsm")), by.get((phase, workload, "etcd"))
        if d and e:
            print(f"DSM / etcd {phase} {workload}: {d['per_s'] / e['per_s']:.2f}x")
    out = {**meta, "medians": medians, "runs": runs, "profile": profile}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
