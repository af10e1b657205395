"""The `dsm` command.

    dsm demo            a single-node demo on the embedded SQLite default
    dsm config          the effective configuration, with every setting's documentation
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
def version() -> None:
    """Prints the version."""
    click.echo(__version__)


if __name__ == "__main__":
    main()
