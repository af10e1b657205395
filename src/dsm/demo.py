"""The demos run by `dsm demo` (the README's main job).

`run_cluster_demo` (the default): a local cluster of 5 real node processes on loopback (`dsm.localcluster`),
each with its own SQLite store. It writes on one node and shows the write on all, kills a node with
SIGKILL, writes more, restarts it and shows it catch up, then stops everything it started.

`run_demo` (`dsm demo --single`): one node in-process: write, read, delete, close, reopen from the SQLite
file on disk, read again, and group commit with concurrent writers.

Every value and time printed is read back from the nodes or measured in the run, nothing is made up.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time

from rich.console import Console
from rich.table import Table

from dsm import StorageConfig, StorageFactory
from dsm.client import Client, UnreachableError
from dsm.localcluster import LocalCluster

CLUSTER_NODES = 5
BATCH = 200


def _wait(check: object, timeout: float = 30.0, period: float = 0.005) -> float | None:
    """Polls `check()` until true; the seconds it took, or None after `timeout`."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if check():  # type: ignore[operator]
            return time.perf_counter() - started
        time.sleep(period)
    return None


def _holds(client: Client, key: str, value: bytes) -> bool:
    try:
        got = client.get(key)
    except UnreachableError:
        return False
    return got is not None and got.value == value


def _count(client: Client, prefix: str) -> int:
    total, after = 0, ""
    while True:
        page = client.list(prefix, limit=1000, after=after)
        total += len(page.keys)
        if not page.next:
            return total
        after = page.next


def run_cluster_demo(data_dir: str | None, keep: bool, console: Console) -> None:
    """Runs the 5-node demo with its data in `data_dir` (a new temporary directory when None)."""
    temporary = data_dir is None
    directory = tempfile.mkdtemp(prefix="dsm-cluster-demo-") if data_dir is None else data_dir
    cluster = LocalCluster(directory)
    clients: dict[str, Client] = {}
    try:
        _start_cluster(cluster, directory, console)
        clients = {n.node_id: Client(n.url) for n in cluster.nodes}
        _wait(lambda: all(len(c.members()) == CLUSTER_NODES for c in clients.values()))
        _write_and_read_everywhere(clients, console)
        _kill_and_keep_writing(cluster, clients, console)
        _restart_and_catch_up(cluster, clients, console)
    finally:
        for client in clients.values():
            client.close()
        stopped = cluster.down()
        console.rule("[bold]4. stop")
        console.print(
            f"stopped {', '.join(stopped) or 'nothing'} (SIGTERM: each saved its state, flushed and closed; "
            "still members, they can be started again)"
        )
        if temporary and not keep:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            console.print(f"data and logs kept in {directory}")


def _start_cluster(cluster: LocalCluster, directory: str, console: Console) -> None:
    """Starts the node processes and shows where each one listens."""
    console.rule(f"[bold]DSM: a {CLUSTER_NODES}-node local cluster")
    started = time.perf_counter()
    cluster.up(CLUSTER_NODES, peer_port=0, http_port=0)
    console.print(f"started {CLUSTER_NODES} processes in {time.perf_counter() - started:.1f} s; data in {directory}")
    table = Table("node", "pid", "peer address", "HTTP API")
    for n in cluster.nodes:
        table.add_row(n.node_id, str(n.pid), n.listen, n.url)
    console.print(f"each node's SQLite store and log: {directory}/<node>/")
    console.print(table)


def _write_and_read_everywhere(clients: dict[str, Client], console: Console) -> None:
    """Step 1: one write on n1, then how soon every node serves it."""
    console.rule("[bold]1. write on n1, read on every node")
    ack = clients["n1"].put("greeting", b"hello, cluster")
    acked = time.perf_counter()
    console.print(f"n1: put 'greeting' = b'hello, cluster' acknowledged (HLC {ack.timestamp})")
    table = Table("node", "get 'greeting'", "first seen after the ack")
    for node_id, client in clients.items():
        seen = _wait(lambda c=client: _holds(c, "greeting", b"hello, cluster"), timeout=10)
        after = time.perf_counter() - acked
        value = client.get("greeting")
        table.add_row(
            node_id,
            repr(value.value) if value else "(absent)",
            f"<= {after * 1000:.0f} ms" if seen is not None else "not seen",
        )
    console.print(table)


def _kill_and_keep_writing(cluster: LocalCluster, clients: dict[str, Client], console: Console) -> None:
    """Step 2: SIGKILL n3, then write a batch on the other four and show they all hold it."""
    console.rule("[bold]2. kill n3 with SIGKILL, keep writing")
    cluster.kill("n3")
    console.print("n3: SIGKILL (no goodbye, no flush); its process is gone")
    try:
        clients["n3"].get("greeting")
    except UnreachableError as exc:
        console.print(f"n3's API: [red]{type(exc).__name__}[/red]")
    live = ("n1", "n2", "n4", "n5")
    writers = [clients[i] for i in live]
    started = time.perf_counter()
    for i in range(BATCH):
        writers[i % len(writers)].put(f"orders/{i:04d}", f"order {i}".encode())
    console.print(
        f"wrote {BATCH} keys orders/0000..{BATCH - 1:04d} on n1, n2, n4, n5 in "
        f"{time.perf_counter() - started:.2f} s (each acknowledged once durable on its node)"
    )
    _wait(lambda: all(_count(clients[i], "orders/") == BATCH for i in live), timeout=10)
    console.print("every live node holds them: " + ", ".join(f"{i}={_count(clients[i], 'orders/')}" for i in live))


def _restart_and_catch_up(cluster: LocalCluster, clients: dict[str, Client], console: Console) -> None:
    """Step 3: restart n3 from its SQLite file and time how soon it holds the batch it missed."""
    console.rule("[bold]3. restart n3 and watch it catch up")
    before = time.perf_counter()
    n3 = cluster.start("n3")
    console.print(
        f"n3: restarted (pid {n3.pid}) with its id and its SQLite file, serving in {time.perf_counter() - before:.2f} s"
    )
    caught = _wait(lambda: _count(clients["n3"], "orders/") == BATCH, timeout=30)
    total = time.perf_counter() - before
    if caught is None:
        console.print(f"[red]n3 holds {_count(clients['n3'], 'orders/')} of {BATCH} keys after 30 s")
    else:
        console.print(f"n3 holds all {BATCH} keys it missed, {total:.2f} s after the restart (anti-entropy at join)")
    got = clients["n3"].get(f"orders/{BATCH - 1:04d}")
    console.print(f"n3: get 'orders/{BATCH - 1:04d}' -> {got.value if got else None!r}")
    table = Table("member", "state", "incarnation", title="membership as n3 sees it")
    for m in clients["n3"].members():
        table.add_row(m["id"], m["state"], str(m["incarnation"]))
    console.print(table)


async def run_demo(data_dir: str | None, keep: bool, console: Console) -> None:
    """Runs the demo in `data_dir` (a new temporary directory when None)."""
    temporary = data_dir is None
    directory = tempfile.mkdtemp(prefix="dsm-demo-") if data_dir is None else data_dir
    config = StorageConfig(listen_addr="", node_id="demo-1", data_dir=directory)
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
