"""Protocol versions between real transports over loopback TCP (`dsm.net.security`, "Versions"): two nodes
speak the newest version both speak; a node that proposes a version the peer does not speak proposes again
the newest they share; without one in common the connection fails with the reason `version`, logged with
both ranges. The refusal of a node of v0.1.0 (which spoke exactly 2) is understood too."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from dsm.core.messages import DataItem, DirectPush, Ping, Push
from dsm.net import security
from dsm.net.security import Keyring
from dsm.net.transport import Transport

pytestmark = pytest.mark.usefixtures("loopback_hosts")
SECRET = "versions-test-secret-0001"


async def node(
    node_id: str, host: str, versions: tuple[int, int], secret: str | None = SECRET
) -> tuple[Transport, list[Any]]:
    got: list[Any] = []
    failures: list[str] = []
    t = Transport(
        node_id, f"{host}:0", lambda peer, message: got.append(message), Keyring(secret), versions=versions,
        on_connect_failure=lambda addr, dialled, reason: failures.append(reason),
    )  # fmt: skip
    t.failures = failures  # type: ignore[attr-defined]
    await t.start()
    return t, got


async def exchange(a: Transport, b: Transport, got_b: list[Any]) -> None:
    a.send("b", b.addr, Ping(1, "a", "b", ()))
    for _ in range(500):
        if got_b:
            return
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("secret", [SECRET, None], ids=["noise", "plain"])
@pytest.mark.parametrize(
    ("a_versions", "b_versions", "spoken"),
    [((2, 2), (2, 2), 2), ((2, 3), (2, 3), 3), ((2, 3), (2, 2), 2), ((2, 2), (2, 3), 2), ((2, 4), (1, 3), 3)],
)
async def test_two_nodes_speak_the_newest_version_both_speak(
    a_versions: tuple[int, int], b_versions: tuple[int, int], spoken: int, secret: str | None
) -> None:
    a, _ = await node("a", "127.0.0.1", a_versions, secret)
    b, got_b = await node("b", "127.0.0.2", b_versions, secret)
    try:
        await exchange(a, b, got_b)
        assert got_b == [Ping(1, "a", "b", ())]
        assert a.spoken[b.addr] == spoken
    finally:
        await a.close()
        await b.close()


async def test_without_a_version_in_common_the_connection_fails_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    a, _ = await node("a", "127.0.0.1", (3, 3))
    b, got_b = await node("b", "127.0.0.2", (2, 2))
    try:
        with caplog.at_level(logging.INFO):
            await exchange(a, b, got_b)
            for _ in range(300):
                if "version" in a.failures:  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.01)
        assert got_b == []
        assert "version" in a.failures  # type: ignore[attr-defined]
        assert b.stats.rejected["bad_version"] >= 1
        assert any("no version in common" in r.getMessage() and "2-2" in r.getMessage() for r in caplog.records)
        assert any("protocol version 3 proposed (this node speaks 2)" in r.getMessage() for r in caplog.records)
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize(("b_versions", "expected"), [((2, 3), "direct"), ((2, 2), "push")])
async def test_a_direct_push_reaches_a_node_of_protocol_2_as_the_push_it_knows(
    b_versions: tuple[int, int], expected: str
) -> None:
    """`DirectPush` is new in protocol 3; on a connection that speaks 2 it goes as a `Push` from its coordinator
    (hops 0), which a node of 2 keeps and passes on down its tree as before."""
    items = (DataItem(7, "k", b"versions"),)
    a, _ = await node("a", "127.0.0.1", (2, 3))
    b, got_b = await node("b", "127.0.0.2", b_versions)
    try:
        a.send("b", b.addr, DirectPush("a", items))
        for _ in range(500):
            if got_b:
                break
            await asyncio.sleep(0.01)
        assert got_b == [DirectPush("a", items) if expected == "direct" else Push("a", 0, items)]
        assert a.spoken[b.addr] == b_versions[1]
        assert a.stats.frames_out["DirectPush" if expected == "direct" else "Push"] == 1
    finally:
        await a.close()
        await b.close()


def test_the_versions_a_refusal_names_are_read_back_from_both_wordings() -> None:
    assert security.spoken("protocol version 3 (this node speaks 2)") == (2, 2)  # v0.1.0
    assert security.spoken("protocol version 4 proposed (this node speaks 2-3)") == (2, 3)
    assert security.spoken("the handshake does not open") is None
