"""`dsm.net.serving.Serving`'s acceptor path over a real node's commit queue (SQLite): acceptor messages are
queued without a task while the queue has room and wait for a place when it is full, every one answered
once durable, and none answered after the node closed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from dsm import StorageConfig, StorageFactory
from dsm.core.cas_acceptor import decode_state
from dsm.core.hlc import pack
from dsm.core.messages import CasPrepare, CasPromise
from dsm.net.serving import Serving
from dsm.storage.base import paxos_key


async def test_acceptor_messages_are_answered_once_durable_also_when_the_queue_is_full(tmp_path: Path) -> None:
    config = StorageConfig(listen_addr="", node_id="n1", data_dir=str(tmp_path), write_queue_max=2)
    factory = StorageFactory(config)
    node = await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage())
    replies: list[tuple[str, Any]] = []
    tasks: set[asyncio.Task[None]] = set()

    def background(work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    serving = Serving(node.commits, lambda to, reply: replies.append((to, reply)), lambda r: None, background)
    ballot = (pack(time.time_ns() // 1_000_000), "p", 1)
    try:
        peak = 0
        for i in range(20):  # more than the queue holds: most wait for a place in a task of their own
            serving.acceptor("p", CasPrepare(i, "p", f"k{i}", ballot, 0))
            peak = max(peak, node.commits.waiting)
        serving.acceptor("q", CasPrepare(99, "p", "k", ballot, 0))  # not from the member asking: ignored
        for _ in range(500):
            if len(replies) == 20 and not tasks:
                break
            await asyncio.sleep(0.01)
        assert peak <= 2
        assert sorted(reply.seq for _, reply in replies) == list(range(20))
        assert all(to == "p" and isinstance(r, CasPromise) and r.ok for to, r in replies)
        assert serving.active == 0 and node.commits.waiting == 0
        # Each promise was durable before it was answered.
        stored = await node.commits.store.read_paxos([paxos_key(f"k{i}") for i in range(20)])
        assert all(decode_state(stored[paxos_key(f"k{i}")]).promised == ballot for i in range(20))
    finally:
        await node.close()
    serving.acceptor("p", CasPrepare(100, "p", "late", ballot, 0))  # closed: no answer, no exception
    await asyncio.sleep(0.05)
    assert len(replies) == 20 and serving.active == 0
