"""`dsm sim`'s front end: runs the standard run with a progress bar, prints a summary, writes JSON and a plot."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dsm.sim.run import SimParams, StandardRun


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline numbers of a report, as (metric, value) rows, one report section after another."""
    sections = (
        _routing_rows,
        _join_rows,
        _leave_rows,
        _write_rows,
        _bulk_rows,
        _idle_rows,
        _convergence_rows,
        _crash_rows,
        _detector_rows,
        _total_rows,
    )
    return [row for section in sections for row in section(report)]


def _routing_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    r = report["routing_hops"]
    return [
        (
            "routing_hops",
            f"mean {_fmt(r['mean'])}  p99 {_fmt(r['p99'])}  max {_fmt(r['max'])}  "
            f"delivered {r['delivered']:.2%} of {r['pairs']}",
        )
    ]


def _join_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    if not report.get("join_messages"):
        return []
    jm, lc, js = report["join_messages"], report["links_changed_per_join"], report["join_settle_ms"]
    sp = report["join_spread"]
    return [
        ("join_messages", f"mean {_fmt(jm['mean'])}  max {jm['max']}"),
        ("links_changed_per_join", f"mean {_fmt(lc['mean'])}  max {lc['max']}"),
        ("join_settle", f"max {_fmt(js['max'])} ms = {js['max_rounds']} gossip rounds"),
        ("join_spread", f"min {sp['min_fraction']:.2%} of members knew each joiner after 2 rounds"),
    ]


def _leave_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    if not report.get("leave_messages"):
        return []
    lm, lc, ls = report["leave_messages"], report["links_changed_per_leave"], report["leave_settle_ms"]
    return [
        ("leave_messages", f"mean {_fmt(lm['mean'])}  max {lm['max']}"),
        ("links_changed_per_leave", f"mean {_fmt(lc['mean'])}  max {lc['max']}"),
        ("leave_settle", f"max {_fmt(ls['max'])} ms = {ls['max_rounds']} gossip rounds"),
        ("leave_spread", f"min {report['leave_spread']['min_fraction']:.2%} knew of each leave"),
    ]


def _write_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    t = report.get("time_to_all_ms")
    if not t:
        return []
    r, c = report["rounds_to_all"], report["payload_copies_per_update"]
    m, b = report["messages_per_update"], report["bytes_per_update"]
    return [
        (
            "time_to_all_ms",
            f"p50 {_fmt(t['p50'])}  p99 {_fmt(t['p99'])}  max {_fmt(t['max'])}  "
            f"reached all {t['reached_all']:.2%} of {t['writes']} writes",
        ),
        ("rounds_to_all", f"p50 {_fmt(r['p50'])}  p99 {_fmt(r['p99'])}  max {_fmt(r['max'])}"),
        ("delivery_hops", f"p50 {report['delivery_hops']['p50']}  max {report['delivery_hops']['max']}"),
        (
            "payload_copies_per_update",
            f"first {_fmt(c['first'])}  steady mean {_fmt(c['steady_mean'])}  max {_fmt(c['steady_max'])} x (n-1)",
        ),
        (
            "messages / bytes per update",
            f"steady {_fmt(m['steady_mean'])} / {_fmt(b['steady_mean'])} (mean {_fmt(m['mean'])} / {_fmt(b['mean'])})",
        ),
    ]


def _bulk_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    if not report.get("bulk_payload_copies_per_update"):
        return []
    c = report["bulk_payload_copies_per_update"]
    return [
        (
            "bulk (non-urgent)",
            f"copies {_fmt(c['mean'])} x (n-1), {_fmt(report['bulk_messages_per_update']['mean'])} messages, "
            f"{_fmt(report['bulk_bytes_per_update']['mean'])} bytes per update; all in "
            f"{_fmt(report['bulk_time_to_all_ms'])} ms",
        ),
        ("after_burst_bytes_per_node_per_s", _fmt(report["after_burst_bytes_per_node_per_s"])),
    ]


