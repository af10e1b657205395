"""Conditional writes on the simulator (issue 19): the CASPaxos workload (`dsm.sim.cas_workload`) over many
seeds, each history checked for linearizability; reports violations, outcomes and the applied operations'
latency (virtual ms; same-region links of 1 ms + 1 ms mean jitter).

Usage: python bench/cas_sim_bench.py [--seeds 200] [--json bench/results/cas-sim.json]

--two-region: instead, the latency of conditional operations on a two-region cluster without faults, as
levels_sim_bench.py builds it (5 nodes in region a, 5 in region b, one-way 1 ms + jitter of mean 2 ms within
a region, 50 ms + jitter of mean 30 ms between them). Per key, one client on a random node of region a runs
an If-None-Match create, 5 If-Match writes each with the context of the previous one, and a linearizable
read, one at a time, 50 ms apart; a key's chain stops at its first operation not applied. 40 keys per seed,
--seeds seeds (default 5 here). A key's acceptor group is the 3 members after it on the ring, from either
region: the figures are given for all keys and apart for keys whose group has a majority in region a and
keys whose majority needs region b. Reports p50 / p99 per kind (virtual ms) and the operations that ended
otherwise than applied / read. JSON: bench/results/cas-sim-two-region.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import pct
from dsm.core.cas_group import cas_group
from dsm.core.cas_ops import IfAbsent, IfMatch, Operation, Read
from dsm.core.cas_proposer import CasDone, CasOutcome
from dsm.sim.cas_workload import CasParams, run_cas_workload
from dsm.sim.cluster import Simulation
from dsm.sim.network import Latency, NetworkModel


def two_region(seeds: int, keys: int = 40, chain: int = 5, gap_ms: float = 50.0) -> dict[str, Any]:
    """Latency of conditional operations on the two-region cluster (see the module docstring)."""
    latencies: dict[str, list[float]] = {}
    other: Counter[str] = Counter()
    for seed in range(1, seeds + 1):
        network = NetworkModel(same_region=Latency(1.0, 2.0), default_cross_region=Latency(50.0, 30.0))
        sim = Simulation(seed, network=network, regions=("a", "b"))
        sim.form(10)  # regions alternate: n0, n2, ... in a; n1, n3, ... in b
        sim.run_until(sim.now + 5_000)
        region_a = [n for n in sim.nodes if n.info.region == "a"]
        rng = random.Random(seed)
        for k in range(keys):
            key = f"k{seed}-{k}"
            node = rng.choice(region_a)
            group = cas_group(node.peer.directory, node.peer.table, key) if node.peer is not None else ()
            in_a = sum(sim.nodes[sim.index_of[m]].info.region == "a" for m in group)
            where = "majority in a" if in_a >= 2 else "majority across"
            context = None
            for step in range(chain + 2):
                operation: Operation
                kind = "create" if step == 0 else "read" if step == chain + 1 else "if_match"
                if kind == "create":
                    operation = IfAbsent(f"{key}-0".encode())
                elif kind == "read":
                    operation = Read()
                else:
                    assert context is not None
                    operation = IfMatch(context, f"{key}-{step}".encode())
                ended: list[CasDone] = []
                started = sim.now
                sim.cas_at(node, key, operation, ended.append, 5_000)
                while not ended and sim.now < started + 6_000:
                    sim.run_until(sim.now + 1)
                result = ended[0] if ended else None
                wanted = CasOutcome.READ if kind == "read" else CasOutcome.APPLIED
                if result is None or result.outcome is not wanted:
                    other[f"{kind}, group {where}: {result.outcome.value if result else 'no answer'}"] += 1
                    break
                latencies.setdefault(f"{kind}, group {where}", []).append(sim.now - started)
                latencies.setdefault(kind, []).append(sim.now - started)
                assert result.state is not None
                context = result.state.context()
                sim.run_until(sim.now + gap_ms)
    report: dict[str, Any] = {"seeds": seeds, "keys_per_seed": keys, "if_match_per_key": chain}
    for kind, values in latencies.items():
        report[kind] = {
            "count": len(values),
            "p50_ms": pct(values, 50),
            "p99_ms": pct(values, 99),
        }
    report["not_applied"] = dict(other)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=0, help="default 200 (5 with --two-region)")
    parser.add_argument("--json", default="")
    parser.add_argument("--two-region", action="store_true", help="latency on a two-region cluster instead")
    parser.add_argument("--joins", type=int, default=0, help="nodes joining during each run (not safe yet)")
    parser.add_argument("--leaves", type=int, default=0, help="members leaving during each run (not safe yet)")
    args = parser.parse_args()
    if args.two_region:
        started = time.perf_counter()
        result = two_region(args.seeds or 5)
        result["wall_s"] = round(time.perf_counter() - started, 1)
        out = Path(args.json or "bench/results/cas-sim-two-region.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    args.seeds = args.seeds or 200
    args.json = args.json or "bench/results/cas-sim.json"
    started = time.perf_counter()
    violations: list[int] = []
    unknown: list[int] = []
    outcomes = dict.fromkeys(CasOutcome, 0)
    latencies: list[float] = []
    operations = 0
    for seed in range(1, args.seeds + 1):
        run = run_cas_workload(CasParams(seed, joins=args.joins, leaves=args.leaves))
        verdict = run.check()
        if verdict.violation is not None:
            violations.append(seed)
            print(f"seed {seed}: {verdict.summary()}", flush=True)
        elif not verdict.ok:
            unknown.append(seed)
        for outcome, count in run.outcomes.items():
            outcomes[outcome] += count
        latencies += run.latencies_ms
        operations += len(run.history)
    report = {
        "seeds": args.seeds,
        "joins": args.joins,
        "leaves": args.leaves,
        "violations": violations,
        "checker_unknown": unknown,
        "operations_checked": operations,
        "outcomes": {o.value: n for o, n in outcomes.items()},
        "applied_latency_ms": {"p50": pct(latencies, 50), "p99": pct(latencies, 99), "max": max(latencies)},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
