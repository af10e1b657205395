"""Bounded HTTP connections: the node's HTTP server (aiohttp) with a header timeout, an idle keep-alive
timeout and a cap on concurrent connections (the body timeout is the PUT handler's, in
`dsm.api.routes.keys`).

aiohttp has a keep-alive timeout but no header-read timeout and no connection cap: a client that opens a
connection and sends half a request holds a socket, a task and a file descriptor for as long as it likes,
and 1,100 of them take every descriptor of a process limited to 1,024 open files. Here every connection
is in one of three phases, each with its own deadline:

    HEADERS  a new connection, or a kept-alive one that started sending its next request: closed if the
             request's headers are not complete `http_header_timeout_ms` after it entered the phase
             (trickling bytes does not extend it)
    BUSY     a request is being handled (its body read, its response written, a watch streaming): the
             PUT handler bounds its body read by `http_body_timeout_ms`, and the same bound applies to
             the client taking a response (and each write of a watch stream)
    IDLE     a kept-alive connection between requests: closed `http_idle_timeout_ms` after its last response

`BoundedRequestHandler` (aiohttp's per-connection protocol, subclassed) keeps the phase and one timer: it
enters HEADERS at `connection_made` and on the first byte after IDLE, BUSY as soon as aiohttp's parser has
queued a request (read after `data_received`; that queue is not public, so the app's middleware also calls
`request_started` as the handler begins, which alone suffices), IDLE when `finish_response` has written a
response. `BoundedSite` listens with a factory of these handlers in place of aiohttp's `TCPSite`.

The cap (`http_max_connections`, held to half the process's open-files limit so that HTTP alone cannot
take every descriptor) counts open connections. A connection that arrives at the cap closes the oldest
connection that is *not* busy, as nginx reuses its idle connections: first those that have sent something
(idle keep-alives, half-sent requests), then those that have not sent a byte yet (under a burst the node
accepts many connections before it reads any, and a client whose request is on its way should not pay
for it). Half-sent requests and idle keep-alives then cannot lock clients out, and requests in progress
are never cut. Only when every connection is busy is the new one answered `503` with `Retry-After` and
closed. Every close for a bound is counted (`ConnectionPool.closed`, exported as
`dsm_http_connections_closed_total{reason}`), as is a client that closes its connection in the middle of a
request body (`client_gone`).

A request aiohttp cannot parse is answered `400` (JSON) and closed, as aiohttp does, but aiohttp would also
log each one as an ERROR with a traceback, so that anyone who reaches the port could fill the node's log:
here each is counted (`BAD_REQUESTS`, by kind; `dsm_http_bad_requests_total`) and logged at INFO at most
once per 10 s per kind (`dsm.net.quietlog`), the parser's complaint (which may quote the request) escaped.
`quiet_bad_requests` (installed by `create_app`) does the same for what aiohttp still logs itself: a body
that cannot be decoded, raised again as aiohttp drains it after the 400, and every unparseable request
when the app is served by aiohttp's own sites. The JSON error bodies are `dsm.api.errors`'.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import resource
import ssl
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from aiohttp.web_request import BaseRequest

from dsm.api.errors import RETRY_AFTER_S, error_body, one_line, reason_code, status_phrase
from dsm.config import StorageConfig
from dsm.net.quietlog import QuietLog, escape

log = logging.getLogger("dsm.api")

#: How long a refused connection (at the cap, every connection busy) stays open after its 503, for the
#: client to read the answer before the close, and how many refused connections may linger so at once.
REFUSED_LINGER_S = 1.0
REFUSED_LINGER_MAX = 64
#: How long aiohttp keeps reading (and dropping) the unread rest of a request body after the response.
LINGER_S = 1.0
#: Reasons a connection is closed by a bound, or by its client mid-request ("client_gone") (the label of
#: dsm_http_connections_closed_total).
CLOSE_REASONS = (
    "header_timeout",
    "body_timeout",
    "send_timeout",
    "idle_timeout",
    "evicted",
    "refused",
    "client_gone",
)
#: Longest part of a parser's complaint that is logged (it may quote the request).
BAD_REQUEST_LOGGED_MAX = 200

#: Requests refused before a handler saw them (unparseable HTTP), by kind (exception name); process-wide.
BAD_REQUESTS: Counter[str] = Counter()
_BAD_REQUEST_LOG = QuietLog(log)


def bad_request(exc: BaseException) -> None:
    """Counts a request refused as unparseable (`exc`: aiohttp's reason) and logs it at INFO, at most once per
    interval per kind."""
    kind = type(exc).__name__
    BAD_REQUESTS[kind] += 1
    text = one_line(exc)[:BAD_REQUEST_LOGGED_MAX]
    _BAD_REQUEST_LOG.log(logging.INFO, kind, "refused an unparseable HTTP request (%s): %s", kind, escape(text))


class _BadRequestFilter(logging.Filter):
    """Counts (`bad_request`) and drops what aiohttp logs of unparseable requests: a body that cannot be
    decoded, raised again as aiohttp drains it after our 400, and every unparseable request when the app
    is served by aiohttp's own sites (`BoundedRequestHandler` counts its own without logging them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | RequestPayloadError):
            bad_request(exc)
            return False
        return True


_BAD_REQUEST_FILTER = _BadRequestFilter()


def quiet_bad_requests() -> None:
    """Installs the filter on aiohttp's server log (once per process)."""
    server_log = logging.getLogger("aiohttp.server")
    if _BAD_REQUEST_FILTER not in server_log.filters:
        server_log.addFilter(_BAD_REQUEST_FILTER)


class Phase(enum.Enum):
    HEADERS = "headers"
    BUSY = "busy"
    IDLE = "idle"


@dataclass(frozen=True)
class HttpLimits:
    """The bounds of the HTTP server, in seconds and connections."""

    header_timeout_s: float
    body_timeout_s: float
    idle_timeout_s: float
    max_connections: int

    @classmethod
    def from_config(cls, config: StorageConfig) -> HttpLimits:
        """The config's bounds; the cap held to half the process's open-files soft limit (read now)."""
        return cls(
            header_timeout_s=config.http_header_timeout_ms / 1000,
            body_timeout_s=config.http_body_timeout_ms / 1000,
            idle_timeout_s=config.http_idle_timeout_ms / 1000,
            max_connections=min(config.http_max_connections, max(16, open_files_soft_limit() // 2)),
        )


def open_files_soft_limit() -> int:
    """The process's soft RLIMIT_NOFILE (a large number when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _refusal() -> bytes:
    body = error_body("too_many_connections", "the node serves as many HTTP connections as it allows; retry later")
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {RETRY_AFTER_S}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


_REFUSAL = _refusal()
#: An answer at most this large, written into an empty socket buffer, cannot fill it (asyncio's high-water
#: mark is 64 KiB): it is written without a send timer (`BoundedRequestHandler.finish_response`).
SMALL_BODY = 16 * 1024


class ConnectionPool:
    """The open connections of one HTTP server by phase, the cap, and the counts of closes for a bound."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        # Connections not busy, least recently moved first: the order of eviction. Those that have sent
        # something (idle keep-alives, half-sent requests) go before those that have not sent a byte yet: under
        # a burst of new connections the node accepts many before it reads any, and a client that connected
        # a moment ago and whose request is on its way should not be the one closed.
        self._heard: OrderedDict[BoundedRequestHandler, None] = OrderedDict()
        self._quiet: OrderedDict[BoundedRequestHandler, None] = OrderedDict()
        self._busy: set[BoundedRequestHandler] = set()
        self.lingering = 0
        self.closed: Counter[str] = Counter()

    @property
    def open(self) -> int:
        return len(self._heard) + len(self._quiet) + len(self._busy)

    def phases(self) -> dict[str, int]:
        """Open connections by phase (for the metrics)."""
        counts = Counter(handler.phase.value for handler in self._heard)
        counts[Phase.HEADERS.value] += len(self._quiet)
        counts[Phase.BUSY.value] = len(self._busy)
        return {phase.value: counts[phase.value] for phase in Phase}

    def admit(self, handler: BoundedRequestHandler) -> bool:
        """Whether a new connection may be served: below the cap, or once the oldest connection that is not
        busy has been closed to make room; False when every connection is busy."""
        if self.open >= self.limits.max_connections:
            waiting = self._heard or self._quiet
            if not waiting:
                self.closed["refused"] += 1
                return False
            oldest = next(iter(waiting))
            self.remove(oldest)
            self.closed["evicted"] += 1
            oldest.close_for_bound()
        self._quiet[handler] = None
        return True

    def moved(self, handler: BoundedRequestHandler, phase: Phase, quiet: bool = False) -> None:
        """`handler` entered `phase`; `quiet`: it has not sent a byte in it yet."""
        self.remove(handler)
        if phase is Phase.BUSY:
            self._busy.add(handler)
        elif quiet:
            self._quiet[handler] = None
        else:
            self._heard[handler] = None

    def remove(self, handler: BoundedRequestHandler) -> None:
        self._heard.pop(handler, None)
        self._quiet.pop(handler, None)
        self._busy.discard(handler)


class BoundedRequestHandler(web.RequestHandler):
    """aiohttp's protocol for one HTTP connection, with the phase deadlines and the cap of `ConnectionPool`
    (see the module docstring), and errors aiohttp answers itself (unparseable requests) as JSON."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, pool: ConnectionPool, **kwargs: Any):
        super().__init__(manager, loop=loop, **kwargs)
        self._bound_loop = loop
        self._pool = pool
        self.phase = Phase.HEADERS
        self._deadline: asyncio.TimerHandle | None = None
        self._quiet = True  # no byte received since the connection was made
        self._admitted = False
        self._refused: asyncio.BaseTransport | None = None

    # --- the connection's life ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._pool.admit(self):
            self._refuse(transport)
            return
        self._admitted = True
        super().connection_made(transport)
        self._enter(Phase.HEADERS, quiet=True)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return  # a refused connection: what it sends is dropped until it closes
        if data:
            if self.phase is Phase.IDLE:
                self._enter(Phase.HEADERS)
            elif self._quiet:
                self._quiet = False
                self._pool.moved(self, self.phase)  # heard from: its deadline runs on
        super().data_received(data)
        if self.phase is Phase.HEADERS and getattr(self, "_messages", None):
            # A request was parsed: it is busy from now, not when its handler starts a few loop turns later
            # (under a burst of new connections it could be evicted in between). aiohttp's queue of parsed
            # requests is not public: without it, the middleware's request_started still marks it.
            self._enter(Phase.BUSY)

    def eof_received(self) -> None:
        if self._refused is not None:
            self._refused.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_deadline()
        if not self._admitted:
            if self._refused is not None:
                self._refused = None
                self._pool.lingering -= 1
            return
        self._pool.remove(self)
        super().connection_lost(exc)

    def request_started(self) -> None:
        """Called by the app as a request's handling begins: its headers are complete."""
        if self._admitted and self.transport is not None:
            self._enter(Phase.BUSY)

    async def finish_response(self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None) -> Any:
        transport = self.transport
        try:
            if (
                transport is not None
                and not transport.get_write_buffer_size()
                and isinstance(resp, web.Response)
                and isinstance(resp.body, bytes)
                and len(resp.body) <= SMALL_BODY
            ):
                # The common case: a small answer into an empty socket buffer is handed to the kernel without
                # waiting, so it needs no timer (a timer per request cost ~15 us of the node's CPU per request);
                # only if the client has left some of it unread is its reading bounded, below.
                result = await super().finish_response(request, resp, start_time)
                if self.transport is None or not self.transport.get_write_buffer_size():
                    return result
                async with asyncio.timeout(self._pool.limits.body_timeout_s):
                    await request.writer.drain()
                return result
            # A client that does not read its answer would hold a busy connection, and the answer's bytes,
            # for as long as it likes.
            async with asyncio.timeout(self._pool.limits.body_timeout_s):
                result = await super().finish_response(request, resp, start_time)
                if self.transport is not None:
                    # aiohttp hands a whole body to the transport and is done: wait until the client has taken
                    # it (all but the transport's low-water mark), so that the bound covers the client's reading.
                    await request.writer.drain()
                return result
        except TimeoutError:
            self._pool.closed["send_timeout"] += 1
            self.close_for_bound()
            return resp, True  # (the response, whether the connection is gone), as aiohttp's own
        finally:
            if self._admitted and self.transport is not None:
                self._enter(Phase.IDLE)

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError | RequestPayloadError) and status < 500:
            bad_request(exc)  # the client's mistake: counted, logged once in a while
            if request.writer.output_size > 0:  # as aiohttp's own: a response already begun cannot be replaced
                raise ConnectionError("a response was already sent; cannot send the error")
        else:
            super().handle_error(request, status, exc, message)  # a bug (500): logged with its traceback
        phrase = status_phrase(status)
        code = reason_code(phrase)
        text = (message or phrase) if status < 500 else "the node could not answer this request"
        response = web.Response(status=status, body=error_body(code, text), content_type="application/json")
        response.force_close()
        return response

    # --- bounds ---

    def close_for_bound(self) -> None:
        """Closes the connection at once (a deadline passed, or the cap evicted it)."""
        self._cancel_deadline()
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size():
            transport.abort()  # a plain close would first wait for the client to take what is unsent
        self.force_close()

    def _enter(self, phase: Phase, quiet: bool = False) -> None:
        self._cancel_deadline()
        self.phase, self._quiet = phase, quiet
        self._pool.moved(self, phase, quiet)
        limits = self._pool.limits
        if phase is Phase.HEADERS:
            self._deadline = self._bound_loop.call_later(limits.header_timeout_s, self._expire, "header_timeout")
        elif phase is Phase.IDLE:
            self._deadline = self._bound_loop.call_later(limits.idle_timeout_s, self._expire, "idle_timeout")

    def _expire(self, reason: str) -> None:
        self._deadline = None
        self._pool.closed[reason] += 1
        self._pool.remove(self)
        self.close_for_bound()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        stream.write(_REFUSAL)
        if self._pool.lingering < REFUSED_LINGER_MAX and stream.can_write_eof():
            # Half-closed, it stays open a moment so that the client reads the answer instead of a reset
            # (closing with its request unread would send one).
            stream.write_eof()
            self._refused = stream
            self._pool.lingering += 1
            self._deadline = self._bound_loop.call_later(REFUSED_LINGER_S, stream.close)
        else:
            stream.close()


class BoundedSite(web.BaseSite):
    """Listens on host:port like aiohttp's `TCPSite`, each connection served by a `BoundedRequestHandler`
    of the runner's server, bounded by `pool` (a TLS handshake by the header timeout)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        pool: ConnectionPool,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port, self.pool = host, port, pool

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        sockets = getattr(self._server, "sockets", None) or ()  # uvloop's Server does not subclass asyncio's
        port = sockets[0].getsockname()[1] if sockets else self._port
        return f"{scheme}://{self._host}:{port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        limits = self.pool.limits

        def handler() -> BoundedRequestHandler:
            return BoundedRequestHandler(
                server,
                loop=loop,
                pool=self.pool,
                # aiohttp's own keep-alive close stays as a backstop, after ours
                keepalive_timeout=limits.idle_timeout_s + limits.header_timeout_s,
                lingering_time=LINGER_S,
                access_log=None,
            )

        self._server = await loop.create_server(
            handler,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=limits.header_timeout_s if self._ssl_context else None,
        )
        log.info(
            "HTTP on %s: header timeout %.1f s, body timeout %.1f s, idle timeout %.1f s, at most %d connections",
            self.name,
            limits.header_timeout_s,
            limits.body_timeout_s,
            limits.idle_timeout_s,
            limits.max_connections,
        )
