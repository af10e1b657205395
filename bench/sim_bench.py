"""Overlay and membership benchmarks (issue 3): runs `dsm sim` scenarios over several seeds and summarises.

Each run is its own `dsm sim` process (so the peak memory reported is that run's), writes its JSON report
and figure to bench/results/sim/, and the summary table (Markdown, medians over seeds and the worst seed)
is printed and written to bench/results/sim/summary-<suite>.md.

Suites:
  quick   n = 1,000: routing, joins and an 80 % crash (5 seeds); 10 % slow members (mean extra delay 300 ms,
          3 seeds; 1,000 ms, 1 seed) for 600 s with 1 % crashed; 10 announced leaves (3 seeds)
          (about 15 minutes)
  full    quick, plus 1,000 ms slowness for a second seed and without Lifeguard (1 seed), and n = 10,000:
          routing, joins and an 80 % crash (seed 1), routing and joins (seeds 2-3), 5 leaves (seed 1)
          (about 50 minutes)

Usage: python bench/sim_bench.py [--suite quick|full] [--seeds N] [--only PREFIX] [--skip PREFIX]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from common import SIM_RESULTS, Scenario, report_value, run_sim

SLOW_1000 = ["--nodes", "1000", "--slow", "0.1", "--slow-ms", "1000", "--crash", "0.01", "--duration-s", "600"]


def scenarios(suite: str, seeds: int) -> list[Scenario]:
    runs: list[Scenario] = [
        ("1k-crash80", ["--nodes", "1000", "--crash", "0.8", "--joins", "10"], list(range(1, seeds + 1))),
        (
            "1k-slow10-300ms",
            ["--nodes", "1000", "--slow", "0.1", "--slow-ms", "300", "--crash", "0.01", "--duration-s", "600"],
            list(range(1, min(seeds, 3) + 1)),
        ),
        ("1k-slow10-1000ms", SLOW_1000, [1]),
        ("1k-leaves", ["--nodes", "1000", "--joins", "0", "--leaves", "10"], list(range(1, min(seeds, 3) + 1))),
    ]
    if suite == "full":
        runs += [
            ("1k-slow10-1000ms", SLOW_1000, [2]),
            ("1k-slow10-1000ms-no-lifeguard", [*SLOW_1000, "--no-lifeguard"], [1]),
            ("10k-crash80", ["--nodes", "10000", "--crash", "0.8", "--joins", "5"], [1]),
            ("10k", ["--nodes", "10000", "--joins", "5"], [2, 3]),
            ("10k-leaves", ["--nodes", "10000", "--joins", "0", "--leaves", "5"], [1]),
        ]
    return runs


ROWS = [
    ("routing mean hops", "routing_hops.mean", max),
    ("routing p99 hops", "routing_hops.p99", max),
    ("routing delivered", "routing_hops.delivered", min),
    ("join overlay messages (max per join)", "join_messages.max", max),
    ("members whose links changed (max per join)", "links_changed_per_join.max", max),
    ("join settled after (gossip rounds)", "join_settle_ms.max_rounds", max),
    ("joiner known by (fraction, 2 rounds)", "join_spread.min_fraction", min),
    ("leave overlay messages, all members (max per leave)", "leave_messages.max", max),
    ("members whose links changed (max per leave)", "links_changed_per_leave.max", max),
    ("leave settled after (gossip rounds)", "leave_settle_ms.max_rounds", max),
    ("leave known by (fraction, 2 rounds)", "leave_spread.min_fraction", min),
    ("detection p50 (ms)", "detection_time_ms.p50", max),
    ("detection p99 (ms)", "detection_time_ms.p99", max),
    ("crashed members detected", "detection_time_ms.detected_fraction", min),
    ("survivors connected after (ms)", "crash_recovery.connected_ms", max),
    ("ring repaired after (ms)", "crash_recovery.ring_repaired_ms", max),
    ("detection period (ms)", "crash_recovery.detection_period_ms", max),
    ("routing delivered, 3 probe periods after crash", "routing_after_crash.at_3_probe_periods.delivered", min),
    ("routing delivered, 3 detection periods after", "routing_after_crash.at_3_detection_periods.delivered", min),
    ("false suspicions", "false_suspicions", max),
    ("  raised by slow members", "false_suspicions_split.by_slow_members", max),
    ("  raised about slow members", "false_suspicions_split.of_slow_members_by_healthy", max),
    ("false deaths", "false_deaths", max),
    ("converged after faults stop (ms)", "converged_after_ms", max),
    ("virtual time (s)", "virtual_time_s", max),
    ("wall time (s)", "wall_time_s", max),
    ("peak memory (MiB)", "peak_memory_mib", max),
]


def summary(name: str, args: list[str], reports: list[dict[str, Any]]) -> str:
    seeds = [r["params"]["seed"] for r in reports]
    lines = [
        f"### {name}: `dsm sim {' '.join(args)} --seed S`, seeds {seeds}",
        "",
        "| metric | median | worst seed |",
        "| --- | --- | --- |",
    ]
    for label, path, worst in ROWS:
        values = [v for v in (report_value(r, path) for r in reports) if v is not None]
        if not values:
            continue
        lines.append(f"| {label} | {statistics.median(values):.4g} | {worst(values):.4g} |")
    failed = [r["checks"]["failure"] for r in reports if not r["checks"]["passed"]]
    lines.append(f"| checks (safety + liveness) | {len(reports) - len(failed)}/{len(reports)} passed | |")
    lines.extend(f"\nFAILED: {f}" for f in failed)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=["quick", "full"], default="quick")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--only", default="", help="run only scenarios whose name starts with this")
    ap.add_argument("--skip", default="", help="skip scenarios whose name starts with this")
    a = ap.parse_args()
    parts = []
    for name, args, seeds in scenarios(a.suite, a.seeds):
        if not name.startswith(a.only) or (a.skip and name.startswith(a.skip)):
            continue
        reports = [run_sim(name, args, seed) for seed in seeds]
        parts.append(summary(name, args, reports))
    text = "\n".join(parts)
    suffix = ("-" + a.only if a.only else "") + ("-without-" + a.skip if a.skip else "")
    (SIM_RESULTS / f"summary-{a.suite}{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
