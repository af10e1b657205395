"""Idle cost of real nodes (issue "Real nodes"): a 10-node DSM cluster beside 10 Serf agents, same window.

DSM: N `dsm node run` processes on loopback (started through dsm.localcluster: the default SQLite store,
each in its own temporary directory, production-default intervals, a random cluster secret). Serf: N
`serf agent` processes on loopback (LAN profile, as /work/shared/peers/serf_bench.sh starts them), every one
joining the first. Both clusters run at the same time, so they share the machine's noise.

Once every DSM node reports N alive members (/health) and every Serf agent lists N alive members
(`serf members -status=alive`), both settle for --settle seconds (default 10); then, over one window of
--window seconds (default 60), the CPU of every process is read from /proc/<pid>/stat (utime + stime, all
threads) at the start and at the end, and its VmRSS (and peak, VmHWM) from /proc/<pid>/status at the end.
Reported per node: the median and the max of CPU (% of one core over the window) and RSS, and the whole
cluster's CPU in 10-second slices (a periodic task, anti-entropy every 60 s for instance, shows as a slice
above the others). Targets: CPU <= 1 % of a core and RSS <= 80 MB per DSM node (Serf: about 0.3 %, 15 MB).

Reproduce: .venv/bin/python bench/idle_bench.py --nodes 10 --settle 10 --window 60
Options: --skip-serf, --json bench/results/idle.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    dsm_cluster,
    free_ports,
    machine_cpu,
    proc_cpu_s,
    stop_processes,
    wait_until,
)

TARGETS = {"dsm_cpu_pct": 1.0, "dsm_rss_mb": 80.0}
SLICE_S = 10.0


def proc_status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


@contextlib.contextmanager
def serf_cluster(n: int, workdir: str) -> Iterator[dict[str, int]]:
    """`n` Serf agents on free loopback ports, all joined through the first; yields {name: pid}."""
    ports = free_ports(2 * n)
    bind, rpc = ports[:n], ports[n:]
    procs: list[subprocess.Popen[bytes]] = []
    directory = Path(workdir, "serf")
    directory.mkdir(parents=True, exist_ok=True)

    def alive(i: int) -> int:
        out = subprocess.run(
            ["serf", "members", f"-rpc-addr=127.0.0.1:{rpc[i]}", "-status=alive"], capture_output=True, timeout=5
        )
        return len(out.stdout.splitlines()) if out.returncode == 0 else 0

    try:
        for i in range(n):
            args = ["serf", "agent", f"-node=s{i}", f"-bind=127.0.0.1:{bind[i]}", f"-rpc-addr=127.0.0.1:{rpc[i]}"]
            args += ["-profile=lan", "-log-level=warn"]
            if i > 0:
                args.append(f"-join=127.0.0.1:{bind[0]}")
            with open(directory / f"s{i}.log", "wb") as log:
                procs.append(subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL))
            if i == 0:
                wait_until(lambda: alive(0) >= 1, 30, "the first Serf agent to answer")
        waited = wait_until(lambda: all(alive(i) >= n for i in range(n)), 120, f"every Serf agent to see {n} alive")
        print(f"Serf: {n} agents up, all see {n} alive members ({waited:.1f} s after the last start)")
        yield {f"s{i}": p.pid for i, p in enumerate(procs)}
    finally:
        stop_processes(procs, "Serf")


def measure(groups: dict[str, dict[str, int]], window: float) -> dict[str, Any]:
    """CPU of every process over `window` seconds (and per 10 s slice), RSS at the end."""
    pids = {(g, name): pid for g, members in groups.items() for name, pid in members.items()}
    t0, m0 = time.monotonic(), machine_cpu()
    c0 = {k: proc_cpu_s(pid) for k, pid in pids.items()}
    slices: dict[str, list[float]] = {g: [] for g in groups}
    prev, prev_t = dict(c0), t0
    while (left := window - (time.monotonic() - t0)) > 0:
        time.sleep(min(SLICE_S, left))
        now, now_t = {k: proc_cpu_s(pid) for k, pid in pids.items()}, time.monotonic()
        for g in groups:
            used = sum(now[k] - prev[k] for k in pids if k[0] == g)
            slices[g].append(used / (now_t - prev_t) * 100)
        prev, prev_t = now, now_t
    wall = time.monotonic() - t0
    m1 = machine_cpu()
    out: dict[str, Any] = {
        "window_s": wall,
        "machine_busy_cores": (m1[0] - m0[0]) / wall,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
    }
    for g, members in groups.items():
        cpu = {name: (prev[(g, name)] - c0[(g, name)]) / wall * 100 for name in members}
        rss = {name: proc_status_kib(pid, "VmRSS") / 1024 for name, pid in members.items()}
        hwm = {name: proc_status_kib(pid, "VmHWM") / 1024 for name, pid in members.items()}
        out[g] = {
            "nodes": len(members),
            "cpu_pct_per_node": cpu,
            "rss_mb_per_node": rss,
            "rss_peak_mb_per_node": hwm,
            "cpu_pct_median": statistics.median(cpu.values()),
            "cpu_pct_max": max(cpu.values()),
            "cpu_pct_cluster_total": sum(cpu.values()),
            "rss_mb_median": statistics.median(rss.values()),
            "rss_mb_max": max(rss.values()),
            "rss_peak_mb_max": max(hwm.values()),
            "cluster_cpu_pct_per_10s_slice": slices[g],
        }
    return out


def report(result: dict[str, Any]) -> None:
    window = result["window_s"]
    print(f"\nidle, {window:.0f} s window; CPU in % of one core, RSS in MB (VmRSS; peak = VmHWM)\n")
    print("| system | nodes | CPU median | CPU max | cluster total | RSS median | RSS max | peak RSS max |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for g in ("dsm", "serf"):
        if g in result:
            r = result[g]
            print(
                f"| {g} | {r['nodes']} | {r['cpu_pct_median']:.2f} % | {r['cpu_pct_max']:.2f} % | "
                f"{r['cpu_pct_cluster_total']:.1f} % | {r['rss_mb_median']:.1f} | {r['rss_mb_max']:.1f} | "
                f"{r['rss_peak_mb_max']:.1f} |"
            )
    print()
    for g in ("dsm", "serf"):
        if g in result:
            slices = ", ".join(f"{s:.1f}" for s in result[g]["cluster_cpu_pct_per_10s_slice"])
            print(f"{g} cluster CPU per {SLICE_S:.0f} s slice (% of a core): {slices}")
    print(f"machine busy during the window: {result['machine_busy_cores']:.2f} cores (all jobs)")
    d = result["dsm"]
    for label, got, target, unit in [
        ("CPU per DSM node (max)", d["cpu_pct_max"], TARGETS["dsm_cpu_pct"], " %"),
        ("RSS per DSM node (max)", d["rss_mb_max"], TARGETS["dsm_rss_mb"], " MB"),
    ]:
        print(f"target {label}: <= {target:g}{unit}, measured {got:.2f}{unit}: {'met' if got <= target else 'NOT met'}")
    if "serf" in result:
        s = result["serf"]
        print(
            f"DSM / Serf: CPU {d['cpu_pct_median'] / max(1e-9, s['cpu_pct_median']):.1f}x, "
            f"RSS {d['rss_mb_median'] / max(1e-9, s['rss_mb_median']):.1f}x (medians)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after convergence before measuring")
    ap.add_argument("--window", type=float, default=60.0, help="seconds of measurement")
    ap.add_argument("--skip-serf", action="store_true")
    ap.add_argument("--json", default=str(RESULTS / "idle.json"))
    a = ap.parse_args()
    meta = {
        "command": " ".join([".venv/bin/python", "bench/idle_bench.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "args": vars(a),
    }
    with tempfile.TemporaryDirectory(prefix="dsm-idle-") as workdir, contextlib.ExitStack() as stack:
        started = time.monotonic()
        cluster = stack.enter_context(dsm_cluster(a.nodes, workdir))
        meta["dsm_start_to_converged_s"] = time.monotonic() - started
        groups = {"dsm": {n.node_id: n.pid for n in cluster.nodes}}
        if not a.skip_serf:
            started = time.monotonic()
            groups["serf"] = stack.enter_context(serf_cluster(a.nodes, workdir))
            meta["serf_start_to_converged_s"] = time.monotonic() - started
        print(f"settling {a.settle:.0f} s, then measuring over {a.window:.0f} s", flush=True)
        time.sleep(a.settle)
        result = measure(groups, a.window)
    report(result)
    out = {**meta, "targets": TARGETS, **result}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
