"""Durability across kill -9: a real writer process is killed with SIGKILL after acknowledged writes.

The writer prints a write only after `put` returned. After the kill the store is reopened and every
acknowledged write must be there: each unique key with its value, and each overwritten key at least at
its last acknowledged sequence number (a write in flight at the kill may or may not have landed).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsm import StorageConfig, StorageFactory

HELPER = Path(__file__).parents[1] / "helpers" / "ack_writer.py"


def run_and_kill(url: str, durability: str, writers: int, acks_before_kill: int) -> dict[int, int]:
    """Starts the writer, waits for some acknowledgements, SIGKILLs it; returns the last seq acked per writer."""
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), url, durability, str(writers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: dict[int, int] = {}
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip() == "ready", first + (proc.stderr.read() if proc.stderr else "")
        count = 0
        deadline = time.monotonic() + 60
        while count < acks_before_kill:
            line = proc.stdout.readline()
            assert line, "writer exited early: " + (proc.stderr.read() if proc.stderr else "")
            _, j, seq = line.split()
            acked[int(j)] = max(acked.get(int(j), 0), int(seq))
            count += 1
            assert time.monotonic() < deadline, "writer too slow"
        os.kill(proc.pid, signal.SIGKILL)
        # Acknowledgements already written to the pipe before the kill count too.
        for line in proc.stdout:
            _, j, seq = line.split()
            acked[int(j)] = max(acked.get(int(j), 0), int(seq))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    return acked


async def check_acknowledged(url: str, acked: dict[int, int]) -> None:
    factory = StorageFactory(StorageConfig(listen_addr="", node_id="victim", storage_url=url))
    async with await factory.create_epidemic_storage(backing_storage=factory.create_sql_storage()) as storage:
        for j, last in acked.items():
            overwritten = await storage.get(f"w{j}")
            assert overwritten is not None and int(overwritten.value) >= last, (j, last, overwritten)
            for seq in range(1, last + 1):
                unique = await storage.get(f"u{j}-{seq}")
                assert unique is not None and unique.value == f"{j}:{seq}".encode(), (j, seq)
        # The node still takes writes after the crash.
        await storage.put("after-crash", b"ok")
        assert (await storage.get("after-crash")).value == b"ok"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("durability", "writers"),
    [("process", 1), ("process", 32), ("fsync", 1), ("fsync", 32)],
    ids=["process-single", "process-concurrent", "fsync-single", "fsync-concurrent"],
)
async def test_sqlite_acknowledged_writes_survive_kill_9(tmp_path: Path, durability: str, writers: int) -> None:
    url = f"sqlite:///{tmp_path}/victim.sqlite3"
    acked = run_and_kill(url, durability, writers, acks_before_kill=random.randint(300, 900))
    assert sum(acked.values()) >= 300
    await check_acknowledged(url, acked)


@pytest.mark.postgres
async def test_postgres_acknowledged_writes_survive_kill_9(postgres_url: str) -> None:
    acked = run_and_kill(postgres_url, "process", 16, acks_before_kill=random.randint(200, 500))
    await check_acknowledged(postgres_url, acked)


async def test_repeated_kills_never_lose_or_corrupt(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/victim.sqlite3"
    for round_ in range(3):
        # Each run restarts its sequences at 1 and overwrites the previous run's keys.
        acked = run_and_kill(url, "process", 8, acks_before_kill=100 + 50 * round_)
        await check_acknowledged(url, acked)
