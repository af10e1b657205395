"""TCP transport between nodes: one outgoing connection per peer address, framed and (with a secret) sealed.

`Transport.send(node_id, addr, message)` never blocks: the message joins that address's bounded queue and
a writer task per address connects (with a timeout), runs the handshake (`dsm.net.security`) and writes
the queue's frames, waiting for the socket to drain when its buffer fills (backpressure). A full queue
drops its oldest message (counted): the protocol above repairs lost messages (probes time out, gossip and
anti-entropy resend), while a queue that grew without bound would turn a slow peer into our own outage.
A failed connection is retried with exponential backoff (with jitter) while messages wait; after
`max_failures` failures in a row the queue is dropped (counted as `unreachable`) until the next send.
An outgoing connection idle for `idle_timeout` seconds is closed, so connections follow the overlay's
links (the core only sends regularly to linked members) and stay bounded.

Connections carry frames one way: a node sends on its own outgoing connection and reads on the ones
others opened to it (after writing its half of the handshake). An incoming connection is handed to
`on_message(peer_node_id, message)` frame by frame; a malformed, oversized or unauthenticated frame closes
that connection with a logged, counted reason (`rejected`), and the node goes on serving every other
connection. A frame of a message type this node does not know is skipped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import ssl
import weakref
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dsm.net import security, wire
from dsm.net.security import AuthError, Channel, Keyring
from dsm.net.wire import Auth, FrameError, UnknownType

log = logging.getLogger("dsm.net")

OnMessage = Callable[[str, Any], None]
#: Called as (addr, node_id, reason) on every failed outgoing connection attempt; `reason` is one of
#: CONNECT_FAILURES. `node_id` is the member dialled ("" for a bootstrap address whose id is unknown).
OnConnectFailure = Callable[[str, str, str], None]
#: Why an outgoing connection failed: the TCP connection could not be made ("refused": refused, or no
#: route); no answer in time ("timeout"); the peer does not hold our cluster secret ("wrong_secret"); the
#: peer is not the member dialled ("wrong_node"); the TLS handshake or certificate check failed ("tls");
#: the peer closed the connection during the handshake without saying why ("closed"); anything else wrong
#: in the handshake ("handshake").
CONNECT_FAILURES = ("refused", "timeout", "wrong_secret", "wrong_node", "tls", "closed", "handshake")


@dataclass
class TransportStats:
    """Counters (exported as metrics by the node)."""

    frames_out: Counter[str] = field(default_factory=Counter)
    bytes_out: Counter[str] = field(default_factory=Counter)
    frames_in: Counter[str] = field(default_factory=Counter)
    bytes_in: Counter[str] = field(default_factory=Counter)
    #: Messages not sent, by reason (queue_full, unreachable, closed, too_large).
    dropped: Counter[str] = field(default_factory=Counter)
    #: Incoming connections closed for a bad frame or handshake, by reason (FrameError.reason).
    rejected: Counter[str] = field(default_factory=Counter)
    unknown_types: int = 0
    connects: int = 0
    connect_failures: int = 0
    #: Failed outgoing connection attempts by reason (CONNECT_FAILURES).
    connect_failure_reasons: Counter[str] = field(default_factory=Counter)


class _Made:
    """Whether an accepted connection reached its protocol (its TLS handshake, if any, succeeded)."""

    __slots__ = ("connected",)

    def __init__(self) -> None:
        self.connected = False


class _StreamProtocol(asyncio.StreamReaderProtocol):
    def __init__(self, reader: asyncio.StreamReader, serve: Any, made: _Made) -> None:
        super().__init__(reader, serve)
        self._made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._made.connected = True
        super().connection_made(transport)


def split_addr(addr: str) -> tuple[str, int]:
    """("host", port) of "host:port" (IPv6 as "[::1]:7400")."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"not a host:port address: {addr!r}")
    return host.strip("[]"), int(port)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One frame's bytes after its length field; the length is checked before the body is read."""
    length = wire.frame_length(await reader.readexactly(wire.LENGTH.size))
    return await reader.readexactly(length)


class _Outbound:
    """The queue and writer task for one peer address."""

    __slots__ = ("addr", "failures", "idle", "node_id", "queue", "task", "wake")

    def __init__(self, addr: str, node_id: str) -> None:
        self.addr = addr
        self.node_id = node_id
        self.queue: deque[Any] = deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.failures = 0
        self.idle = False


