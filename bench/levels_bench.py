"""Consistency levels on real nodes: what each level costs a client, and how stale another region is.

    .venv/bin/python bench/levels_bench.py
    .venv/bin/python bench/levels_bench.py --duration 5 --concurrency 16 --staleness-writes 50
    .venv/bin/python bench/levels_bench.py --ops 2000          # N operations per phase instead of 5 s

The cluster: five `dsm node run` processes on loopback, started through dsm.localcluster (the default
SQLite store, each in its own temporary directory, production-default intervals, a random cluster
secret), node i on its own address 127.0.0.i (random ports), in two regions set with DSM_REGION:
region a = n1, n2, n3 and region b = n4, n5. So a majority is 2 of 3 in a, 2 of 2 in b, 3 of 5 overall:

  level               a request returns after ...            (coordinator in a)  (coordinator in b)
  local               the coordinator's own commit                 1                   1
  region_quorum       a majority of the coordinator's region       2 of a              2 of b
  quorum              a majority of all members                    3 of 5              3 of 5
  each_region_quorum  a majority of every region                   2 of a + 2 of b     2 of a + 2 of b
  all                 every member                                 5                   5

(1) Latency per level, for writes (PUT, 100-byte values) and reads (GET of keys written in the write phase
just before, at the same level, chosen at random), with
  (a) one sequential client: one request at a time, request i to node i mod 5 (so both regions
      coordinate), a keep-alive connection per node: latency without queueing;
  (b) --concurrency (16) closed-loop clients, client i on node i mod 5: latency under load and ok/s.
Each phase runs --duration seconds (5) or --ops operations. Both use the minimal HTTP/1.1 client of
bench/throughput_bench.py (HttpConnection on asyncio's Protocol, uvloop): the sequential client runs in
this process, the concurrent ones in one generator process (throughput_bench.Generator, spawned). Its CPU
per request is measured and reported (client_us_per_op, generator_us_per_op): about 30-90 us with 16
clients, about 60-130 us for the sequential client (every request wakes the event loop up on its own),
against about 270 us for aiohttp's client; on this 2-core machine it shares the CPU with the five nodes,
so the sequential latencies include the client's own ~0.1 ms and the 16-client rates are bounded by CPU.
The watch streams of (2) use aiohttp.
Every phase also reports the read repairs the nodes sent during it (dsm_read_repairs_total, before/after),
the CPU of the nodes, and the CPU of everything else on the machine ("others": another job running at
the same time shows there; /proc/stat and /proc/<pid>/stat, as in throughput_bench).

(2) Cross-region staleness: --staleness-writes (50) writes acknowledged in region a (through n1, n2, n3
in turn, one at a time, --gap 0.2 s apart) at `local` and at `region_quorum`; a watch stream
(GET /v1/watch, NDJSON) is open on every node, so each node reports the moment it commits the write.
Staleness of a write = (the last node of region b to report it) - (the writer's acknowledgement), on this
process's monotonic clock (a stream's delivery over loopback adds well under a millisecond). It is
negative when region b already held the write when the writer heard back. The same is reported for the
rest of region a.
ON LOOPBACK THERE IS NO INTER-REGION LATENCY: both regions are on one machine, a round trip to region b
costs what one inside region a costs, so these figures show the protocol's own delay (direct pushes,
queueing, CPU), not what a real WAN adds (one one-way WAN delay at least, for every level that does not
wait for region b).

(3) At the end, dsm_consistency_requests_total{op, level, outcome} (requests above `local` only) and
dsm_read_repairs_total are scraped from every node's /metrics, per node and summed.

Writes bench/results/levels.json and prints markdown tables. Nodes are stopped by the pids this run
started (LocalCluster.down), never by name.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from common import (
    RESULTS,
    CpuWindow,
    Generator,
    HttpConnection,
    http_json,
    pct,
    proc_rss_kib,
    requests_for,
    stop_on_sigterm,
    wait_until,
)
from dsm.localcluster import LocalCluster, LocalNode

LEVELS = ("local", "region_quorum", "quorum", "each_region_quorum", "all")
LAYOUT = {"n1": "a", "n2": "a", "n3": "a", "n4": "b", "n5": "b"}
LOOPBACK_NOTE = (
    "loopback: all five nodes share one machine (2 cores) and there is no inter-region latency; "
    "the figures show the protocol's own cost and delay, not a WAN's"
)


# ------------------------------------------------------------------------------------------------ cluster


def metrics_text(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text: str = r.read().decode()
    return text


@contextlib.contextmanager
def region_cluster(workdir: str, layout: dict[str, str]) -> Iterator[LocalCluster]:
    """The nodes of `layout` (id -> region), node i on 127.0.0.i, each started with its DSM_REGION."""
    stop_on_sigterm()
    secret = secrets.token_hex(16)
    cluster = LocalCluster(os.path.join(workdir, "dsm"), env={"DSM_CLUSTER_SECRET": secret})
    cluster.directory.mkdir(parents=True, exist_ok=True)
    for i, node_id in enumerate(layout, start=1):
        data = cluster.directory / node_id
        cluster.nodes.append(LocalNode(node_id, f"127.0.0.{i}:0", f"127.0.0.{i}:0", str(data), str(data / "node.log")))
    try:
        started = time.monotonic()
        for n in cluster.nodes:
            # LocalCluster passes one environment to the nodes it starts: the region is set per start.
            cluster.env = {"DSM_CLUSTER_SECRET": secret, "DSM_REGION": layout[n.node_id]}
            cluster.start(n.node_id)
        print(f"DSM: {len(layout)} nodes started in {time.monotonic() - started:.1f} s: ", end="")
        print(", ".join(f"{n.node_id} {n.http} (region {layout[n.node_id]}, pid {n.pid})" for n in cluster.nodes))

        def converged() -> bool:
            for n in cluster.nodes:
                seen = {m["id"]: m for m in http_json(n.url + "/v1/members")["members"]}
                for other, region in layout.items():
                    if other == n.node_id:
                        continue
                    m = seen.get(other)
                    if m is None or m["state"] != "alive" or m["region"] != region:
                        return False
            return True

        waited = wait_until(converged, 60, "every node to see every other alive, in its region")
        print(f"DSM: every node sees every other alive in its region ({waited:.1f} s after the last start)")
        yield cluster
    finally:
        stopped = cluster.down()
        print(f"DSM: stopped {', '.join(stopped) or 'nothing'}")


def address(n: LocalNode) -> tuple[str, int]:
    host, port = n.http.rsplit(":", 1)
    return host, int(port)


# ------------------------------------------------------------------------------------ sequential client


async def sequential_phase(
    targets: list[tuple[str, int]],
    regions: list[str],
    op: str,
    level: str,
    tag: str,
    duration: float,
    ops: int,
    written: list[str],
) -> dict[str, Any]:
    """One client, one request at a time, request i to node i mod len(targets); returns the phase's figures.

    A write phase appends the keys it wrote to `written`; a read phase reads keys of `written` at random."""
    loop = asyncio.get_running_loop()
    conns: list[HttpConnection] = []
    for host, port in targets:
        _, proto = await loop.create_connection(HttpConnection, host, port)
        conns.append(proto)
    clients = [requests_for("dsm", op, f"{h}:{p}", level) for h, p in targets]
    rnd = random.Random(f"{tag}-{op}")
    lat: list[float] = []
    by_region: dict[str, list[float]] = {r: [] for r in sorted(set(regions))}
    outcomes: Counter[str] = Counter()
    errors: list[str] = []
    reads_from = list(written)
    deadline = time.perf_counter() + duration if not ops else float("inf")
    quota = ops or 1 << 62
    cpu0, wall0 = time.process_time(), time.perf_counter()
    i = 0
    try:
        while i < quota and time.perf_counter() < deadline:
            node = i % len(targets)
            key = f"{tag}-{i}" if op == "write" else rnd.choice(reads_from)
            build, judge = clients[node]
            data = build(key)
            start = time.perf_counter()
            try:
                if conns[node].closed:
                    _, conns[node] = await loop.create_connection(HttpConnection, *targets[node])
                status, body = await conns[node].request(data)
            except OSError as exc:
                outcomes["error"] += 1
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}")
                i += 1
                continue
            took = time.perf_counter() - start
            outcome = judge(status, body)
            outcomes[outcome] += 1
            if outcome == "ok":
                lat.append(took)
                by_region[regions[node]].append(took)
                if op == "write":
                    written.append(key)
            elif len(errors) < 5:
                errors.append(f"{outcome}: {body[:300]!r}")
            i += 1
    finally:
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        for proto in conns:
            if proto.transport is not None:
                proto.transport.close()
    done = sum(outcomes.values())
    return {
        "ops": done,
        "ok": outcomes.get("ok", 0),
        "outcomes": dict(outcomes),
        "errors": errors,
        "wall_s": wall,
        "ok_per_s": outcomes.get("ok", 0) / wall,
        **latency_ms(lat),
        "by_coordinator_region": {r: latency_ms(v) for r, v in by_region.items()},
        "client_us_per_op": cpu / max(1, done) * 1e6,
    }


def latency_ms(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": pct(samples, 50) * 1e3, "p99_ms": pct(samples, 99) * 1e3, "max_ms": max(samples) * 1e3}


# -------------------------------------------------------------------------------------------- staleness


async def follow(session: aiohttp.ClientSession, url: str, seen: dict[str, float], ready: asyncio.Event) -> None:
    """Records when this node reports each key under st- (its first report)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with session.get(url + "/v1/watch", params={"prefix": "st-"}, timeout=timeout) as r:
        ready.set()
        async for line in r.content:
            if not line.strip():
                continue  # a heartbeat
            change = json.loads(line)
            if "key" in change:
                seen.setdefault(change["key"], time.monotonic())
            elif "error" in change:
                raise RuntimeError(f"watch on {url} ended: {change['error']}")


