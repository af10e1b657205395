"""The Redis-protocol front door: a node's keys through RESP2 and RESP3, for redis-cli, redis-py and every
other Redis client (`resp_addr`; the commands and their meaning are in `dsm.api.resp_commands` and
docs/resp.md).

This module is the protocol and its bounds; the commands call the store's public operations as the HTTP
routes do. Every request is an array of bulk strings, as redis-cli, redis-benchmark and the client libraries
send them; `RequestReader` parses them here, checking each length as its header arrives (hiredis, the C
parser of Redis's client library, was used first: it allocates an array's slots from its header before any
argument arrives, so 14 bytes could make the node reserve gigabytes, and it has no bound to set). Replies are
encoded here, in the version the connection chose with `HELLO` (RESP2 until then).

A connection runs its commands one after the other, in the order they arrived, each reply written in that
order (a pipeline is answered as Redis answers it); only consecutive requests the commands call independent
(`together`: plain writes) run at once, still queued for their commits and answered in their order.

Bounds on what a client can hold:

- **connections**: at most `resp_max_connections` (held to half the open-files limit); one more is answered
  `-ERR max number of clients reached` and closed;
- **a request**: at most ARGS_MAX arguments and `request_max_bytes` (twice `max_value_bytes`, plus 64 KiB for
  keys and framing), each refused as soon as a header announces more (`-ERR Protocol error: ...`, and the
  connection closes after answering the requests before it); a command that has begun must be complete
  within `http_body_timeout_ms` (trickling does not extend it);
- **a pipeline**: parsed commands waiting their turn hold at most PIPELINE_MAX commands or twice
  `request_max_bytes`: beyond that the connection stops reading (TCP's window pushes back on the client)
  until they are answered;
- **replies**: a client that does not take its replies stops the connection's commands once the socket's
  buffer is full, and is closed when it has taken nothing more for `http_body_timeout_ms`; one reply holds
  at most REPLY_MAX_BYTES (an `MGET` that would build more is refused);
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

from dsm.api.connections import open_files_soft_limit
from dsm.net.quietlog import QuietLog

if TYPE_CHECKING:
    from dsm.config import StorageConfig

log = logging.getLogger("dsm.api.resp")

#: Most parsed commands of one connection waiting their turn before it stops reading.
PIPELINE_MAX = 1024
#: Most arguments of one command (a command name and its keys and values).
ARGS_MAX = 1 << 16
#: Most bytes of one reply built for a client.
REPLY_MAX_BYTES = 64 << 20
#: Longest header line (`*<n>` or `$<n>`) before its CRLF.
HEADER_MAX = 24
#: After answering a bad request, how long the node still reads (and drops) what the client sends before it
#: closes (see `RespConnection._fail`).
LINGER_S = 1.0
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


# -- requests -----------------------------------------------------------------------------------------------


class RespProtocolError(Exception):
    """Bytes that are not a request this front door takes: answered `-ERR Protocol error: ...`, then closed."""


def _count(header: bytes | bytearray) -> int | None:
    """A header's number: ASCII digits only (no sign, space or underscore), or None."""
    return int(header) if header.isdigit() and len(header) <= HEADER_MAX else None


