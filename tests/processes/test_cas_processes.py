"""Conditional writes on real processes, checked for linearizability (issue 19, section 1): clients race
`If-None-Match: *` creates, read-modify-writes (a linearizable read, then `If-Match` with its context),
conditional deletes and linearizable reads on a few keys of a cluster of 3 `dsm node run` processes (every
node is in every key's acceptor group and proposes itself) and of 5 (groups of 3: the other two forward to
the key's home), one `AsyncClient` per node endpoint, while the last member is SIGKILLed and restarted on its
data directory and member p1 is SIGSTOPped for a few seconds and SIGCONTed.

Every operation is recorded with its invocation and completion on one monotonic clock and mapped onto the
checker's model (`dsm.sim.linearizability`): a 200 completes (a read observes its values, absent for a 404);
a 412 completes a conditional operation whose condition did not hold; `outcome_unknown`, a timeout or a
broken or refused connection leave a write pending (it may take effect at any point after its invocation, or
never; a refused connection too, since the client may have sent the request once already, see `write`) and
drop a read; `consistency_unmet` (refused: nothing happened) drops the operation. Every value written is
distinct, so the checker's value comparison decides each `If-Match` exactly: a client only sends `If-Match`
with the context of a read that returned a value, or with the context its own applied write was acknowledged
with (as the lease recipe renews with `if_match`: that context must be the state the write made, holding its
value), never that of an absent key (two absent states with different tombstones would look equal to the
model). Each operation's client is recorded as `<client>@<node>`, the node that answered it.

The history is checked key by key: 0 violations, and it must not be trivial (enough successful writes and
reads, some while a member was down or stopped). The same history with one read made stale must be refused,
so the check can fail. A violation is saved as JSON under `DSM_CAS_VIOLATION_DIR` (default: the test's
temporary directory) and its explanation printed."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pytest

from dsm.client import (
    AsyncClient,
    ClientError,
    ConditionFailedError,
    ConsistencyUnmetError,
    OutcomeUnknownError,
    UnreachableError,
    Value,
)
from dsm.sim.linearizability import Operation, OpKind, Verdict, check
from procs import Proc, eventually

pytestmark = pytest.mark.usefixtures("loopback_hosts")

KEYS = ("a", "b", "c")
CLIENTS = 6
DURATION_S = 22.0
KILL_AT_S, DOWN_S = 4.0, 3.0
STOP_AT_S, STOPPED_S = 14.0, 5.0
CLIENT_TIMEOUT_S = 3.0
SEED = 19
ENV = {"DSM_CONSISTENCY_TIMEOUT_MS": "2000"}


def now_ns() -> int:
    return time.monotonic_ns()


@dataclass
class Cluster:
    """The nodes' current processes (a restarted node replaces its entry) and one client per endpoint."""

    procs: list[Proc]
    data: Path
    clients: dict[str, AsyncClient] = field(default_factory=dict)
    down: set[int] = field(default_factory=set)
    windows: list[tuple[str, int, int]] = field(default_factory=list)  # (fault, from ns, until ns)

    def client(self, index: int) -> AsyncClient:
        url = self.procs[index].url
        if url not in self.clients:
            self.clients[url] = AsyncClient(url, timeout=CLIENT_TIMEOUT_S)
        return self.clients[url]

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


