"""Where a 3-node cluster's write tail comes from: repeated wrk write phases on fresh clusters, per phase.

BENCHMARKS "Issue 21, part 1" found DSM's write p99 under wrk spread from about etcd's (30-40 ms) to over 200 ms
between 10 s phases of the same load on the same cluster. This probe repeats that on purpose: for each of
--clusters fresh 3-node clusters (`dsm_cluster`, the default SQLite store, settings from --node-env), optionally
one write phase of the built-in generator first (--preload: ~70,000 new keys, as throughput_bench's phases leave
behind), then --phases wrk write phases (`throughput_bench.wrk_phase`: 64 connections, random keys of a
10,000-key space, 100-byte values). Each phase prints its rate, p50 / p99, the nodes' CPU per write, what the
nodes sent and repaired in it, summed over the three (`throughput_bench.repair_samples`: push messages, the
tree's grafts and prunes, entries anti-entropy brought, replicated items that changed nothing), and each node's
worst event-loop stall. Settings are compared by running one cluster per run, the settings in turn.

Reproduce (bench/results/write_tail/, one cluster per file, run in this order, then again with -2):
  .venv/bin/python bench/write_tail_probe.py --clusters 1 --phases 3 --preload \\
      --json bench/results/write_tail/default-1.json
  .venv/bin/python bench/write_tail_probe.py --clusters 1 --phases 3 --preload --node-env DSM_GRAFT_MIN_MS=1000 \\
      --node-env DSM_GRAFT_TIMEOUT_MS=1000 --json bench/results/write_tail/graft1000-1.json
  .venv/bin/python bench/write_tail_probe.py --clusters 1 --phases 3 --preload --node-env DSM_WRITE_BATCH_MAX=64 \\
      --json bench/results/write_tail/batch64-1.json
and (ae600s-1, ae600s-2) --node-env DSM_ANTI_ENTROPY_INTERVAL_MS=600000.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from common import Generator, dsm_cluster, http_targets
from throughput_bench import repairs_if, repairs_line, wrk_phase


def one_cluster(index: int, a: argparse.Namespace, env: dict[str, str]) -> list[dict[str, Any]]:
    phases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dsm-tail-") as workdir, dsm_cluster(3, workdir, env) as cluster:
        targets = http_targets(cluster)
        pids = {n.node_id: n.pid for n in cluster.nodes}
        urls = {n.node_id: n.url for n in cluster.nodes}
        time.sleep(2)
        if a.preload:
            gen = Generator(2, 64, "raw")
            try:
                w = gen.phase("dsm", "write", targets, pids, tag="pre", consistency="local", duration=10, ops=0)
            finally:
                gen.close()
            print(f"cluster {index}: built-in write {w['ok_per_s']:,.0f}/s, p99 {w['p99_ms']:.1f} ms", flush=True)
            time.sleep(1)
        for phase in range(a.phases):
            w = repairs_if(True, urls, wrk_phase, "dsm", "write", targets, pids, a.duration, 64, "local", workdir)
            row = {
                "cluster": index,
                "phase": phase + 1,
                "ok_per_s": w["ok_per_s"],
                "p50_ms": w["p50_ms"],
                "p99_ms": w["p99_ms"],
                "max_ms": w["max_ms"],
                "node_us_per_op": w["node_us_per_op"],
                "repairs": w["repairs"],
                "worst_stall": w["worst_stall"],
            }
            phases.append(row)
            print(
                f"cluster {index} phase {phase + 1}: {w['ok_per_s']:,.0f}/s, p50 {w['p50_ms']:.1f} / p99 "
                f"{w['p99_ms']:.1f} ms, {w['node_us_per_op']:.0f} us of node CPU per write\n{repairs_line(w)}",
                flush=True,
            )
    return phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clusters", type=int, default=2)
    ap.add_argument("--phases", type=int, default=3, help="wrk write phases per cluster")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    ap.add_argument("--preload", action="store_true", help="a built-in generator write phase first")
    ap.add_argument("--node-env", action="append", default=[], metavar="DSM_X=V", help="a node setting (repeatable)")
    ap.add_argument("--json", default="", help="write the phases here too")
    a = ap.parse_args()
    env = dict(e.split("=", 1) for e in a.node_env)
    phases = [p for i in range(a.clusters) for p in one_cluster(i + 1, a, env)]
    p99 = sorted(p["p99_ms"] for p in phases)
    print(f"settings {env or 'default'}: {len(phases)} phases, p99 from {p99[0]:.1f} to {p99[-1]:.1f} ms")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"settings": env, "args": vars(a), "phases": phases}, indent=2) + "\n")


if __name__ == "__main__":
    main()
