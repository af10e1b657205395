"""The simulator at 1,000 / 10,000 / 100,000 nodes (issue 21, part 3): its cost and the overlay's figures
against log n.

Two `dsm sim` runs per size, each its own process (so the peak memory reported is that run's), seed 1:
  scale-<n>        `dsm sim --nodes n --joins 0 --pairs 500`: the issue's command; routing hops, wall time
                   and peak memory
  scale-<n>-churn  `dsm sim --nodes n --joins 2 --writes 10 --no-idle --pairs 500`: join cost, rounds to
                   all and payload copies of writes (and routing again)
Reports and per-run figures go to bench/results/sim/<name>-seed1.{json,png}; the summary table to
bench/results/sim/summary-scale.md and the figure against log n to bench/results/sim/scale-log-n.png.
The 100,000-node churn run takes about 20 minutes on 2 cores; `--sizes 1000,10000` skips it.

Usage: python bench/sim_scale_bench.py [--sizes 1000,10000,100000] [--only NAME,...] [--plot-only]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from common import SIM_RESULTS, report_value, run_sim

SEED = 1
#: Most points kept of each write curve in a stored report.
CURVE_POINTS = 2000


def scenarios(n: int) -> list[tuple[str, list[str]]]:
    return [
        (f"scale-{n}", ["--nodes", str(n), "--joins", "0", "--pairs", "500"]),
        (f"scale-{n}-churn", ["--nodes", str(n), "--joins", "2", "--writes", "10", "--no-idle", "--pairs", "500"]),
    ]


def run(sizes: list[int], only: set[str]) -> None:
    for n in sizes:
        for name, args in scenarios(n):
            if only and name not in only:
                continue
            started = time.perf_counter()
            report = run_sim(name, args, SEED)
            # The process's whole life (start-up, forming, the run, the report), beside the report's own.
            report["process_wall_s"] = round(time.perf_counter() - started, 1)
            Path(SIM_RESULTS / f"{name}-seed{SEED}.json").write_text(json.dumps(thinned(report)))


def thinned(report: dict[str, Any]) -> dict[str, Any]:
    """The report with each write curve (a time per node, 100,000 at the largest size) cut to at most
    CURVE_POINTS evenly spaced points, the last included, so the stored report stays small; the run's own
    figure was drawn from the whole curves."""
    curves = (report.get("write_curves") or {}).get("curves") or []
    for i, curve in enumerate(curves):
        if len(curve) > CURVE_POINTS:
            step = math.ceil(len(curve) / CURVE_POINTS)
            curves[i] = curve[::step] + ([curve[-1]] if (len(curve) - 1) % step else [])
            report["write_curves"]["thinned_to"] = CURVE_POINTS
    return report


def load(name: str) -> dict[str, Any] | None:
    path = SIM_RESULTS / f"{name}-seed{SEED}.json"
    return json.loads(path.read_text()) if path.exists() else None


ROWS = [
    ("routing hops mean / p99 (500 pairs)", "scale", ("routing_hops.mean", "routing_hops.p99")),
    ("routing delivered", "scale", ("routing_hops.delivered",)),
    ("rounds to all p50 / max (10 writes)", "churn", ("rounds_to_all.p50", "rounds_to_all.max")),
    ("time to all ms p50 / max", "churn", ("time_to_all_ms.p50", "time_to_all_ms.max")),
    ("delivery hops p50 / max", "churn", ("delivery_hops.p50", "delivery_hops.max")),
    ("payload copies per write, steady mean / max (n - 1)", "churn",
     ("payload_copies_per_update.steady_mean", "payload_copies_per_update.steady_max")),
    ("join overlay messages mean / max (2 joins)", "churn", ("join_messages.mean", "join_messages.max")),
    ("members whose links changed per join, max", "churn", ("links_changed_per_join.max",)),
    ("joiner known by (fraction, 2 rounds)", "churn", ("join_spread.min_fraction",)),
    ("checks passed", "both", ("checks.passed",)),
    ("run wall time s (report) / process s", "scale", ("wall_time_s", "process_wall_s")),
    ("peak RSS MiB", "scale", ("peak_memory_mib",)),
    ("churn run: wall time s / peak RSS MiB", "churn", ("wall_time_s", "peak_memory_mib")),
]  # fmt: skip


def value(report: dict[str, Any] | None, path: str) -> str:
    if report is None:
        return "-"
    if path == "checks.passed":
        return "yes" if report["checks"]["passed"] else f"no: {report['checks']['failure']}"
    v = report_value(report, path)
    return "-" if v is None else f"{v:g}"


def summary(sizes: list[int]) -> str:
    head = "| figure | " + " | ".join(f"n = {n:,}" for n in sizes) + " |"
    lines = [head, "| --- |" + " --- |" * len(sizes)]
    lines.append("| log2 n | " + " | ".join(f"{math.log2(n):.1f}" for n in sizes) + " |")
    for label, which, paths in ROWS:
        cells = []
        for n in sizes:
            runs = {"scale": [load(f"scale-{n}")], "churn": [load(f"scale-{n}-churn")]}
            runs["both"] = runs["scale"] + runs["churn"]
            cells.append(" ; ".join(" / ".join(value(r, p) for p in paths) for r in runs[which]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = [load(f"scale-{n}") for n in sizes]
    churn = [load(f"scale-{n}-churn") for n in sizes]
    logn = [math.log2(n) for n in sizes]

    def series(reports: list[dict[str, Any] | None], key: str) -> list[float]:
        values = [None if r is None else report_value(r, key) for r in reports]
        return [math.nan if v is None else v for v in values]

    fig, axes = plt.subplots(1, 5, figsize=(25, 4.4))
    fig.suptitle(f"dsm sim at {', '.join(f'{n:,}' for n in sizes)} nodes (seed {SEED}), against log2 n")
    ax = axes[0]
    ax.plot(logn, series(scale, "routing_hops.mean"), "o-", label="mean")
    ax.plot(logn, series(scale, "routing_hops.p99"), "s-", label="p99")
    ax.plot(logn, [x / 3 for x in logn], "k:", label="log2 n / 3")
    ax.set_title("greedy routing hops (500 pairs)")
    ax = axes[1]
    # With the broadcast tree every write reaches everyone within 0.01 gossip rounds (5 s each): the time and
    # the tree's depth are the figures that move.
    ax.plot(logn, series(churn, "time_to_all_ms.p50"), "o-", label="time to all p50, ms")
    ax.plot(logn, series(churn, "time_to_all_ms.max"), "s-", label="time to all max, ms")
    ax.plot(logn, [3 * x for x in series(churn, "delivery_hops.max")], "^-", label="last copy's hops x 3")
    ax.plot(logn, [2 * x for x in logn], "k:", label="2 log2 n")
    ax.set_ylim(bottom=0)
    ax.set_title("write: until every node holds it (0.01 gossip rounds)")
    ax = axes[2]
    ax.plot(logn, series(churn, "payload_copies_per_update.steady_mean"), "o-", label="steady mean")
    ax.plot(logn, series(churn, "payload_copies_per_update.steady_max"), "s-", label="steady max")
    ax.set_ylim(bottom=0)
    ax.set_title("write: payload copies sent, in units of n - 1")
    ax = axes[3]
    ax.plot(logn, series(churn, "join_messages.max"), "o-", label="overlay messages (max per join)")
    ax.plot(logn, series(churn, "links_changed_per_join.max"), "s-", label="members whose links changed")
    ax.plot(logn, [x * x for x in logn], "k:", label="(log2 n)^2")
    ax.set_title("join cost")
    ax = axes[4]
    ax.plot(logn, series(scale, "wall_time_s"), "o-", label="wall time, s")
    ax.plot(logn, [x / 1024 * 100 for x in series(scale, "peak_memory_mib")], "s-", label="peak RSS, GiB x 100")
    ax.set_yscale("log")
    ax.set_title("cost of `dsm sim --joins 0 --pairs 500`")
    for ax in axes:
        ax.set_xlabel("log2 n")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--only", default="", help="run only these scenarios (names, comma-separated)")
    parser.add_argument("--plot-only", action="store_true", help="summarise the reports already there")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if not args.plot_only:
        run(sizes, {name for name in args.only.split(",") if name})
    table = summary(sizes)
    print(table)
    (SIM_RESULTS / "summary-scale.md").write_text(table)
    plot(sizes, SIM_RESULTS / "scale-log-n.png")


if __name__ == "__main__":
    main()