@dataclass
class Workload:
    """Shared by the client tasks: the history, the outcomes counted, the next operation id."""

    cluster: Cluster
    history: list[Operation] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    next_id: int = 0

    def ident(self) -> int:
        self.next_id += 1
        return self.next_id

    async def read(self, name: str, node: int, key: str) -> tuple[bool, Value | None]:
        """A linearizable read, recorded; (answered, what it returned)."""
        ident, invoked = self.ident(), now_ns()
        who = f"{name}@{self.cluster.procs[node].node_id}"
        try:
            got = await self.cluster.client(node).get(key, consistency="linearizable")
        except (ClientError, UnreachableError) as exc:
            self.dropped["read " + _reason(exc)] += 1  # an unanswered read constrains nothing
            raise _Failed(exc) from None
        observed = () if got is None else tuple(s.value for s in got.siblings)
        self.history.append(Operation(ident, who, key, OpKind.READ, invoked, now_ns(), observed=observed))
        self.outcomes["read ok"] += 1
        return True, got

    async def write(
        self, name: str, node: int, key: str, value: bytes | None, expected: bytes | None, context: str | None
    ) -> str | None:
        """A create (`context` None: If-None-Match: *), an If-Match put or an If-Match delete (`value` None),
        recorded; returns the new context when it was applied."""
        ident, invoked = self.ident(), now_ns()
        kind = OpKind.DELETE if value is None else OpKind.CAS
        what = "create" if context is None else "cas" if value is not None else "delete"
        op = Operation(
            ident, f"{name}@{self.cluster.procs[node].node_id}", key, kind, invoked, None, value, True, expected
        )
        client = self.cluster.client(node)
        try:
            if context is None:
                assert value is not None
                ack = await client.put(key, value, if_absent=True)
            elif value is None:
                ack = await client.delete(key, if_match=context)
            else:
                ack = await client.put(key, value, if_match=context)
        except ConditionFailedError:
            self.history.append(replace(op, complete=now_ns(), ok=False))
            self.outcomes[what + " failed"] += 1
            return None
        except OutcomeUnknownError as exc:
            self.history.append(op)  # pending: it may or may not have taken effect
            self.outcomes[what + " unknown"] += 1
            raise _Failed(exc) from None
        except ConsistencyUnmetError as exc:
            self.dropped[what + " refused"] += 1  # refused: it did not happen
            raise _Failed(exc) from None
        except UnreachableError as exc:
            # Timed out, cut off, or even refused: a refused connection does not prove the request was never
            # sent, because aiohttp sends a PUT or DELETE again once when its connection breaks (RFC 9112's
            # retry of idempotent methods), and the first attempt may have been run by a node that then died.
            self.history.append(op)
            self.outcomes[what + " unknown"] += 1
            raise _Failed(exc) from None
        except ClientError as exc:
            self.history.append(op)  # an answer we did not expect: count it, take nothing for granted
            self.outcomes[f"{what} {exc.status} {exc.code}"] += 1
            raise _Failed(exc) from None
        self.history.append(replace(op, complete=now_ns()))
        self.outcomes[what + " ok"] += 1
        return ack.context

    async def client(self, index: int, stop_at: float) -> None:
        """One client: prefers node `index % n`, moves to the next node when its node does not answer."""
        name = f"c{index}"
        rng = random.Random(f"{SEED}-{name}")
        node = index % len(self.cluster.procs)
        seen: dict[str, tuple[bytes, str]] = {}  # key -> (value, context) of the last state this client saw
        count = 0
        while time.monotonic() < stop_at:
            if node in self.cluster.down:
                node = (node + 1) % len(self.cluster.procs)
                continue
            key = rng.choice(KEYS)
            count += 1
            value = f"{name}-{count}".encode()
            roll = rng.random()
            try:
                if roll < 0.25:
                    _, got = await self.read(name, node, key)
                    _remember(seen, key, got)
                elif roll < 0.4:
                    context = await self.write(name, node, key, value, None, None)
                    if context is not None:
                        seen[key] = (value, context)
                else:
                    if key not in seen or rng.random() < 0.5:
                        _, got = await self.read(name, node, key)
                        _remember(seen, key, got)
                    if key not in seen:  # absent: create it instead
                        context = await self.write(name, node, key, value, None, None)
                        if context is not None:
                            seen[key] = (value, context)
                        continue
                    expected, given = seen.pop(key)
                    new = None if roll > 0.9 else value
                    context = await self.write(name, node, key, new, expected, given)
                    if context is not None and new is not None:
                        seen[key] = (new, context)
            except _Failed as failed:
                seen.pop(key, None)
                if isinstance(failed.error, UnreachableError):
                    node = (node + 1) % len(self.cluster.procs)
            await asyncio.sleep(rng.random() * 0.01)


