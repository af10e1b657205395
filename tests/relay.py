"""An on-path attacker for tests: a TCP relay between real nodes that holds no secret and no certificate.

Each node advertises an address of the relay (`Relay.listen(name)`), so every connection between nodes
passes through it; by default a connection to the relay's address of node X goes on to X's real address
(`Relay.route`). The test then tells it what to do, as an attacker on the path could:
- `drop_from`: swallow connections coming from a source IP (accepted, read, never forwarded);
- `drop_to`: the same for connections meant for a node;
- `redirects[(source IP, name)] = other`: a connection from that source meant for `name` reaches `other`;
- `splice_to`: pair connections meant for a node: each one's handshake (its first two frames) goes to
  its own upstream connection, every later frame into the other one's (plain framing only);
- `reorder_to`: swap every pair of frames after the handshake;
- `cut()`: close every connection it relays (nodes reconnect, through the relay's new rules);
- `recorded`: every connection's bytes towards the node, to `replay()` later on a fresh connection.
The relay runs its own event loop in a thread, so that tests with blocking clients and processes drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

HANDSHAKE_FRAMES = (
    2  # what an initiator sends before its data frames (old protocol: Hello, Auth; new: Handshake, Confirm)
)


@dataclass
class Recorded:
    source: str  #: IP the connection came from
    name: str  #: node it was meant for
    data: bytearray = field(default_factory=bytearray)  #: bytes towards the node


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class _Half:
    """One connection of a spliced pair: its upstream writer, its partner, and the other's frames waiting
    until this connection's own handshake went through."""

    def __init__(self, upstream: asyncio.StreamWriter) -> None:
        self.upstream = upstream
        self.partner: _Half | None = None
        self.shaken = False  #: its handshake frames were forwarded
        self.inbox: list[bytes] = []  #: the partner's frames for it, until then
        self.held: list[bytes] = []  #: its own frames, until it has a partner
        self.foreign = False  #: it carried at least one of the partner's frames to the node

    def closed(self) -> bool:
        return self.upstream.transport.is_closing()

    def take(self, frame: bytes) -> int:
        """Sends one of the partner's frames on this connection (or keeps it until the handshake went);
        1 when this is the first foreign frame the connection carried to the node."""
        if not self.shaken:
            self.inbox.append(frame)
            return 0
        if self.closed():
            return 0
        self.upstream.write(frame)
        first, self.foreign = not self.foreign, True
        return int(first)


class Relay:
    def __init__(self, host: str = "127.0.0.9") -> None:
        self.host = host
        self.routes: dict[str, str] = {}
        self.addrs: dict[str, str] = {}
        self.drop_from: set[str] = set()
        self.drop_to: set[str] = set()
        self.redirects: dict[tuple[str, str], str] = {}
        self.splice_to: set[str] = set()
        self.reorder_to: set[str] = set()
        self.recorded: list[Recorded] = []
        self.spliced = 0  #: connections that carried at least one frame of another connection to the node
        self.reordered = 0
        self._lonely: dict[str, _Half] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self._servers: list[asyncio.Server] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="relay", daemon=True)
        self._thread.start()

    def _call(self, work: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    # ------------------------------------------------------------------ the test's side

    def listen(self, name: str) -> str:
        """The relay's address for node `name` (to be advertised by it)."""

        async def start() -> str:
            server = await asyncio.start_server(lambda r, w: self._handle(name, r, w), self.host, 0)
            self._servers.append(server)
            return f"{self.host}:{server.sockets[0].getsockname()[1]}"

        addr: str = self._call(start())
        self.addrs[name] = addr
        return addr

    def cut(self) -> None:
        """Closes every connection the relay carries now."""

        async def cut() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            self._lonely.clear()

        self._call(cut())

    def replay(self, data: bytes, addr: str, timeout: float = 10.0) -> bytes:
        """Sends recorded bytes to `addr` on a fresh connection; returns what came back until it closed."""

        async def replay() -> bytes:
            host, port = _split(addr)
            reader, writer = await asyncio.open_connection(host, port, local_addr=(self.host, 0))
            try:
                writer.write(data)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                answer = b""
                with contextlib.suppress(ConnectionError, TimeoutError):
                    async with asyncio.timeout(timeout):
                        answer = await reader.read()
                return answer
            finally:
                writer.close()

        answer: bytes = self._call(replay(), timeout + 10)
        return answer

    def close(self) -> None:
        async def close() -> None:
            for server in self._servers:
                server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        self._call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    # ------------------------------------------------------------------ the relay's side

    async def _handle(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = str(writer.get_extra_info("peername")[0])
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            target = self.routes.get(self.redirects.get((source, name), name))
            if target is None or source in self.drop_from or name in self.drop_to:
                while await reader.read(65536):  # swallowed
                    pass
                return
            host, port = _split(target)
            up_reader, upstream = await asyncio.open_connection(host, port, local_addr=(self.host, 0))
            self._writers.add(upstream)
            record = Recorded(source, name)
            self.recorded.append(record)
            if name in self.splice_to or name in self.reorder_to:
                towards = self._frames(name, reader, upstream, record)
            else:
                towards = self._pipe(reader, upstream, record.data)
            tasks = [asyncio.ensure_future(towards), asyncio.ensure_future(self._pipe(up_reader, writer, None))]
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray | None) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if record is not None:
                    record.extend(data)
                writer.write(data)
                await writer.drain()

    def _pair(self, name: str, half: _Half) -> None:
        """Splices `half` with the connection for `name` waiting for a partner, or leaves it waiting."""
        other = self._lonely.pop(name, None)
        if other is not None and other is not half and not other.closed():
            half.partner, other.partner = other, half
            for mine, theirs in ((half, other), (other, half)):
                for frame in theirs.held:
                    self.spliced += mine.take(frame)
                theirs.held.clear()
        else:
            self._lonely[name] = half

    async def _frames(
        self, name: str, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter, record: Recorded
    ) -> None:
        """Frame by frame towards the node: the handshake as is, then spliced or reordered."""
        half = _Half(upstream)
        splice = name in self.splice_to
        if splice:
            self._pair(name, half)
        count = 0
        swapped: bytes | None = None
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readexactly(4)
                frame = head + await reader.readexactly(int.from_bytes(head, "big"))
                record.data.extend(frame)
                count += 1
                if count <= HANDSHAKE_FRAMES:
                    upstream.write(frame)
                    if count == HANDSHAKE_FRAMES:
                        half.shaken = True
                        for foreign in half.inbox:
                            self.spliced += half.take(foreign)
                        half.inbox.clear()
                elif splice:
                    if half.partner is not None and half.partner.closed():
                        # The node hung up on the partner (it refused a foreign frame): this connection
                        # waits for the next one to splice with, instead of sending its frames nowhere.
                        half.partner = None
                        self._pair(name, half)
                    if half.partner is None:
                        half.held.append(frame)
                    else:
                        self.spliced += half.partner.take(frame)
                elif swapped is None:
                    swapped = frame
                else:
                    upstream.write(frame + swapped)  # the later frame first
                    self.reordered += 1
                    swapped = None