async def staleness(
    nodes: list[LocalNode], layout: dict[str, str], levels: list[str], writes: int, gap: float, settle: float
) -> list[dict[str, Any]]:
    """Per level: writes through region a (n1, n2, n3 in turn), one at a time, while every node is watched."""
    loop = asyncio.get_running_loop()
    writers = [n for n in nodes if layout[n.node_id] == "a"]
    remote = [i for i, n in enumerate(nodes) if layout[n.node_id] == "b"]
    seen: list[dict[str, float]] = [{} for _ in nodes]
    results = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        readies = [asyncio.Event() for _ in nodes]
        streams = [
            asyncio.ensure_future(follow(session, n.url, s, r)) for n, s, r in zip(nodes, seen, readies, strict=True)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 10)
            conns: list[HttpConnection] = []
            for n in writers:
                _, proto = await loop.create_connection(HttpConnection, *address(n))
                conns.append(proto)
            for level in levels:
                builds = [requests_for("dsm", "write", f"{h}:{p}", level) for h, p in map(address, writers)]
                acks: dict[str, tuple[float, int]] = {}
                write_lat: list[float] = []
                failed: Counter[str] = Counter()
                for i in range(writes):
                    key, w = f"st-{level}-{i:04d}", i % len(writers)
                    build, judge = builds[w]
                    start = time.monotonic()
                    status, body = await conns[w].request(build(key))
                    acked = time.monotonic()
                    outcome = judge(status, body)
                    if outcome != "ok":
                        failed[outcome] += 1
                        continue
                    writer_index = nodes.index(writers[w])
                    acks[key] = (acked, writer_index)
                    write_lat.append(acked - start)
                    await asyncio.sleep(gap)
                await asyncio.sleep(settle)
                results.append(summarize_staleness(level, nodes, layout, remote, seen, acks, write_lat, failed))
            for proto in conns:
                if proto.transport is not None:
                    proto.transport.close()
        finally:
            for task in streams:
                task.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
    return results


