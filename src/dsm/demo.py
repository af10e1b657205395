"""The single-node demo run by `dsm demo` (the README's main job).

It writes, reads, deletes, closes the node, reopens it from the SQLite file on disk and reads again,
printing each step, then shows group commit at work with concurrent writers. Every value it prints is read
back from the store, nothing is made up.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time

from rich.console import Console
from rich.table import Table

from dsm import StorageConfig, StorageFactory


async def run_demo(data_dir: str | None, keep: bool, console: Console) -> None:
    """Runs the demo in `data_dir` (a new temporary directory when None)."""
    temporary = data_dir is None
    directory = tempfile.mkdtemp(prefix="dsm-demo-") if data_dir is None else data_dir
    config = StorageConfig(node_id="demo-1", data_dir=directory)
    factory = StorageFactory(config)
    try:
        console.rule("[bold]DSM single-node demo")
        console.print(f"data directory: {directory}")
        backing = factory.create_sql_storage()
        console.print(f"backing store:  {backing.url}  (durability={config.durability})")
        storage = await factory.create_epidemic_storage(config.node_id, backing_storage=backing)
        async with storage:
            for key, value in [("greeting", b"hello, world"), ("answer", b"42"), ("temporary", b"soon gone")]:
                ack = await storage.put(key, value)
                console.print(f"put    {key!r:12} = {value!r:16} acknowledged at HLC {ack.timestamp}")
            read = await storage.get("greeting")
            assert read is not None
            console.print(f"get    'greeting'   -> {read.value!r} (written by {read.siblings[0].writer})")
            update = await storage.put("answer", b"forty-two", context=(await storage.get("answer")).context)  # type: ignore[union-attr]
            console.print(f"put    'answer'     with the read's context -> supersedes 42 at HLC {update.timestamp}")
            await storage.delete("temporary")
            console.print(
                f"delete 'temporary'  -> get returns {await storage.get('temporary')!r} (a tombstone is kept)"
            )
            started = time.perf_counter()
            await asyncio.gather(*(storage.put(f"bulk/{i:04d}", b"x" * 100) for i in range(2000)))
            elapsed = time.perf_counter() - started
            console.print(f"2000 concurrent puts committed in {elapsed * 1000:.0f} ms (group commit)")
        console.print("closed the node.")

        console.rule("[bold]reopen from disk")
        storage = await factory.create_epidemic_storage(config.node_id, backing_storage=factory.create_sql_storage())
        async with storage:
            table = Table("key", "value after reopen")
            for key in ["greeting", "answer", "temporary", "bulk/1999"]:
                result = await storage.get(key)
                table.add_row(key, repr(result.value) if result else "[dim](absent)[/dim]")
            console.print(table)
            console.print(f"keys stored (tombstones included): {await storage.count()}")
        console.print("[green]done: the data survived close and reopen.")
    finally:
        if temporary and not keep:
            shutil.rmtree(directory, ignore_errors=True)
        elif keep or not temporary:
            console.print(f"data kept in {directory}")