class _Failed(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _remember(seen: dict[str, tuple[bytes, str]], key: str, got: Value | None) -> None:
    if got is None or len(got.siblings) != 1:
        seen.pop(key, None)
    else:
        seen[key] = (got.value, got.context)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return exc.code
    return "unreachable"


async def faults(cluster: Cluster, started: float) -> None:
    """SIGKILL node 2 and restart it on its data directory; later SIGSTOP node 1, then SIGCONT."""
    victim = len(cluster.procs) - 1
    await asyncio.sleep(started + KILL_AT_S - time.monotonic())
    old = cluster.procs[victim]
    cluster.down.add(victim)
    killed = now_ns()
    assert await asyncio.to_thread(old.stop, signal.SIGKILL) == -signal.SIGKILL
    await asyncio.sleep(DOWN_S)
    bootstrap = [cluster.procs[0].listen]
    cluster.procs[victim] = await asyncio.to_thread(
        Proc, old.node_id, f"127.0.0.{victim + 1}", cluster.data, bootstrap, 0, ENV
    )
    cluster.down.discard(victim)
    cluster.windows.append(("killed", killed, now_ns()))

    paused = 1
    await asyncio.sleep(started + STOP_AT_S - time.monotonic())
    proc = cluster.procs[paused].proc
    stopped = now_ns()
    proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(STOPPED_S)
    finally:
        proc.send_signal(signal.SIGCONT)
    cluster.windows.append(("stopped", stopped, now_ns()))


async def run_workload(cluster: Cluster) -> Workload:
    workload = Workload(cluster)
    started = time.monotonic()
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(faults(cluster, started))
            for i in range(CLIENTS):
                group.create_task(workload.client(i, started + DURATION_S))
        # Every node, the restarted one included, answers the final state of every key.
        for key in KEYS:
            for node in range(len(cluster.procs)):
                for attempt in range(5):
                    try:
                        await workload.read("final", node, key)
                        break
                    except _Failed:
                        assert attempt < 4, f"node {node} did not answer a linearizable read of {key!r}"
                        await asyncio.sleep(0.5)
    finally:
        await cluster.close()
    return workload


def start_cluster(data: Path, size: int) -> list[Proc]:
    procs: list[Proc] = []
    try:
        procs.append(Proc("p0", "127.0.0.1", data, [], env=ENV))
        for i in range(1, size):
            procs.append(Proc(f"p{i}", f"127.0.0.{i + 1}", data, [procs[0].listen], env=ENV))
        ids = {p.node_id for p in procs}
        eventually(lambda: all({m["id"] for m in p.client.members() if m["state"] == "alive"} == ids for p in procs))
    except BaseException:
        for p in procs:
            p.stop(signal.SIGKILL)
        raise
    return procs


@dataclass(frozen=True)
class Run:
    nodes: int
    history: list[Operation]
    outcomes: Counter[str]
    dropped: Counter[str]
    windows: list[tuple[str, int, int]]
    saved_to: Path


@pytest.fixture(scope="module", params=[3, 5], ids=lambda size: f"{size}-nodes")
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One workload with a kill and a stop on a cluster of 3 or 5 nodes, shared by the tests of this module."""
    data = tmp_path_factory.mktemp("cas")
    cluster = Cluster(start_cluster(data, request.param), data)
    try:
        workload = asyncio.run(run_workload(cluster))
    finally:
        for p in cluster.procs:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGCONT)
                p.stop(signal.SIGKILL)
    saved_to = Path(os.environ.get("DSM_CAS_VIOLATION_DIR", str(data)))
    yield Run(request.param, workload.history, workload.outcomes, workload.dropped, cluster.windows, saved_to)


def save(history: list[Operation], path: Path) -> None:
    ops = [{**asdict(op), "kind": str(op.kind)} for op in history]
    for op in ops:
        op["value"] = None if op["value"] is None else op["value"].decode()
        op["expected"] = None if op["expected"] is None else op["expected"].decode()
        op["observed"] = [v.decode() for v in op["observed"]]
    path.write_text(json.dumps(ops, indent=1))


def test_conditional_writes_on_real_processes_with_a_kill_and_a_stop_are_linearizable(run: Run) -> None:
    result = check(run.history, timeout_s=30)
    print(f"{run.nodes} nodes: {result.summary()}; outcomes {dict(run.outcomes)}; dropped {dict(run.dropped)}")
    if not result.ok:
        path = run.saved_to / f"cas-violation-{run.nodes}-nodes-{time.strftime('%Y%m%d-%H%M%S')}.json"
        save(run.history, path)
        pytest.fail(f"{result.summary()}\nhistory saved to {path}")
    assert result.verdict == Verdict.OK and result.ops == len(run.history)

    # Not trivial: many operations of each kind succeeded, conditions failed, and some outcomes were unknown.
    outcomes = run.outcomes
    assert outcomes["read ok"] >= 100 and outcomes["cas ok"] >= 50 and outcomes["create ok"] >= 5, outcomes
    assert outcomes["delete ok"] >= 5 and outcomes["cas failed"] + outcomes["create failed"] >= 20, outcomes
    unexpected = [what for what in outcomes if what.split()[-1] not in ("ok", "failed", "unknown")]
    assert not unexpected, outcomes
    # Some writes and reads succeeded while a member was killed and while one was stopped.
    assert [name for name, _, _ in run.windows] == ["killed", "stopped"]
    for name, start, end in run.windows:
        during = [op for op in run.history if op.complete is not None and op.ok and start < op.invoke < end]
        writes = [op for op in during if op.kind != OpKind.READ and op.complete is not None]
        reads = [op for op in during if op.kind == OpKind.READ]
        print(f"while {name}: {len(writes)} writes and {len(reads)} reads succeeded")
        assert len(writes) >= 5 and len(reads) >= 5, (name, len(writes), len(reads))


def test_the_same_history_with_one_stale_read_is_refused(run: Run) -> None:
    """A read made to return the value a completed If-Match had replaced before the read began: no order can
    explain it (every value is written once), so the checker must say so."""
    history = run.history
    reads = [op for op in history if op.kind == OpKind.READ and op.observed]
    for write in history:
        if write.kind != OpKind.CAS or write.expected is None or write.complete is None or not write.ok:
            continue
        later = [
            r for r in reads if r.key == write.key and r.invoke > write.complete and r.observed != (write.expected,)
        ]
        if later:
            stale = replace(later[0], observed=(write.expected,))
            break
    else:
        pytest.fail("no completed If-Match followed by a read in the history")
    corrupted = [stale if op.id == stale.id else op for op in history]
    result = check(corrupted, timeout_s=30)
    assert result.verdict == Verdict.VIOLATION, result.summary()
    violation = result.violation
    assert violation is not None and violation.key == stale.key
