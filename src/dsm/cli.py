"""The `dsm` command.

dsm demo            a 5-node local cluster demo (--single: one node in-process)
dsm config          the effective configuration, with every setting's documentation
dsm sim             the deterministic simulator's standard measured run (see dsm.sim.run)
dsm node run        one node as a process (store, networked core, HTTP API) until SIGTERM
dsm put/get/delete/list KEY...   client operations against a node's HTTP API
dsm watch PREFIX    follows the changes under PREFIX (resumes by itself; --since CURSOR)
dsm members / dsm status         the membership as a node sees it
dsm cluster up/down/show/kill/start   a local cluster of real node processes on loopback
dsm version
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import click

from dsm import __version__
from dsm.errors import DSMError
from dsm.snapshot_cli import snapshot

if TYPE_CHECKING:
    from rich.console import Console as RichConsole
    from rich.table import Table as RichTable

# The client commands (`dsm get`) import only what they use: the configuration, rich, asyncio and the node's
# parts are imported in the commands that need them (tests/processes/test_cli_conventions.py checks that
# numpy is not imported, bench/cli_bench.py measures the CPU). So the choices of a few options are spelled
# here; a test checks them against the enums of dsm.config and dsm.core.consistency.
PROFILE_NAMES = ("lan", "wan", "sim")
HTTP_TLS_MODES = ("auto", "on", "off")
LEVEL_NAMES = ("local", "region_quorum", "quorum", "each_region_quorum", "all")


def Console() -> RichConsole:  # rich's class, imported on first use
    from rich.console import Console as RichConsole

    return RichConsole()


def Table(*columns: str, **options: Any) -> RichTable:  # rich's class, imported on first use
    from rich.table import Table as RichTable

    return RichTable(*columns, **options)


def run_async(coro: object) -> None:
    """Runs a coroutine on uvloop when it is installed (faster), else on asyncio's default loop."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


def _httpx_without_its_command_line() -> None:
    """Lets httpx skip importing its own command line tool (`httpx._main`, which pulls in rich, pygments and
    click: about 40 ms of the 140 ms of CPU a `dsm get` costs). httpx imports it under `try/except
    ImportError` and keeps a stub `httpx.main` without it; a None in `sys.modules` makes that import fail.
    Only this process's `dsm` command does this, never the library; should a later httpx import it without
    the fallback, the entry is taken back and httpx imported whole."""
    if "httpx" in sys.modules or "httpx._main" in sys.modules:
        return
    sys.modules["httpx._main"] = None  # type: ignore[assignment]
    try:
        import httpx  # noqa: F401
    except ImportError:
        del sys.modules["httpx._main"]


@click.group()
@click.version_option(__version__, prog_name="dsm")
def main() -> None:
    """DSM: a distributed key-value storage node."""


@main.command()
@click.option("--data-dir", default=None, help="Directory for the demo's data (default: a temporary one).")
@click.option("--keep", is_flag=True, help="Keep the temporary data directory.")
@click.option("--single", is_flag=True, help="The single-node demo (in-process) instead of the cluster.")
def demo(data_dir: str | None, keep: bool, single: bool) -> None:
    """A 5-node local cluster: write, read everywhere, SIGKILL a node, write, restart it, watch it catch up.

    With --single: one node in-process: write, read, close, reopen from disk, read again."""
    from dsm.demo import run_cluster_demo, run_demo

    try:
        if single:
            run_async(run_demo(data_dir, keep, Console()))
        else:
            run_cluster_demo(data_dir, keep, Console())
    except DSMError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


_PROFILE = click.option(
    "--profile",
    type=click.Choice(PROFILE_NAMES),
    default=None,
    help="Protocol settings to start from (profile; default lan); explicit settings win over it.",
)


F = TypeVar("F", bound=Callable[..., Any])


