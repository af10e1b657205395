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
`on_message(peer_node_id, message)` frame by frame, `peer_node_id` being the id the handshake bound (the
initiator's claim, proven with the cluster secret and, under mutual TLS, named by its certificate); a
malformed, oversized or unauthenticated frame closes that connection with a counted reason (`rejected`),
and the node goes on serving every other connection. Anyone who reaches the port can cause such refusals
as fast as it opens connections, so each is counted but logged at most once per 10 s per reason
(`dsm.net.quietlog`), with what the peer claimed (its node id) escaped. A frame of a message type this
node does not know is skipped and counted. Every failed outgoing attempt is reported to `on_connect_failure(addr,
node_id, reason)`; a responder that refuses a handshake says why first (`dsm.net.security.RefusedError`).

Before a connection is authenticated it costs little and not for long (`PeerLimits`): an accepted
connection is admitted before anything is read from it, or closed at once (counted in `rejected`) when
`handshakes_max` connections (`handshakes_per_host_max` from its address) are already in their handshake;
its TLS handshake (when TLS is on) and its node handshake must both end within `handshake_timeout_s` of the
accept; its frames may not announce more than `wire.HANDSHAKE_FRAME_MAX` bytes (checked on the length field,
before the body is read); its reader stops reading from the socket once 2 KiB wait unread. Only an
authenticated connection reads frames up to `wire.MAX_FRAME`, with a 64 KiB read buffer.

An HTTP client sent to the peer port by mistake (a `curl` or a browser given the wrong port) would see only a
closed connection. A first length field that is too large for a handshake frame anyway and spells the start
of an HTTP request line (`GET `, `POST ` ...: at most 4 more bytes read to tell) is answered with a plain
`HTTP/1.1 400 Bad Request` naming the node's HTTP address (`PeerLimits.http_addr`), then closed (counted in
`rejected` as `http_request`), within the same deadline and read buffer as any handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import random
import socket
import ssl
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from dsm.config import StorageConfig
from dsm.net import chunks, security, tls, wire
from dsm.net.quietlog import QuietLog, escape
from dsm.net.security import Channel, HandshakeError, Keyring
from dsm.net.wire import FrameError, UnknownType

log = logging.getLogger("dsm.net")

OnMessage = Callable[[str, Any], None]
#: Called as (addr, node_id, reason) on every failed outgoing connection attempt; `reason` is one of
#: CONNECT_FAILURES. `node_id` is the member dialled ("" for a bootstrap address whose id is unknown).
OnConnectFailure = Callable[[str, str, str], None]
#: Why an outgoing connection failed: the TCP connection could not be made ("refused": refused, or no
#: route); no answer in time ("timeout"); the peer does not hold our cluster secret ("wrong_secret"); the
#: peer is not the member dialled ("wrong_node"); the TLS handshake or certificate check failed ("tls");
#: the two nodes speak no protocol version in common ("version"); the peer closed the connection during the
#: handshake without saying why ("closed"); anything else wrong in the handshake ("handshake").
CONNECT_FAILURES = ("refused", "timeout", "wrong_secret", "wrong_node", "tls", "version", "closed", "handshake")


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
    #: Times a member dialled again over a silent connection, and ours to it were dialled again too.
    redials: int = 0


#: Read buffer of a connection before it is authenticated: the reader stops reading from the socket once
#: twice this waits unread (a handshake frame is at most HANDSHAKE_FRAME_MAX bytes).
HANDSHAKE_READ_LIMIT = 1024
#: Read buffer of an authenticated connection (reading pauses at twice this).
READ_LIMIT = 1 << 16
#: Most bytes of small frames joined into one write (`Transport._pump`).
COALESCE_BYTES = 1 << 16
#: How long sent bytes may stay unacknowledged before the kernel drops a peer connection (TCP_USER_TIMEOUT,
#: Linux). Without it a connection to a host that vanished without a reset (a pulled cable, a pod moved to
#: another IP under the same name) swallows every frame until the kernel gives up retransmitting, about
#: 15 minutes; with it the writer sees the connection fail and dials again (found by
#: tests/processes/test_hosts_netns.py). Well above any round trip and pause a live peer has.
TCP_USER_TIMEOUT_MS = 10_000
#: A member that dials this node again while its earlier connection here (dialled by this node's id) has
#: carried nothing for this long lost that connection (it restarted, or its host came back on another
#: address): our connections to it likely went the same way and are dialled again at once, instead of after
#: TCP_USER_TIMEOUT_MS (`Transport._dialled_again`). A member keeps one connection per address of this node
#: and dials again only once it lost one, so the wait only tells a connection it abandoned from one it is
#: still writing on (two processes under one id; two addresses of this node at one moment): short, since a
#: restarted node dials out within a second (0.5 s after its cable was pulled in the netns test).
SUPERSEDED_AFTER_S = 0.2


