"""Write-dissemination benchmarks (issue 4): `dsm sim` write workloads over many seeds, summarised.

Each run is its own `dsm sim` process (JSON report and figure in bench/results/sim/). The summary
(Markdown: medians over seeds and the worst seed; rounds to all as p50 / p99 over every write of every
seed) goes to bench/results/sim/summary-writes-<suite>.md, and two figures are drawn from the reports:
writes-mixes-<n>.png (fraction of nodes holding a write against time, one colour per path mix) and
writes-scaling.png (time and rounds to all against n, from whatever sizes were run).

Suites:
  quick   n = 1,000: direct updates + gossip, 40 writes and a burst of 100 non-urgent ones (3 seeds);
          gossip alone, 5 overlapping writes, 20 seeds without loss and 5 seeds with 20 % loss (about 40 s
          each: the membership layer is busy refuting the suspicions loss causes); 10 writes around an 80 %
          crash (3 seeds) (about 10 minutes)
  full    quick, with 20 seeds at 20 % loss, plus n = 10,000: direct updates (seed 1, about 6 minutes),
          gossip alone (20 seeds, about 40 s each), gossip alone with 20 % loss (seed 1), 80 % crash
          (seed 1, about 14 minutes)

Usage: python bench/dissemination_bench.py [--suite quick|full] [--only PREFIX] [--skip PREFIX] [--reuse]
(--reuse summarises and plots the reports already in bench/results/sim/ without running anything.)
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from common import SIM_RESULTS, Scenario, report_value, run_sim
from dsm.sim.plot import plot_write_mixes

GOSSIP = ["--joins", "0", "--pairs", "50", "--gossip-only", "--writes", "5", "--no-idle"]
DIRECT = ["--joins", "0", "--pairs", "200", "--writes", "40", "--bulk", "100"]
# The crash runs skip the idle measurement (the direct runs report it) and spend their time on the crash.
CRASH = ["--joins", "0", "--pairs", "200", "--writes", "10", "--no-idle", "--crash", "0.8"]


def scenarios(suite: str) -> list[Scenario]:
    runs: list[Scenario] = [
        ("1k-writes", ["--nodes", "1000", *DIRECT], [1, 2, 3]),
        ("1k-gossip", ["--nodes", "1000", *GOSSIP], list(range(1, 21))),
        (
            "1k-gossip-loss20",
            ["--nodes", "1000", *GOSSIP, "--loss", "0.2"],
            list(range(1, 21 if suite == "full" else 6)),
        ),
        ("1k-crash80-writes", ["--nodes", "1000", *CRASH], [1, 2, 3]),
    ]
    if suite == "full":
        runs += [
            ("10k-writes", ["--nodes", "10000", *DIRECT], [1]),
            ("10k-gossip", ["--nodes", "10000", *GOSSIP], list(range(1, 21))),
            ("10k-gossip-loss20", ["--nodes", "10000", *GOSSIP, "--loss", "0.2"], [1]),
            ("10k-crash80-writes", ["--nodes", "10000", *CRASH], [1]),
        ]
    return runs


ROWS = [
    ("time to all p50 (ms)", "time_to_all_ms.p50", max),
    ("time to all p99 (ms)", "time_to_all_ms.p99", max),
    ("time to all max (ms)", "time_to_all_ms.max", max),
    ("writes that reached every node", "time_to_all_ms.reached_all", min),
    ("delivery hops (max)", "delivery_hops.max", max),
    ("payload copies, first write (x (n-1))", "payload_copies_per_update.first", max),
    ("payload copies, steady mean (x (n-1))", "payload_copies_per_update.steady_mean", max),
    ("payload copies, steady max (x (n-1))", "payload_copies_per_update.steady_max", max),
    ("messages per update, steady", "messages_per_update.steady_mean", max),
    ("bytes per update, steady", "bytes_per_update.steady_mean", max),
    ("bulk: payload copies (x (n-1))", "bulk_payload_copies_per_update.mean", max),
    ("bulk: messages per update", "bulk_messages_per_update.mean", max),
    ("bulk: bytes per update", "bulk_bytes_per_update.mean", max),
    ("bulk: all writes everywhere after (ms)", "bulk_time_to_all_ms", max),
    ("bytes per node per s, burst until a round after", "after_burst_bytes_per_node_per_s", max),
    ("bytes per node per s, idle", "idle_bytes_per_node_per_s", max),
    ("gossip period when idle, p50 (ms)", "idle_gossip_period_ms.p50", min),
    ("write after crash: survivors holding it at 2 rounds", "write_after_crash.fraction_at_2_rounds", min),
    ("write after crash: survivors holding it at the end", "write_after_crash.fraction_at_end", min),
    ("write after crash: 99.9 % of survivors after (ms)", "write_after_crash.time_to_99_9_ms", max),
    ("write after crash: all survivors after (ms)", "write_after_crash.time_to_all_ms", max),
    ("replicas converged after faults stop (ms)", "replicas_converged_ms", max),
    ("false deaths", "false_deaths", max),
    ("wall time (s)", "wall_time_s", max),
    ("peak memory (MiB)", "peak_memory_mib", max),
]


def summary(name: str, args: list[str], reports: list[dict[str, Any]]) -> str:
    seeds = [r["params"]["seed"] for r in reports]
    lines = [
        f"### {name}: `dsm sim {' '.join(args)} --seed S`, seeds {seeds[0]}-{seeds[-1]}",
        "",
        "| metric | median | worst seed |",
        "| --- | --- | --- |",
    ]
    rounds = sorted(x for r in reports for x in (r.get("rounds_to_all") or {}).get("samples", []))
    if rounds:
        p99 = rounds[min(len(rounds) - 1, int(0.99 * len(rounds)))]
        lines.append(
            f"| rounds to all, over {len(rounds)} writes: p50 / p99 / max | "
            f"{statistics.median(rounds):.3g} / {p99:.3g} / {rounds[-1]:.3g} | |"
        )
    for label, path, worst in ROWS:
        values = [v for v in (report_value(r, path) for r in reports) if v is not None]
        if values:
            lines.append(f"| {label} | {statistics.median(values):.4g} | {worst(values):.4g} |")
    failed = [r["checks"]["failure"] for r in reports if not r["checks"]["passed"]]
    converged = sum(1 for r in reports if r.get("converged"))
    lines.append(f"| replicas identical at the end | {converged}/{len(reports)} runs | |")
    lines.append(f"| checks (safety + liveness) | {len(reports) - len(failed)}/{len(reports)} passed | |")
    lines.extend(f"\nFAILED: {f}" for f in failed)
    return "\n".join(lines) + "\n"


def figures(done: dict[str, list[dict[str, Any]]]) -> None:
    labels = {
        "writes": "direct updates + gossip",
        "gossip": "gossip alone",
        "gossip-loss20": "gossip alone, 20 % loss",
    }
    for size in ("1k", "10k"):
        mixes: dict[str, list[tuple[int, list[float]]]] = {}
        for suffix, label in labels.items():
            for report in done.get(f"{size}-{suffix}", [])[:3]:
                curves = report.get("write_curves") or {}
                for times in curves.get("curves", []):
                    mixes.setdefault(label, []).append((curves["population"], times))
        for report in done.get(f"{size}-crash80-writes", [])[:3]:
            after = report.get("write_after_crash") or {}
            if after.get("curve"):
                survivors = report["crash_recovery"]["survivors"]
                mixes.setdefault("direct + gossip, 3 s after an 80 % crash", []).append((survivors, after["curve"]))
        if mixes:
            plot_write_mixes(
                mixes, f"n = {size}: how a write spreads, by path mix", str(SIM_RESULTS / f"writes-mixes-{size}.png")
            )
    _scaling(done)


def _scaling(done: dict[str, list[dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {
        "direct + gossip: time to all p99 (ms)": ("writes", "time_to_all_ms.p99"),
        "gossip alone: rounds to all p99": ("gossip", "rounds_to_all.p99"),
        "gossip alone, 20 % loss: rounds to all p99": ("gossip-loss20", "rounds_to_all.p99"),
    }
    fig, axes = plt.subplots(1, len(series), figsize=(15, 4))
    for ax, (label, (suffix, path)) in zip(axes, series.items(), strict=True):
        xs, ys = [], []
        for size, n in (("1k", 1000), ("10k", 10000)):
            values = [v for v in (report_value(r, path) for r in done.get(f"{size}-{suffix}", [])) if v is not None]
            if values:
                xs.append(n)
                ys.append(max(values))
        if not xs:
            ax.set_visible(False)
            continue
        ax.plot(xs, ys, marker="o")
        ax.set_ylim(bottom=0)
        ax.set_xscale("log")
        ax.set_xlabel("nodes")
        ax.set_title(label, fontsize=10)
    fig.tight_layout()
    fig.savefig(SIM_RESULTS / "writes-scaling.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=["quick", "full"], default="quick")
    ap.add_argument("--only", default="", help="run only scenarios whose name starts with this")
    ap.add_argument("--skip", default="", help="skip scenarios whose name starts with this")
    ap.add_argument("--reuse", action="store_true", help="summarise existing reports instead of running")
    a = ap.parse_args()
    parts = []
    done: dict[str, list[dict[str, Any]]] = {}
    for name, args, seeds in scenarios(a.suite):
        if not name.startswith(a.only) or (a.skip and name.startswith(a.skip)):
            continue
        if a.reuse:
            import json

            reports = [
                json.loads(p.read_text())
                for p in (SIM_RESULTS / f"{name}-seed{s}.json" for s in seeds)
                if Path(p).exists()
            ]
        else:
            reports = [run_sim(name, args, seed) for seed in seeds]
        if reports:
            done[name] = reports
            parts.append(summary(name, args, reports))
    text = "\n".join(parts)
    suffix = ("-" + a.only if a.only else "") + ("-without-" + a.skip if a.skip else "")
    (SIM_RESULTS / f"summary-writes-{a.suite}{suffix}.md").write_text(text)
    figures(done)
    print(text)


if __name__ == "__main__":
    main()