def output_option(help_text: str) -> Callable[[F], F]:
    """The `-o/--output table|json|raw` option of every command that prints data (table by default)."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json", "raw"]),
        default="table",
        show_default=True,
        help=help_text,
    )


@main.command("config")
@click.option("--file", "toml_path", type=click.Path(dir_okay=False), default=None, help="A TOML config file.")
@_PROFILE
@click.option("--markdown", is_flag=True, help="Print the reference table of every setting (docs/configuration.md).")
@output_option("table: with documentation; json: {setting: value}; raw: DSM_<SETTING>=value lines (secrets redacted).")
def show_config(toml_path: str | None, profile: str | None, markdown: bool, output: str) -> None:
    """Shows the effective configuration (defaults < profile < TOML file < DSM_* environment; --profile picks
    the profile) with documentation; a value the profile set is marked with the profile's name."""
    import dataclasses

    from dsm.config import FIELD_DOCS, PROFILES, StorageConfig, markdown_reference

    if markdown:
        click.echo(markdown_reference(), nl=False)
        return
    try:
        config = StorageConfig.load(toml_path, profile=profile)
    except DSMError as exc:
        raise click.ClickException(str(exc)) from exc
    if output != "table":
        values: dict[str, Any] = {}
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            values[f.name] = value if f.repr or not value else "<redacted>"
        if output == "json":
            click.echo(json.dumps(values, default=str))
        else:
            for name, value in values.items():
                text = value if isinstance(value, str) else json.dumps(value, default=str)
                click.echo(f"DSM_{name.upper()}={text}")
        return
    table = Table("setting", "value", "meaning", show_lines=True)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        # A secret (a field kept out of the config's repr) shows only whether it is set.
        shown = repr(value) if f.repr or not value else "<redacted>"
        if f.name in PROFILES[config.profile] and value == PROFILES[config.profile][f.name]:
            shown += f" ({config.profile})"
        table.add_row(f.name, shown, FIELD_DOCS[f.name])
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


@main.group()
def node() -> None:
    """Run a node."""


@node.command("run")
@click.option("--config", "toml_path", type=click.Path(dir_okay=False), default=None, help="A TOML config file.")
@_PROFILE
@click.option("--node-id", default=None, help="This node's id (unique, stable).")
@click.option("--region", default=None, help="This node's region.")
@click.option("--listen", default=None, help="host:port for other nodes (listen_addr).")
@click.option("--advertise", default=None, help="host:port other nodes should use (advertise_addr).")
@click.option("--http", "http_addr", default=None, help="host:port of the HTTP API (http_addr).")
@click.option(
    "--resp", "resp_addr", default=None, help="host:port of a Redis-protocol front door (resp_addr; default: none)."
)
@click.option("--data-dir", default=None, help="Directory of the node's SQLite store.")
@click.option("--bootstrap", multiple=True, help="host:port of a member to join through (repeatable).")
@click.option("--tls-cert", default=None, help="PEM certificate chain of this node: TLS on (tls_cert_file).")
@click.option("--tls-key", default=None, help="PEM private key of --tls-cert (tls_key_file).")
@click.option("--tls-ca", default=None, help="Cluster CA bundle: mutual TLS between nodes (tls_ca_file).")
@click.option(
    "--http-tls",
    type=click.Choice(HTTP_TLS_MODES),
    default=None,
    help="HTTPS for the HTTP API (http_tls; default auto: with --tls-cert).",
)
@click.option("--tag", "tags", multiple=True, help="key=value metadata spread to every member (repeatable).")
@click.option(
    "--discard-stale-data",
    is_flag=True,
    help="If this node was away longer than tombstone_grace_ms, empty its store and rejoin (stale_replica).",
)
@click.option(
    "--new-cluster",
    is_flag=True,
    help="Start a new cluster, forgetting the members the store saved (new_cluster; disaster recovery).",
)
@click.option("--adopt-store", is_flag=True, help="Take over a store another node id wrote (adopt_store).")
@click.option(
    "--leave-on-terminate",
    is_flag=True,
    help="Leave the cluster for good on SIGTERM (leave_on_terminate); default: stop as a member that returns.",
)
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
def node_run(
    toml_path: str | None,
    profile: str | None,
    node_id: str | None,
    region: str | None,
    listen: str | None,
    advertise: str | None,
    http_addr: str | None,
    resp_addr: str | None,
    data_dir: str | None,
    bootstrap: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    http_tls: str | None,
    tags: tuple[str, ...],
    discard_stale_data: bool,
    new_cluster: bool,
    adopt_store: bool,
    leave_on_terminate: bool,
    log_level: str,
) -> None:
    """Runs one node until SIGTERM or Ctrl-C (settings: flags > DSM_* environment > TOML file > defaults)."""
    from dsm.config import StorageConfig
    from dsm.server import configure_logging, serve

    try:
        config = StorageConfig.load(
            toml_path,
            profile=profile,
            node_id=node_id,
            region=region,
            listen_addr=listen,
            advertise_addr=advertise,
            http_addr=http_addr,
            resp_addr=resp_addr,
            data_dir=data_dir,
            bootstrap=",".join(bootstrap) if bootstrap else None,
            tls_cert_file=tls_cert,
            tls_key_file=tls_key,
            tls_ca_file=tls_ca,
            http_tls=http_tls,
            stale_replica="discard" if discard_stale_data else None,
            tags=_tags(tags),
            new_cluster=True if new_cluster else None,
            adopt_store=True if adopt_store else None,
            leave_on_terminate=True if leave_on_terminate else None,
        )
        if not config.node_id:
            raise click.ClickException("a node id is needed: --node-id, DSM_NODE_ID or node_id in the TOML file")
        configure_logging(log_level)
        run_async(serve(config))
    except DSMError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise click.ClickException(f"cannot start the node: {exc}") from exc


