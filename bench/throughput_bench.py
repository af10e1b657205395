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

After every DSM write phase a line gives the nodes' replication traffic and repairs during it, summed over the
nodes (push messages sent, the broadcast tree's grafts and prunes, entries anti-entropy brought, replicated items
that changed nothing on arrival) and each node's worst event-loop stall in it; they are also in the JSON's runs.
bench/write_tail_probe.py repeats wrk write phases on fresh clusters with the same figures.

With --profile, two extra phases (not in the table: py-spy slows the node it samples) run DSM writes and
then reads while `py-spy record --format raw --function` samples node n1; the hot spots (self and
inclusive share of samples, by function) go to the output and the JSON, the raw stacks to /tmp.

With --wrk, every repetition also runs each system's phases under wrk (Debian's, an independent load
generator in C): one wrk process per node or member (`-t 1`, its share of the C connections), Lua scripts
that write random keys of a 10,000-key space (DSM: PUT with the same 100-byte body; etcd: POST /v3/kv/put
with the key and value base64-encoded) and read them (DSM: GET; etcd: serializable range). Its rows are
labelled `wrk`; their p50 is the processes' p50s weighted by requests and their p99 the largest of their
p99s (wrk keeps a histogram per process: an upper bound of the merged p99). A DSM GET of a key no write has
reached yet answers 404 and counts as failed (etcd answers such a range with 200 and no value).

Reproduce: .venv/bin/python bench/throughput_bench.py --duration 10 --reps 3 --concurrency 64 --profile
Options: --ops N (operations per phase instead of --duration), --generators G, --skip-etcd, --skip-dsm, --wrk,
         --client raw|aiohttp, --profile-s 15, --json bench/results/throughput.json,
         --consistency LEVEL (the DSM requests' ?consistency=, default local; the nodes all sit in the default
         region, so region_quorum and quorum both mean 2 of 3, each_region_quorum too, all 3 of 3)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    VALUE,
    CpuWindow,
    Generator,
    Profiler,
    dsm_cluster,
    etcd_cluster,
    hot_spots,
    http_targets,
    print_profile,
    proc_rss_kib,
    py_spy,
)

TARGETS = {"dsm write": 5000, "dsm read": 10000}
#: Keys the wrk phases write and read.
WRK_KEYS = 10_000

# wrk's Lua (LuaJIT): a request per call; `done` prints the process's figures as one JSON line.
WRK_COMMON = r"""
local b64chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function b64(data)
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end
local function key() return string.format('wrk%06d', math.random(0, KEYS - 1)) end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "status": %d, "socket": %d, "p50_us": %d, '
    .. '"p99_us": %d, "max_us": %d}\n', summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""
WRK_REQUESTS = {
    ("dsm", "write"): 'request = function() return wrk.format("PUT", "/v1/kv/" .. key() .. "?consistency=LEVEL", '
    "nil, BODY) end",
    ("dsm", "read"): 'request = function() return wrk.format("GET", "/v1/kv/" .. key() .. "?consistency=LEVEL") end',
    ("etcd", "write"): 'request = function() return wrk.format("POST", "/v3/kv/put", nil, '
    '\'{"key": "\' .. b64(key()) .. \'", "value": "VALUE64"}\') end',
    ("etcd", "read"): 'request = function() return wrk.format("POST", "/v3/kv/range", nil, '
    '\'{"key": "\' .. b64(key()) .. \'", "serializable": true}\') end',
}


def wrk_phase(
    system: str,
    op: str,
    targets: list[tuple[str, int]],
    pids: dict[str, int],
    duration: float,
    concurrency: int,
    consistency: str,
    workdir: str,
) -> dict[str, Any]:
    """One phase under wrk: a wrk process per target with its share of `concurrency` connections."""
    script = Path(workdir) / f"wrk-{system}-{op}.lua"
    body = WRK_REQUESTS[(system, op)].replace("LEVEL", consistency).replace("BODY", repr(VALUE.decode()))
    body = body.replace("VALUE64", base64.b64encode(VALUE).decode())
    script.write_text(WRK_COMMON.replace("KEYS", str(WRK_KEYS)) + body + "\n")
    shares = [len(range(i, concurrency, len(targets))) for i in range(len(targets))]
    window = CpuWindow(pids)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    window.start()
    procs = [
        subprocess.Popen(
            ["wrk", "-t", "1", "-c", str(c), "-d", f"{duration:.0f}s", "-s", str(script), f"http://{host}:{port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for (host, port), c in zip(targets, shares, strict=True)
        if c
    ]
    outs = [p.communicate(timeout=duration + 60) for p in procs]
    cpu = window.stop()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    parts = []
    for out, err in outs:
        line = next((ln for ln in out.splitlines() if ln.startswith("{")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no figures: {out[-500:]} {err[-500:]}")
        parts.append(json.loads(line))
    wall = max(p["duration_us"] for p in parts) / 1e6
    done = sum(p["requests"] for p in parts)
    failed = sum(p["status"] + p["socket"] for p in parts)
    gen_s = (children.ru_utime + children.ru_stime) - (children0.ru_utime + children0.ru_stime)
    node_cores = cpu["processes_cores"]
    return {
        "system": system,
        "op": op + " wrk",
        "consistency": consistency if system == "dsm" else None,
        "ops": done,
        "ok": done - failed,
        "outcomes": {"ok": done - failed, "non-2xx or socket error": failed} if failed else {"ok": done},
        "errors": [],
        "wall_s": wall,
        "ok_per_s": (done - failed) / wall,
        "ops_per_s": done / wall,
        "p50_ms": sum(p["p50_us"] * p["requests"] for p in parts) / max(1, done) / 1e3,
        "p99_ms": max(p["p99_us"] for p in parts) / 1e3,
        "max_ms": max(p["max_us"] for p in parts) / 1e3,
        "generator_cores": gen_s / wall,
        "generator_cores_per_process": [gen_s / wall],
        "generator_us_per_op": gen_s / max(1, done) * 1e6,
        "node_cores": node_cores,
        "node_us_per_op": node_cores * wall / max(1, done) * 1e6,
        "cpu": cpu,
        "other_cores": cpu["machine_busy_cores"] - node_cores - gen_s / wall,
        "written": {},
    }


# ---------------------------------------------------------------------------------------------- processes


def scrape(url: str) -> str:
    """A node's Prometheus metrics, as text."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text: str = r.read().decode()
    return text


