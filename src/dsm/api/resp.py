"""The Redis-protocol front door: a node's keys through RESP2 and RESP3, for redis-cli, redis-py and every
other Redis client (`resp_addr`; the commands and their meaning are in `dsm.api.resp_commands` and
docs/resp.md).

This module is the protocol and its bounds; the commands call the store's public operations as the HTTP
routes do. Requests are parsed by hiredis (the C parser of Redis's own client library): every request is an
array of bulk strings, as redis-cli, redis-benchmark and the client libraries send them. Replies are encoded
here, in the version the connection chose with `HELLO` (RESP2 until then).

A connection runs its commands one after the other, in the order they arrived, each reply written in that
order (a pipeline is answered as Redis answers it); only consecutive requests the commands call independent
(`together`: plain writes) run at once, still queued for their commits and answered in their order.

Bounds on what a client can hold:

- **connections**: at most `resp_max_connections` (held to half the open-files limit); one more is answered
  `-ERR max number of clients reached` and closed;
- **a request**: one command may hold at most `request_max_bytes` (twice `max_value_bytes`, plus 64 KiB for
  keys and framing) before it is complete, else `-ERR Protocol error: ...` and the connection closes; a
  command that has begun must be complete within `http_body_timeout_ms` (trickling does not extend it);
- **a pipeline**: at most PIPELINE_MAX parsed commands wait their turn: beyond that the connection stops
  reading (TCP's window pushes back on the client) until they are answered;
- **replies**: a client that does not take its replies stops the connection's commands once the socket's
  buffer is full, and is closed if it takes none for `http_body_timeout_ms`;
- **idle**: a connection with nothing to do for `resp_idle_timeout_ms` is closed.

Before `AUTH` (or `HELLO ... AUTH`) with the node's `http_token`, when one is set, a connection may only
authenticate, say `HELLO`, or `QUIT`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import hiredis

from dsm.api.connections import open_files_soft_limit
from dsm.net.quietlog import QuietLog

if TYPE_CHECKING:
    from dsm.config import StorageConfig

log = logging.getLogger("dsm.api.resp")

#: Most parsed commands of one connection waiting their turn before it stops reading.
PIPELINE_MAX = 1024
#: Most arguments of one command (a command name and its keys and values).
ARGS_MAX = 1 << 16
#: Why connections are closed by a bound (the labels of dsm_resp_connections_closed_total).
RESP_CLOSE_REASONS = (
    "max_connections", "request_timeout", "send_timeout", "idle_timeout", "protocol_error", "internal_error",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RespLimits:
    """The bounds of the Redis-protocol front door (see the module docstring)."""

    max_connections: int = 1024
    idle_timeout_s: float = 300.0
    request_timeout_s: float = 60.0
    request_max_bytes: int = 2 * (1 << 20) + (64 << 10)

    @classmethod
    def from_config(cls, config: StorageConfig) -> RespLimits:
        return cls(
            max_connections=max(1, min(config.resp_max_connections, open_files_soft_limit() // 2)),
            idle_timeout_s=config.resp_idle_timeout_ms / 1000,
            request_timeout_s=config.http_body_timeout_ms / 1000,
            request_max_bytes=2 * config.max_value_bytes + (64 << 10),
        )


# -- replies ------------------------------------------------------------------------------------------------


class Reply:
    """Encodes replies in one protocol version (2 or 3; `HELLO` switches)."""

    __slots__ = ("proto",)

    OK = b"+OK\r\n"
    PONG = b"+PONG\r\n"

    def __init__(self, proto: int = 2) -> None:
        self.proto = proto

    @staticmethod
    def simple(text: str) -> bytes:
        return b"+" + _line(text).encode() + b"\r\n"

    @staticmethod
    def error(text: str) -> bytes:
        """An error reply: `text` starts with its code in capitals (ERR, NOAUTH, WRONGPASS, ...)."""
        return b"-" + _line(text).encode() + b"\r\n"

    @staticmethod
    def integer(n: int) -> bytes:
        return b":%d\r\n" % n

    @staticmethod
    def bulk(data: bytes | str) -> bytes:
        raw = data.encode() if isinstance(data, str) else data
        return b"$%d\r\n%s\r\n" % (len(raw), raw)

    def null(self) -> bytes:
        return b"_\r\n" if self.proto == 3 else b"$-1\r\n"

    def value(self, data: bytes | None) -> bytes:
        return self.null() if data is None else self.bulk(data)

    @staticmethod
    def array(items: Sequence[bytes]) -> bytes:
        """An array of replies already encoded."""
        return b"*%d\r\n" % len(items) + b"".join(items)

    def map(self, pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
        """A map of encoded replies (RESP3), or the flat array RESP2 has in its place."""
        body = b"".join(k + v for k, v in pairs)
        return (b"%%%d\r\n" % len(pairs) if self.proto == 3 else b"*%d\r\n" % (2 * len(pairs))) + body


def _line(text: str) -> str:
    """A simple string or error's text: one line (CR and LF would end it early)."""
    return text.replace("\r", " ").replace("\n", " ")