def bound_unacknowledged(writer: asyncio.StreamWriter) -> None:
    """Sets TCP_USER_TIMEOUT_MS on a peer connection's socket, where the platform has it."""
    sock = writer.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is not None and option is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, TCP_USER_TIMEOUT_MS)


@dataclass(frozen=True)
class PeerLimits:
    """Bounds on incoming peer connections (config: peer_handshake_timeout_ms, peer_handshakes_max,
    peer_handshakes_per_host_max, tls_require_node_id)."""

    #: Seconds from accept (or connect) to the end of the handshake, TLS included.
    handshake_timeout_s: float = 3.0
    #: Most incoming connections in their handshake at once; more are closed at once.
    handshakes_max: int = 128
    #: Most of those from one IP address.
    handshakes_per_host_max: int = 32
    #: Most incoming connections open at once, authenticated or not.
    incoming_max: int = 1024
    #: Whether a peer's TLS certificate must name a node id (`dsm.net.tls.NODE_ID_URI_PREFIX`).
    tls_require_node_id: bool = True
    #: The node's HTTP API (host:port, "" when unknown), named in the answer to an HTTP request that reached
    #: the peer port; `http_tls` says whether it is HTTPS.
    http_addr: str = ""
    http_tls: bool = False

    @classmethod
    def from_config(cls, config: StorageConfig) -> PeerLimits:
        return cls(
            handshake_timeout_s=config.peer_handshake_timeout_ms / 1000,
            handshakes_max=config.peer_handshakes_max,
            handshakes_per_host_max=config.peer_handshakes_per_host_max,
            tls_require_node_id=config.tls_require_node_id,
            http_addr=config.http_addr,
            http_tls=config.http_uses_tls,
        )


class _Reader(asyncio.StreamReader):
    def set_limit(self, limit: int) -> None:
        """Changes the read buffer bound (asyncio reads it at every feed and read)."""
        self._limit = limit


class _Gate(asyncio.Protocol):
    """The first protocol of every accepted connection: hands it to the transport to admit or close, before
    a byte is read (the event loop starts reading only after `connection_made`)."""

    def __init__(self, admit: Callable[[asyncio.Transport], None]) -> None:
        self._admit = admit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but have its methods.)
        self._admit(cast(asyncio.Transport, transport))


class _Handshaking:
    """An incoming connection still in its handshake: its address and deadline (loop time)."""

    __slots__ = ("deadline", "host", "released")

    def __init__(self, host: str, deadline: float) -> None:
        self.host = host
        self.deadline = deadline
        self.released = False