def lag_buckets(url: str, text: str | None = None) -> dict[float, float]:
    """A node's event-loop stall histogram: cumulative samples per upper bound (seconds); from `text` when
    given (its metrics, already scraped)."""
    out: dict[float, float] = {}
    for line in (scrape(url) if text is None else text).splitlines():
        if line.startswith('dsm_event_loop_lag_seconds_bucket{le="'):
            bound = line.split('"')[1]
            out[float("inf") if bound == "+Inf" else float(bound)] = float(line.split()[1])
    return out


def worst_bucket(before: dict[float, float], after: dict[float, float]) -> str:
    """The bucket of the longest stall sampled between two histograms ("<= 5 ms" style)."""
    worst = "none"
    previous = 0.0
    for bound in sorted(after):
        grew = after[bound] - before.get(bound, 0.0)
        if grew > previous:
            worst = f"<= {bound * 1000:g} ms" if bound != float("inf") else "> 1 s"
        previous = max(previous, grew)
    return worst


def metric(url: str, name: str) -> float:
    """One unlabelled sample of a node's Prometheus metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise ValueError(f"{name} not in {url}/metrics")


#: What each DSM write phase also reports, summed over the nodes (the growth of these samples over the phase):
#: push messages sent (the tree's normal traffic, and direct pushes in a small cluster; one message carries a
#: batch of writes), the tree's repairs
#: (grafts, prunes), anti-entropy exchanges opened and rounds held back by heavy writes
#: (`anti_entropy_busy_writes`), entries anti-entropy brought, and replicated items that changed nothing on arrival
#: (duplicates that got as far as a merge: pushed twice, grafted, or brought by anti-entropy or gossip).
REPAIR_SAMPLES = {
    'dsm_messages_sent_total{type="Push"}': "pushes",
    'dsm_messages_sent_total{type="DirectPush"}': "direct pushes",
    'dsm_dissemination_events_total{event="grafts"}': "grafts",
    'dsm_dissemination_events_total{event="prunes"}': "prunes",
    "dsm_anti_entropy_sessions_total": "anti-entropy sessions",
    "dsm_anti_entropy_held_total": "anti-entropy held",
    "dsm_anti_entropy_entries_total": "anti-entropy entries",
    'dsm_merge_items_total{outcome="unchanged"}': "merged unchanged",
}


def repair_samples(texts: Iterable[str]) -> dict[str, float]:
    """`REPAIR_SAMPLES` summed over the nodes whose scraped metrics are `texts`."""
    total = dict.fromkeys(REPAIR_SAMPLES.values(), 0.0)
    for text in texts:
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name in REPAIR_SAMPLES:
                total[REPAIR_SAMPLES[name]] += float(value)
    return total


@contextlib.contextmanager
def repairs_during(urls: dict[str, str], into: dict[str, Any]) -> Iterator[None]:
    """Records in `into` the growth of `REPAIR_SAMPLES` over the block, summed over the nodes (`urls`: node id ->
    URL), and each node's worst event-loop stall in it: to see whether the tree's repairs or anti-entropy go with
    a phase's CPU per write or its tail (BENCHMARKS "Issue 21, part 1": on write_tail_probe's clusters they went
    with nearly every bad phase; in a longer run of this bench the worst phases had none)."""
    first = {node: scrape(url) for node, url in urls.items()}
    yield
    last = {node: scrape(url) for node, url in urls.items()}
    before, after = repair_samples(first.values()), repair_samples(last.values())
    into["repairs"] = {k: round(after[k] - before[k]) for k in after}
    into["worst_stall"] = {
        node: worst_bucket(lag_buckets(url, first[node]), lag_buckets(url, last[node])) for node, url in urls.items()
    }


def repairs_if(
    measured: bool, urls: dict[str, str], run: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any
) -> dict[str, Any]:
    """The phase `run(*args, **kwargs)` gives, with `repairs_during`'s figures added to it when `measured`."""
    seen: dict[str, Any] = {}
    with repairs_during(urls, seen) if measured else contextlib.nullcontext():
        phase = run(*args, **kwargs)
    return phase | seen