# -- connections --------------------------------------------------------------------------------------------


class Session:
    """What a command may know and change of its connection."""

    __slots__ = ("authenticated", "close_after", "id", "name", "peer", "reply")

    def __init__(self, conn_id: int, peer: str, authenticated: bool) -> None:
        self.id = conn_id
        self.peer = peer
        self.name = ""
        self.authenticated = authenticated
        self.reply = Reply()
        self.close_after = False  # QUIT: close once this reply is written


#: Runs one command (its arguments, the name first) for a session; returns the encoded reply.
Dispatch = Callable[[Session, list[bytes]], Coroutine[Any, Any, bytes]]


class RespServer:
    """Listens for Redis-protocol connections and runs their commands through `dispatch`."""

    def __init__(
        self,
        dispatch: Dispatch,
        limits: RespLimits,
        *,
        token: str = "",
        ssl_context: ssl.SSLContext | None = None,
        together: Callable[[list[bytes]], bool] | None = None,
    ) -> None:
        self.dispatch = dispatch
        #: Whether a request may run together with the requests around it that may too (pipelined plain
        #: writes); None: every request runs alone.
        self.together = together
        self.limits = limits
        self.token = token
        self.ssl_context = ssl_context
        self.connections: set[RespConnection] = set()
        #: Connections closed by a bound, by reason (exported as dsm_resp_connections_closed_total).
        self.closed: Counter[str] = Counter()
        #: Commands run, by name (known commands only), and errors answered, by code.
        self.commands: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.accepted = 0
        self._next_id = 0
        self._server: asyncio.AbstractServer | None = None
        self._quiet = QuietLog(log, 10.0)

    async def start(self, host: str, port: int) -> int:
        """Listens on host:port (0: the system picks); returns the port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: RespConnection(self), host or None, port, ssl=self.ssl_context, reuse_address=True
        )
        sockets = getattr(self._server, "sockets", None) or ()
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def close(self) -> None:
        """Stops listening and closes every connection (a command running finishes first, its reply lost)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close("shutdown")
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def admit(self, conn: RespConnection) -> bool:
        if len(self.connections) >= self.limits.max_connections:
            self.closed["max_connections"] += 1
            return False
        self._next_id += 1
        conn.session = Session(self._next_id, conn.peer, authenticated=not self.token)
        self.connections.add(conn)
        self.accepted += 1
        return True

    def protocol_error(self, peer: str, why: str) -> None:
        self._quiet.log(logging.INFO, f"proto {why[:40]}", "RESP protocol error from %s: %s", peer, why)


