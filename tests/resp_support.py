"""Helpers shared by the Redis-protocol front door's tests: a front door over a node with chosen bounds, and a
raw connection that sends bytes and collects what the node answers."""

from __future__ import annotations

import asyncio

from dsm.api.resp import RespLimits, RespServer
from dsm.api.resp_commands import Commands
from dsm.node import EpidemicStorage

#: Liveness bound of a raw exchange, seconds (never a timing threshold: what should happen happens sooner).
WAIT_S = 20.0


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
