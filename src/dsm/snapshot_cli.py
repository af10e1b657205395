"""`dsm snapshot save` and `dsm snapshot restore` (`dsm.node.snapshot` describes the file and the rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

# Everything else is imported by the commands themselves: `dsm` loads this module for every command, and
# `dsm get` must stay light (issue 20).

CHUNK = 1 << 20


@click.group()
def snapshot() -> None:
    """Backups: save a node's store while it serves, restore one into a new data directory."""


@snapshot.command("save")
@click.option(
    "--node",
    "url",
    envvar="DSM_NODE_URL",
    default="127.0.0.1:7480",
    show_default=True,
    help="HTTP address of the node (http(s)://host:port, or host:port; env DSM_NODE_URL).",
)
@click.option("--token", envvar="DSM_HTTP_TOKEN", default="", help="Bearer token (env DSM_HTTP_TOKEN).")
@click.option(
    "--ca-file",
    envvar="DSM_CA_FILE",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="PEM CA bundle that verifies an https node (env DSM_CA_FILE).",
)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def save(url: str, token: str, ca_file: str | None, file: Path) -> None:  # fmt: skip
    """Saves an online, consistent snapshot of the node's store to FILE (written as FILE.partial, checked,
    then renamed: an interrupted save leaves no FILE)."""
    import os
    import ssl
    import urllib.error
    import urllib.request

    from dsm.node.snapshot import SnapshotError, read_header

    full = url if "://" in url else ("https://" if ca_file else "http://") + url
    request = urllib.request.Request(full.rstrip("/") + "/v1/snapshot")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    if context is not None:
        context.check_hostname = False  # the cluster CA names nodes, not hosts (dsm.net.tls)
    partial = file.with_name(file.name + ".partial")
    try:
        with urllib.request.urlopen(request, timeout=600, context=context) as answer, partial.open("wb") as out:
            while chunk := answer.read(CHUNK):
                out.write(chunk)
        header = read_header(partial)
    except urllib.error.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise click.ClickException(f"{full} refused the snapshot: HTTP {exc.code} {exc.read()[:300]!r}") from None
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise click.ClickException(f"saving the snapshot from {full} failed: {exc}") from None
    except SnapshotError as exc:
        partial.unlink(missing_ok=True)
        raise click.ClickException(f"the snapshot from {full} is not valid: {exc}") from None
    os.replace(partial, file)
    click.echo(f"saved {header['keys']} keys of {header['node_id']} at {header['created_ms']} to {file}")


@snapshot.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The new node's data directory (holding no store yet).",
)
@click.option(
    "--storage-url",
    envvar="DSM_STORAGE_URL",
    default=None,
    help="Restore into another store (postgresql://... with no DSM tables yet; env DSM_STORAGE_URL).",
)
@click.option(
    "--discard-stale-deletes",
    is_flag=True,
    help="Restore a snapshot older than tombstone_grace_ms anyway (deletes it misses may be lost).",
)
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="The node's TOML config (its tombstone_grace_ms decides what is too old).",
)
def restore(file: Path, data_dir: Path, storage_url: str | None, discard_stale_deletes: bool,
            config_path: str | None) -> None:  # fmt: skip
    """Restores FILE into a new store; start the node on it with the snapshot's node id and it rejoins and
    catches up (it takes no part as an acceptor of conditional writes: see the README)."""
    import asyncio
    import time

    from dsm.config import StorageConfig
    from dsm.errors import DSMError
    from dsm.node.snapshot import SnapshotError
    from dsm.node.snapshot import restore as restore_file

    overrides: dict[str, Any] = {"data_dir": str(data_dir)}
    if storage_url:
        overrides["storage_url"] = storage_url
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        config = StorageConfig.load(config_path, **overrides)
        header = asyncio.run(restore_file(file, config, int(time.time() * 1000), discard_stale_deletes))
    except (SnapshotError, DSMError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"restored {header['keys']} keys of {header['node_id']} (taken at {header['created_ms']}) into {data_dir}; "
        f"start it with --node-id {header['node_id']} --data-dir {data_dir}"
    )