def _tags(pairs: tuple[str, ...]) -> dict[str, str] | None:
    """`--tag key=value` flags as a mapping (None when there are none: the config's tags stand)."""
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--tag")
        out[key] = value
    return out


_NODE_URL = click.option(
    "--node",
    "url",
    envvar="DSM_NODE_URL",
    default="127.0.0.1:7480",
    show_default=True,
    help="HTTP address of the node to ask: http(s)://host:port, or host:port, which means https with a CA "
    "file, else http (env DSM_NODE_URL).",
)
_TOKEN = click.option("--token", envvar="DSM_HTTP_TOKEN", default="", help="Bearer token (env DSM_HTTP_TOKEN).")
_CA_FILE = click.option(
    "--ca-file",
    envvar="DSM_CA_FILE",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="PEM CA bundle that verifies an https node's certificate (default: the system's CAs; env DSM_CA_FILE).",
)
_CONSISTENCY = click.option(
    "--consistency",
    type=click.Choice([*LEVEL_NAMES, "linearizable"]),
    default=None,
    help="Consistency level (default: the node's for its region); 'linearizable' orders the operation with the "
    "conditional writes of the key.",
)


class Duration(click.ParamType[int]):
    """A duration for the command line, as ms: a whole number with a unit suffix (`500ms`, `30s`, `5m`,
    `2h`, `7d`); a bare number is ms."""

    name = "duration"
    UNITS_MS: ClassVar[dict[str, int]] = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number) :] or "ms"
        if not (number.isascii() and number.isdigit()) or unit not in self.UNITS_MS or len(number) > 15:
            self.fail(f"{value!r} is not a duration such as 500ms, 30s, 5m, 2h or 7d", param, ctx)
        return int(number) * self.UNITS_MS[unit]


_ENDPOINTS = click.option(
    "--endpoints",
    envvar="DSM_ENDPOINTS",
    default=None,
    help="Comma-separated HTTP addresses of nodes, tried in order: a node that cannot be reached is passed over "
    "for the next (failover). Overrides --node (env DSM_ENDPOINTS).",
)
_OUTPUT = output_option("table: for people; json: one JSON document; raw: bare values for scripts (see the README).")


def _full_url(address: str, ca_file: str | None) -> str:
    """An address as a URL: host:port means https with a CA file, else http."""
    address = address.strip()
    return address if "://" in address else ("https://" if ca_file else "http://") + address


def _urls(url: str, endpoints: str | None, ca_file: str | None) -> list[str]:
    """The nodes to ask, in order: --endpoints (or DSM_ENDPOINTS) when given, else --node."""
    listed = [e for e in (endpoints or "").split(",") if e.strip()]
    return [_full_url(address, ca_file) for address in (listed or [url])]


def _client(url: str, token: str, ca_file: str | None, endpoints: str | None = None) -> Any:
    """The client of a command: over the --endpoints (in order, with failover and retries) or --node."""
    _httpx_without_its_command_line()
    from dsm.client import Client

    return Client(_urls(url, endpoints, ca_file), token=token, ca_file=ca_file or "")


def _json_out(doc: object) -> None:
    click.echo(json.dumps(doc, indent=None, sort_keys=False))