def summarize_staleness(
    level: str,
    nodes: list[LocalNode],
    layout: dict[str, str],
    remote: list[int],
    seen: list[dict[str, float]],
    acks: dict[str, tuple[float, int]],
    write_lat: list[float],
    failed: Counter[str],
) -> dict[str, Any]:
    to_b: list[float] = []
    to_rest_of_a: list[float] = []
    missing_b = missing_a = 0
    for key, (acked, writer) in acks.items():
        at_b = [seen[i].get(key) for i in remote]
        if any(t is None for t in at_b):
            missing_b += 1
        else:
            to_b.append(max(t for t in at_b if t is not None) - acked)
        others = [seen[i].get(key) for i, n in enumerate(nodes) if layout[n.node_id] == "a" and i != writer]
        if any(t is None for t in others):
            missing_a += 1
        else:
            to_rest_of_a.append(max(t for t in others if t is not None) - acked)

    def dist(values: list[float]) -> dict[str, float | None]:
        if not values:
            return {"p50_ms": None, "p99_ms": None, "min_ms": None, "max_ms": None}
        return {
            "p50_ms": pct(values, 50) * 1e3,
            "p99_ms": pct(values, 99) * 1e3,
            "min_ms": min(values) * 1e3,
            "max_ms": max(values) * 1e3,
        }

    return {
        "level": level,
        "writes_acknowledged": len(acks),
        "writes_failed": dict(failed),
        "write_latency": latency_ms(write_lat),
        "region_b_has_it": dist(to_b),
        "region_b_already_at_ack": sum(v <= 0 for v in to_b),
        "region_b_missing_after_settle": missing_b,
        "rest_of_region_a_has_it": dist(to_rest_of_a),
        "rest_of_region_a_missing_after_settle": missing_a,
    }