def split_addr(addr: str) -> tuple[str, int]:
    """("host", port) of "host:port" (IPv6 as "[::1]:7400")."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"not a host:port address: {addr!r}")
    return host.strip("[]"), int(port)


#: The request methods whose request line (method and space) an HTTP client opens a connection with: each
#: spells a length far above `wire.HANDSHAKE_FRAME_MAX`, so no handshake begins with one.
HTTP_METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ")


class HttpOnPeerPort(Exception):
    """The first bytes of an incoming connection are an HTTP request line, not a handshake frame."""


def http_hint(http_addr: str, https: bool) -> bytes:
    """The answer to an HTTP request on the peer port: a 400 whose one-line text names the HTTP API."""
    try:
        host, port = split_addr(http_addr)
    except ValueError:
        host, port = "", 0
    scheme = "https" if https else "http"
    if not port:  # not configured, or chosen by the system at start: not known here
        where = "the node's --http address (http_addr)"
    elif host in ("", "0.0.0.0", "::"):
        where = f"port {port} of this host ({scheme}://<this host>:{port})"
    else:
        where = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"
    text = f"this is a DSM peer port (node-to-node traffic); the HTTP API is on {where}\n".encode()
    head = (
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(text)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + text


async def read_first_frame(reader: asyncio.StreamReader) -> bytes:
    """The first handshake frame of an incoming connection (`read_frame` with the handshake bound).

    Raises:
        HttpOnPeerPort: the connection opened with an HTTP request line (at most 4 bytes more read to tell).
        FrameError: a length field out of bounds (anything else that is not a handshake).
    """
    prefix = await reader.readexactly(wire.LENGTH.size)
    try:
        length = wire.frame_length(prefix, wire.HANDSHAKE_FRAME_MAX)
    except FrameError:
        # Only a length refused anyway is looked at again: a handshake never reaches this.
        method = next((m for m in HTTP_METHODS if m.startswith(prefix)), None)
        if method is not None and await reader.readexactly(len(method) - len(prefix)) == method[len(prefix) :]:
            raise HttpOnPeerPort(method.decode().strip()) from None
        raise
    return await reader.readexactly(length)


async def read_frame(reader: asyncio.StreamReader, limit: int = wire.MAX_FRAME) -> bytes:
    """One frame's bytes after its length field; the length is checked against `limit` before the body is
    read."""
    length = wire.frame_length(await reader.readexactly(wire.LENGTH.size), limit)
    return await reader.readexactly(length)


class _Outbound:
    """The queue and writer task for one member at one address (the member "" when it is not known yet)."""

    __slots__ = ("addr", "failures", "idle", "node_id", "queue", "task", "wake", "writer")

    def __init__(self, addr: str, node_id: str) -> None:
        self.addr = addr
        self.node_id = node_id
        self.queue: deque[Any] = deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.failures = 0
        self.idle = False
        #: The connection it writes on, while it has one.
        self.writer: asyncio.StreamWriter | None = None


class _Incoming:
    """An authenticated incoming connection: its writer (to close it), when its last frame came, and whether its
    member dialled this node by id (else an address whose member it did not know: a bootstrap address)."""

    __slots__ = ("by_id", "heard", "writer")

    def __init__(self, writer: asyncio.StreamWriter, heard: float, by_id: bool) -> None:
        self.writer = writer
        self.heard = heard
        self.by_id = by_id


class _Lives:
    """The authenticated incoming connections by the member that opened them (`Transport._dialled_again`)."""

    def __init__(self, superseded_after_s: float) -> None:
        self.superseded_after_s = superseded_after_s
        self.by_member: dict[str, set[_Incoming]] = {}

    def opened(self, peer: str, conn: _Incoming) -> bool:
        """Registers `peer`'s new connection; closes and forgets its earlier ones dialled by this node's id that
        have been silent for `superseded_after_s`, and says whether there were any."""
        older = self.by_member.setdefault(peer, set())
        stale = [c for c in older if c.by_id and conn.heard - c.heard >= self.superseded_after_s]
        older.add(conn)
        for c in stale:
            older.discard(c)
            c.writer.transport.abort()
        return bool(stale)

    def closed(self, peer: str, conn: _Incoming) -> None:
        peers = self.by_member.get(peer)
        if peers is not None:
            peers.discard(conn)
            if not peers:
                del self.by_member[peer]


def source_address(listen: str, remote_host: str) -> tuple[str, int] | None:
    """The local address a connection to `remote_host` leaves from: the listening host (of `listen`), when it
    is a specific address of the same kind as the remote one, so that a node shows one address to its peers
    (on a multi-homed host, or to firewall rules that cut a partition); else the system's choice (None)."""
    try:
        local = ipaddress.ip_address(split_addr(listen)[0])
        remote = ipaddress.ip_address(remote_host)
    except ValueError:
        return None
    if local.is_unspecified or local.version != remote.version or local.is_loopback != remote.is_loopback:
        return None
    return (str(local), 0)