def _client_errors(fn: Any) -> Any:
    import functools

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DSMError as exc:
            current = getattr(exc, "context", None)  # a failed condition says the key's current context
            if getattr(exc, "code", "") == "precondition_failed" and isinstance(current, str):
                click.echo(f"context={current}", err=True)
            raise click.ClickException(str(exc)) from exc

    return run


def _value_of(value: str) -> bytes:
    """A value argument's bytes: `-` reads standard input, `@PATH` the file at PATH, `@@...` is the literal
    text after the first `@`, anything else is the text itself (UTF-8)."""
    if value == "-":
        return sys.stdin.buffer.read()
    if value.startswith("@@"):
        return value[1:].encode()
    if value.startswith("@"):
        try:
            with open(value[1:], "rb") as f:
                return f.read()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]!r}: {exc.strerror}", param_hint="VALUE") from None
    return value.encode()


def _ack_out(output: str, verb: str, ack: Any) -> None:
    """A write's acknowledgement: table `<verb> KEY timestamp=... context=...`, json the object, raw the context."""
    if output == "json":
        _json_out({"key": ack.key, "timestamp": ack.timestamp, "context": ack.context})
    elif output == "raw":
        click.echo(ack.context, nl=False)
    else:
        click.echo(f"{verb} {ack.key} timestamp={ack.timestamp} context={ack.context}")


@main.command()
@click.argument("key")
@click.argument("value")
@click.option("--context", default=None, help="Context of an earlier read: supersede what it returned.")
@click.option(
    "--ttl",
    type=Duration(),
    default=None,
    help="Expire the value after this long (500ms, 30s, 5m, 2h, 7d): then KEY reads as absent everywhere.",
)
@click.option("--if-absent", is_flag=True, help="Write only if KEY holds no value (exit status 1 if it does).")
@click.option("--if-match", default=None, help="Write only if KEY is still what the read with this context returned.")
@_CONSISTENCY
@_OUTPUT
@_NODE_URL
@_ENDPOINTS
@_TOKEN
@_CA_FILE
@_client_errors
def put(
    key: str,
    value: str,
    context: str | None,
    ttl: int | None,
    if_absent: bool,
    if_match: str | None,
    consistency: str | None,
    output: str,
    url: str,
    endpoints: str | None,
    token: str,
    ca_file: str | None,
) -> None:
    """Writes VALUE under KEY: text; '-' reads the bytes from standard input; '@FILE' the bytes of FILE
    ('@@text' is the literal '@text').

    Prints `ok KEY timestamp=... context=...`; -o json the same as an object, -o raw the context alone."""
    if if_absent and if_match is not None:
        raise click.UsageError("--if-absent and --if-match cannot be combined")
    data = _value_of(value)
    with _client(url, token, ca_file, endpoints) as c:
        ack = c.put(
            key, data, context=context, consistency=consistency, ttl_ms=ttl, if_absent=if_absent, if_match=if_match
        )
    _ack_out(output, "ok", ack)


#: Exit status of `dsm get -o raw` on a key with several siblings (not one value to print).
EXIT_SIBLINGS = 3


@main.command()
@click.argument("key")
@_CONSISTENCY
@_OUTPUT
@_NODE_URL
@_ENDPOINTS
@_TOKEN
@_CA_FILE
@_client_errors
def get(
    key: str, consistency: str | None, output: str, url: str, endpoints: str | None, token: str, ca_file: str | None
) -> None:
    """Reads KEY: its value, or every sibling, with the context to write back (on stderr as context=...).

    -o raw prints exactly the stored bytes, nothing added; a key with several siblings is then an error
    (exit status 3, nothing on stdout: read it with -o json). -o json prints the key, the context and every
    sibling (value in base64, timestamp, writer, expires_ms), the newest first. An absent key: exit status 1."""
    with _client(url, token, ca_file, endpoints) as c:
        got = c.get(key, consistency=consistency)
    if got is None:
        raise click.ClickException(f"{key}: not found")
    if output == "json":
        import base64

        siblings = [
            {
                "value": base64.b64encode(s.value).decode("ascii"),
                "timestamp": s.timestamp,
                "writer": s.writer,
                "expires_ms": s.expires_ms,
            }
            for s in got.siblings
        ]
        newest = siblings[0]
        _json_out({"key": got.key, "context": got.context, **newest, "siblings": siblings})
        return
    out = sys.stdout.buffer
    if output == "raw":
        if len(got.siblings) != 1:
            click.echo(
                f"{key}: {len(got.siblings)} concurrent values (siblings): -o raw prints one; read them with -o json",
                err=True,
            )
            raise SystemExit(EXIT_SIBLINGS)
        out.write(got.value)
        out.flush()
        return
    if len(got.siblings) == 1:
        out.write(got.value + b"\n")
    else:
        for sibling in got.siblings:
            out.write(f"[{sibling.writer} @ {sibling.timestamp}] ".encode() + sibling.value + b"\n")
    out.flush()
    click.echo(f"context={got.context}", err=True)