class Transport:
    """Sends the core's messages to peers and hands it theirs. See the module docstring."""

    def __init__(
        self,
        node_id: str,
        listen: str,
        on_message: OnMessage,
        keyring: Keyring | None = None,
        *,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        queue_max: int = 4096,
        connect_timeout: float = 2.0,
        handshake_timeout: float = 5.0,
        idle_timeout: float = 60.0,
        max_failures: int = 6,
        backoff_min: float = 0.05,
        backoff_max: float = 5.0,
        max_incoming: int = 1024,
        write_buffer: int = 1 << 20,
        on_connect_failure: OnConnectFailure | None = None,
    ) -> None:
        self.node_id = node_id
        self.listen = listen
        self.on_message = on_message
        self.keyring = keyring if keyring is not None else Keyring()
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
        self.queue_max = queue_max
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_failures = max_failures
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.max_incoming = max_incoming
        self.write_buffer = write_buffer
        self.on_connect_failure = on_connect_failure
        self.stats = TransportStats()
        self.addr = listen
        self._out: dict[str, _Outbound] = {}
        self._incoming: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._closed = False
        self._rng = random.Random()
        self._connected = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listens on `listen` (port 0: any free port; `addr` then holds the real one)."""
        host, port = split_addr(self.listen)
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.StreamReaderProtocol:
            # asyncio.start_server's protocol, made here so that a TLS handshake that fails is counted: the
            # event loop runs the handshake before the protocol hears of the connection, and a connection
            # that fails it is dropped without a word; the protocol object made at accept time then goes
            # away without ever being connected.
            made = _Made()
            made_protocol = _StreamProtocol(asyncio.StreamReader(limit=1 << 16, loop=loop), self._serve, made)
            if self.server_ssl is not None:
                weakref.finalize(made_protocol, self._handshake_gone, made)
            return made_protocol

        self._server = await loop.create_server(protocol, host, port, ssl=self.server_ssl)
        bound = self._server.sockets[0].getsockname()
        self.addr = f"{host}:{bound[1]}"

    def _handshake_gone(self, made: _Made) -> None:
        if not made.connected and not self._closed:
            self.stats.rejected["tls_handshake"] += 1

    async def close(self, flush_timeout: float = 1.0) -> None:
        """Stops listening, gives queued messages up to `flush_timeout` seconds to go out, closes all."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        tasks = [o.task for o in self._out.values() if o.task is not None]
        for out in self._out.values():
            out.wake.set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=flush_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for out in self._out.values():
            self.stats.dropped["closed"] += len(out.queue)
            out.queue.clear()
        for task in list(self._incoming):
            task.cancel()
        await asyncio.gather(*self._incoming, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------------ sending

    def send(self, node_id: str, addr: str, message: Any) -> None:
        """Queues `message` for the node at `addr` (never blocks; see the module docstring)."""
        if self._closed:
            self.stats.dropped["closed"] += 1
            return
        if not addr:
            self.stats.dropped["no_address"] += 1  # a member we know only by id (not yet by address)
            return
        out = self._out.get(addr)
        if out is None:
            out = self._out[addr] = _Outbound(addr, node_id)
        out.node_id = node_id or out.node_id
        if len(out.queue) >= self.queue_max:
            out.queue.popleft()
            self.stats.dropped["queue_full"] += 1
        out.queue.append(message)
        out.wake.set()
        if out.task is None or out.task.done():
            out.failures = 0
            out.task = asyncio.get_running_loop().create_task(self._writer(out), name=f"dsm-send-{addr}")

    def connections(self) -> tuple[int, int]:
        """(outgoing, incoming) connections open now."""
        return self._connected, len(self._incoming)

    def queued(self, addr: str) -> int:
        out = self._out.get(addr)
        return len(out.queue) if out is not None else 0

    async def _writer(self, out: _Outbound) -> None:
        while out.queue and not (self._closed and out.failures):
            try:
                writer, channel = await self._connect(out.addr)
            # ValueError: a bad address, or a FrameError in the handshake.
            except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
                out.failures += 1
                self.stats.connect_failures += 1
                self._connect_failed(out, exc)
                if out.failures >= self.max_failures or self._closed:
                    log.info("peer %s unreachable (%s); dropping %d queued messages", out.addr, exc, len(out.queue))
                    self.stats.dropped["unreachable"] += len(out.queue)
                    out.queue.clear()
                    return
                delay = min(self.backoff_max, self.backoff_min * 2 ** (out.failures - 1))
                await asyncio.sleep(delay * (0.5 + self._rng.random()))
                continue
            out.failures = 0
            self._connected += 1
            try:
                await self._pump(out, writer, channel)
            # RuntimeError: uvloop's way of refusing a write to a transport that closed meanwhile.
            except (OSError, ConnectionError, ssl.SSLError, RuntimeError) as exc:
                log.debug("connection to %s lost: %s", out.addr, exc)
            finally:
                self._connected -= 1
                writer.close()
                with contextlib.suppress(OSError, ConnectionError, ssl.SSLError):
                    await writer.wait_closed()
            if out.idle:
                out.idle = False
                if not out.queue:
                    return

    def _connect_failed(self, out: _Outbound, exc: BaseException) -> None:
        reason = connect_failure_reason(exc)
        self.stats.connect_failure_reasons[reason] += 1
        if self.on_connect_failure is not None:
            try:
                self.on_connect_failure(out.addr, out.node_id, reason)
            except Exception:  # a bug above must not stop the writer
                log.exception("on_connect_failure(%s, %s, %s) failed", out.addr, out.node_id, reason)

    async def _pump(self, out: _Outbound, writer: asyncio.StreamWriter, channel: Channel) -> None:
        stats = self.stats
        while True:
            while out.queue:
                if writer.transport.is_closing():  # the peer reset the connection: reconnect, keep the queue
                    raise ConnectionResetError(f"connection to {out.addr} closed")
                message = out.queue[0]
                try:
                    frame = channel.encode(message)
                except FrameError:
                    out.queue.popleft()
                    stats.dropped["too_large"] += 1
                    continue
                out.queue.popleft()
                writer.write(frame)
                kind = type(message).__name__
                stats.frames_out[kind] += 1
                stats.bytes_out[kind] += len(frame)
                if writer.transport.get_write_buffer_size() > self.write_buffer:
                    await writer.drain()  # backpressure: the peer reads slower than we write
            await writer.drain()
            if self._closed:
                return
            out.wake.clear()
            try:
                await asyncio.wait_for(out.wake.wait(), self.idle_timeout)
            except TimeoutError:
                out.idle = True
                return

    def _source(self, remote_host: str) -> tuple[str, int] | None:
        """The local address outgoing connections leave from: the listening host, when it is a specific
        address of the same kind as the remote one, so that a node shows one address to its peers (on a
        multi-homed host, or to firewall rules that cut a partition); else the system's choice."""
        try:
            local = ipaddress.ip_address(split_addr(self.listen)[0])
            remote = ipaddress.ip_address(remote_host)
        except ValueError:
            return None
        if local.is_unspecified or local.version != remote.version or local.is_loopback != remote.is_loopback:
            return None
        return (str(local), 0)

    async def _connect(self, addr: str) -> tuple[asyncio.StreamWriter, Channel]:
        host, port = split_addr(addr)
        connect = asyncio.open_connection(host, port, ssl=self.client_ssl, limit=1 << 16, local_addr=self._source(host))
        reader, writer = await asyncio.wait_for(connect, self.connect_timeout)
        self.stats.connects += 1
        try:
            ours = security.hello(self.node_id, self.keyring.current_id())
            writer.write(wire.encode_frame(ours))
            theirs = security.read_hello(await asyncio.wait_for(read_frame(reader), self.handshake_timeout))
            channel = security.connect(self.keyring, ours, theirs)
            if channel.sealed:
                writer.write(channel.encode(Auth(self.node_id)))
            await writer.drain()
        except BaseException:
            writer.close()
            raise
        # The acceptor's sealed Auth would follow on the reader; this side only writes from here on, so
        # the proof that matters is ours: the acceptor accepts nothing before our Auth opens.
        return writer, channel

    # ------------------------------------------------------------------ receiving

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._incoming) >= self.max_incoming:
            self.stats.rejected["too_many_connections"] += 1
            writer.close()
            return
        self._incoming.add(task)
        peer = "?"
        try:
            theirs, channel = await asyncio.wait_for(self._accept(reader, writer), self.handshake_timeout)
            peer = theirs.node_id
            await self._read_loop(peer, reader, channel)
        except FrameError as exc:
            self.stats.rejected[exc.reason] += 1
            log.warning("closing connection from %s (%s): %s", _peername(writer), peer, exc)
        except ssl.SSLError as exc:  # a bad TLS record after the handshake
            self.stats.rejected["tls"] += 1
            log.warning("closing connection from %s: %s", _peername(writer), exc)
        except TimeoutError:
            self.stats.rejected["handshake_timeout"] += 1
            log.warning("closing connection from %s: no handshake in time", _peername(writer))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the peer went away (mid-frame or between frames)
        except asyncio.CancelledError:
            # close() cancels the readers. The task ends here, normally: on Python 3.11 asyncio's stream
            # callback would log a cancelled connection task as an error (fixed in 3.12).
            pass
        finally:
            self._incoming.discard(task)
            writer.close()
            with contextlib.suppress(OSError, ConnectionError, ssl.SSLError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[wire.Hello, Channel]:
        theirs = security.read_hello(await read_frame(reader))
        ours, channel = security.accept(self.keyring, self.node_id, theirs)
        writer.write(wire.encode_frame(ours))
        await writer.drain()
        if channel.sealed:
            security.check_auth(channel.decode(await read_frame(reader)), theirs)
        return theirs, channel

    async def _read_loop(self, peer: str, reader: asyncio.StreamReader, channel: Channel) -> None:
        stats = self.stats
        while True:
            frame = await read_frame(reader)
            try:
                message = channel.decode(frame)
            except UnknownType:
                stats.unknown_types += 1
                continue
            if isinstance(message, (wire.Hello, Auth)):
                raise AuthError("a handshake frame after the handshake")
            kind = type(message).__name__
            stats.frames_in[kind] += 1
            stats.bytes_in[kind] += len(frame) + wire.LENGTH.size
            try:
                self.on_message(peer, message)
            except Exception:  # a bug above must not take the connection (and the node) down
                log.exception("handling %s from %s failed", kind, peer)


def connect_failure_reason(exc: BaseException) -> str:
    """The CONNECT_FAILURES reason of an exception raised while connecting and running the handshake."""
    if isinstance(exc, AuthError):
        return "wrong_secret"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return "tls"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.IncompleteReadError | ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "closed"
    if isinstance(exc, OSError):
        return "refused"
    return "handshake"


def _peername(writer: asyncio.StreamWriter) -> str:
    name = writer.get_extra_info("peername")
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else "?"