# ---------------------------------------------------------------------------------------------- metrics


def read_repairs(urls: list[str]) -> float:
    total = 0.0
    for url in urls:
        found = re.search(r"^dsm_read_repairs_total (\S+)$", metrics_text(url), re.M)
        total += float(found.group(1)) if found else 0.0
    return total


def scrape_levels(nodes: list[LocalNode]) -> dict[str, Any]:
    """dsm_consistency_requests_total by (op, level, outcome) and dsm_read_repairs_total, per node and summed."""
    sample = re.compile(r"^dsm_consistency_requests_total\{([^}]*)\} (\S+)$", re.M)
    per_node: dict[str, Any] = {}
    totals: dict[str, float] = {}
    repairs = 0.0
    stalls: dict[str, float] = {}
    for n in nodes:
        text = metrics_text(n.url)
        counts: dict[str, float] = {}
        for labels, value in sample.findall(text):
            parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            name = f"{parsed.get('op')} {parsed.get('level')} {parsed.get('outcome')}"
            counts[name] = float(value)
            totals[name] = totals.get(name, 0.0) + float(value)
        found = re.search(r"^dsm_read_repairs_total (\S+)$", text, re.M)
        node_repairs = float(found.group(1)) if found else 0.0
        repairs += node_repairs
        lag = re.search(r"^dsm_event_loop_lag_max_seconds (\S+)$", text, re.M)
        if lag:
            stalls[n.node_id] = round(float(lag.group(1)) * 1000, 1)
        per_node[n.node_id] = {"consistency_requests": counts, "read_repairs": node_repairs}
    return {
        "consistency_requests_total": dict(sorted(totals.items())),
        "read_repairs_total": repairs,
        "per_node": per_node,
        "event_loop_stall_max_ms": stalls,
    }


# ------------------------------------------------------------------------------------------------ report


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def failures(*phases: dict[str, Any]) -> str:
    bad: Counter[str] = Counter()
    for p in phases:
        bad.update({k: v for k, v in p["outcomes"].items() if k != "ok"})
    return ", ".join(f"{k} {v}" for k, v in sorted(bad.items())) or "0"


