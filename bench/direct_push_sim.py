"""Direct pushes against the broadcast tree in small simulated clusters (BENCHMARKS "Issue 21, part 1").

`direct_push_max` (default 8) lets a node linked to every member of a cluster of at most that many push its own
writes to all of them itself; 0 keeps the broadcast tree. This runs the simulator's standard run (`dsm sim`'s
phases: `dsm.sim.run.StandardRun`, production-default settings, virtual time) with each setting on the same
seeds and prints, per configuration, time to all (p50 / p99 ms), payload copies per write (in units of n - 1),
the copies of writes sent from one region to another (per write, pushes of the tree and direct pushes) and
messages per write, with the run's safety and liveness checks. Latencies are the simulator's (1-5 ms
within a region, 50-150 ms across), not this machine's.

Reproduce: .venv/bin/python bench/direct_push_sim.py   (about a minute; bench/results/direct_push_sim.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from dsm.core.messages import DirectPush, Push
from dsm.core.settings import PeerSettings
from dsm.sim.run import StandardRun
from dsm.sim.stage import SimParams

CONFIGS: list[dict[str, Any]] = [
    {"nodes": 3, "writes": 300, "joins": 0, "seed": 1},
    {"nodes": 6, "writes": 200, "joins": 2, "seed": 1},
    {"nodes": 6, "writes": 200, "joins": 2, "loss": 0.05, "seed": 2},
    {"nodes": 8, "writes": 200, "joins": 0, "crash": 0.25, "seed": 3},
    {"nodes": 5, "writes": 100, "joins": 0, "regions": 2, "seed": 4},
]


class WideAreaPushes:
    """Counts the copies of a run's watched writes (its write phase's) that pushes (the tree's or direct) send
    from one region to another."""

    def __init__(self, run: StandardRun) -> None:
        self.run = run
        self.copies = 0

    def sent(self, source: int, target: int, message: Any) -> None:
        tracker, nodes = self.run.tracker, self.run.sim.nodes
        if tracker is None or type(message) not in (Push, DirectPush):
            return
        if nodes[source].info.region != nodes[target].info.region:
            self.copies += sum(item.id in tracker.active for item in message.items)


def main() -> int:
    rows = []
    print(
        "| configuration | direct_push_max | time to all p50 / p99 ms | payload copies "
        "| copies pushed across regions per write | messages per write | checks"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for config in CONFIGS:
        for limit in (PeerSettings.direct_push_max, 0):
            run = StandardRun(SimParams(pairs=100, settings=PeerSettings(direct_push_max=limit), **config))
            crossed = WideAreaPushes(run)
            run.sim.send_hooks.append(crossed.sent)
            report = run.run()
            tta = report["time_to_all_ms"]
            row = {
                "config": config,
                "direct_push_max": limit,
                "time_to_all_ms": {"p50": tta["p50"], "p99": tta["p99"]},
                "payload_copies_per_update": report["payload_copies_per_update"]["mean"],
                "messages_per_update": report["messages_per_update"]["mean"],
                "wide_area_push_copies_per_write": round(crossed.copies / config["writes"], 2)
                if config.get("regions", 1) > 1
                else None,
                "checks": report["checks"],
            }
            rows.append(row)
            label = ", ".join(f"{k} {v}" for k, v in config.items())
            passed = "passed" if report["checks"]["passed"] else f"FAILED: {report['checks']['failure']}"
            print(
                f"| {label} | {limit} | {tta['p50']:.1f} / {tta['p99']:.1f} | {row['payload_copies_per_update']:.2f} "
                f"| {row['wide_area_push_copies_per_write'] or '-'} | {row['messages_per_update']:.1f} | {passed} |",
                flush=True,
            )
    out = Path(__file__).parent / "results" / "direct_push_sim.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["checks"]["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
