"""A figure of one `dsm sim` report: routing hops, join cost over time, detection times."""

from __future__ import annotations

from typing import Any


def plot_report(report: dict[str, Any], path: str) -> None:
    """Writes a PNG with three panels (needs matplotlib, the `plot` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    params = report["params"]
    fig.suptitle(
        f"dsm sim: {params['nodes']} nodes, seed {params['seed']}, loss {params['loss']}, "
        f"crash {params['crash']}, slow {params['slow']}"
    )

    hops = report.get("hop_histogram") or {}
    ax = axes[0]
    if hops:
        xs = sorted(int(k) for k in hops)
        ax.bar(xs, [hops[str(x)] for x in xs])
    r = report["routing_hops"]
    ax.set_title(f"greedy routing: mean {r['mean']}, p99 {r['p99']}")
    ax.set_xlabel("hops")
    ax.set_ylabel("pairs")

    ax = axes[1]
    for i, curve in enumerate(report.get("curves", {}).get("joins", [])):
        links = sorted(curve["link_changes_ms"])
        msgs = sorted(curve["messages_ms"])
        ax.step(
            links,
            range(1, len(links) + 1),
            where="post",
            color="tab:blue",
            alpha=0.6,
            label="link-table change events, all members" if i == 0 else None,
        )
        ax.step(
            msgs,
            range(1, len(msgs) + 1),
            where="post",
            color="tab:orange",
            alpha=0.6,
            label="overlay messages" if i == 0 else None,
        )
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_title("each join: cumulative cost over time")
    ax.set_xlabel("ms since the join started")
    ax.legend(loc="lower right")

    ax = axes[2]
    detection = report.get("detection_samples_ms") or []
    if detection:
        xs = sorted(detection)
        ax.plot([x / 1000 for x in xs], [(i + 1) / len(xs) for i in range(len(xs))])
    ax.set_title("crash detection time (CDF)")
    ax.set_xlabel("s from crash to first dead declaration")
    ax.set_ylabel("fraction of crashed members")

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