def repairs_line(r: dict[str, Any]) -> str:
    per_op = (r["repairs"]["pushes"] + r["repairs"].get("direct pushes", 0)) / max(1, r["ok"])
    stalls = ", ".join(f"{node} {bucket}" for node, bucket in r["worst_stall"].items())
    return (
        f"    {r['op']}: {', '.join(f'{k} {v:,}' for k, v in r['repairs'].items())} ({per_op:.2f} push messages "
        f"per write); worst stall {stalls}"
    )


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
    for op in ("write", "read", "write wrk", "read wrk"):
        if f"dsm {op}" in by and f"etcd {op}" in by:
            dsm, etcd = by[f"dsm {op}"], by[f"etcd {op}"]
            ratio = dsm["ok_per_s"] / max(1e-9, etcd["ok_per_s"])
            print(f"DSM / etcd {op}: {ratio:.2f}x, p99 {dsm['p99_ms'] or 0:.1f} vs {etcd['p99_ms'] or 0:.1f} ms")
    busiest = max((c for r in results for c in r["generator_cores_per_process"]), default=0.0)
    print(
        f"busiest generator process: {busiest:.2f} cores"
        + (" (close to a full core: the generator may be the bottleneck)" if busiest > 0.8 else "")
    )


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
    ap.add_argument("--wrk", action="store_true", help="also run every phase under wrk (see above)")
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
                targets = http_targets(cluster)
                systems["dsm"] = (targets, {n.node_id: n.pid for n in cluster.nodes})
            if not a.skip_etcd:
                members = stack.enter_context(etcd_cluster(workdir))
                systems["etcd"] = ([addr for _, addr in members], {f"e{i}": pid for i, (pid, _) in enumerate(members)})
            time.sleep(2)
            urls = {n.node_id: n.url for n in cluster.nodes} if "dsm" in systems else {}
            lags_before = {n.node_id: lag_buckets(n.url) for n in cluster.nodes} if "dsm" in systems else {}
            reads = {"dsm": ["read"], "etcd": ["read", "read_linearizable"]}
            for rep in range(a.reps):
                order = list(systems) if rep % 2 == 0 else list(reversed(systems))
                written: dict[str, dict[int, int]] = {}
                for name in order:
                    level = a.consistency if name == "dsm" else "local"
                    w = repairs_if(
                        name == "dsm", urls, gen.phase, name, "write", *systems[name], tag=f"w{rep}", consistency=level,
                        **common,
                    )  # fmt: skip
                    written[name] = w["written"]
                    runs.append(w)
                    print(f"rep {rep + 1}: {row(w)}", flush=True)
                    if "repairs" in w:
                        print(repairs_line(w), flush=True)
                time.sleep(1)  # the last direct updates land
                for name in order:
                    for op in reads[name]:
                        level = a.consistency if name == "dsm" else "local"
                        r = gen.phase(
                            name, op, *systems[name], tag=f"w{rep}", written=written[name], consistency=level, **common
                        )
                        runs.append(r)
                        print(f"rep {rep + 1}: {row(r)}", flush=True)
                if a.wrk:
                    for op in ("write", "read"):
                        for name in order:
                            level = a.consistency if name == "dsm" else "local"
                            w = repairs_if(
                                name == "dsm" and op == "write", urls,
                                wrk_phase, name, op, *systems[name], a.duration, a.concurrency, level, workdir,
                            )  # fmt: skip
                            runs.append(w)
                            print(f"rep {rep + 1}: {row(w)}", flush=True)
                            if "repairs" in w:
                                print(repairs_line(w), flush=True)
            for name, (_, pids) in systems.items():
                meta[f"{name}_rss_kib_after"] = {node: proc_rss_kib(pid) for node, pid in pids.items()}
            if "dsm" in systems:
                # The worst event-loop stall each node saw: since its start (its own metric, start-up included),
                # and during the measured phases (the stall histogram's growth over them).
                stalls = {n.node_id: metric(n.url, "dsm_event_loop_lag_max_seconds") for n in cluster.nodes}
                meta["dsm_event_loop_stall_max_ms"] = {k: round(v * 1000, 1) for k, v in stalls.items()}
                meta["dsm_event_loop_stall_during_phases"] = {
                    n.node_id: worst_bucket(lags_before[n.node_id], lag_buckets(n.url)) for n in cluster.nodes
                }
                print(
                    "DSM worst event-loop stall per node since start, start-up included (ms): "
                    f"{meta['dsm_event_loop_stall_max_ms']}; during the phases: "
                    f"{meta['dsm_event_loop_stall_during_phases']}"
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