def version_after_refusal(
    exc: security.RefusedError, proposed: int, versions: tuple[int, int], addr: str
) -> int | None:
    """The version to propose again after the peer at `addr` refused `proposed`: the newest the refusal says
    the peer speaks, if this node (`versions`) speaks it too and it is older; None (give up) otherwise,
    logged with both ranges."""
    spoken = security.spoken(exc.detail) if "protocol version" in exc.detail else None
    if spoken is None:
        return None
    low, high = versions
    common = min(high, spoken[1])
    if common < proposed and common >= max(low, spoken[0]):
        log.info("peer %s speaks protocol versions %d-%d: speaking %d", addr, spoken[0], spoken[1], common)
        return common
    log.warning(
        "peer %s speaks protocol versions %d-%d, this node %d-%d: no version in common; upgrade one of them",
        addr, spoken[0], spoken[1], low, high,
    )  # fmt: skip
    return None


async def answer_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hint: bytes, deadline: float) -> None:
    """Writes the HTTP `hint` to a client that reached the peer port and ends the connection gracefully: our
    side closed after the answer, then what the client still sends discarded (at most the handshake read
    buffer, until the handshake deadline) so that closing does not reset the connection before the client
    read the answer."""
    # CancelledError: close() cancels the connection's task; it ends here, as in `Transport._serve`.
    with contextlib.suppress(OSError, RuntimeError, TimeoutError, ssl.SSLError, asyncio.CancelledError):
        writer.write(hint)
        if writer.can_write_eof():
            writer.write_eof()
        budget = 2 * HANDSHAKE_READ_LIMIT
        async with asyncio.timeout_at(deadline):
            await writer.drain()
            while budget > 0 and (chunk := await reader.read(budget)):
                budget -= len(chunk)


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
        idle_timeout: float = 60.0,
        max_failures: int = 6,
        backoff_min: float = 0.05,
        backoff_max: float = 5.0,
        limits: PeerLimits | None = None,
        write_buffer: int = 1 << 20,
        on_connect_failure: OnConnectFailure | None = None,
        max_message_bytes: int = chunks.MESSAGE_MAX_BYTES,
        reassembly_max_bytes: int = chunks.REASSEMBLY_MAX_BYTES,
        chunk_timeout: float = 30.0,
        versions: tuple[int, int] = (wire.MIN_PROTOCOL_VERSION, wire.PROTOCOL_VERSION),
        superseded_after_s: float = SUPERSEDED_AFTER_S,
    ) -> None:
        self.node_id = node_id
        #: The protocol versions it speaks (oldest, newest; `dsm.net.security`, "Versions"), and the version
        #: each peer address was last spoken to in (outgoing connections).
        self.versions = versions
        self.spoken: dict[str, int] = {}
        self.listen = listen
        self.on_message = on_message
        self.keyring = keyring if keyring is not None else Keyring()
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
        self.queue_max = queue_max
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_failures = max_failures
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.limits = limits if limits is not None else PeerLimits()
        #: The answer to an HTTP request that reached the peer port.
        self._http_hint = http_hint(self.limits.http_addr, self.limits.http_tls)
        self.write_buffer = write_buffer
        self.on_connect_failure = on_connect_failure
        #: Largest message (packed body) sent or accepted; one above `chunks.PART_BYTES` travels in chunks.
        self.max_message_bytes = max_message_bytes
        #: Bytes of chunked messages in reassembly on this node (room for one whole message at least).
        self.reassembly = chunks.Budget(max(reassembly_max_bytes, max_message_bytes))
        #: Longest wait for the next chunk of a message in reassembly, s (a stalled sender holds budget).
        self.chunk_timeout = chunk_timeout
        self._message_ids = 0
        self.stats = TransportStats()
        self.addr = listen
        self._out: dict[tuple[str, str], _Outbound] = {}
        #: Tasks serving incoming connections (and upgrading them to TLS).
        self._incoming: set[asyncio.Task[None]] = set()
        self._incoming_count = 0
        self._lives = _Lives(superseded_after_s)
        self._handshaking = 0
        self._handshaking_from: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._closed = False
        self._rng = random.Random()
        self._connected = 0
        #: Refused incoming connections: each counted in `stats.rejected`, logged once per interval per reason.
        self._refusals = QuietLog(log)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listens on `listen` (port 0: any free port; `addr` then holds the real one)."""
        host, port = split_addr(self.listen)
        loop = asyncio.get_running_loop()
        # Plain TCP even with TLS: the transport runs the TLS handshake itself (`_start_tls`), so that
        # connections in it are admitted, bounded and timed like any other unauthenticated connection.
        self._server = await loop.create_server(lambda: _Gate(self._admit), host, port)
        bound = self._server.sockets[0].getsockname()
        self.addr = f"{host}:{bound[1]}"

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
        # One queue and connection per (member, address): the handshake checks that the connection reached
        # the member dialled, so messages for one member never leave on a connection to another that took
        # its address. A bootstrap address ("" : member unknown) has its own, which goes idle once the
        # members are known by id.
        out = self._out.get((node_id, addr))
        if out is None:
            out = self._out[(node_id, addr)] = _Outbound(addr, node_id)
        if len(out.queue) >= self.queue_max:
            out.queue.popleft()
            self.stats.dropped["queue_full"] += 1
        out.queue.append(message)
        out.wake.set()
        if out.task is None or out.task.done():
            out.failures = 0
            out.task = asyncio.get_running_loop().create_task(self._writer(out), name=f"dsm-send-{node_id}@{addr}")

    def connections(self) -> tuple[int, int]:
        """(outgoing, incoming) connections open now."""
        return self._connected, self._incoming_count

    @property
    def handshaking(self) -> int:
        """Incoming connections in their handshake now."""
        return self._handshaking

    def queued(self, addr: str) -> int:
        """Messages waiting to be sent to `addr` (whichever member they are for)."""
        return sum(len(out.queue) for out in self._out.values() if out.addr == addr)

    async def _writer(self, out: _Outbound) -> None:
        while out.queue and not (self._closed and out.failures):
            try:
                reader, writer, channel = await dial(self, out.addr, out.node_id)
            # ValueError: a bad address, or a FrameError in the handshake.
            except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
                out.failures += 1
                self.stats.connect_failures += 1
                self._connect_failed(out, exc)
                if out.failures >= self.max_failures or self._closed:
                    log.info(
                        "peer %s unreachable (%s); dropping %d queued messages", out.addr, escape(exc), len(out.queue)
                    )
                    self.stats.dropped["unreachable"] += len(out.queue)
                    out.queue.clear()
                    return
                delay = min(self.backoff_max, self.backoff_min * 2 ** (out.failures - 1))
                await asyncio.sleep(delay * (0.5 + self._rng.random()))
                continue
            out.failures = 0
            out.writer = writer
            self._connected += 1
            try:
                await self._pump(out, reader, writer, channel)
            # RuntimeError: uvloop's way of refusing a write to a transport that closed meanwhile.
            except (OSError, ConnectionError, ssl.SSLError, RuntimeError) as exc:
                log.debug("connection to %s lost: %s", out.addr, exc)
            finally:
                self._connected -= 1
                out.writer = None
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

    async def _pump(
        self, out: _Outbound, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, channel: Channel
    ) -> None:
        stats = self.stats
        # Small frames queued together go out in one write (one system call, one segment, where each frame
        # on its own would cost one): they are joined here until the queue is empty, a large message comes,
        # or COALESCE_BYTES are waiting.
        pending: list[bytes] = []
        pending_bytes = 0
        while True:
            while out.queue:
                # The peer reset the connection, or closed it (it never writes after the handshake, so the end of
                # what it sends is a close, as at a clean stop; plain TCP keeps our half open): reconnect, keep
                # the queue, rather than write into a connection whose far end is gone.
                if writer.transport.is_closing() or reader.at_eof():
                    raise ConnectionResetError(f"connection to {out.addr} closed")
                message = wire.for_version(out.queue.popleft(), channel.version)
                kind = type(message).__name__
                type_id, body = wire.encode_body(message)
                if len(body) <= chunks.PART_BYTES:
                    frame = channel.encode(wire.Encoded(type_id, body))  # packed once, not again
                    pending.append(frame)
                    pending_bytes += len(frame)
                    stats.frames_out[kind] += 1
                    stats.bytes_out[kind] += len(frame)
                    if out.queue and pending_bytes < COALESCE_BYTES:
                        continue
                    writer.write(pending[0] if len(pending) == 1 else b"".join(pending))
                    pending.clear()
                    pending_bytes = 0
                    if writer.transport.get_write_buffer_size() > self.write_buffer:
                        await writer.drain()  # backpressure: the peer reads slower than we write
                    continue
                if pending:
                    writer.write(b"".join(pending))
                    pending.clear()
                    pending_bytes = 0
                if len(body) > self.max_message_bytes:
                    stats.dropped["too_large"] += 1
                    limit = self.max_message_bytes
                    log.warning("not sending a %s of %d bytes to %s (limit %d)", kind, len(body), out.addr, limit)
                    continue
                else:
                    # Chunks (`dsm.net.chunks`), back to back: only this task writes on the connection, so no
                    # other frame comes between them, whatever is queued meanwhile.
                    self._message_ids += 1
                    sent = 0
                    for chunk in chunks.split(self._message_ids, type_id, body):
                        if writer.transport.is_closing():
                            raise ConnectionResetError(f"connection to {out.addr} closed")
                        frame = channel.encode(chunk)
                        writer.write(frame)
                        sent += len(frame)
                        if writer.transport.get_write_buffer_size() > self.write_buffer:
                            await writer.drain()
                stats.frames_out[kind] += 1
                stats.bytes_out[kind] += sent
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

    # ------------------------------------------------------------------ receiving

    def _admit(self, raw: asyncio.Transport) -> None:
        """A connection just accepted, nothing read from it yet: admitted (its handshake starts) or closed."""
        peer = raw.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) else "?"
        limits = self.limits
        if self._closed:
            raw.abort()
            return
        if self._handshaking >= limits.handshakes_max or self._handshaking_from[host] >= limits.handshakes_per_host_max:
            self._refused(
                "too_many_handshakes",
                logging.WARNING,
                "closing a connection from %s at once: too many in their handshake",
                host,
            )
            raw.abort()
            return
        if self._incoming_count >= limits.incoming_max:
            self._refused(
                "too_many_connections", logging.WARNING, "closing a connection from %s at once: too many open", host
            )
            raw.abort()
            return
        loop = asyncio.get_running_loop()
        slot = _Handshaking(host, loop.time() + limits.handshake_timeout_s)
        self._handshaking += 1
        self._handshaking_from[host] += 1
        self._incoming_count += 1
        reader = _Reader(HANDSHAKE_READ_LIMIT, loop)
        protocol = asyncio.StreamReaderProtocol(reader, functools.partial(self._serve, slot), loop)
        if self.server_ssl is None:
            raw.set_protocol(protocol)
            protocol.connection_made(raw)  # reading starts now, into the small reader
            return
        raw.pause_reading()  # nothing is read before the TLS protocol takes the connection over
        task = loop.create_task(self._start_tls(raw, protocol, slot), name="dsm-tls-accept")
        self._incoming.add(task)
        task.add_done_callback(self._incoming.discard)

    def _release(self, slot: _Handshaking) -> None:
        """The connection of `slot` left its handshake (done, failed or closed)."""
        if slot.released:
            return
        slot.released = True
        self._handshaking -= 1
        self._handshaking_from[slot.host] -= 1
        if self._handshaking_from[slot.host] <= 0:
            del self._handshaking_from[slot.host]

    async def _start_tls(
        self, raw: asyncio.Transport, protocol: asyncio.StreamReaderProtocol, slot: _Handshaking
    ) -> None:
        loop = asyncio.get_running_loop()
        assert self.server_ssl is not None
        try:
            async with asyncio.timeout_at(slot.deadline):
                secured = await loop.start_tls(
                    raw,
                    protocol,
                    self.server_ssl,
                    server_side=True,
                    ssl_handshake_timeout=max(0.01, slot.deadline - loop.time()),
                )
        except (ssl.SSLError, OSError, TimeoutError, ValueError, asyncio.CancelledError) as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self._refused("tls_handshake", logging.INFO, "TLS handshake from %s failed: %r", slot.host, exc)
            raw.abort()
            self._release(slot)
            self._incoming_count -= 1
            return
        if secured is None:  # the connection went away meanwhile
            self._release(slot)
            self._incoming_count -= 1
            return
        protocol.connection_made(secured)  # starts `_serve` on the TLS stream

    async def _serve(self, slot: _Handshaking, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and isinstance(reader, _Reader)
        self._incoming.add(task)
        responder = security.Responder(self.keyring, self.node_id, self.versions)
        try:
            try:
                async with asyncio.timeout_at(slot.deadline):
                    channel = await self._accept(responder, reader, writer)
            finally:
                self._release(slot)
            reader.set_limit(READ_LIMIT)
            loop = asyncio.get_running_loop()
            conn = _Incoming(writer, loop.time(), responder.by_id)
            self._dialled_again(responder.peer_id, conn)
            try:
                await self._read_loop(responder.peer_id, reader, channel, conn)
            finally:
                self._lives.closed(responder.peer_id, conn)
        except HttpOnPeerPort as exc:
            # INFO: a person with the wrong port, not a member misbehaving.
            self._refused(
                "http_request", logging.INFO, "an HTTP %s request from %s on the peer port", exc, _peername(writer)
            )
            await answer_http(reader, writer, self._http_hint, slot.deadline)
        except FrameError as exc:
            # The claimed id is escaped although the wire checked it: it is the other side's word.
            peer = escape(responder.peer_id or "?")
            self._refused(
                exc.reason, logging.WARNING, "closing connection from %s (%s): %s", _peername(writer), peer, escape(exc)
            )
        except ssl.SSLError as exc:  # a bad TLS record after the handshake
            self._refused("tls", logging.WARNING, "closing connection from %s: %s", _peername(writer), escape(exc))
        except TimeoutError:
            # INFO, not WARNING: a member does not stall its handshake; scanners and floods do.
            self._refused(
                "handshake_timeout", logging.INFO, "closing connection from %s: no handshake in time", _peername(writer)
            )
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(security.refusal(HandshakeError("handshake_timeout", "no handshake in time")))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the peer went away (mid-frame or between frames)
        except asyncio.CancelledError:
            # close() cancels the readers. The task ends here, normally: on Python 3.11 asyncio's stream
            # callback would log a cancelled connection task as an error (fixed in 3.12).
            pass
        finally:
            self._incoming.discard(task)
            self._incoming_count -= 1
            writer.close()
            with contextlib.suppress(OSError, ConnectionError, ssl.SSLError, asyncio.CancelledError):
                await writer.wait_closed()

    def _dialled_again(self, peer: str, conn: _Incoming) -> None:
        """Registers `peer`'s new connection. Its earlier ones dialled by this node's id that have been silent
        for `superseded_after_s` (`_Lives`) are closed (it will not write on them again), and so are this node's
        connections to `peer` (each writer dials again and keeps its queue): a member that dials again, by id
        or through a bootstrap address, over such a connection has lost it, most likely in a restart or a move
        to another address under the same name, and our connections to its old life would swallow frames until
        TCP_USER_TIMEOUT_MS. A silent connection to a bootstrap address is not one: a joining member opens it
        before it knows this node's id, and its connection by id follows."""
        if not self._lives.opened(peer, conn):
            return
        self.stats.redials += 1
        for out in self._out.values():
            if out.node_id == peer and out.writer is not None:
                out.writer.transport.abort()
                out.wake.set()  # a writer waiting for messages sees its connection closed and dials again
        log.info("member %s dialled again over a silent connection: dialling it again too", escape(peer))

    def _refused(self, reason: str, level: int, message: str, *args: object) -> None:
        """Counts an incoming connection closed for `reason`; logs it unless one of its kind was just logged."""
        self.stats.rejected[reason] += 1
        self._refusals.log(level, reason, message, *args)

    async def _accept(
        self, responder: security.Responder, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Channel:
        """The responder's side of the handshake (`dsm.net.security`); a refused one is told why."""
        try:
            responder.receive(await read_first_frame(reader))
            # Under mutual TLS, the client certificate must name the node the initiator claims to be.
            tls.check_certificate(writer.get_extra_info("peercert"), responder.peer_id, self.limits.tls_require_node_id)
        except FrameError as exc:
            writer.write(security.refusal(exc, responder.version))
            raise
        writer.write(responder.reply())
        await writer.drain()
        if not responder.needs_confirm:
            return responder.channel
        return responder.confirm(await read_frame(reader, wire.HANDSHAKE_FRAME_MAX))

    async def _read_loop(self, peer: str, reader: asyncio.StreamReader, channel: Channel, conn: _Incoming) -> None:
        stats = self.stats
        clock = asyncio.get_running_loop().time
        incoming = chunks.Reassembly(self.max_message_bytes)
        held = 0  # bytes of the node's reassembly budget this connection holds
        chunked = 0  # wire bytes of the chunked message in reassembly
        try:
            while True:
                if incoming.active:
                    # The next chunk must come in time: a stalled sender would hold its budget for ever.
                    try:
                        async with asyncio.timeout(self.chunk_timeout):
                            frame = await read_frame(reader)
                    except TimeoutError:
                        raise chunks.ChunkError("chunk_timeout", f"no chunk within {self.chunk_timeout:g} s") from None
                else:
                    frame = await read_frame(reader)
                conn.heard = clock()
                try:
                    message = channel.decode(frame)
                except UnknownType:
                    if incoming.active:
                        raise chunks.ChunkError("chunk_sequence", "an unknown frame inside a chunked message") from None
                    stats.unknown_types += 1
                    continue
                size = len(frame) + wire.LENGTH.size
                if isinstance(message, wire.ChunkFirst | wire.ChunkNext):
                    if isinstance(message, wire.ChunkFirst):
                        need = incoming.begin(message)
                        # Backpressure: nothing more is read from this connection until the message fits.
                        await self.reassembly.acquire(need)
                        held, chunked = need, 0
                    chunked += size
                    done = incoming.add(message)
                    if done is None:
                        continue
                    try:
                        message = wire.decode_body(*done)
                    except UnknownType:
                        stats.unknown_types += 1
                        continue
                    finally:
                        done = None  # the body's buffer goes with its reservation
                        self.reassembly.release(held)
                        held = 0
                    size = chunked
                elif incoming.active:
                    raise chunks.ChunkError("chunk_sequence", f"a {type(message).__name__} inside a chunked message")
                kind = type(message).__name__
                stats.frames_in[kind] += 1
                stats.bytes_in[kind] += size
                try:
                    self.on_message(peer, message)
                except Exception:  # a bug above must not take the connection (and the node) down
                    log.exception("handling %s from %s failed", kind, peer)
        finally:
            if held:
                self.reassembly.release(held)


def connect_failure_reason(exc: BaseException) -> str:
    """The CONNECT_FAILURES reason of an exception raised while connecting and running the handshake."""
    if isinstance(exc, FrameError):
        return security.failure_code(exc)
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


async def dial(
    transport: Transport, addr: str, dialled: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Channel]:
    """A connection to `addr`, its handshake done in the newest protocol version both ends speak: ours
    first; after a refusal that names older versions this node also speaks, a new connection proposes the
    newest of them (the responder closed the first after its refusal)."""
    version = transport.versions[1]
    while True:
        try:
            return await _handshake(transport, addr, dialled, version)
        except security.RefusedError as exc:
            lower = version_after_refusal(exc, version, transport.versions, addr)
            if lower is None:
                raise
            version = lower


async def _handshake(
    transport: Transport, addr: str, dialled: str, version: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Channel]:
    """One connection to `addr` and the initiator's side of its handshake in `version` (`dsm.net.security`)."""
    host, port = split_addr(addr)
    connect = asyncio.open_connection(
        host,
        port,
        ssl=transport.client_ssl,
        limit=HANDSHAKE_READ_LIMIT,
        local_addr=source_address(transport.listen, host),
    )
    reader, writer = await asyncio.wait_for(connect, transport.connect_timeout)
    bound_unacknowledged(writer)
    transport.stats.connects += 1
    try:
        required = transport.limits.tls_require_node_id
        certificate = writer.get_extra_info("peercert") if transport.client_ssl is not None else None
        if dialled:  # the certificate must name the member dialled (before we say anything to it)
            tls.check_certificate(certificate, dialled, required)
        initiator = security.Initiator(transport.keyring, transport.node_id, dialled, version)
        writer.write(initiator.first_frame())
        async with asyncio.timeout(transport.limits.handshake_timeout_s):
            frame = await read_frame(reader, wire.HANDSHAKE_FRAME_MAX)
        channel, confirm = initiator.finish(frame)
        if not dialled:  # a bootstrap address: the certificate must name whoever answered
            tls.check_certificate(certificate, initiator.peer_id, required)
        writer.write(confirm)
        await writer.drain()
    except BaseException:
        writer.close()
        raise
    transport.spoken[addr] = version
    # This side only writes from here on (the responder sends nothing more), so its reader stays at the
    # small handshake bound: a peer that sent more would only pause our reading of it.
    return reader, writer, channel