@main.command()
@click.argument("prefix", default="")
@click.option("--since", default=None, help="Resume after this cursor (printed by an earlier watch on exit).")
@click.option("--values", is_flag=True, help="Events carry the key's value (base64).")
@click.option("--endpoint", "endpoints", multiple=True, help="Another node to fail over to (repeatable).")
@_NODE_URL
@click.option(
    "--endpoints",
    "endpoint_list",
    envvar="DSM_ENDPOINTS",
    default=None,
    help="Comma-separated HTTP addresses of nodes, the first watched, the others failed over to (overrides "
    "--node; env DSM_ENDPOINTS).",
)
@_TOKEN
@_CA_FILE
@_client_errors
def watch(
    prefix: str,
    since: str | None,
    values: bool,
    endpoints: tuple[str, ...],
    url: str,
    endpoint_list: str | None,
    token: str,
    ca_file: str | None,
) -> None:
    """Follows every change of the keys under PREFIX: one JSON line per event (and per resync bound) on
    stdout, resuming by itself when the stream breaks (on the other --endpoints / --endpoint nodes too). On
    exit (Ctrl-C, SIGTERM) prints the last cursor to stderr as cursor=...: pass it to --since to continue."""
    import asyncio
    import signal

    _httpx_without_its_command_line()
    from dsm.client import AsyncClient

    def full(address: str) -> str:
        return address if "://" in address else ("https://" if ca_file else "http://") + address

    state: dict[str, str | None] = {"cursor": since}

    async def follow() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        urls = _urls(url, endpoint_list, ca_file) + [full(e) for e in endpoints]
        async with AsyncClient(urls[0], token=token, ca_file=ca_file or "") as client:
            stream = client.watch(prefix, since=since, values=values, endpoints=urls[1:])
            try:
                async for item in stream:
                    state["cursor"] = stream.cursor
                    click.echo(json.dumps(item))
            finally:
                state["cursor"] = stream.cursor
                await stream.aclose()

    try:
        asyncio.run(follow())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    finally:
        if state["cursor"] is not None:
            click.echo(f"cursor={state['cursor']}", err=True)


@main.command()
@click.argument("key", required=False)
@click.option("--prefix", default=None, help="Delete every key starting with this (not empty), page by page.")
@click.option("--context", default=None, help="Context of an earlier read.")
@click.option("--if-match", default=None, help="Delete only if KEY is still what the read with this context returned.")
@_CONSISTENCY
@_OUTPUT
@_NODE_URL
@_ENDPOINTS
@_TOKEN
@_CA_FILE
@_client_errors
def delete(
    key: str | None,
    prefix: str | None,
    context: str | None,
    if_match: str | None,
    consistency: str | None,
    output: str,
    url: str,
    endpoints: str | None,
    token: str,
    ca_file: str | None,
) -> None:
    """Deletes KEY (writes a tombstone), or with --prefix P every key under P that holds a value.

    --prefix asks the node to delete a bounded page at a time (DELETE /v1/kv?prefix=P) until none remains and
    prints how many were deleted (-o json: {"prefix", "deleted"}; -o raw: the number)."""
    if (key is None) == (prefix is None):
        raise click.UsageError("give either KEY or --prefix P")
    if prefix is not None:
        if not prefix:
            raise click.UsageError("--prefix cannot be empty (that would delete every key)")
        if context is not None or if_match is not None:
            raise click.UsageError("--prefix deletes take no --context or --if-match")
        from dsm.cli_ops import delete_prefix

        deleted = delete_prefix(_urls(url, endpoints, ca_file), token, ca_file, prefix, consistency)
        if output == "json":
            _json_out({"prefix": prefix, "deleted": deleted})
        elif output == "raw":
            click.echo(str(deleted), nl=False)
        else:
            click.echo(f"deleted {deleted} keys under {prefix!r}")
        return
    with _client(url, token, ca_file, endpoints) as c:
        ack = c.delete(key, context=context, consistency=consistency, if_match=if_match)
    _ack_out(output, "deleted", ack)