def print_tables(out: dict[str, Any]) -> None:
    a = out["args"]
    print(f"\n{LOOPBACK_NOTE}.")
    print(
        "CPU in cores (1.00 = one core busy for the whole phase): nodes = the five nodes together; others = "
        "whatever else ran on the machine meanwhile (other jobs; should be about 0)"
    )
    per_phase = f"{a['ops']} ops" if a["ops"] else f"{a['duration']:g} s"
    print(
        f"\n### Latency per level (5 nodes: region a = n1-n3, b = n4-n5; {a['value_bytes']}-byte values; "
        f"{per_phase} per phase)\n"
    )
    print(
        "| level | clients | write ok/s | write p50 ms | write p99 ms | read ok/s | read p50 ms | read p99 ms "
        "| failed | read repairs (write+read phase) | nodes CPU w/r | others w/r |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in out["latency"]:
        w, rd = r["write"], r["read"]
        print(
            f"| {r['level']} | {r['clients']} | {w['ok_per_s']:,.0f} | {fmt(w['p50_ms'])} | {fmt(w['p99_ms'])} "
            f"| {rd['ok_per_s']:,.0f} | {fmt(rd['p50_ms'])} | {fmt(rd['p99_ms'])} | {failures(w, rd)} "
            f"| {w['read_repairs'] + rd['read_repairs']:.0f} | {w['node_cores']:.2f}/{rd['node_cores']:.2f} "
            f"| {w['other_cores']:.2f}/{rd['other_cores']:.2f} |"
        )
    print("\nsequential client, p50 ms by the coordinator's region (a / b):\n")
    print("| level | write a | write b | read a | read b |")
    print("| --- | --- | --- | --- | --- |")
    for r in out["latency"]:
        if r["clients"] != 1:
            continue
        w, rd = r["write"]["by_coordinator_region"], r["read"]["by_coordinator_region"]
        print(
            f"| {r['level']} | {fmt(w['a']['p50_ms'])} | {fmt(w['b']['p50_ms'])} | {fmt(rd['a']['p50_ms'])} "
            f"| {fmt(rd['b']['p50_ms'])} |"
        )
    cost = [r["write"].get("client_us_per_op") or r["write"].get("generator_us_per_op") for r in out["latency"]]
    print(f"\nclient CPU per request: {min(cost):.0f}-{max(cost):.0f} us (raw HTTP/1.1 client of throughput_bench)")
    print(
        f"\n### Cross-region staleness ({a['staleness_writes']} writes through region a per level, "
        f"{a['gap']} s apart; ms from the writer's acknowledgement; negative = already there)\n"
    )
    print(
        "| write level | acked | write p50 ms | region b has it: p50 ms | p99 ms | max ms | b already at ack "
        "| b missing | rest of a: p50 ms | p99 ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in out["staleness"]:
        b, ra = s["region_b_has_it"], s["rest_of_region_a_has_it"]
        print(
            f"| {s['level']} | {s['writes_acknowledged']} | {fmt(s['write_latency']['p50_ms'])} | {fmt(b['p50_ms'])} "
            f"| {fmt(b['p99_ms'])} | {fmt(b['max_ms'])} | {s['region_b_already_at_ack']} "
            f"| {s['region_b_missing_after_settle']} | {fmt(ra['p50_ms'])} | {fmt(ra['p99_ms'])} |"
        )
    m = out["metrics"]
    print("\n### Metrics at the end (summed over the 5 nodes)\n")
    print("| dsm_consistency_requests_total: op level outcome | count |")
    print("| --- | --- |")
    for name, count in m["consistency_requests_total"].items():
        print(f"| {name} | {count:,.0f} |")
    per_node = ", ".join(f"{k} {v['read_repairs']:.0f}" for k, v in m["per_node"].items())
    print(f"\ndsm_read_repairs_total: {m['read_repairs_total']:.0f} ({per_node})")
    print(f"worst event-loop stall per node (ms): {m['event_loop_stall_max_ms']}")


# -------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per latency phase (default 5)")
    ap.add_argument("--ops", type=int, default=0, help="operations per latency phase instead of a duration")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent clients of the load phases")
    ap.add_argument("--generators", type=int, default=1, help="processes running the concurrent clients")
    ap.add_argument("--levels", nargs="+", choices=LEVELS, default=list(LEVELS))
    ap.add_argument("--staleness-levels", nargs="+", choices=LEVELS, default=["local", "region_quorum"])
    ap.add_argument("--staleness-writes", type=int, default=50, help="writes per staleness level (>= 40)")
    ap.add_argument("--gap", type=float, default=0.2, help="seconds between staleness writes")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds waited after the last staleness write")
    ap.add_argument("--json", default=str(RESULTS / "levels.json"))
    a = ap.parse_args()
    out: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/levels_bench.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "args": vars(a) | {"value_bytes": 100},
        "layout": LAYOUT,
        "note": LOOPBACK_NOTE,
        "client": (
            "sequential: throughput_bench.HttpConnection in this process (uvloop), one keep-alive connection per"
            " node; concurrent: throughput_bench.Generator (the same client, in spawned generator processes)"
        ),
    }
    began = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="dsm-levels-")
    gen = Generator(a.generators, a.concurrency, "raw")
    try:
        with region_cluster(workdir, LAYOUT) as cluster:
            nodes = cluster.nodes
            urls = [n.url for n in nodes]
            targets = [address(n) for n in nodes]
            regions = [LAYOUT[n.node_id] for n in nodes]
            pids = {n.node_id: n.pid for n in nodes}
            time.sleep(2)  # the overlay settles after the last join
            rows: list[dict[str, Any]] = []
            for level in a.levels:
                # (a) one sequential client
                written: list[str] = []
                seq: dict[str, Any] = {"level": level, "clients": 1}
                for op in ("write", "read"):
                    before = read_repairs(urls)
                    window = CpuWindow(pids | {"bench": os.getpid()})
                    window.start()
                    got = uvloop.run(
                        sequential_phase(targets, regions, op, level, f"s-{level}", a.duration, a.ops, written)
                    )
                    cpu = window.stop()
                    got["read_repairs"] = read_repairs(urls) - before
                    got["node_cores"] = sum(v for k, v in cpu["per_process_cores"].items() if k != "bench")
                    # Whatever else ran on the machine meanwhile (other jobs), as in throughput_bench.
                    got["other_cores"] = cpu["machine_busy_cores"] - cpu["processes_cores"]
                    got["cpu"] = cpu
                    seq[op] = got
                    print(
                        f"{level:18} 1 client   {op:5}: {got['ok_per_s']:7,.0f} ok/s  p50 {fmt(got['p50_ms'])} ms  "
                        f"p99 {fmt(got['p99_ms'])} ms  {failures(got)} failed  {got['read_repairs']:.0f} repairs  "
                        f"(client {got['client_us_per_op']:.0f} us/op)",
                        flush=True,
                    )
                    if op == "write":
                        time.sleep(0.5)  # the last direct updates land
                rows.append(seq)
                # (b) concurrent clients
                conc: dict[str, Any] = {"level": level, "clients": a.concurrency}
                got_written: dict[int, int] = {}
                for op in ("write", "read"):
                    before = read_repairs(urls)
                    got = gen.phase(
                        "dsm",
                        op,
                        targets,
                        pids,
                        tag=f"c-{level}",
                        duration=a.duration,
                        ops=a.ops,
                        written=got_written,
                        consistency=level,
                    )
                    got["read_repairs"] = read_repairs(urls) - before
                    if op == "write":
                        got_written = got["written"]
                    got.pop("written")
                    conc[op] = got
                    print(
                        f"{level:18} {a.concurrency} clients {op:5}: {got['ok_per_s']:7,.0f} ok/s  "
                        f"p50 {fmt(got['p50_ms'])} ms  p99 {fmt(got['p99_ms'])} ms  {failures(got)} failed  "
                        f"{got['read_repairs']:.0f} repairs  (nodes {got['node_cores']:.2f} cores, "
                        f"generator {got['generator_us_per_op']:.0f} us/op)",
                        flush=True,
                    )
                    if op == "write":
                        time.sleep(0.5)
                rows.append(conc)
            out["latency"] = rows
            print("staleness ...", flush=True)
            out["staleness"] = uvloop.run(
                staleness(nodes, LAYOUT, a.staleness_levels, a.staleness_writes, a.gap, a.settle)
            )
            out["metrics"] = scrape_levels(nodes)
            out["rss_kib_after"] = {n.node_id: proc_rss_kib(n.pid) for n in nodes}
    finally:
        gen.close()
        shutil.rmtree(workdir, ignore_errors=True)
    out["wall_s"] = round(time.monotonic() - began, 1)
    out["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print_tables(out)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {a.json} ({out['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
