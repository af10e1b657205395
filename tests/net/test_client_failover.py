"""The clients' endpoints, retries and failover (dsm.clientcore's rules) against real `dsm node run` processes
and real sockets: a dead address before a live node, a node restarted while a read waits, a node that has
not joined its cluster, and a server that closes each connection after reading the request (the answer of a
write lost on the way), where a conditional write must be sent once and surface as an unknown outcome."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest

from dsm.client import AnswerLostError, AsyncClient, Client, OutcomeUnknownError, ReadResult, UnreachableError
from procs import Proc, eventually, procs_fixture  # noqa: F401 (the `procs` fixture)
from support import Hangup


def _dead_url() -> str:
    """The URL of a loopback port nobody listens on (bound, then closed: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def node(tmp_path: Path, procs: list[Proc]) -> Proc:
    p = Proc("f1", "127.0.0.1", tmp_path, [])
    procs.append(p)
    return p


def test_a_dead_endpoint_first_moves_the_client_on_to_the_live_node(node: Proc) -> None:
    dead = _dead_url()
    with Client([dead, node.url], retries=0) as client:
        assert client.endpoints == (dead, node.url) and client.url == dead
        ack = client.put("k", b"v")
        assert client.extra_attempts == 1 and client.url == node.url  # the next call starts at the live one
        got = client.get("k")
        assert got is not None and got.value == b"v" and got.context == ack.context
        # Nothing was sent to the dead address: a conditional write may move on too.
        client2 = Client([dead, node.url], retries=0)
        assert client2.put("c", b"1", if_absent=True).key == "c"
        assert client2.extra_attempts == 1
        client2.close()
        assert client.extra_attempts == 1

    async def run() -> None:
        async with AsyncClient([dead, node.url], retries=0) as client:
            got = await client.get("k")
            assert got is not None and got.value == b"v" and client.extra_attempts == 1
            assert (await client.put("a", b"1", if_absent=True)).key == "a"
            assert client.extra_attempts == 1

    asyncio.run(run())
    with Client([dead], retries=1, backoff_s=0.01) as alone, pytest.raises(UnreachableError):
        alone.get("k")


def test_an_idempotent_read_is_retried_across_a_node_restart(tmp_path: Path, procs: list[Proc]) -> None:
    first = Proc("r1", "127.0.0.1", tmp_path, [])
    procs.append(first)
    first.client.put("k", b"kept")
    http = first.http
    assert first.stop() == 0
    client = Client(f"http://{http}", retries=100_000, backoff_s=0.01, backoff_max_s=0.1)
    got: list[ReadResult | BaseException | None] = []

    def read() -> None:
        try:
            got.append(client.get("k"))
        except BaseException as exc:  # handed to the test
            got.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        eventually(lambda: client.extra_attempts >= 1 or got, 30)  # the read met the stopped node
        assert not got, got
        again = Proc("r1", "127.0.0.1", tmp_path, [], extra=["--http", http])
        procs.append(again)
        assert again.http == http
    finally:
        reader.join(60)
    client.close()
    assert len(got) == 1 and isinstance(got[0], ReadResult) and got[0].value == b"kept", got


def test_a_conditional_write_is_sent_once_when_its_connection_drops(node: Proc) -> None:
    hangup = Hangup()
    try:
        with Client([hangup.url, node.url], retries=0) as client:
            # A read and a plain write whose answers were lost are sent again, to the next endpoint.
            assert client.put("plain", b"1").key == "plain"
            assert hangup.requests == 1 and client.url == node.url
        with Client([hangup.url, node.url], retries=3, backoff_s=0.01) as client:
            got = client.get("plain")
            assert got is not None and got.value == b"1" and hangup.requests == 2
        for attempt in (
            lambda c: c.put("cas", b"x", if_absent=True),
            lambda c: c.put("cas", b"x", if_match=got.context),
            lambda c: c.put("cas", b"x", consistency="linearizable"),
            lambda c: c.delete("plain", if_match=got.context),
        ):
            before = hangup.requests
            with Client([hangup.url, node.url], retries=3, backoff_s=0.01) as client:
                with pytest.raises(AnswerLostError) as caught:
                    attempt(client)
                assert client.extra_attempts == 0
            assert hangup.requests == before + 1  # sent once, to the first endpoint only
            assert isinstance(caught.value, OutcomeUnknownError) and isinstance(caught.value, UnreachableError)
            assert caught.value.code == "outcome_unknown" and "may or may not have taken effect" in str(caught.value)
        # None of them reached the node.
        assert node.client.get("cas") is None
        still = node.client.get("plain")
        assert still is not None and still.value == b"1"

        async def run() -> None:
            async with AsyncClient([hangup.url, node.url], retries=3, backoff_s=0.01) as client:
                before = hangup.requests
                with pytest.raises(AnswerLostError):
                    await client.put("cas", b"y", if_absent=True)
                assert hangup.requests == before + 1
                assert (await client.put("plain", b"2")).key == "plain"  # moves on to the node
                assert hangup.requests == before + 2

        asyncio.run(run())
        assert node.client.get("cas") is None
    finally:
        hangup.close()


def test_a_node_that_has_not_joined_hands_the_request_to_the_next_endpoint(
    tmp_path: Path, procs: list[Proc], node: Proc
) -> None:
    # A node whose only bootstrap address is dead waits to join: it refuses every level above `local`.
    waiting = Proc("w1", "127.0.0.1", tmp_path, [_dead_url().removeprefix("http://")], until="waiting")
    procs.append(waiting)
    with Client(waiting.url, retries=0) as alone, pytest.raises(Exception, match="not joined") as caught:
        alone.put("q", b"v", consistency="quorum")
    assert getattr(caught.value, "status", None) == 503 and getattr(caught.value, "cause", None) == "not_joined"
    with Client([waiting.url, node.url], retries=0) as client:
        assert client.put("q", b"v", consistency="quorum").key == "q"
        assert client.url == node.url and client.extra_attempts == 1
    with Client([waiting.url, node.url], retries=0) as client:
        assert client.put("q2", b"v", if_absent=True).key == "q2"  # the refusal said nothing was written
        assert client.url == node.url and client.extra_attempts == 1