class RespConnection(asyncio.Protocol):
    """One client connection: parses its requests, runs them in order, writes their replies in order."""

    def __init__(self, server: RespServer) -> None:
        self.server = server
        self.limits = server.limits
        self.session: Session | None = None
        self.peer = ""
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.queue: deque[list[bytes]] = deque()
        self.pending_bytes = 0  # fed since the last complete request: bounds the request being received
        self.request_deadline: float | None = None
        self.task: asyncio.Task[None] | None = None
        self.paused = False
        self.writable: asyncio.Event | None = None  # set while the socket's buffer takes more
        self.closing = False
        self.eof = False
        self.failure: str | None = None  # a bad request: answered (after those before it), then closed
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None

    # -- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"
        if not self.server.admit(self):
            self.transport.write(Reply.error("ERR max number of clients reached"))
            self.transport.close()
            self.closing = True
            return
        self.writable = asyncio.Event()
        self.writable.set()
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.closing or self.failure is not None:
            return
        self.reader.feed(data)
        self.pending_bytes += len(data)
        while self.failure is None:
            try:
                request = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self._failed(f"Protocol error: {exc} (requests are arrays of bulk strings)")
                break
            if request is False:
                break
            self.pending_bytes = 0
            self.request_deadline = None
            if not isinstance(request, list) or not request or not all(isinstance(a, bytes) for a in request):
                self._failed("Protocol error: a request is a non-empty array of bulk strings")
            elif len(request) > ARGS_MAX:
                self._failed(f"Protocol error: more than {ARGS_MAX} arguments")
            else:
                self.queue.append(request)
        if self.failure is None and self.pending_bytes > self.limits.request_max_bytes:
            self._failed(f"Protocol error: a request larger than {self.limits.request_max_bytes} bytes")
        if self.failure is not None:
            # The commands before the bad request are run and answered first; then the error, and the close.
            if self.task is None and not self.queue:
                self._fail(self.failure)
            elif self.task is None:
                self.task = self.loop.create_task(self._run())
            return
        if self.pending_bytes and self.request_deadline is None:
            self.request_deadline = self.loop.time() + self.limits.request_timeout_s
        if len(self.queue) >= PIPELINE_MAX and not self.paused:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        if self.queue and self.task is None:
            self.task = self.loop.create_task(self._run())
        self._arm()

    def eof_received(self) -> bool | None:
        # The client sent everything it will (a pipe into redis-cli): answer what it sent, then close.
        self.eof = True
        if self.task is None:
            self.close("eof")
        return True  # keep the transport open for the replies

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        if self.writable is not None:
            self.writable.set()  # a command waiting to write finds the connection gone
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def pause_writing(self) -> None:
        if self.writable is not None:
            self.writable.clear()

    def resume_writing(self) -> None:
        if self.writable is not None:
            self.writable.set()

    # -- running commands

    async def _run(self) -> None:
        session = self.session
        assert session is not None and self.transport is not None and self.writable is not None
        together = self.server.together
        try:
            while self.queue and not self.closing:
                request = self.queue.popleft()
                if together is not None and self.queue and together(request) and together(self.queue[0]):
                    # Plain writes one after the other: run together (each is queued for its commit in the
                    # order it came, so a key written twice keeps the later value), answered in order.
                    batch = [request]
                    while self.queue and len(batch) < PIPELINE_MAX and together(self.queue[0]):
                        batch.append(self.queue.popleft())
                    running = [self.loop.create_task(self.server.dispatch(session, r)) for r in batch]
                    try:
                        for task in running:
                            if not await self._send(await task):
                                return
                    finally:
                        if any(not t.done() for t in running):
                            await asyncio.gather(*running, return_exceptions=True)
                    continue
                if not await self._send(await self.server.dispatch(session, request)):
                    return
                if session.close_after:
                    self.close("quit")
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a command's bug: the client hears of it, the node goes on
            log.exception("RESP command failed")
            self.transport.write(Reply.error(f"ERR internal error: {type(exc).__name__}"))
            self.close("internal_error")
            return
        finally:
            self.task = None
        if self.failure is not None:
            self._fail(self.failure)
        elif self.eof:  # the client sent all it will: its replies are written, close
            self.close("eof")
        else:
            self._arm()

    async def _send(self, reply: bytes) -> bool:
        """Writes a reply once the socket takes more; False when the connection is gone or the client took
        nothing for `request_timeout_s` (then closed)."""
        assert self.transport is not None and self.writable is not None
        if self.closing:
            return False
        if not self.writable.is_set():
            try:
                async with asyncio.timeout(self.limits.request_timeout_s):
                    await self.writable.wait()
            except TimeoutError:
                self.close("send_timeout")
                return False
            if self.closing:
                return False
        self.transport.write(reply)
        if self.paused and len(self.queue) < PIPELINE_MAX // 2:
            self.paused = False
            self.transport.resume_reading()
        return True

    # -- deadlines and closing

    def _arm(self) -> None:
        """One timer: the request being received must complete by its deadline; with nothing to do, the
        connection may stay idle for `idle_timeout_s`."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.closing or self.task is not None or self.queue:
            return
        if self.request_deadline is not None:
            self.timer = self.loop.call_at(self.request_deadline, self.close, "request_timeout")
        else:
            self.timer = self.loop.call_later(self.limits.idle_timeout_s, self.close, "idle_timeout")

    def _failed(self, why: str) -> None:
        """A request that cannot be served: nothing more is read from the connection."""
        self.failure = why
        self.request_deadline = None
        if self.transport is not None:
            self.transport.pause_reading()

    def _fail(self, why: str) -> None:
        self.server.protocol_error(self.peer, why)
        if self.transport is not None:
            self.transport.write(Reply.error(f"ERR {why}"))
        self.close("protocol_error")

    def close(self, reason: str) -> None:
        """Closes the connection once what was written is sent; counted under `reason` (a bound) if given."""
        if self.closing and (self.transport is None or self.transport.is_closing()):
            return
        self.closing = True
        if reason and reason not in ("quit", "eof", "shutdown"):
            self.server.closed[reason] += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()


def resp_stats(server: RespServer | None) -> dict[str, Any]:
    """The front door's numbers for the metrics (empty when it is off)."""
    if server is None:
        return {}
    return {
        "connections": len(server.connections),
        "accepted": server.accepted,
        "closed": dict(server.closed),
        "commands": dict(server.commands),
        "errors": dict(server.errors),
    }
