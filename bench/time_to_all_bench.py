"""Time to all: from a write's acknowledgement until every node of a real loopback cluster has applied it,
side by side with HashiCorp Serf's user-event propagation at the same node count, in the same run.

    .venv/bin/python bench/time_to_all_bench.py --nodes 10 30 --writes 40
    .venv/bin/python bench/time_to_all_bench.py --nodes 10 --skip-serf
    .venv/bin/python bench/time_to_all_bench.py --nodes 30 --skip-serf --profile --env DSM_LAZY_FANOUT=1
    (--profile: py-spy on the last node, idle then writing; --env: settings for every node)

DSM: `--nodes` real `dsm node run` processes (SQLite stores in a temporary directory, production default
intervals: gossip 5 s, anti-entropy 60 s, a cluster secret). The benchmark holds a watch stream
(`GET /v1/watch`) open on every node, so each node reports the moment it commits a change, and writes one
key at a time through the HTTP API of a different node each time, `--gap` seconds apart. Time to all of
a write = (the last node's report) - (the writer's acknowledgement), all read on this process's monotonic
clock; a stream's delivery over loopback adds well under a millisecond on an idle machine, but on a busy one
this process waits for a core too. So the same is also read from the nodes' own commit stamps (each event's
cursor holds the stamp of the commit that applied it; its physical part is the node's wall clock in ms, the
same clock for every node here): "committed everywhere" = the last node's commit - the acknowledgement's
wall-clock time. The nodes' CPU (/proc, all node
processes summed) and the machine's are read over an idle window as long as the writes (streams open, no
writes) and over the writes: the difference per write and per node is what spreading one write costs a node,
and the machine's busy cores during the writes show how much of the time to all is waiting for a core (2 here).
After the writes, every node's
`dsm_anti_entropy_repaired_keys` is read: any key anti-entropy had to bring means a write that direct
pushes and gossip missed (the target is none in a fault-free run).

Serf: `../shared/peers/serf_bench.sh N EVENTS lan` (user events with -coalesce=false; from just before the
`serf event` command is run until the last agent's handler has run, which includes the command's start).

Writes bench/results/time_to_all.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from common import Profiler, hot_spots, machine_cpu, print_profile, proc_cpu_s, stop_on_sigterm
from dsm.core import watch_cursor
from dsm.core.hlc import physical_ms
from dsm.localcluster import LocalCluster

HERE = Path(__file__).resolve().parent
SERF = HERE.parent.parent / "shared" / "peers" / "serf_bench.sh"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def all_alive(session: aiohttp.ClientSession, urls: list[str], count: int, timeout: float = 120) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        ok = 0
        for url in urls:
            async with session.get(url + "/v1/members") as r:
                members = (await r.json())["members"]
            ok += sum(m["state"] == "alive" for m in members) == count
        if ok == len(urls):
            return time.monotonic() - start
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the cluster did not see {count} alive members in {timeout} s")


async def follow(
    session: aiohttp.ClientSession, url: str, seen: dict[str, float], committed: dict[str, float], ready: asyncio.Event
) -> None:
    async with session.get(url + "/v1/watch", params={"prefix": "tta-"}, timeout=aiohttp.ClientTimeout()) as r:
        ready.set()
        async for line in r.content:
            if not line.strip():
                continue  # a heartbeat
            change = json.loads(line)
            if "key" in change:
                seen.setdefault(change["key"], time.monotonic())
                # When the node committed it: the physical part of its commit stamp (wall-clock ms; every node
                # reads the same clock on this machine), free of the stream's and this process's delays.
                stamp = watch_cursor.decode(change["cursor"]).stamp
                committed.setdefault(change["key"], float(physical_ms(stamp)))


async def scrape(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    found = re.search(rf"^{name}(?:_total)? (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def run_dsm(
    nodes: int, writes: int, gap: float, profile: bool = False, env: dict[str, str] | None = None
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="dsm-tta-"))
    cluster = LocalCluster(workdir, env={"DSM_CLUSTER_SECRET": os.urandom(16).hex(), **(env or {})})
    started = time.monotonic()
    try:
        cluster.up(nodes, peer_port=0, http_port=0)
        urls = [n.url for n in cluster.nodes]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            join_s = await all_alive(session, urls, nodes)
            await asyncio.sleep(2)  # let the overlay settle after the last join
            seen: list[dict[str, float]] = [{} for _ in urls]
            committed: list[dict[str, float]] = [{} for _ in urls]
            readies = [asyncio.Event() for _ in urls]
            async with asyncio.TaskGroup() as group:
                streams = [
                    group.create_task(follow(session, url, times, stamps, ready))
                    for url, times, stamps, ready in zip(urls, seen, committed, readies, strict=True)
                ]
                for ready in readies:
                    await ready.wait()
                pids = [n.pid for n in cluster.nodes]
                window = writes * gap
                # With --profile: the last node (written through only when 7i = n-1 mod n) sampled while idle
                # and while the others write; py-spy slows the node it samples, so read its figures apart.
                sampled = pids[-1]
                spy = Profiler(sampled, window, str(workdir / "idle.raw"))() if profile else None
                idle = await cpu_over(pids, window)
                if spy is not None:
                    spy.wait()
                    spy = Profiler(sampled, window, str(workdir / "writing.raw"))()
                cpu0, machine0, t0 = sum(proc_cpu_s(p) for p in pids), machine_cpu(), time.monotonic()
                acks: dict[str, tuple[float, int]] = {}
                acks_wall: dict[str, float] = {}
                for i in range(writes):
                    key, source = f"tta-{i:04d}", (i * 7) % nodes
                    async with session.put(f"{urls[source]}/v1/kv/{key}", data=os.urandom(100)) as r:
                        assert r.status == 200, (r.status, await r.text())
                    acks[key] = (time.monotonic(), source)
                    acks_wall[key] = time.time() * 1000
                    await asyncio.sleep(gap)
                wall = time.monotonic() - t0
                machine1 = machine_cpu()
                writing = {
                    "node_cores": (sum(proc_cpu_s(p) for p in pids) - cpu0) / wall,
                    "machine_busy_cores": (machine1[0] - machine0[0]) / wall,
                    "machine_cores": round((machine1[1] - machine0[1]) / wall),
                }
                if spy is not None:
                    spy.wait()
                    for phase in ("idle", "writing"):
                        print_profile(f"node {nodes} of {nodes}, {phase}", hot_spots(str(workdir / f"{phase}.raw")))
                await asyncio.sleep(2)
                for task in streams:
                    task.cancel()
            repaired = [await scrape(session, u, "dsm_anti_entropy_repaired_keys") for u in urls]
            sessions = [await scrape(session, u, "dsm_anti_entropy_sessions") for u in urls]
        to_all, missing, by_stamp = [], 0, []
        for key, (acked, _) in acks.items():
            times = [s.get(key) for s in seen]
            if any(t is None for t in times):
                missing += 1
                continue
            to_all.append((max(t for t in times if t is not None) - acked) * 1000)
            by_stamp.append(max(c[key] for c in committed) - acks_wall[key])
        return {
            "system": "dsm",
            "nodes": nodes,
            "writes": writes,
            "join_all_alive_s": round(join_s, 2),
            "time_to_all_ms_p50": round(pct(to_all, 50), 1) if to_all else None,
            "time_to_all_ms_p99": round(pct(to_all, 99), 1) if to_all else None,
            "time_to_all_ms_max": round(max(to_all), 1) if to_all else None,
            # The same from the nodes' commit stamps (ms resolution): the last node's commit of the write.
            "committed_everywhere_ms_p50": round(pct(by_stamp, 50), 1) if by_stamp else None,
            "committed_everywhere_ms_p99": round(pct(by_stamp, 99), 1) if by_stamp else None,
            "writes_not_everywhere_after_2s": missing,
            "anti_entropy_repaired_keys": sum(repaired),
            "anti_entropy_sessions": sum(sessions),
            "idle": idle,
            "writing": writing,
            # What spreading one write costs one node, above its idle work (probes, gossip, anti-entropy).
            "cpu_ms_per_write_per_node": round(
                (writing["node_cores"] - idle["node_cores"]) * writes * gap / writes / nodes * 1000, 3
            ),
            "wall_s": round(time.monotonic() - started, 1),
        }
    finally:
        cluster.down()
        shutil.rmtree(workdir, ignore_errors=True)


async def cpu_over(pids: list[int], seconds: float) -> dict[str, float]:
    """The nodes' CPU (all processes, in cores) and the machine's busy cores over `seconds` of waiting."""
    cpu0, machine0, t0 = sum(proc_cpu_s(p) for p in pids), machine_cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    wall = time.monotonic() - t0
    machine1 = machine_cpu()
    return {
        "node_cores": (sum(proc_cpu_s(p) for p in pids) - cpu0) / wall,
        "machine_busy_cores": (machine1[0] - machine0[0]) / wall,
    }


def run_serf(nodes: int, events: int) -> dict[str, Any]:
    if shutil.which("serf") is None or not SERF.exists():
        return {"system": "serf", "nodes": nodes, "skipped": "serf or serf_bench.sh not found"}
    env = os.environ | {"PEERS_DIR": tempfile.mkdtemp(prefix="dsm-serf-")}
    out = subprocess.run(
        ["bash", str(SERF), str(nodes), str(events), "lan"], capture_output=True, text=True, env=env, timeout=1800
    ).stdout
    shutil.rmtree(env["PEERS_DIR"], ignore_errors=True)
    per_event = [float(m) for m in re.findall(r"received by \d+/\d+, median \S+ ms, last (\S+) ms", out)]
    full = [float(m) for m in re.findall(r"received by (\d+)/\d+", out)]
    everywhere = [t for t, got in zip(per_event, full, strict=True) if got >= nodes]
    idle = re.search(r"avg CPU per agent = (\S+)% of one core; avg RSS per agent = (\d+) KiB", out)
    return {
        "system": "serf",
        "nodes": nodes,
        "events": events,
        "time_to_all_ms_p50": round(pct(everywhere, 50), 1) if everywhere else None,
        "time_to_all_ms_p99": round(pct(everywhere, 99), 1) if everywhere else None,
        "time_to_all_ms_max": max(everywhere) if everywhere else None,
        "events_not_everywhere": len(per_event) - len(everywhere),
        "idle_cpu_pct": float(idle.group(1)) if idle else None,
        "idle_rss_kib": int(idle.group(2)) if idle else None,
        "raw": out[-1500:],
    }


def main() -> None:
    stop_on_sigterm()  # a `kill` of this bench stops its cluster on the way out
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--writes", type=int, default=40, help="writes per cluster size (and Serf events)")
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between writes")
    parser.add_argument("--skip-serf", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy the last node, idle then while writing")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every node (DSM_* settings)")
    parser.add_argument("--json", default=str(HERE / "results" / "time_to_all.json"))
    a = parser.parse_args()
    results = []
    for n in a.nodes:
        print(f"DSM, {n} nodes ...", file=sys.stderr, flush=True)
        env = dict(item.split("=", 1) for item in a.env)
        results.append(asyncio.run(run_dsm(n, a.writes, a.gap, a.profile, env)))
        print(json.dumps(results[-1]), flush=True)
        if not a.skip_serf:
            print(f"Serf, {n} agents ...", file=sys.stderr, flush=True)
            results.append(run_serf(n, a.writes))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "raw"}), flush=True)
    print(f"\n{'system':8} {'nodes':>5} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  notes")
    for r in results:
        count = r.get("writes", r.get("events", 0))
        if r["system"] == "dsm":
            missed, repaired = r["writes_not_everywhere_after_2s"], r["anti_entropy_repaired_keys"]
            notes = (
                f"committed everywhere p50 / p99 {r['committed_everywhere_ms_p50']} / "
                f"{r['committed_everywhere_ms_p99']} ms; "
                f"not everywhere: {missed}, AE repairs: {repaired:.0f}; CPU per write per node "
                f"{r['cpu_ms_per_write_per_node']} ms; nodes {r['idle']['node_cores']:.2f} cores idle, "
                f"{r['writing']['node_cores']:.2f} writing; machine busy {r['writing']['machine_busy_cores']:.2f} "
                f"of {r['writing']['machine_cores']}"
            )
        else:
            notes = r.get("skipped") or f"not everywhere: {r['events_not_everywhere']}"
        print(
            f"{r['system']:8} {r['nodes']:>5} {count:>4} {r.get('time_to_all_ms_p50')!s:>8} "
            f"{r.get('time_to_all_ms_p99')!s:>8} {r.get('time_to_all_ms_max')!s:>8}  {notes}"
        )
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    meta = {"cpus": os.cpu_count(), "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    Path(a.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
