"""`dsm.net.status`: the frozen snapshot the edge reads. Taken from real started nodes (loopback TCP); a
snapshot must not move when the node's membership, links and counters change afterwards, and must hold none
of the core's live arrays."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dsm import EpidemicStorage, NodeInfo, StorageConfig, StorageFactory
from dsm.core.ring import State
from dsm.net.status import STANDALONE, Links, Member, NodeStatus, reader, snapshot
from support import eventually, runtime_of

FAST = {
    "probe_interval_ms": 200,
    "probe_timeout_ms": 100,
    "membership_sync_interval_ms": 1000,
    "gossip_interval_ms": 500,
    "cluster_secret": "status-secret-0000000001",
}


@pytest.fixture
async def nodes() -> AsyncIterator[list[EpidemicStorage]]:
    started: list[EpidemicStorage] = []
    yield started
    for node in started:
        await node.close()


async def start(tmp_path: Path, node_id: str, bootstrap: list[str]) -> EpidemicStorage:
    config = StorageConfig(data_dir=str(tmp_path / node_id), listen_addr="127.0.0.1:0", **FAST)  # type: ignore[arg-type]
    factory = StorageFactory(config)
    return await factory.create_epidemic_storage(
        node_id, NodeInfo(region="eu"), bootstrap, factory.create_sql_storage()
    )


def alive(status: NodeStatus) -> set[str]:
    assert status.network is not None and status.network.members is not None
    return {m.node_id for m in status.network.members if m.state == State.ALIVE}


async def test_a_snapshot_does_not_move_when_the_membership_changes(
    nodes: list[EpidemicStorage], tmp_path: Path
) -> None:
    nodes.append(await start(tmp_path, "n0", []))
    first = runtime_of(nodes[0])
    nodes.append(await start(tmp_path, "n1", [first.addr]))
    await eventually(lambda: _alive_everywhere(nodes, {"n0", "n1"}))
    await nodes[0].put("k", b"v")

    before = snapshot(nodes[0], first)
    assert before.node_id == "n0" and not before.closed and before.join.joined
    assert alive(before) == {"n0", "n1"}
    assert before.network is not None
    assert dict(before.network.member_counts)[State.ALIVE] == 2
    assert before.network.links.near == ("n1",)
    sent_before = before.network.transport.frames_out

    # The membership changes under it: a third member joins, then the second leaves for good; a write at
    # quorum moves the store's counters.
    nodes.append(await start(tmp_path, "n2", [first.addr]))
    await eventually(lambda: _alive_everywhere(nodes, {"n0", "n1", "n2"}))
    await nodes[0].put("k2", b"v", consistency="quorum")
    leaver = nodes.pop(1)
    await leaver.leave()

    async def n1_left() -> bool:
        return snapshot(nodes[0], first).network.members[1].state == State.LEFT  # type: ignore[union-attr,index]

    await eventually(n1_left)
    after = snapshot(nodes[0], first)
    assert after.network is not None and after.network.members is not None
    assert [(m.node_id, m.state) for m in after.network.members] == [
        ("n0", State.ALIVE),
        ("n1", State.LEFT),
        ("n2", State.ALIVE),
    ]
    assert dict(after.network.member_counts)[State.LEFT] == 1
    assert "n2" in after.network.links.near
    assert after.network.transport.frames_out != sent_before
    assert after.store.level_requests != before.store.level_requests

    # The first snapshot is as it was taken.
    assert alive(before) == {"n0", "n1"}
    assert before.network.members is not None and len(before.network.members) == 2
    assert dict(before.network.member_counts) == {State.ALIVE: 2, State.SUSPECT: 0, State.DEAD: 0, State.LEFT: 0}
    assert before.network.links == Links(near=("n1",), long_out=before.network.links.long_out, long_in=())
    assert before.network.transport.frames_out == sent_before
    assert ("write", "quorum", "ok") not in dict(before.store.level_requests)

    # ... and a node closing moves only the snapshots taken after it.
    await nodes[0].close()
    assert not before.closed and snapshot(nodes[0], first).closed


async def test_a_snapshot_is_frozen_and_holds_no_live_table(nodes: list[EpidemicStorage], tmp_path: Path) -> None:
    nodes.append(await start(tmp_path, "n0", []))
    runtime = runtime_of(nodes[0])
    status = snapshot(nodes[0], runtime)
    assert status.network is not None and status.network.members is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.closed = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.network.links.near = ("x",)  # type: ignore[misc]
    with pytest.raises(AttributeError):  # a named tuple
        status.network.members[0].state = State.DEAD  # type: ignore[misc]
    # Every collection in it is a tuple (a copy), all the way down: nothing the core goes on changing.
    pending: list[object] = [status]
    while pending:
        value = pending.pop()
        if dataclasses.is_dataclass(value):
            pending.extend(getattr(value, f.name) for f in dataclasses.fields(value))
        elif isinstance(value, tuple):
            pending.extend(value)
        else:
            assert isinstance(value, str | int | float | bool | type(None)), (type(value), value)
    assert status.network.members == (
        Member("n0", runtime.addr, "eu", State.ALIVE, status.network.members[0].incarnation),
    )


async def test_the_member_list_is_left_out_on_request_and_a_standalone_node_has_no_network(
    nodes: list[EpidemicStorage], tmp_path: Path
) -> None:
    nodes.append(await start(tmp_path, "n0", []))
    runtime = runtime_of(nodes[0])
    counts = reader(nodes[0], runtime)(members=False)
    assert counts.network is not None and counts.network.members is None
    assert counts.members_alive == 1 and counts.network.node_id == "n0"

    solo = await StorageFactory(
        StorageConfig(data_dir=str(tmp_path / "solo"), node_id="solo")
    ).create_epidemic_storage()
    nodes.append(solo)
    status = snapshot(solo)
    assert status.network is None and status.join == STANDALONE and status.members_alive == 1


async def test_a_node_not_joined_says_why(nodes: list[EpidemicStorage], tmp_path: Path) -> None:
    # Bootstrap through an address nobody listens on: the node runs, unjoined, and says whom it tries.
    nodes.append(await start(tmp_path, "lost", ["127.0.0.1:9"]))
    runtime = runtime_of(nodes[0])

    async def failed() -> bool:
        return snapshot(nodes[0], runtime).join.targets[0][1] != "no answer yet"

    await eventually(failed)
    join = snapshot(nodes[0], runtime).join
    assert not join.joined and join.reason == "no member of the cluster reached"
    assert [target for target, _ in join.targets] == ["127.0.0.1:9"]


async def _alive_everywhere(nodes: list[EpidemicStorage], ids: set[str]) -> bool:
    return all(alive(snapshot(node, runtime_of(node))) == ids for node in nodes)


async def test_each_member_says_when_it_was_last_heard_from(nodes: list[EpidemicStorage], tmp_path: Path) -> None:
    nodes.append(await start(tmp_path, "a", []))
    nodes.append(await start(tmp_path, "b", [runtime_of(nodes[0]).addr]))
    runtime = runtime_of(nodes[0])

    def heard() -> dict[str, int | None]:
        status = snapshot(nodes[0], runtime)
        assert status.network is not None and status.network.members is not None
        return {m.node_id: m.heard_ms_ago for m in status.network.members}

    async def recently() -> bool:  # b talks to a (probes, gossip)
        return heard().get("b") is not None and heard()["b"] < 2_000  # type: ignore[operator]

    async def silent() -> bool:
        return (heard()["b"] or 0) > 1_500

    await eventually(recently)
    assert heard()["a"] is None  # itself
    await nodes.pop().close()  # b stops: nothing more comes from it
    await eventually(silent)
