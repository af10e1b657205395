"""A rolling upgrade on real processes: three `dsm node run` nodes of the previous release (the `v0.1.0` tag,
run from a temporary `git worktree` of it with the same virtualenv) take quorum writes and reads without a
pause while each node in turn is stopped (SIGTERM) and started again on its data directory and address with
the current code. Every acknowledged write must be readable afterwards on every node, and no read of an
acknowledged write may fail or come back stale at any moment (0 lost, 0 failed). The mixed cluster speaks
one protocol version (the frames and message types are append-only: an old node skips a message type it does
not know), and the store's schema is read forward by the new code.

Needs a git checkout holding the release's commit: the tag, or else the commit it names (an ancestor of main,
so a clone that did not fetch tags still has it; a shallow clone is deepened from its origin). Skipped without
one, a failure under DSM_TEST_STRICT=1."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsm.client import Client, UnreachableError
from procs import Proc, eventually, procs_fixture  # noqa: F401 (the `procs` fixture)
from support import skip_or_fail

pytestmark = pytest.mark.usefixtures("loopback_hosts")

PREVIOUS = "v0.1.0"
PREVIOUS_COMMIT = "24670f1ba3e472172d9fdaaf373816c2b2b634af"  # what the tag names; main descends from it
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def previous_release(tmp_path: Path) -> Iterator[Path]:
    """The source tree of the previous release, checked out next to the test's data."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        skip_or_fail("the rolling-upgrade test needs a git checkout of the repository")
    release = _release_commit()
    if release is None:
        skip_or_fail(f"neither the tag {PREVIOUS} nor its commit {PREVIOUS_COMMIT} is in this checkout")
    tree = tmp_path / "previous"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), release], check=True, capture_output=True
    )
    try:
        yield tree / "src"
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=120)


def _release_commit() -> str | None:
    """The previous release's commit: by its tag, else by the commit the tag names (a clone made without tags
    still holds it as an ancestor of main), after deepening a shallow clone from its origin."""
    for ref in (f"{PREVIOUS}^{{commit}}", f"{PREVIOUS_COMMIT}^{{commit}}"):
        if _git("rev-parse", "--verify", "--quiet", ref).returncode == 0:
            return ref.split("^")[0]
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        _git("fetch", "--quiet", "--unshallow")
        if _git("rev-parse", "--verify", "--quiet", f"{PREVIOUS_COMMIT}^{{commit}}").returncode == 0:
            return PREVIOUS_COMMIT
    return None


class Load:
    """Quorum writes of distinct keys and quorum reads of acknowledged ones, each through a node picked at
    random among those up, until stopped; a request that fails for a connection reason (the node going down
    under it) moves on, and a write that failed otherwise is not acknowledged."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls  # node -> HTTP URL of the nodes up now (changed by the test)
        self.acked: dict[str, bytes] = {}
        self.failed_reads: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _client(self) -> Client | None:
        with self._lock:
            urls = list(self.urls.values())
        return Client(random.choice(urls)) if urls else None

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            client = self._client()
            if client is None:
                continue
            try:
                key, value = f"u{i}", f"v{i}".encode()
                try:
                    client.put(key, value, consistency="quorum")
                except Exception:  # not acknowledged (a node stopping under it, a level not met): not counted
                    continue
                self.acked[key] = value
                for probe in random.sample(sorted(self.acked), min(3, len(self.acked))):
                    try:
                        got = client.get(probe, consistency="quorum")
                    except (ConnectionError, UnreachableError):
                        continue  # the node went down under the request: not an answer
                    except Exception as exc:  # an answer that is an error: a failed read
                        self.failed_reads.append(f"{probe}: {exc!r}")
                        continue
                    self.reads += 1
                    if got is None or got.value != self.acked[probe]:
                        self.failed_reads.append(f"{probe}: {got!r}")
            finally:
                i += 1
                client.close()

    def set_urls(self, urls: dict[str, str]) -> None:
        with self._lock:
            self.urls = dict(urls)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def test_a_rolling_upgrade_from_the_previous_release_loses_nothing(
    previous_release: Path, procs: list[Proc], tmp_path: Path
) -> None:
    old = {"PYTHONPATH": str(previous_release)}
    first = Proc("r0", "127.0.0.1", tmp_path, [], env=old)
    procs.append(first)
    for i in (1, 2):
        procs.append(Proc(f"r{i}", f"127.0.0.{i + 1}", tmp_path, [first.listen], env=old))
    eventually(lambda: all(len([m for m in p.client.members() if m["state"] == "alive"]) == 3 for p in procs))
    # The old code runs: its member list predates `heard_ms_ago` (added after the tag).
    assert all("heard_ms_ago" not in m for m in first.client.members())
    bootstrap = [p.listen for p in procs]

    load = Load({p.node_id: p.url for p in procs})
    try:
        time.sleep(2)
        for index, node in enumerate(list(procs)):
            load.set_urls({p.node_id: p.url for p in procs if p is not node})
            assert node.stop(signal.SIGTERM) == 0, node.stderr
            host, port = node.listen.rsplit(":", 1)
            others = [addr for addr in bootstrap if addr != node.listen]
            upgraded = Proc(node.node_id, host, tmp_path, others, port=int(port))  # the current code
            procs[index] = upgraded
            eventually(lambda: all(len([m for m in p.client.members() if m["state"] == "alive"]) == 3 for p in procs))
            assert all("heard_ms_ago" in m for m in upgraded.client.members())  # the new code runs
            load.set_urls({p.node_id: p.url for p in procs})
            before = len(load.acked)
            time.sleep(2)
            assert len(load.acked) > before  # writes went on in the mixed cluster
    finally:
        load.stop()

    assert len(load.acked) > 100 and load.reads > 100, (len(load.acked), load.reads)
    assert load.failed_reads == [], load.failed_reads[:5]

    def everywhere() -> bool:
        for p in procs:
            for key, value in load.acked.items():
                got = p.client.get(key, consistency="local")
                if got is None or got.value != value:
                    return False
        return True

    eventually(everywhere, timeout=30)
