"""Keys that expire, on real `dsm node run` processes: `dsm put --ttl` on node A; the key reaches node B, then
reads as absent on both once its expiry passes (each node by its own wall clock), while a key without a TTL
stays; a watch on node B reports the expiry of a key written on node A; a bad `--ttl` is refused by the
command line before anything is sent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dsm.client import AsyncClient
from procs import Proc, eventually, holds, procs_fixture  # noqa: F401 (the `procs` fixture)

pytestmark = pytest.mark.usefixtures("loopback_hosts")


def dsm(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | {"DSM_NODE_URL": url}
    return subprocess.run([sys.executable, "-m", "dsm.cli", *args], capture_output=True, text=True, env=env, timeout=30)


def test_a_bad_ttl_is_refused_by_the_command_line() -> None:
    bad = dsm("put", "k", "v", "--ttl", "30 parsecs", url="http://127.0.0.1:9")
    assert bad.returncode == 2 and "is not a duration" in bad.stderr


@pytest.mark.slow
def test_a_key_put_with_a_ttl_on_one_node_reads_absent_on_another_after_expiry(
    procs: list[Proc], tmp_path: Path
) -> None:
    a = Proc("ta", "127.0.0.1", tmp_path, [])
    procs.append(a)
    b = Proc("tb", "127.0.0.2", tmp_path, [a.listen])
    procs.append(b)
    eventually(lambda: all(len([m for m in p.client.members() if m["state"] == "alive"]) == 2 for p in procs))

    # Refused (409 feature_unavailable) until a holds b's features record, which spreads like a write.
    eventually(lambda: dsm("put", "session/1", "alive", "--ttl", "4s", url=a.url).returncode == 0, timeout=10)
    a.client.put("session/2", b"kept")
    eventually(lambda: holds(b, "session/1", b"alive") and holds(b, "session/2", b"kept"), timeout=10)
    eventually(lambda: b.client.get("session/1") is None, timeout=15)
    assert a.client.get("session/1") is None
    assert holds(a, "session/2", b"kept") and holds(b, "session/2", b"kept")
    assert b.client.list("session/").keys == ["session/2"]


@pytest.mark.slow
def test_a_watch_on_another_node_reports_the_expiry(procs: list[Proc], tmp_path: Path) -> None:
    a = Proc("wa", "127.0.0.1", tmp_path, [])
    procs.append(a)
    b = Proc("wb", "127.0.0.2", tmp_path, [a.listen])
    procs.append(b)
    eventually(lambda: all(len([m for m in p.client.members() if m["state"] == "alive"]) == 2 for p in procs))
    # TTL writes are refused (409 feature_unavailable) until a holds b's features record.
    eventually(lambda: dsm("put", "w/probe", "p", "--ttl", "1h", url=a.url).returncode == 0, timeout=10)

    async def watch() -> list[dict[str, Any]]:
        async with AsyncClient(a.url) as writer, AsyncClient(b.url) as reader:
            stream = reader.watch("w/s")
            await stream.start()
            ack = await writer.put("w/s1", b"v", ttl_ms=3_000)
            seen: list[dict[str, Any]] = []
            try:
                async with asyncio.timeout(60):
                    async for event in stream:
                        seen.append(event)
                        if event.get("expired"):
                            break
            finally:
                await stream.aclose()
            assert all(event.get("timestamp") == ack.timestamp for event in seen)
            return seen

    seen = asyncio.run(watch())
    assert [(e["key"], e["expired"], e["deleted"], e["writer"]) for e in seen] == [
        ("w/s1", False, False, "wa"),  # replicated to b
        ("w/s1", True, True, "wa"),  # then absent by expiry, on b's clock
    ]
    assert b.client.get("w/s1") is None
