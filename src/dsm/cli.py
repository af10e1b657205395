"""The `dsm` command.

    dsm demo            a single-node demo on the embedded SQLite default
    dsm config          the effective configuration, with every setting's documentation
    dsm sim             the deterministic simulator's standard measured run (see dsm.sim.run)
    dsm version

Running nodes as processes (`dsm node run`) and the client commands (`dsm put/get/delete/status`) arrive
with the network runtime.
"""

from __future__ import annotations

import asyncio
import dataclasses

import click
from rich.console import Console
from rich.table import Table

from dsm import __version__
from dsm.config import FIELD_DOCS, StorageConfig
from dsm.errors import DSMError


def run_async(coro: object) -> None:
    """Runs a coroutine on uvloop when it is installed (faster), else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


@click.group()
@click.version_option(__version__, prog_name="dsm")
def main() -> None:
    """DSM: a distributed key-value storage node."""


@main.command()
@click.option("--data-dir", default=None, help="Directory for the demo's data (default: a temporary one).")
@click.option("--keep", is_flag=True, help="Keep the temporary data directory.")
def demo(data_dir: str | None, keep: bool) -> None:
    """Single-node demo: write, read, close, reopen from disk, read again."""
    from dsm.demo import run_demo

    try:
        run_async(run_demo(data_dir, keep, Console()))
    except DSMError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


@main.command("config")
@click.option("--file", "toml_path", type=click.Path(dir_okay=False), default=None, help="A TOML config file.")
def show_config(toml_path: str | None) -> None:
    """Shows the effective configuration (defaults < TOML file < DSM_* environment) with documentation."""
    try:
        config = StorageConfig.load(toml_path)
    except DSMError as exc:
        raise click.ClickException(str(exc)) from exc
    table = Table("setting", "value", "meaning", show_lines=True)
    for f in dataclasses.fields(config):
        table.add_row(f.name, repr(getattr(config, f.name)), FIELD_DOCS[f.name])
    Console().print(table)


@main.command()
@click.option("--nodes", "-n", type=click.IntRange(2, 100_000), default=1000, show_default=True, help="Cluster size.")
@click.option("--seed", "-s", type=int, default=1, show_default=True, help="Decides every random choice.")
@click.option("--loss", type=click.FloatRange(0, 0.5), default=0.0, show_default=True, help="Message loss rate.")
@click.option("--duplicate", type=click.FloatRange(0, 0.5), default=0.0, show_default=True, help="Duplication rate.")
@click.option(
    "--crash", type=click.FloatRange(0, 0.99), default=0.0, show_default=True, help="Fraction crashed at once."
)
@click.option("--slow", type=click.FloatRange(0, 0.9), default=0.0, show_default=True, help="Fraction of slow nodes.")
@click.option("--slow-ms", type=click.FloatRange(0), default=1000.0, show_default=True, help="Slow nodes' mean delay.")
@click.option("--joins", type=click.IntRange(0, 1000), default=5, show_default=True, help="Joins to measure.")
@click.option("--leaves", type=click.IntRange(0, 1000), default=0, show_default=True, help="Leaves to measure.")
@click.option("--writes", type=click.IntRange(0, 100_000), default=0, show_default=True, help="Writes to measure.")
@click.option("--bulk", type=click.IntRange(0, 1_000_000), default=0, show_default=True, help="Non-urgent burst.")
@click.option("--gossip-only", is_flag=True, help="Direct updates off, fixed gossip period (rounds_to_all).")
@click.option("--no-idle", is_flag=True, help="Skip the idle phase after the writes (no idle traffic figures).")
@click.option("--pairs", type=click.IntRange(1, 1_000_000), default=2000, show_default=True, help="Routed pairs.")
@click.option("--duration-s", type=click.FloatRange(0), default=0.0, show_default=True, help="Extra steady run, s.")
@click.option("--regions", type=click.IntRange(1, 64), default=1, show_default=True, help="Regions (round robin).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the report here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Write a figure (PNG).")
@click.option("--no-lifeguard", is_flag=True, help="Disable local health (max_local_health = 0), to compare.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def sim(
    nodes: int,
    seed: int,
    loss: float,
    duplicate: float,
    crash: float,
    slow: float,
    slow_ms: float,
    joins: int,
    leaves: int,
    writes: int,
    bulk: int,
    gossip_only: bool,
    no_idle: bool,
    pairs: int,
    duration_s: float,
    regions: int,
    json_path: str | None,
    plot_path: str | None,
    no_lifeguard: bool,
    quiet: bool,
) -> None:
    """Simulates a cluster on virtual time and reports routing, join cost, failure detection and recovery.

    The same seed reproduces the run exactly. Exits with status 1 if a safety or liveness check fails
    (the message names the seed)."""
    from dsm.sim.report import run_cli

    code = run_cli(
        dict(
            nodes=nodes,
            seed=seed,
            loss=loss,
            duplicate=duplicate,
            crash=crash,
            slow=slow,
            slow_ms=slow_ms,
            joins=joins,
            leaves=leaves,
            writes=writes,
            bulk=bulk,
            gossip_only=gossip_only,
            idle=not no_idle,
            pairs=pairs,
            duration_s=duration_s,
            regions=regions,
            lifeguard=not no_lifeguard,
        ),
        json_path,
        plot_path,
        quiet,
        Console(),
    )
    if code:
        raise SystemExit(code)


@main.command()
def version() -> None:
    """Prints the version."""
    click.echo(__version__)


if __name__ == "__main__":
    main()
