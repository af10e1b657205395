"""Conditional writes on the simulator (issue 19): the CASPaxos workload (`dsm.sim.cas_workload`) over many
seeds, each history checked for linearizability; reports violations, outcomes and the applied operations'
latency (virtual ms; same-region links of 1 ms + 1 ms mean jitter).

Usage: python bench/cas_sim_bench.py [--seeds 200] [--json bench/results/cas-sim.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import pct
from dsm.core.cas_proposer import CasOutcome
from dsm.sim.cas_workload import CasParams, run_cas_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--json", default="bench/results/cas-sim.json")
    args = parser.parse_args()
    started = time.perf_counter()
    violations: list[int] = []
    unknown: list[int] = []
    outcomes = dict.fromkeys(CasOutcome, 0)
    latencies: list[float] = []
    operations = 0
    for seed in range(1, args.seeds + 1):
        run = run_cas_workload(CasParams(seed))
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
