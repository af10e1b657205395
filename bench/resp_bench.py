"""The Redis-protocol front door against the HTTP path of the same node and against a real redis-server, in one
run (issue 21, part 2): SET and GET with 50 clients, pipelines of 1 and 16, 100-byte values over 100,000
keys, phases alternating between the three targets in every repetition.

    .venv/bin/python bench/resp_bench.py [--reps 3] [--requests 200000] [--http-seconds 10]

- DSM over RESP: `redis-benchmark -c 50 -P {1,16} -t set,get -d 100 -r 100000` against `dsm node run --resp`.
- DSM over HTTP: `wrk -t 2 -c 50` with Lua scripts (PUT of a 100-byte body, GET), on the same keys
  (`key:%012d`, redis-benchmark's key names) of the same node. HTTP/1.1 clients do not pipeline, so the HTTP
  rows are the same for both pipeline depths.
- redis-server (Debian's, no persistence: `--save "" --appendonly no`): the reference limit, measured by the
  same redis-benchmark commands.
The DSM node is one networked node alone in its cluster (`--listen 127.0.0.1:0`), default settings: every
write is durable in SQLite (WAL, synchronous=NORMAL) before it is acknowledged, which redis-server with its
defaults here does not do. The node's CPU per operation comes from /proc over each phase.

Writes bench/results/resp.json; prints per-phase medians over the repetitions and the RESP/HTTP ratios of
each repetition."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import RESULTS, free_ports, proc_cpu_s, stop_on_sigterm, stop_processes, wait_until

CLIENTS = 50
KEYSPACE = 100_000
VALUE_BYTES = 100

PUT_LUA = """
local body = string.rep("v", VALUE_BYTES)
request = function()
  return wrk.format("PUT", string.format("/v1/kv/key:%012d", math.random(0, KEYSPACE - 1)), nil, body)
end
"""
GET_LUA = """
request = function()
  return wrk.format("GET", string.format("/v1/kv/key:%012d", math.random(0, KEYSPACE - 1)))
end
"""


def lua(script: str) -> str:
    return script.replace("VALUE_BYTES", str(VALUE_BYTES)).replace("KEYSPACE", str(KEYSPACE))


def redis_benchmark(port: int, test: str, pipeline: int, requests: int) -> dict[str, float]:
    """One redis-benchmark run of `test` (set or get): requests per second and latency percentiles (ms)."""
    args = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(CLIENTS), "-n", str(requests)]
    args += ["-r", str(KEYSPACE), "-d", str(VALUE_BYTES), "-P", str(pipeline), "-t", test, "--csv"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [r for r in csv.reader(io.StringIO(out)) if r and r[0] != "test"]
    row = rows[-1]
    return {"per_s": float(row[1]), "p50_ms": float(row[4]), "p99_ms": float(row[6])}


def wrk(url: str, script: Path, seconds: int) -> dict[str, float]:
    """One wrk run: requests per second (2xx and 404 alike: a GET of an absent key is an answer) and latency
    percentiles (ms)."""
    args = ["wrk", "-t", "2", "-c", str(CLIENTS), "-d", f"{seconds}s", "--latency", "-s", str(script), url]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"per_s": rate, "p50_ms": _wrk_ms(out, "50%"), "p99_ms": _wrk_ms(out, "99%")}


def _wrk_ms(out: str, label: str) -> float:
    value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def measure(pid: int | None, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Runs one phase; adds the server process's CPU per operation (us) when its pid is known."""
    cpu0 = proc_cpu_s(pid) if pid else 0.0
    start = time.monotonic()
    result: dict[str, float] = run()
    elapsed = time.monotonic() - start
    if pid:
        ops = result["per_s"] * elapsed
        result["cpu_us_per_op"] = (proc_cpu_s(pid) - cpu0) / ops * 1e6 if ops else 0.0
    return result


def main() -> None:
    stop_on_sigterm()  # a `kill` of this bench stops its node and redis-server on the way out
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200_000, help="per redis-benchmark run")
    parser.add_argument("--http-seconds", type=int, default=10, help="per wrk run")
    opts = parser.parse_args()
    for tool in ("redis-benchmark", "redis-server", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (Debian: apt-get install redis-tools redis-server wrk)")
    work = Path(tempfile.mkdtemp(prefix="dsm-resp-bench-"))
    http_port, resp_port, redis_port = free_ports(3)
    (work / "put.lua").write_text(lua(PUT_LUA))
    (work / "get.lua").write_text(lua(GET_LUA))
    node = subprocess.Popen(
        [sys.executable, "-m", "dsm.cli", "node", "run", "--node-id", "b1", "--listen", "127.0.0.1:0",
         "--http", f"127.0.0.1:{http_port}", "--resp", f"127.0.0.1:{resp_port}", "--data-dir", str(work / "b1"),
         "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    procs = [node, redis]
    try:
        assert node.stdout is not None
        ready = json.loads(node.stdout.readline())
        assert ready["event"] == "ready", ready
        wait_until(lambda: subprocess.run(["redis-cli", "-p", str(redis_port), "ping"], capture_output=True).returncode
                   == 0, 10, "redis-server")  # fmt: skip
        url = f"http://127.0.0.1:{http_port}"
        reps: list[dict[str, dict[str, float]]] = []
        for rep in range(opts.reps):
            phases: dict[str, dict[str, float]] = {}
            for pipeline in (1, 16):
                for test in ("set", "get"):
                    phases[f"dsm-resp {test} P{pipeline}"] = measure(
                        node.pid, lambda t=test, p=pipeline: redis_benchmark(resp_port, t, p, opts.requests)
                    )
                    phases[f"redis-server {test} P{pipeline}"] = measure(
                        redis.pid, lambda t=test, p=pipeline: redis_benchmark(redis_port, t, p, opts.requests)
                    )
                    if pipeline == 1:
                        script = work / ("put.lua" if test == "set" else "get.lua")
                        phases[f"dsm-http {test}"] = measure(node.pid, lambda s=script: wrk(url, s, opts.http_seconds))
            reps.append(phases)
            print(f"repetition {rep + 1}: " + ", ".join(f"{k} {v['per_s']:.0f}/s" for k, v in phases.items()))
        report(reps, opts)
    finally:
        stop_processes(procs, "resp bench")
        shutil.rmtree(work, ignore_errors=True)


def report(reps: list[dict[str, dict[str, float]]], opts: argparse.Namespace) -> None:
    names = list(reps[0])
    medians = {
        name: {field: statistics.median(r[name][field] for r in reps) for field in reps[0][name]} for name in names
    }
    ratios = {
        f"{test} P{p}": [r[f"dsm-resp {test} P{p}"]["per_s"] / r[f"dsm-http {test}"]["per_s"] for r in reps]
        for test in ("set", "get")
        for p in (1, 16)
    }
    print(f"\n{'phase':<24} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/op':>10}   (median of {len(reps)})")
    for name, m in medians.items():
        cpu = f"{m['cpu_us_per_op']:.0f}" if "cpu_us_per_op" in m else ""
        print(f"{name:<24} {m['per_s']:>10.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {cpu:>10}")
    print("\nRESP / HTTP on the same node, per repetition:")
    for name, values in ratios.items():
        print(f"  {name}: " + " / ".join(f"{v:.2f}x" for v in values))
    RESULTS.mkdir(exist_ok=True)
    doc = {"options": vars(opts), "repetitions": reps, "medians": medians, "resp_over_http": ratios}
    (RESULTS / "resp.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
