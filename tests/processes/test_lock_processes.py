"""The lock recipe on real `dsm node run` processes (docs/consistency.md, "Locks"): a holder in its own process
takes a lock with a TTL and is paused (SIGSTOP) past it; another takes the lock with a larger fencing token
and writes the fenced resource; the first, resumed (SIGCONT), believes it still holds the lock, and its
write with the old token is refused, so the resource keeps the second holder's value."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dsm.client import Client
from dsm.lock import Lock, LockLostError, fenced_get, fenced_put
from procs import Proc, eventually, procs_fixture  # noqa: F401 (the `procs` fixture)

pytestmark = pytest.mark.usefixtures("loopback_hosts")

HOLDER = Path(__file__).parent.parent / "helpers" / "lock_holder.py"


def test_a_paused_holder_cannot_overwrite_a_later_holders_write(procs: list[Proc], tmp_path: Path) -> None:
    a = Proc("la", "127.0.0.1", tmp_path, [])
    procs.append(a)
    for i, host in ((2, "127.0.0.2"), (3, "127.0.0.3")):
        procs.append(Proc(f"l{i}", host, tmp_path, [a.listen]))
    eventually(lambda: all(len([m for m in p.client.members() if m["state"] == "alive"]) == 3 for p in procs))

    def ttl_writes_allowed() -> bool:  # the rolling-upgrade gate opens on a node once every member's record
        try:  # of its features has reached it: on every node the test writes through
            for proc in procs:
                proc.client.put("probe", b"x", ttl_ms=1000)
            return True
        except Exception:
            return False

    eventually(ttl_writes_allowed, timeout=10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")}
    holder = subprocess.Popen(
        [sys.executable, str(HOLDER), procs[1].url, "jobs", "1500", "resource", "from-paused"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdin is not None
        first = int(holder.stdout.readline().split()[1])
        os.kill(holder.pid, signal.SIGSTOP)  # paused, holding the lock
        with Client(procs[2].url) as client:
            lock = Lock(client, "jobs", holder="second", ttl_ms=5000)
            second = lock.acquire(timeout_s=15)  # waits until the paused hold expires
            assert second > first
            fenced_put(client, "resource", b"from-second", second)
        os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        answer = holder.stdout.readline().split()
        assert answer == ["fenced", str(second)]
        assert holder.wait(timeout=10) == 0
        with Client(a.url) as client:
            assert fenced_get(client, "resource") == (second, b"from-second")
            lock.client = client
            lock.renew()  # the second holder still holds it
            lock.release()
            with pytest.raises(LockLostError):
                lock.renew()
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.wait()
