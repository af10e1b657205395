"""Conditional writes and linearizable reads on a cluster of networked library nodes (real TCP on loopback,
SQLite stores): the issue's racing creates and read-modify-write counters, 412 answers with the current
context, the chosen state readable at `local` everywhere, refusal when the acceptor group is unreachable,
and a standalone node's conditional writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dsm import EpidemicStorage, NodeInfo, StorageConfig, StorageFactory
from dsm.core.ring import State
from dsm.errors import ConsistencyError, FeatureUnavailableError, InvalidInputError, PreconditionFailedError
from support import eventually, runtime_of

pytestmark = pytest.mark.usefixtures("loopback_hosts")

FAST = {
    "probe_interval_ms": 200,
    "probe_timeout_ms": 100,
    "membership_sync_interval_ms": 1000,
    "gossip_interval_ms": 500,
    "anti_entropy_interval_ms": 3_600_000,  # out of the way: the rounds' commits and pushes spread the state
    "consistency_timeout_ms": 2000,
    "cluster_secret": "conditional-test-secret-01",
}


async def start_cluster(tmp_path: Path, count: int, **settings: object) -> list[EpidemicStorage]:
    nodes: list[EpidemicStorage] = []
    bootstrap: list[str] = []
    for i in range(count):
        options = {**FAST, **settings}
        config = StorageConfig(data_dir=str(tmp_path / f"n{i}"), listen_addr=f"127.0.0.{i + 1}:0", **options)  # type: ignore[arg-type]
        factory = StorageFactory(config)
        node = await factory.create_epidemic_storage(f"n{i}", NodeInfo(), bootstrap, factory.create_sql_storage())
        nodes.append(node)
        bootstrap = [runtime_of(nodes[0]).addr]

    async def all_alive() -> bool:
        for node in nodes:
            peer = runtime_of(node).peer
            if peer is None or any(peer.member_state(f"n{i}") != State.ALIVE for i in range(count)):
                return False
        return True

    await eventually(all_alive)
    return nodes


@pytest.fixture(params=["lww", "siblings"])
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[list[EpidemicStorage]]:
    nodes = await start_cluster(tmp_path, 3, conflict_resolution=request.param)
    try:
        yield nodes
    finally:
        for node in nodes:
            await node.close()


async def test_racing_creates_one_wins(cluster: list[EpidemicStorage]) -> None:
    async def create(i: int) -> str:
        try:
            await cluster[i % 3].put("lock", f"client-{i}".encode(), if_absent=True)
            return "won"
        except PreconditionFailedError as exc:
            assert exc.exists and exc.context
            return "lost"

    outcomes = await asyncio.gather(*(create(i) for i in range(24)))
    assert outcomes.count("won") == 1 and outcomes.count("lost") == 23
    winner = f"client-{outcomes.index('won')}".encode()
    for node in cluster:
        got = await node.get("lock", consistency="linearizable")
        assert got is not None and got.value == winner


async def test_counter_increments_are_not_lost(cluster: list[EpidemicStorage]) -> None:
    await cluster[0].put("counter", b"0", if_absent=True)

    async def client(i: int) -> int:
        node, retries = cluster[i % 3], 0
        for _ in range(10):
            while True:
                got = await node.get("counter", consistency="linearizable")
                assert got is not None
                try:
                    await node.put("counter", str(int(got.value) + 1).encode(), if_match=got.context)
                    break
                except PreconditionFailedError:
                    retries += 1
        return retries

    await asyncio.gather(*(client(i) for i in range(4)))
    final = await cluster[2].get("counter", consistency="linearizable")
    assert final is not None and final.value == b"40"

    async def everywhere() -> bool:  # the chosen state reaches every replica, readable at local
        for node in cluster:
            got = await node.get("counter", consistency="local")
            if got is None or got.value != b"40" or got.conflict:
                return False
        return True

    await eventually(everywhere)


async def test_the_answering_node_holds_the_chosen_state_before_it_answers(cluster: list[EpidemicStorage]) -> None:
    # Read at `local` right after each answer, on the node that gave it: no waiting for replication.
    ack = await cluster[0].put("here", b"0", if_absent=True)
    for i in range(1, 31):
        node = cluster[i % 3]
        ack = await node.put("here", str(i).encode(), if_match=ack.context)
        got = await node.get("here", consistency="local")
        assert got is not None and got.value == str(i).encode() and got.context == ack.context
        read = await node.get("here", consistency="linearizable")
        local = await node.get("here", consistency="local")
        assert read is not None and local is not None and local.siblings == read.siblings


async def test_a_failed_condition_says_the_current_context(cluster: list[EpidemicStorage]) -> None:
    first = await cluster[0].put("k", b"v1", if_absent=True)
    second = await cluster[1].put("k", b"v2", if_match=first.context)
    with pytest.raises(PreconditionFailedError) as failed:
        await cluster[2].put("k", b"v3", if_match=first.context)  # stale: v2 came after
    assert failed.value.exists and failed.value.context == second.context
    await cluster[2].put("k", b"v3", if_match=failed.value.context)
    deleted = await cluster[0].delete("k", if_match=(await cluster[0].get("k", consistency="linearizable")).context)  # type: ignore[union-attr]
    assert await cluster[1].get("k", consistency="linearizable") is None
    await cluster[1].put("k", b"again", if_absent=True)  # absent again after the conditional delete
    with pytest.raises(PreconditionFailedError):
        await cluster[2].delete("k", if_match=deleted.context)


async def test_bad_combinations_are_refused(cluster: list[EpidemicStorage]) -> None:
    node = cluster[0]
    written = await node.put("k", b"v")
    with pytest.raises(InvalidInputError):
        await node.put("k", b"v", if_absent=True, if_match=written.context)
    with pytest.raises(InvalidInputError):
        await node.put("k", b"v", if_match=written.context, context=written.context)
    with pytest.raises(InvalidInputError):
        await node.put("k", b"v", if_match="not a context")
    with pytest.raises(InvalidInputError):
        await node.put("k", b"v", if_absent="yes")  # type: ignore[arg-type]


async def test_plain_writes_enter_the_conditional_order(cluster: list[EpidemicStorage]) -> None:
    created = await cluster[0].put("k", b"cas", if_absent=True)
    await cluster[1].put("k", b"plain", context=created.context, consistency="all")
    with pytest.raises(PreconditionFailedError):  # the plain write is seen by the next round
        await cluster[2].put("k", b"cas2", if_match=created.context)
    got = await cluster[2].get("k", consistency="linearizable")
    assert got is not None and got.value == b"plain"


async def test_unreachable_group_is_refused_not_answered(tmp_path: Path) -> None:
    nodes = await start_cluster(tmp_path, 3, consistency_timeout_ms=600)
    try:
        for node in nodes[1:]:
            await node.close()
        with pytest.raises(ConsistencyError):
            await nodes[0].put("k", b"v", if_absent=True)
        with pytest.raises(ConsistencyError):
            await nodes[0].get("k", consistency="linearizable")
        assert await nodes[0].get("k", consistency="local") is None
    finally:
        await nodes[0].close()


async def test_a_node_that_has_not_joined_says_so_when_it_refuses(tmp_path: Path) -> None:
    # Its bootstrap member does not answer: its view is itself alone, so it refuses conditional operations
    # (a group of itself would be a "majority" of one) and says why, not that the group was silent.
    config = StorageConfig(data_dir=str(tmp_path / "lone"), listen_addr="127.0.0.1:0", **FAST)  # type: ignore[arg-type]
    factory = StorageFactory(config)
    node = await factory.create_epidemic_storage("lone", NodeInfo(), ["127.0.0.9:9"], factory.create_sql_storage())
    try:
        with pytest.raises(ConsistencyError, match="has not joined") as caught:
            await node.put("k", b"v", if_absent=True)
        assert caught.value.cause == "not_joined"
        with pytest.raises(ConsistencyError, match="has not joined") as caught:
            await node.get("k", consistency="linearizable")
        assert caught.value.cause == "not_joined"
    finally:
        await node.close()


async def test_a_standalone_node_runs_conditional_writes(tmp_path: Path) -> None:
    factory = StorageFactory(StorageConfig(data_dir=str(tmp_path)))
    async with await factory.create_epidemic_storage("solo", backing_storage=factory.create_sql_storage()) as node:
        outcomes = await asyncio.gather(
            *(node.put("lock", str(i).encode(), if_absent=True) for i in range(10)), return_exceptions=True
        )
        assert sum(not isinstance(o, BaseException) for o in outcomes) == 1
        assert all(isinstance(o, PreconditionFailedError) for o in outcomes if isinstance(o, BaseException))
        got = await node.get("lock", consistency="linearizable")
        assert got is not None
        await node.put("lock", b"next", if_match=got.context)
        with pytest.raises(PreconditionFailedError):
            await node.put("lock", b"stale", if_match=got.context)


async def test_http_conditional_writes_on_three_nodes(cluster: list[EpidemicStorage]) -> None:
    """The issue's first try, over HTTP: 24 clients racing to create one key with If-None-Match: * get one
    200 and 23 412s; If-Match takes a read's X-DSM-Context (quoted or bare), a stale one is a 412 carrying
    the current context; linearizable reads; malformed conditions are a 400."""
    from aiohttp.test_utils import TestClient, TestServer

    from dsm.api.http import CONTEXT_HEADER, create_app

    clients = [TestClient(TestServer(create_app(node, node.network))) for node in cluster]
    for client in clients:
        await client.start_server()
    try:
        racing = await asyncio.gather(
            *(
                clients[i % 3].put("/v1/kv/lock", data=f"holder-{i}".encode(), headers={"If-None-Match": "*"})
                for i in range(24)
            )
        )
        statuses = sorted(response.status for response in racing)
        assert statuses == [200] + [412] * 23
        lost = next(r for r in racing if r.status == 412)
        error = (await lost.json())["error"]
        assert error["code"] == "precondition_failed" and error["exists"] is True
        assert lost.headers[CONTEXT_HEADER] == error["context"]

        read = await clients[1].get("/v1/kv/lock", params={"consistency": "linearizable"})
        assert read.status == 200
        context = read.headers[CONTEXT_HEADER]
        renewed = await clients[2].put("/v1/kv/lock", data=b"next", headers={"If-Match": f'"{context}"'})
        assert renewed.status == 200
        stale = await clients[0].put("/v1/kv/lock", data=b"stale", headers={"If-Match": context})
        assert stale.status == 412
        assert stale.headers[CONTEXT_HEADER] == renewed.headers[CONTEXT_HEADER]
        gone = await clients[0].delete("/v1/kv/lock", headers={"If-Match": renewed.headers[CONTEXT_HEADER]})
        assert gone.status == 200
        missing = await clients[1].get("/v1/kv/lock", params={"consistency": "linearizable"})
        assert missing.status == 404

        for headers in ({"If-None-Match": "abc"}, {"If-Match": "*"}, {"If-None-Match": "*", "If-Match": "x"}):
            bad = await clients[0].put("/v1/kv/other", data=b"v", headers=headers)
            assert bad.status == 400 and (await bad.json())["error"]["code"] == "bad_precondition"
        bad = await clients[0].delete("/v1/kv/other", headers={"If-None-Match": "*"})
        assert bad.status == 400
    finally:
        for client in clients:
            await client.close()


async def test_a_conditional_create_with_a_ttl_is_a_lease(cluster: list[EpidemicStorage]) -> None:
    """If-absent with ttl_ms: held until it expires, then another create succeeds, with a larger timestamp
    (the fencing token of the lock recipe); a renewal with If-Match keeps it."""

    async def gate_open() -> bool:  # every member's feature record has arrived (the rolling-upgrade gate)
        for node in cluster:
            try:
                await node.features.require("ttl")
            except FeatureUnavailableError:
                return False
        return True

    await eventually(gate_open)
    first = await cluster[0].put("lease", b"a", if_absent=True, ttl_ms=400)
    with pytest.raises(PreconditionFailedError):
        await cluster[1].put("lease", b"b", if_absent=True, ttl_ms=400)
    renewed = await cluster[0].put("lease", b"a", if_match=first.context, ttl_ms=400)
    assert renewed.timestamp > first.timestamp
    with pytest.raises(PreconditionFailedError):
        await cluster[2].put("lease", b"c", if_absent=True, ttl_ms=400)
    await asyncio.sleep(0.6)  # past the renewal's expiry
    assert await cluster[1].get("lease", consistency="linearizable") is None
    taken = await cluster[1].put("lease", b"b", if_absent=True, ttl_ms=400)
    assert taken.timestamp > renewed.timestamp
    with pytest.raises(PreconditionFailedError):  # the old holder's renewal is refused
        await cluster[0].put("lease", b"a", if_match=renewed.context, ttl_ms=400)
