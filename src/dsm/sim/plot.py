"""Figures of `dsm sim` reports: routing hops, join cost over time, detection times, how writes spread."""

from __future__ import annotations

from typing import Any


def plot_report(report: dict[str, Any], path: str) -> None:
    """Writes a PNG with three panels, four with writes (needs matplotlib, the `plot` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    writes = report.get("write_curves") or {}
    curves = writes.get("curves") or []
    fig, axes = plt.subplots(1, 4 if curves else 3, figsize=(20 if curves else 15, 4.2))
    params = report["params"]
    fig.suptitle(
        f"dsm sim: {params['nodes']} nodes, seed {params['seed']}, loss {params['loss']}, "
        f"crash {params['crash']}, slow {params['slow']}"
    )
    _routing_panel(axes[0], report)
    _joins_panel(axes[1], report)
    _detection_panel(axes[2], report)
    if curves:
        _writes_panel(axes[3], writes["population"], curves, params)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _routing_panel(ax: Any, report: dict[str, Any]) -> None:
    """Delivered pairs by hop count."""
    hops = report.get("hop_histogram") or {}
    if hops:
        xs = sorted(int(k) for k in hops)
        ax.bar(xs, [hops[str(x)] for x in xs])
    r = report["routing_hops"]
    ax.set_title(f"greedy routing: mean {r['mean']}, p99 {r['p99']}")
    ax.set_xlabel("hops")
    ax.set_ylabel("pairs")


def _joins_panel(ax: Any, report: dict[str, Any]) -> None:
    """Each join's cumulative link-table changes and overlay messages against time."""
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


def _detection_panel(ax: Any, report: dict[str, Any]) -> None:
    """The CDF of crash detection times."""
    detection = report.get("detection_samples_ms") or []
    if detection:
        xs = sorted(detection)
        ax.plot([x / 1000 for x in xs], [(i + 1) / len(xs) for i in range(len(xs))])
    ax.set_title("crash detection time (CDF)")
    ax.set_xlabel("s from crash to first dead declaration")
    ax.set_ylabel("fraction of crashed members")


def _writes_panel(ax: Any, population: int, curves: list[list[float]], params: dict[str, Any]) -> None:
    """The fraction of live nodes holding each of the first writes against time."""
    for i, times in enumerate(curves):
        ax.step(
            [max(t, 0.1) for t in times],
            [(k + 1) / population for k in range(len(times))],
            where="post",
            color="tab:green",
            alpha=0.6,
            label="one write" if i == 0 else None,
        )
    ax.set_xscale("log")
    mode = "gossip only" if not params["settings"]["direct_updates"] else "direct updates + gossip"
    ax.set_title(f"writes ({mode}): fraction of nodes holding it")
    ax.set_xlabel("ms since the write")
    ax.set_ylabel("fraction of live nodes")
    ax.legend(loc="lower right")


def plot_write_mixes(mixes: dict[str, list[tuple[int, list[float]]]], title: str, path: str) -> None:
    """One figure: the fraction of nodes holding a write against time, one colour per path mix (every
    write of every run of that mix drawn thin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = ["tab:green", "tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:brown"]
    for (label, curves), colour in zip(mixes.items(), colours, strict=False):
        for i, (population, times) in enumerate(curves):
            ax.step(
                [max(t, 0.1) / 1000 for t in times],
                [(k + 1) / population for k in range(population)],
                where="post",
                color=colour,
                alpha=0.35,
                label=label if i == 0 else None,
            )
    ax.set_xscale("log")
    ax.set_xlabel("s since the write")
    ax.set_ylabel("fraction of live nodes holding it")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
