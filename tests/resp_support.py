"""Helpers shared by the Redis-protocol front door's tests: a standalone node (`make_node`), a front door over
it with chosen bounds (`started`), and a raw connection that sends bytes and collects what the node answers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dsm import StorageConfig, StorageFactory
from dsm.api.resp import RespLimits, RespServer
from dsm.api.resp_commands import Commands
from dsm.node import EpidemicStorage

#: Liveness bound of a raw exchange, seconds (never a timing threshold: what should happen happens sooner).
WAIT_S = 20.0


async def make_node(path: Path, mode: str = "siblings", **extra: Any) -> EpidemicStorage:
    """A standalone node on SQLite in `path`, resolving conflicts by `mode` ('siblings' or 'lww')."""
    config = StorageConfig(node_id="a1", listen_addr="", data_dir=str(path), conflict_resolution=mode, **extra)
    return await StorageFactory(config).create_epidemic_storage()


async def started(node: EpidemicStorage, limits: RespLimits | None = None, token: str = "") -> tuple[RespServer, int]:
    """A front door over `node` with `limits` (pipelined writes run one by one); returns it and its port."""
    commands = Commands(node, token)
    server = RespServer(commands.dispatch, limits or RespLimits(), token=token)
    commands.server = server
    return server, await server.start("127.0.0.1", 0)


async def raw(port: int, data: bytes, *, until_closed: bool = True, timeout: float = WAIT_S) -> bytes:
    """Sends `data` on a new connection; what the node answers until it closes (or the first chunk)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    got = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                got += chunk
                if not until_closed:
                    break
    finally:
        writer.close()
    return got