@main.command("list")
@click.option("--prefix", default="", help="Only keys starting with this.")
@click.option("--after", default="", help="Only keys sorting after this one (the next page of a listing).")
@click.option("--all", "every", is_flag=True, help="Every key: the listing page after page, to the end.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="Keys per page.")
@_OUTPUT
@_NODE_URL
@_ENDPOINTS
@_TOKEN
@_CA_FILE
@_client_errors
def list_keys(
    prefix: str,
    after: str,
    every: bool,
    limit: int,
    output: str,
    url: str,
    endpoints: str | None,
    token: str,
    ca_file: str | None,
) -> None:
    """Lists keys holding a value, in order, one per line (table and raw); -o json prints {"keys", "next"}.

    One page of --limit keys, after --after; when more follow, `(more after K)` goes to stderr (pass K to
    --after). --all goes on page after page to the end ("next" is then null)."""
    keys: list[str] = []
    with _client(url, token, ca_file, endpoints) as c:
        while True:
            page = c.list(prefix, limit=limit, after=after)
            keys.extend(page.keys)
            if output != "json":
                for key in page.keys:
                    click.echo(key)
            if not (every and page.next):
                break
            after = page.next
    if output == "json":
        _json_out({"keys": keys, "next": page.next})
    elif page.next:
        click.echo(f"(more after {page.next})", err=True)


@main.command("remove-member")
@click.argument("node_id")
@_OUTPUT
@_NODE_URL
@_ENDPOINTS
@_TOKEN
@_CA_FILE
@_client_errors
def remove_member(node_id: str, output: str, url: str, endpoints: str | None, token: str, ca_file: str | None) -> None:
    """Remove a member for good (like serf force-leave): recorded and spread as its leave, so it stops
    counting for consistency levels. A member that is in fact running comes back."""
    with _client(url, token, ca_file, endpoints) as c:
        answer = c.remove_member(node_id)
    if output == "json":
        _json_out(answer)
    elif output == "raw":
        click.echo(node_id, nl=False)
    else:
        click.echo(f"{node_id}: removed (left)")


@main.command()
@_OUTPUT
@_NODE_URL
@_ENDPOINTS
@_TOKEN
@_CA_FILE
@_client_errors
def members(output: str, url: str, endpoints: str | None, token: str, ca_file: str | None) -> None:
    """Every member as the node sees it: a table; -o json the list; -o raw one JSON object per line."""
    with _client(url, token, ca_file, endpoints) as c:
        found = c.members()
    if output == "json":
        _json_out(found)
    elif output == "raw":
        for member in found:
            click.echo(json.dumps(member))
    else:
        table = Table("node", "address", "region", "state", "incarnation", "heard (ms ago)", "tags")
        for m in found:
            tags = ", ".join(f"{k}={v}" for k, v in sorted(m.get("metadata", {}).items()))
            heard = m.get("heard_ms_ago")
            table.add_row(
                m["id"],
                m["addr"],
                m["region"],
                m["state"],
                str(m["incarnation"]),
                "" if heard is None else str(heard),
                tags,
            )
        Console().print(table)


@main.command()
@_OUTPUT
@_NODE_URL
@_ENDPOINTS
@_TOKEN
@_CA_FILE
@_client_errors
def status(output: str, url: str, endpoints: str | None, token: str, ca_file: str | None) -> None:
    """The cluster as one node sees it, a table like `nodetool status` / `serf members`: per member its
    state, tags, key count, store size, gossip period and replication delay (median), each asked of the
    member itself at the HTTP address it advertises (blank for a member that does not answer).
    -o json: {"node_id", "members": [...]}; -o raw: one JSON object per member and line."""
    from dsm.cli_ops import member_rows

    with _client(url, token, ca_file, endpoints) as c:
        health = c.health()
        found = c.members()
    rows = member_rows(found, token, ca_file)
    if output == "json":
        _json_out({"node_id": health.get("node_id"), "members": rows})
        return
    if output == "raw":
        for row in rows:
            click.echo(json.dumps(row))
        return
    table = Table(
        "node", "address", "region", "state", "inc", "tags", "keys", "store", "gossip", "repl. delay p50",
        title=f"seen by {health.get('node_id')}",
    )  # fmt: skip
    for m in rows:
        style = {"alive": "green", "suspect": "yellow", "dead": "red"}.get(m["state"], "dim")
        tags = ", ".join(f"{k}={v}" for k, v in sorted(m["tags"].items()))
        table.add_row(
            m["id"], m["addr"], m["region"], f"[{style}]{m['state']}[/]", str(m["incarnation"]), tags,
            _blank(m["keys"]), _size(m["store_bytes"]), _seconds(m["gossip_interval_s"]),
            _seconds(m["replication_delay_p50_s"]),
        )  # fmt: skip
    Console().print(table)


def _blank(value: object) -> str:
    return "" if value is None else str(value)


def _size(size: int | None) -> str:
    if size is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size = size / 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


@main.group()
def cluster() -> None:
    """A local cluster of real node processes on loopback (data, logs and cluster.json in one directory)."""


_CLUSTER_DIR = click.option(
    "--dir",
    "directory",
    default="dsm-cluster",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The cluster's directory (data, logs, cluster.json).",
)


def _cluster_table(c: Any) -> RichTable:
    from dsm.localcluster import LocalCluster

    resp = any(n.resp for n in c.nodes)
    columns = ("node", "pid", "peer address", "HTTP", *(("Redis protocol",) if resp else ()), "running")
    table = Table(*columns, title=f"{c.directory}/<node>/ (data and log)")
    for n in c.nodes:
        up = LocalCluster.alive(n)
        table.add_row(
            n.node_id, str(n.pid), n.listen, n.url, *((n.resp,) if resp else ()), "[green]yes" if up else "[red]no"
        )
    return table


@cluster.command("up")
@click.option("--nodes", "-n", "count", type=click.IntRange(1, 1000), default=3, show_default=True)
@_CLUSTER_DIR
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address of every node.")
@click.option("--peer-port", type=click.IntRange(0, 65535), default=7400, show_default=True, help="n1's peer port.")
@click.option("--http-port", type=click.IntRange(0, 65535), default=7480, show_default=True, help="n1's HTTP port.")
@click.option(
    "--resp-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="n1's Redis-protocol port: every node gets a front door (node i on port + i - 1; 0: the system picks).",
)
@click.option("--secret", default=None, help="Cluster secret (default: a random one, kept in cluster.json).")
@click.option(
    "--tls",
    is_flag=True,
    help="Mutual TLS between the nodes and HTTPS for the API, from a cluster CA made in <dir>/tls.",
)
@click.option(
    "--recreate",
    is_flag=True,
    help="Delete the cluster recorded in --dir (its nodes' data and logs, its CA) and start a new one.",
)
@click.pass_context
def cluster_up(
    ctx: click.Context,
    count: int,
    directory: str,
    host: str,
    peer_port: int,
    http_port: int,
    resp_port: int | None,
    secret: str | None,
    tls: bool,
    recreate: bool,
) -> None:
    """Starts N nodes n1..nN (node i on port + i - 1; port 0: the system picks) and waits until all serve.

    On a directory that already holds a cluster, starts its stopped nodes again as recorded (same nodes,
    addresses, secret and TLS); a flag given here that disagrees with the recorded cluster is refused, unless
    --recreate, which deletes that cluster (data included) and starts a new one."""
    import secrets
    from pathlib import Path

    from dsm.localcluster import STATE_FILE, LocalCluster

    ranges = {"--peer-port": peer_port, "--http-port": http_port, "--resp-port": resp_port or 0}
    for (a, start_a), (b, start_b) in itertools.combinations([(k, v) for k, v in ranges.items() if v], 2):
        if start_a < start_b + count and start_b < start_a + count:
            raise click.ClickException(
                f"{a} {start_a} and {b} {start_b}: the ports of {count} nodes: one overlaps the other"
            )
    try:
        if (Path(directory) / STATE_FILE).exists():
            if recreate:
                LocalCluster.load(directory).remove()
            else:
                _cluster_up_again(ctx, directory)
                return
        c = LocalCluster(directory, env={"DSM_CLUSTER_SECRET": secret or secrets.token_hex(16)}, tls=tls)
        c.up(count, host=host, peer_port=peer_port, http_port=http_port, resp_port=resp_port)
    except DSMError as exc:
        raise click.ClickException(str(exc)) from exc
    Console().print(_cluster_table(c))
    ca = f" --ca-file {c.ca_file}" if c.ca_file else ""
    click.echo(f"try: DSM_NODE_URL={c.nodes[0].url} dsm status{ca}      stop: dsm cluster down --dir {directory}")


def _cluster_up_again(ctx: click.Context, directory: str) -> None:
    """`cluster up` on a directory that holds a cluster: its stopped nodes started again as recorded, or a
    refusal naming the flags given that disagree with it."""
    from click.core import ParameterSource

    from dsm.localcluster import LocalCluster

    c = LocalCluster.load(directory)
    given = {
        name: ctx.params[name]
        for name in ("count", "host", "peer_port", "http_port", "secret", "tls")
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
    }
    differ = c.differences(**given)
    if differ:
        raise click.ClickException(
            f"{c.directory} already holds a cluster ({c.summary()}) and {'; '.join(differ)} disagrees: "
            f"`dsm cluster up --dir {directory}` starts it again as it was, --recreate deletes it (data "
            "included) and starts a new one, or choose another --dir"
        )
    started = c.start_all()
    Console().print(_cluster_table(c))
    click.echo(f"started again as recorded in {c.directory / 'cluster.json'} ({c.summary()}): {', '.join(started)}")
    ca = f" --ca-file {c.ca_file}" if c.ca_file else ""
    click.echo(f"try: DSM_NODE_URL={c.nodes[0].url} dsm status{ca}      stop: dsm cluster down --dir {directory}")


@cluster.command("down")
@_CLUSTER_DIR
def cluster_down(directory: str) -> None:
    """Stops every node of the cluster gracefully (SIGTERM, then SIGKILL after 15 s). Data stays."""
    from dsm.localcluster import LocalCluster

    try:
        stopped = LocalCluster.load(directory).down()
    except DSMError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"stopped: {', '.join(stopped) if stopped else '(nothing was running)'}; data kept in {directory}")