class RequestReader:
    """Parses requests, arrays of bulk strings (`*<n>\\r\\n` then n times `$<len>\\r\\n<bytes>\\r\\n`), out of the
    bytes a client sends, incrementally (an argument is looked at once however the bytes are split). Every
    count is checked as its header arrives: at most `max_args` arguments, none longer than `max_bytes`.

    Raises `RespProtocolError` from `gets` at the first byte that breaks the grammar."""

    __slots__ = ("args", "buf", "max_args", "max_bytes", "need", "pos", "start")

    def __init__(self, max_args: int, max_bytes: int) -> None:
        self.max_args, self.max_bytes = max_args, max_bytes
        self.buf = bytearray()
        self.pos = 0  # where parsing goes on
        self.start = 0  # where the request being parsed began
        self.need = 0  # its arguments still to come (0: a request header is next)
        self.args: list[bytes] = []

    def feed(self, data: bytes) -> None:
        if self.start and self.start == len(self.buf):
            self.buf.clear()  # every request taken: start afresh rather than grow
            self.pos = self.start = 0
        self.buf += data

    def pending(self) -> int:
        """Bytes received of requests not complete yet."""
        return len(self.buf) - self.start

    def _line(self, kind: int, what: str) -> int | None:
        """The number on the header line at `pos` (starting with `kind`), moving past it; None until its CRLF
        has arrived."""
        buf, pos = self.buf, self.pos
        if buf[pos] != kind:
            raise RespProtocolError(f"expected '{chr(kind)}', got {bytes(buf[pos : pos + 1])!r}")
        end = buf.find(b"\r\n", pos, pos + HEADER_MAX + 3)
        if end < 0:
            if len(buf) - pos > HEADER_MAX + 2:
                raise RespProtocolError(f"invalid {what}")
            return None
        n = _count(buf[pos + 1 : end])
        if n is None:
            raise RespProtocolError(f"invalid {what}")
        self.pos = end + 2
        return n

    def gets(self) -> list[bytes] | None:
        """The next complete request, or None until more bytes arrive."""
        buf = self.buf
        if self.need == 0:
            if self.pos >= len(buf):
                return None
            self.start = self.pos
            n = self._line(0x2A, "multibulk length")  # *
            if n is None:
                return None
            if n < 1:
                raise RespProtocolError("a request is a non-empty array of bulk strings")
            if n > self.max_args:
                raise RespProtocolError(f"more than {self.max_args} arguments")
            self.need, self.args = n, []
        while self.need:
            if self.pos >= len(buf):
                return None
            mark = self.pos
            length = self._line(0x24, "bulk length")  # $
            if length is None:
                return None
            if length > self.max_bytes:
                raise RespProtocolError(f"a request larger than {self.max_bytes} bytes")
            end = self.pos + length
            if len(buf) < end + 2:
                self.pos = mark  # its header again once the rest has come
                return None
            if buf[end : end + 2] != b"\r\n":
                raise RespProtocolError("a bulk string not ended by CRLF")
            self.args.append(bytes(buf[self.pos : end]))
            self.pos = end + 2
            self.need -= 1
        request, self.args = self.args, []
        self.start = self.pos
        if self.pos > (1 << 16) and self.pos * 2 > len(buf):
            del buf[: self.pos]  # what was parsed goes, once it is most of the buffer
            self.pos = self.start = 0
        return request


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
        self.reader = RequestReader(ARGS_MAX, self.limits.request_max_bytes)
        self.queue: deque[list[bytes]] = deque()
        self.queued_bytes = 0  # of the requests in `queue`
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
        reader = self.reader
        reader.feed(data)
        while True:
            try:
                request = reader.gets()
            except RespProtocolError as exc:
                self._failed(f"Protocol error: {exc}")
                break
            if request is None:
                break
            self.queue.append(request)
            self.queued_bytes += sum(map(len, request))
        if self.failure is None and reader.pending() > self.limits.request_max_bytes:
            self._failed(f"Protocol error: a request larger than {self.limits.request_max_bytes} bytes")
        if self.failure is not None:
            # The commands before the bad request are run and answered first; then the error, and the close.
            self.request_deadline = None
            if self.task is None and not self.queue:
                self._fail(self.failure)
            elif self.task is None:
                self.task = self.loop.create_task(self._run())
            return
        if not reader.pending():
            self.request_deadline = None
        elif self.request_deadline is None:  # a request has begun: it has this long to arrive whole
            self.request_deadline = self.loop.time() + self.limits.request_timeout_s
        if not self.paused and (
            len(self.queue) >= PIPELINE_MAX or self.queued_bytes >= 2 * self.limits.request_max_bytes
        ):
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
            if self.closing and self.transport is not None:
                self.transport.close()  # a lingering close (`_fail`): the client has read the error and gone
            else:
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
                request = self._next()
                if together is not None and self.queue and together(request) and together(self.queue[0]):
                    # Plain writes one after the other: run together (each is queued for its commit in the
                    # order it came, so a key written twice keeps the later value), answered in order.
                    batch = [request]
                    while self.queue and len(batch) < PIPELINE_MAX and together(self.queue[0]):
                        batch.append(self._next())
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

    def _next(self) -> list[bytes]:
        request = self.queue.popleft()
        self.queued_bytes -= sum(map(len, request))
        if (
            self.paused
            and self.failure is None
            and len(self.queue) < PIPELINE_MAX // 2
            and self.queued_bytes < self.limits.request_max_bytes
        ):
            assert self.transport is not None
            self.paused = False
            self.transport.resume_reading()
        return request

    async def _send(self, reply: bytes) -> bool:
        """Writes a reply once the socket takes more; False when the connection is gone or the client took
        nothing of what it was sent for `request_timeout_s` (then closed)."""
        transport, writable = self.transport, self.writable
        assert transport is not None and writable is not None
        if self.closing:
            return False
        held = transport.get_write_buffer_size()
        while not writable.is_set():
            try:
                async with asyncio.timeout(self.limits.request_timeout_s):
                    await writable.wait()
            except TimeoutError:
                now = transport.get_write_buffer_size()
                if now >= held:  # nothing taken for the whole while
                    self.close("send_timeout")
                    return False
                held = now  # a slow reader, still reading: it may go on
            if self.closing:
                return False
        transport.write(reply)
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
        """Answers a bad request and closes. Over TCP the close lingers: the error is followed by the end of
        the stream (shutdown for writing), and what the client still sends is read and dropped for up to
        LINGER_S, since closing a socket with unread bytes resets it, and a reset can destroy the error
        before the client reads it."""
        self.server.protocol_error(self.peer, why)
        transport = self.transport
        if transport is None or transport.is_closing():
            self.close("protocol_error")
            return
        transport.write(Reply.error(f"ERR {why}"))
        if not transport.can_write_eof():  # TLS: no half-close
            self.close("protocol_error")
            return
        self.server.closed["protocol_error"] += 1
        self.closing = True  # from now on data_received drops what comes
        if self.timer is not None:
            self.timer.cancel()
        transport.write_eof()
        transport.resume_reading()
        self.timer = self.loop.call_later(LINGER_S, transport.close)

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
