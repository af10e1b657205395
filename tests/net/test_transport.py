"""The TCP transport over real loopback sockets: delivery, secrets, garbage and oversized frames, dead peers."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dsm import ConfigError, StorageConfig
from dsm.core.messages import Ack, DataItem, Ping, Push
from dsm.net import security, wire
from dsm.net.quietlog import QuietLog, escape
from dsm.net.security import Keyring
from dsm.net.transport import PeerLimits, Transport, split_addr

pytestmark = pytest.mark.usefixtures("loopback_hosts")
SECRET = "transport-test-secret-0001"


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[str, Any]] = []
        self.event = asyncio.Event()

    def __call__(self, peer: str, message: Any) -> None:
        self.got.append((peer, message))
        self.event.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        async def loop() -> None:
            while len(self.got) < count:
                self.event.clear()
                await self.event.wait()

        await asyncio.wait_for(loop(), timeout)


async def make(node_id: str, host: str = "127.0.0.1", secret: str | None = None, **kw: Any) -> tuple[Transport, Inbox]:
    inbox = Inbox()
    t = Transport(node_id, f"{host}:0", inbox, Keyring(secret), **kw)
    await t.start()
    return t, inbox


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Transport, Inbox, Transport, Inbox]]:
    a, ia = await make("a", "127.0.0.1", SECRET)
    b, ib = await make("b", "127.0.0.2", SECRET)
    yield a, ia, b, ib
    await a.close()
    await b.close()


async def test_messages_arrive_in_order_both_ways(pair: tuple[Transport, Inbox, Transport, Inbox]) -> None:
    a, ia, b, ib = pair
    for seq in range(200):
        a.send("b", b.addr, Ping(seq, "a", "b", ()))
    b.send("a", a.addr, Ack(7, "b", ()))
    await ib.wait_for(200)
    await ia.wait_for(1)
    assert [m.seq for _, m in ib.got] == list(range(200))
    assert {peer for peer, _ in ib.got} == {"a"} and ia.got == [("b", Ack(7, "b", ()))]
    assert a.stats.frames_out["Ping"] == 200 and b.stats.frames_in["Ping"] == 200
    assert a.stats.connects == 1  # one connection carried them all


async def test_a_node_with_a_wrong_or_no_secret_cannot_inject() -> None:
    b, ib = await make("b", "127.0.0.2", SECRET)
    try:
        for secret in ("some-other-secret-xyz", None):
            x, _ = await make("x", "127.0.0.3", secret, max_failures=1)
            try:
                x.send("b", b.addr, Ping(1, "x", "b", ()))
                await asyncio.sleep(0.3)
            finally:
                await x.close()
        assert ib.got == []
        assert b.stats.rejected["auth"] == 2
        # b still serves members that hold the secret
        a, _ = await make("a", "127.0.0.1", SECRET)
        a.send("b", b.addr, Ping(2, "a", "b", ()))
        await ib.wait_for(1)
        await a.close()
    finally:
        await b.close()


async def raw(addr: str, data: bytes, read: bool = True, source: str | None = None) -> bytes:
    host, port = split_addr(addr)
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0) if source else None)
    writer.write(data)
    await writer.drain()
    got = await asyncio.wait_for(reader.read(), 5) if read else b""
    writer.close()
    return got


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        # 'GETX' read as a length: 1.2 GB (an HTTP request line is answered in HTTP: test_http_on_peer_port.py)
        (b"GETX / HTTP/1.1\r\nHost: x\r\n\r\n", "too_large"),
        (struct.pack(">I", wire.MAX_FRAME + 1), "too_large"),
        (struct.pack(">I", 2) + b"\x01\x00", "truncated"),
        (struct.pack(">I", 6) + wire.HEADER.pack(wire.PROTOCOL_VERSION, 0, 1) + b"\xc1\xc1", "bad_body"),
        (wire.encode_frame(Ping(1, "x", "b", ())), "handshake"),
    ],
)
async def test_garbage_closes_that_connection_only(data: bytes, reason: str) -> None:
    b, ib = await make("b", "127.0.0.2")
    a, _ = await make("a", "127.0.0.1")
    try:
        answer = await raw(b.addr, data)
        # Closed (read() returned at the end of the stream) after one plain Refuse frame saying why.
        length = wire.frame_length(answer[:4], wire.HANDSHAKE_FRAME_MAX)
        assert len(answer) == 4 + length
        assert wire.decode_frame(answer[4:]).code == "handshake"
        assert b.stats.rejected[reason] == 1, b.stats.rejected
        a.send("b", b.addr, Ping(5, "a", "b", ()))
        await ib.wait_for(1)
    finally:
        await a.close()
        await b.close()


async def test_a_frame_with_bad_fields_after_the_handshake_is_rejected_and_the_rest_serve() -> None:
    b, ib = await make("b", "127.0.0.2")
    try:
        hello = security.Initiator(Keyring(), "x", "b").first_frame()
        bad = struct.pack(">I", 4 + 3) + wire.HEADER.pack(wire.PROTOCOL_VERSION, 0, 1) + b"\x93\x01\x02\x03"
        unknown = struct.pack(">I", 4 + 1) + wire.HEADER.pack(wire.PROTOCOL_VERSION, 0, 999) + b"\x90"
        good = wire.encode_frame(Ping(9, "x", "b", ()))
        await raw(b.addr, hello + unknown + good + bad + good)
        assert [m.seq for _, m in ib.got] == [9]  # the frame after the bad one was not read
        assert b.stats.unknown_types == 1 and b.stats.rejected["bad_body"] == 1
    finally:
        await b.close()


async def test_unreachable_peer_drops_its_queue_after_retries_and_a_restarted_peer_is_reached() -> None:
    a, _ = await make("a", "127.0.0.1", max_failures=3, backoff_min=0.01)
    b, ib = await make("b", "127.0.0.2")
    addr = b.addr
    await b.close()
    try:
        for seq in range(5):
            a.send("b", addr, Ping(seq, "a", "b", ()))
        for _ in range(100):
            if a.stats.dropped["unreachable"]:
                break
            await asyncio.sleep(0.02)
        assert a.stats.dropped["unreachable"] == 5 and a.queued(addr) == 0
        b2 = Transport("b", addr, ib)
        await b2.start()
        a.send("b", addr, Ping(99, "a", "b", ()))
        await ib.wait_for(1)
        assert ib.got[-1][1].seq == 99
        await b2.close()
    finally:
        await a.close()


async def test_a_member_that_dials_again_over_a_silent_connection_is_dialled_again_too() -> None:
    """A pod rescheduled under its name: its new life dials b (here through b's address as a bootstrap address,
    as a restarted node joins) while b's connection from its old life, dialled by b's id, has gone silent; b
    closes that one and its own connections to the member (they would reach the old life, or nothing), and its
    writer dials again, keeping its queue. Neither a second connection beside a live one nor a joining member's
    connection by id after its silent one to a bootstrap address is taken for a new life."""
    a, ia = await make("a", "127.0.0.1", SECRET)
    b, ib = await make("b", "127.0.0.2", SECRET, superseded_after_s=0.3)
    others: list[Transport] = []
    try:
        a.send("b", b.addr, Ping(1, "a", "b", ()))
        b.send("a", a.addr, Ack(1, "b", ()))
        await ib.wait_for(1)
        await ia.wait_for(1)
        assert b.stats.connects == 1

        # Beside a connection that is talking: not a new life.
        async def chatter() -> None:
            for seq in range(100, 120):
                a.send("b", b.addr, Ping(seq, "a", "b", ()))
                await asyncio.sleep(0.02)

        talking = asyncio.ensure_future(chatter())
        await asyncio.sleep(0.05)
        twin, _ = await make("a", "127.0.0.4", SECRET)
        others.append(twin)
        twin.send("b", b.addr, Ping(2, "a", "b", ()))
        await talking
        await ib.wait_for(22)
        assert b.stats.redials == 0

        # A member joining: its connection to b's address as a bootstrap address goes silent, then it dials b by
        # id. Not a new life.
        joining, _ = await make("c", "127.0.0.5", SECRET)
        others.append(joining)
        joining.send("", b.addr, Ping(5, "c", "b", ()))
        await ib.wait_for(23)
        await asyncio.sleep(0.5)
        joining.send("b", b.addr, Ping(6, "c", "b", ()))
        await ib.wait_for(24)
        assert b.stats.redials == 0

        # a's connections are silent by now (its old life); its new life dials b through a bootstrap address.
        reborn, _ = await make("a", "127.0.0.3", SECRET)
        others.append(reborn)
        reborn.send("", b.addr, Ping(3, "a", "b", ()))
        await ib.wait_for(25)
        assert b.stats.redials == 1
        b.send("a", a.addr, Ack(2, "b", ()))  # b's writer dials again (here, the old life still answers)
        await ia.wait_for(2)
        assert b.stats.connects == 2 and ia.got[-1] == ("b", Ack(2, "b", ()))
        # b closed a's silent connections (the first one's and the twin's): the new life's and c's two are open.
        for _ in range(100):
            if b.connections()[1] == 3:
                break
            await asyncio.sleep(0.02)
        assert b.connections()[1] == 3
    finally:
        for t in (a, b, *others):
            await t.close()


async def test_a_message_after_the_peer_closed_cleanly_goes_on_a_new_connection() -> None:
    """The peer stopped cleanly (its FIN arrived; plain TCP keeps our half of the connection open) and its next
    life listens at the same address: the next message is not written into the old connection (where it would
    be lost), the writer dials again first."""
    a, _ = await make("a", "127.0.0.1", SECRET)
    b, ib = await make("b", "127.0.0.2", SECRET)
    addr = b.addr
    try:
        a.send("b", addr, Ping(1, "a", "b", ()))
        await ib.wait_for(1)
        await b.close()
        inbox = Inbox()
        b2 = Transport("b", addr, inbox, Keyring(SECRET))
        await b2.start()
        try:
            await asyncio.sleep(0.2)  # b's FIN reaches a
            a.send("b", addr, Ping(2, "a", "b", ()))
            await inbox.wait_for(1, timeout=3)
            assert inbox.got == [("a", Ping(2, "a", "b", ()))] and a.stats.connects == 2
        finally:
            await b2.close()
    finally:
        await a.close()


async def test_a_full_queue_drops_its_oldest_messages() -> None:
    a, _ = await make("a", "127.0.0.1", queue_max=10, connect_timeout=5)
    try:
        for seq in range(25):  # nothing listens there: the writer is still connecting
            a.send("z", "127.0.0.9:9", Ping(seq, "a", "z", ()))
        assert a.queued("127.0.0.9:9") == 10
        assert a.stats.dropped["queue_full"] == 15
    finally:
        await a.close(flush_timeout=0.1)


async def test_large_frames_and_backpressure() -> None:
    a, _ = await make("a", "127.0.0.1", SECRET, write_buffer=1 << 16)
    b, ib = await make("b", "127.0.0.2", SECRET)
    try:
        item = DataItem(1, "k", b"x" * 500_000)
        for _ in range(20):
            a.send("b", b.addr, Push("a", 0, (item,)))
        await ib.wait_for(20, timeout=20)
        assert all(m.items[0].versions == item.versions for _, m in ib.got)
        # Above the largest message (not the frame: a larger message travels in chunks, tests/net/test_chunks.py).
        huge = DataItem(2, "k", b"x" * (a.max_message_bytes + 1))
        a.send("b", b.addr, Push("a", 0, (huge,)))
        a.send("b", b.addr, Ping(1, "a", "b", ()))
        await ib.wait_for(21)
        assert a.stats.dropped["too_large"] == 1
    finally:
        await a.close()
        await b.close()


async def test_every_failed_outgoing_connection_is_reported_with_its_reason() -> None:
    failures: list[tuple[str, str, str]] = []

    def failed(addr: str, node_id: str, reason: str) -> None:
        failures.append((addr, node_id, reason))

    # A listener that accepts and never answers the handshake.
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.9", 0)
    silent = f"127.0.0.9:{server.sockets[0].getsockname()[1]}"
    b, _ = await make("b", "127.0.0.2")
    closed = b.addr
    await b.close()  # nothing listens there any more
    a, _ = await make(
        "a",
        "127.0.0.1",
        max_failures=2,
        backoff_min=0.01,
        limits=PeerLimits(handshake_timeout_s=0.2),
        on_connect_failure=failed,
    )
    try:
        a.send("b", closed, Ping(1, "a", "b", ()))
        a.send("", silent, Ping(2, "a", "", ()))
        for _ in range(300):
            if a.stats.dropped["unreachable"] == 2:
                break
            await asyncio.sleep(0.02)
        assert set(failures) == {(silent, "", "timeout"), (closed, "b", "refused")}
        assert len(failures) == 4 and a.stats.connect_failure_reasons == {"timeout": 2, "refused": 2}
    finally:
        await a.close()
        server.close()
        await server.wait_closed()


async def test_a_refused_handshake_tells_the_initiator_why() -> None:
    failures: list[tuple[str, str, str]] = []
    b, ib = await make("b", "127.0.0.2", SECRET)
    try:
        for node_id, secret, dialled in (("x", "some-other-secret-xyz", "b"), ("y", None, "b"), ("a", SECRET, "c")):
            t, _ = await make(
                node_id, "127.0.0.1", secret, max_failures=1, on_connect_failure=lambda *f: failures.append(f)
            )
            try:
                t.send(dialled, b.addr, Ping(1, node_id, dialled, ()))
                for _ in range(200):
                    if t.stats.connect_failures:
                        break
                    await asyncio.sleep(0.01)
            finally:
                await t.close()
        assert failures == [(b.addr, "b", "wrong_secret"), (b.addr, "b", "wrong_secret"), (b.addr, "c", "wrong_node")]
        assert ib.got == [] and b.stats.rejected == {"auth": 2, "wrong_node": 1}
    finally:
        await b.close()


async def test_the_initiator_raises_the_responders_reason() -> None:
    b, _ = await make("b", "127.0.0.2", SECRET)
    try:
        host, port = split_addr(b.addr)
        for dialled, code in (("c", "wrong_node"), ("b", "wrong_secret")):
            reader, writer = await asyncio.open_connection(host, port)
            keyring = Keyring(SECRET if dialled == "c" else "some-other-secret-xyz")
            initiator = security.Initiator(keyring, "x", dialled)
            writer.write(initiator.first_frame())
            answer = await reader.read()
            writer.close()
            with pytest.raises(security.RefusedError) as caught:
                initiator.finish(answer[4:])
            assert caught.value.code == code
    finally:
        await b.close()


async def test_unauthenticated_connections_are_bounded_in_number_size_and_time() -> None:
    limits = PeerLimits(handshake_timeout_s=0.5, handshakes_max=6, handshakes_per_host_max=3)
    b, ib = await make("b", "127.0.0.2", SECRET, limits=limits)
    host, port = split_addr(b.addr)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        # Three silent connections from one host take its share; a fourth is closed at once, unread.
        for _ in range(3):
            held.append(await asyncio.open_connection(host, port, local_addr=("127.0.0.9", 0)))
        for _ in range(100):
            if b.handshaking == 3:
                break
            await asyncio.sleep(0.01)
        assert b.handshaking == 3
        assert await asyncio.wait_for(raw(b.addr, b"", source="127.0.0.9"), 2) == b""
        assert b.stats.rejected["too_many_handshakes"] == 1
        # A member from another host still gets in meanwhile.
        a, _ = await make("a", "127.0.0.1", SECRET)
        a.send("b", b.addr, Ping(1, "a", "b", ()))
        await ib.wait_for(1)
        await a.close()
        # A handshake frame may announce at most HANDSHAKE_FRAME_MAX bytes: refused on the length alone.
        answer = await asyncio.wait_for(raw(b.addr, wire.LENGTH.pack(wire.HANDSHAKE_FRAME_MAX + 1)), 2)
        assert wire.decode_frame(answer[4:]).code == "handshake" and b.stats.rejected["too_large"] == 1
        # The silent ones are told and closed at the deadline.
        for reader, _ in held:
            answer = await asyncio.wait_for(reader.read(), 5)
            assert "no handshake in time" in wire.decode_frame(answer[4:]).detail
        assert b.stats.rejected["handshake_timeout"] == 3 and b.handshaking == 0
    finally:
        for _, writer in held:
            writer.close()
        await b.close()


def test_admission_and_the_handshake_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def run() -> None:
        a, ia = await make("a", "127.0.0.1", SECRET)
        b, ib = await make("b", "127.0.0.2", SECRET, limits=PeerLimits(handshakes_per_host_max=1))
        try:
            a.send("b", b.addr, Ping(1, "a", "b", ()))
            b.send("a", a.addr, Ping(2, "b", "a", ()))
            await ib.wait_for(1)
            await ia.wait_for(1)
            assert ib.got[0][0] == "a" and ia.got[0][0] == "b"
        finally:
            await a.close()
            await b.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


def test_peer_limits_come_from_the_configuration() -> None:
    config = StorageConfig.load(
        env={
            "DSM_PEER_HANDSHAKE_TIMEOUT_MS": "2500",
            "DSM_PEER_HANDSHAKES_MAX": "64",
            "DSM_PEER_HANDSHAKES_PER_HOST_MAX": "8",
            "DSM_TLS_REQUIRE_NODE_ID": "false",
        }
    )
    limits = PeerLimits.from_config(config)
    assert (limits.handshake_timeout_s, limits.handshakes_max, limits.handshakes_per_host_max) == (2.5, 64, 8)
    assert not limits.tls_require_node_id
    # The defaults agree (the HTTP address, named to HTTP clients on the peer port, is the config's alone).
    assert PeerLimits.from_config(StorageConfig()) == PeerLimits(http_addr=StorageConfig().http_addr)
    for field, value in (("peer_handshake_timeout_ms", 50), ("peer_handshakes_max", 0), ("tls_require_node_id", 1)):
        with pytest.raises(ConfigError) as caught:
            StorageConfig(**{field: value})  # type: ignore[arg-type]
        assert caught.value.field == field


def test_quiet_log_logs_one_line_per_interval_per_reason_and_tells_how_many_it_kept_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    quiet = QuietLog(logging.getLogger("dsm.test.quiet"), interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="dsm.test.quiet"):
        logged = [quiet.log(logging.WARNING, "too_large", "refused %s", i) for i in range(100)]
        assert quiet.log(logging.WARNING, "auth", "refused for the secret")  # another reason has its own line
        now[0] = 10.0
        assert quiet.log(logging.WARNING, "too_large", "refused %s", "again")
    assert logged == [True] + [False] * 99
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0",
        "refused for the secret",
        "refused again (99 more of these since the last one logged, 10 s ago)",
    ]


def test_escape_keeps_what_is_printable_and_quotes_the_rest() -> None:
    assert escape("n1 is 'ok'") == "n1 is 'ok'"
    assert escape("n9\n2024 WARNING forged") == repr("n9\n2024 WARNING forged")
    assert "\n" not in escape("a\nb\rc\x1bd\u2028e")


async def test_a_burst_of_refused_handshakes_is_counted_every_time_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    b, _ = await make("b", "127.0.0.2", SECRET)
    forged = "n9\n2024-01-01 00:00:00,000 WARNING dsm.net: member n3 dead"
    burst = 50
    try:
        with caplog.at_level(logging.DEBUG, logger="dsm.net"):
            for _ in range(burst):
                answer = await raw(b.addr, b"\xff\xff\xff\xff")
                assert wire.decode_frame(answer[4:]).code == "handshake"
            for _ in range(burst):  # a claimed id that would start a log line of its own, with the secret
                answer = await raw(b.addr, security.Initiator(Keyring(SECRET), forged, "").first_frame())
                assert isinstance(wire.decode_frame(answer[4:]), wire.Refuse)
        assert b.stats.rejected["too_large"] == burst and b.stats.rejected["bad_field"] == burst
        refusals = [r.getMessage() for r in caplog.records if r.name == "dsm.net"]
        assert len(refusals) == 2, refusals  # one line per reason
        assert not any("member n3" in line or "\n" in line for line in refusals), refusals
    finally:
        await b.close()