@cluster.command("show")
@_CLUSTER_DIR
@_OUTPUT
def cluster_show(directory: str, output: str) -> None:
    """The cluster's nodes: pid, addresses, data directory, whether the process runs (-o json: a list of
    {node_id, pid, listen, http, url, data_dir, log, running}; -o raw: one such object per line)."""
    from dsm.localcluster import LocalCluster

    try:
        c = LocalCluster.load(directory)
    except DSMError as exc:
        raise click.ClickException(str(exc)) from exc
    if output == "table":
        Console().print(_cluster_table(c))
        return
    nodes = [
        {
            "node_id": n.node_id,
            "pid": n.pid,
            "listen": n.listen,
            "http": n.http,
            "url": n.url,
            "data_dir": n.data_dir,
            "log": n.log,
            "running": LocalCluster.alive(n),
        }
        for n in c.nodes
    ]
    if output == "json":
        _json_out(nodes)
    else:
        for node in nodes:
            click.echo(json.dumps(node))


@cluster.command("kill")
@click.argument("node_id")
@_CLUSTER_DIR
@click.option("--signal", "sig", type=click.Choice(["KILL", "TERM"]), default="KILL", show_default=True)
def cluster_kill(node_id: str, directory: str, sig: str) -> None:
    """Kills one node (SIGKILL by default: no leave, no flush), to watch the cluster cope."""
    import signal as signals

    from dsm.localcluster import LocalCluster

    try:
        LocalCluster.load(directory).kill(node_id, getattr(signals, "SIG" + sig))
    except DSMError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{node_id}: SIG{sig} sent, process gone")


@cluster.command("start")
@click.argument("node_id")
@_CLUSTER_DIR
def cluster_start(node_id: str, directory: str) -> None:
    """(Re)starts one node with its id, addresses and data; it rejoins and catches up."""
    from dsm.localcluster import LocalCluster

    try:
        n = LocalCluster.load(directory).start(node_id)
    except DSMError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{node_id}: running, pid {n.pid}, HTTP {n.url}")


@main.command()
def version() -> None:
    """Prints the version."""
    click.echo(__version__)


main.add_command(snapshot)

if __name__ == "__main__":
    main()