def _idle_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    if "idle_bytes_per_node_per_s" not in report:
        return []
    g = report["idle_gossip_period_ms"]
    return [
        (
            "idle_bytes_per_node_per_s",
            f"{_fmt(report['idle_bytes_per_node_per_s'])} (gossip period p50 {g['p50']} ms)",
        )
    ]


def _convergence_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    if "converged" not in report:
        return []
    return [("replicas converged", f"{report['converged']} after {_fmt(report['replicas_converged_ms'])} ms")]


def _crash_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    w = report.get("write_after_crash")
    if w:
        rows.append(
            (
                "write_after_crash",
                f"{w['fraction_at_2_rounds']:.2%} of survivors at 2 rounds, {w['fraction_at_end']:.2%} at the end; "
                f"99.9 % after {_fmt(w['time_to_99_9_ms'])} ms, all after {_fmt(w['time_to_all_ms'])} ms",
            )
        )
    d = report.get("detection_time_ms")
    if not d:
        return rows
    c = report["crash_recovery"]
    rows += [
        (
            "detection_time_ms",
            f"p50 {_fmt(d['p50'])}  p99 {_fmt(d['p99'])}  max {_fmt(d['max'])}  "
            f"detected {d['detected_fraction']:.2%} of {d['crashed']}",
        ),
        (
            "crash_recovery",
            f"connected after {_fmt(c['connected_ms'])} ms, ring repaired after "
            f"{_fmt(c['ring_repaired_ms'])} ms (detection period {c['detection_period_ms']} ms)",
        ),
    ]
    for key, value in report["routing_after_crash"].items():
        if value:
            rows.append(
                (
                    f"routing {key}",
                    f"delivered {value['delivered']:.2%}  mean {_fmt(value['mean'])}  p99 {_fmt(value['p99'])}",
                )
            )
    return rows


def _detector_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    split = report["false_suspicions_split"]
    return [
        ("false_suspicions / false_deaths", f"{report['false_suspicions']} / {report['false_deaths']}"),
        (
            "false suspicions raised",
            f"{split['by_slow_members']} by slow members, {split['of_slow_members_by_healthy']} of slow ones",
        ),
    ]


def _total_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    checks = report["checks"]
    return [
        ("converged_after_ms", _fmt(report["converged_after_ms"])),
        ("checks", "passed" if checks["passed"] else f"FAILED: {checks['failure']}"),
        ("wall_time_s / peak_memory_mib", f"{report['wall_time_s']} / {report['peak_memory_mib']}"),
        ("virtual_time_s / events", f"{report['virtual_time_s']} / {report['events']}"),
    ]


def run_cli(params: dict[str, Any], json_path: str | None, plot_path: str | None, quiet: bool, console: Console) -> int:
    """Runs, prints and writes; returns the exit status (1 if a check failed)."""
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            console.print("[red]--plot needs matplotlib: pip install 'dsm[plot]'[/red]")
            return 2
    params = dict(params)
    lifeguard = params.pop("lifeguard", True)
    p = SimParams(**params)
    if not lifeguard:
        p.settings = dataclasses.replace(p.settings, max_local_health=0)
    if quiet:
        report = StandardRun(p).run()
    else:
        with Progress(
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(),
            TextColumn("{task.fields[virtual]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("start", total=1.0, virtual="")

            def progress(phase: str, done: float, total: float) -> None:
                bar.update(
                    task,
                    description=phase,
                    completed=min(1.0, done / total) if total > 0 else 1.0,
                    virtual=f"{done / 1000:.1f}/{total / 1000:.0f} s virtual",
                )

            report = StandardRun(p, progress).run()
    table = Table("metric", "value", title=f"dsm sim: {p.nodes} nodes, seed {p.seed}")
    for name, value in summary_rows(report):
        table.add_row(name, value)
    console.print(table)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1) + "\n")
    if plot_path:
        from dsm.sim.plot import plot_report

        plot_report(report, plot_path)
    return 0 if report["checks"]["passed"] else 1
