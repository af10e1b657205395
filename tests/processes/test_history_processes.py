"""A Jepsen-style history on real processes: client threads read, read-modify-write and delete a few keys
over HTTP at several consistency levels on a 3-node cluster ('siblings' mode) while one node is killed with
SIGKILL and restarted; every operation goes into a `dsm.sim.history.History` (invoke and completion on one
monotonic clock, the dot and context each acknowledgement returns); once the nodes converge they are
stopped and the checker compares the history with the version sets read from their SQLite files."""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dsm.client import Client, ClientError, UnreachableError
from dsm.core.encoding import decode_context, decode_versions
from dsm.sim.history import History, check, check_converged, held_versions
from procs import Proc, eventually, procs_fixture  # noqa: F401 (the `procs` fixture)

pytestmark = pytest.mark.usefixtures("loopback_hosts")

SIBLINGS = {"DSM_CONFLICT_RESOLUTION": "siblings", "DSM_CONSISTENCY_TIMEOUT_MS": "1000"}
KEYS = ("a", "b", "c")
LEVELS = ("local", "quorum", "all")


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def context_of(token: str, key: str) -> dict[str, int]:
    return decode_context(token, 1 << 20, key).as_dict() if token else {}


def stored_state(path: Path) -> dict[str, list[Any]]:
    with sqlite3.connect(path) as con:
        rows = con.execute("SELECT key, versions FROM dsm_kv").fetchall()
    return {key: held_versions(decode_versions(bytes(raw))) for key, raw in rows}


class Clients:
    """Client threads sharing one history; the nodes' URLs change when a node restarts."""

    def __init__(self, nodes: list[Proc], seed: int) -> None:
        self.nodes = nodes
        self.history = History()
        self.lock = threading.Lock()
        self.seed = seed
        self.stop = threading.Event()

    def run(self, name: str, ops: int) -> None:
        rng = random.Random(f"{self.seed}-{name}")
        contexts: dict[str, str] = {}
        for _ in range(ops):
            if self.stop.is_set():
                return
            index = rng.randrange(len(self.nodes))
            proc = self.nodes[index]
            key = rng.choice(KEYS)
            level = rng.choice(LEVELS)
            roll = rng.random()
            with Client(proc.url, timeout=5) as client:
                if roll < 0.4:
                    self.read(name, client, proc.node_id, key, level, contexts)
                else:
                    value = None if roll > 0.93 else f"{name}-{len(self.history)}".encode()
                    given = contexts.get(key, "") if rng.random() < 0.7 or value is None else ""
                    self.write(name, client, proc.node_id, key, value, given, level, contexts)
            time.sleep(rng.random() * 0.02)

    def read(self, name: str, client: Client, node: str, key: str, level: str, contexts: dict[str, str]) -> None:
        with self.lock:
            op = self.history.invoke(name, "read", key, None, level, "default", node, now_ms())
        try:
            got = client.get(key, consistency=level)
        except (ClientError, UnreachableError) as exc:
            with self.lock:
                self.history.fail(op, now_ms(), str(exc))
            return
        with self.lock:
            if got is None:
                self.history.ok(op, now_ms(), seen=[])
                return
            contexts[key] = got.context
            seen = [((s.timestamp, s.writer), s.value) for s in got.siblings]
            self.history.ok(op, now_ms(), context=context_of(got.context, key), seen=seen)

    def write(
        self,
        name: str,
        client: Client,
        node: str,
        key: str,
        value: bytes | None,
        given: str,
        level: str,
        contexts: dict[str, str],
    ) -> None:
        kind = "write" if value is not None else "delete"
        with self.lock:
            op = self.history.invoke(
                name, kind, key, value, level, "default", node, now_ms(), given=context_of(given, key)
            )  # type: ignore[arg-type]
        try:
            if value is None:
                ack = client.delete(key, context=given or None, consistency=level)
            else:
                ack = client.put(key, value, context=given or None, consistency=level)
        except ClientError as exc:  # consistency_unmet: durable on the coordinator, may spread; not required
            with self.lock:
                self.history.fail(op, now_ms(), str(exc))
            return
        except UnreachableError:
            with self.lock:
                self.history.unknown(op, now_ms())  # the node may have committed it before it died
            return
        with self.lock:
            contexts[key] = ack.context
            self.history.ok(op, now_ms(), dot=(ack.timestamp, node), context=context_of(ack.context, key))


@pytest.mark.slow
def test_a_history_with_a_killed_node_loses_no_acknowledged_write(procs: list[Proc], tmp_path: Path) -> None:
    first = Proc("h0", "127.0.0.1", tmp_path, [], env=SIBLINGS)
    procs.append(first)
    for i in (1, 2):
        procs.append(Proc(f"h{i}", f"127.0.0.{i + 1}", tmp_path, [first.listen], env=SIBLINGS))
    eventually(lambda: all(len([m for m in p.client.members() if m["state"] == "alive"]) == 3 for p in procs))
    nodes = list(procs)
    clients = Clients(nodes, seed=7)
    threads = [threading.Thread(target=clients.run, args=(f"c{i}", 120)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        victim = nodes[2]
        assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
        time.sleep(0.5)
        restarted = Proc("h2", "127.0.0.3", tmp_path, [first.listen], env=SIBLINGS)
        procs[2] = nodes[2] = restarted
    finally:
        for t in threads:
            t.join(120)
    assert not any(t.is_alive() for t in threads)
    history = clients.history
    acked = [op for op in history.ops if op.is_write and op.outcome == "ok"]
    assert len(acked) > 100, len(acked)
    assert any(op.outcome == "unknown" or op.outcome == "fail" for op in history.ops)  # the kill was felt

    def converged() -> bool:
        views = []
        for p in procs:
            views.append(
                {
                    k: (lambda v: None if v is None else sorted(s.value for s in v.siblings))(p.client.get(k))
                    for k in KEYS
                }
            )
        return all(v == views[0] for v in views)

    eventually(converged, timeout=20)
    for p in procs:
        assert p.stop(signal.SIGTERM) == 0
    states = {p.node_id: stored_state(tmp_path / p.node_id / "dsm.sqlite3") for p in procs}
    assert check_converged(states) == []
    report = check(history, states["h0"], "siblings")
    outcomes = Counter((op.kind, op.level, op.outcome) for op in history.ops)
    assert outcomes[("write", "all", "ok")] > 10 and outcomes[("read", "quorum", "ok")] > 10, outcomes
    assert report.ok, report.summary()
    assert report.lost == [] and report.stale_reads == [] and report.resurrected == []
    # The same history against a state that lost one key is caught.
    damaged = dict(states["h0"])
    key = next(k for k in KEYS if any(op.key == k for op in acked) and k in damaged)
    del damaged[key]
    assert check(history, damaged, "siblings").lost
