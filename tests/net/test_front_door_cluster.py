"""A cluster built through the front door alone: `StorageFactory.create_epidemic_storage(node_id, node_info,
bootstrap_nodes, backing)` starts networked nodes over loopback TCP, as a library user would run them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dsm import EpidemicStorage, NodeInfo, StorageConfig, StorageFactory
from dsm.core.ring import State
from dsm.errors import ConfigError, InvalidInputError
from support import eventually, runtime_of

pytestmark = pytest.mark.usefixtures("loopback_hosts")

FAST = {
    "probe_interval_ms": 200,
    "probe_timeout_ms": 100,
    "membership_sync_interval_ms": 1000,
    "gossip_interval_ms": 500,
    "cluster_secret": "front-door-secret-000001",
}


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[list[EpidemicStorage]]:
    started: list[EpidemicStorage] = []
    yield started
    for node in started:
        await node.close()


async def test_three_library_nodes_form_a_cluster_replicate_and_leave(
    nodes: list[EpidemicStorage], tmp_path: Path
) -> None:
    bootstrap: list[str] = []
    for i in range(3):
        host = f"127.0.0.{i + 1}"
        factory = StorageFactory(StorageConfig(data_dir=str(tmp_path / f"n{i}"), listen_addr=f"{host}:0", **FAST))  # type: ignore[arg-type]
        node = await factory.create_epidemic_storage(
            f"n{i}", NodeInfo(region="eu" if i < 2 else "us"), bootstrap, factory.create_sql_storage()
        )
        nodes.append(node)
        bootstrap = [runtime_of(nodes[0]).addr]

    async def all_alive() -> bool:
        for node in nodes:
            peer = runtime_of(node).peer
            if peer is None or any(peer.member_state(f"n{i}") != State.ALIVE for i in range(3)):
                return False
        return True

    await eventually(all_alive)
    assert runtime_of(nodes[0]).peer is not None
    regions = {runtime_of(nodes[0]).peer.directory.infos[s].region for s in range(3)}  # type: ignore[union-attr]
    assert regions == {"eu", "us"}

    await nodes[2].put("from-n2", b"library")

    async def everywhere() -> bool:
        for node in nodes:
            got = await node.get("from-n2")
            if got is None or got.value != b"library":
                return False
        return True

    await eventually(everywhere, timeout=5)

    # leave() leaves for good (close() would stop it as a member that returns), seen by the others.
    leaver = nodes.pop(1)
    await leaver.leave()
    assert leaver.closed

    async def left() -> bool:
        return all(runtime_of(n).peer.member_state("n1") == State.LEFT for n in nodes)  # type: ignore[union-attr]

    await eventually(left)


async def test_node_info_address_is_advertised_and_standalone_refuses_bootstrap(
    nodes: list[EpidemicStorage], tmp_path: Path
) -> None:
    factory = StorageFactory(StorageConfig(data_dir=str(tmp_path / "a"), listen_addr="127.0.0.1:0"))
    node = await factory.create_epidemic_storage("a", NodeInfo(addresses=("127.0.0.1:7999",)), [])
    nodes.append(node)
    assert runtime_of(node).addr == "127.0.0.1:7999"

    standalone = StorageFactory(StorageConfig(data_dir=str(tmp_path / "b"), listen_addr=""))
    with pytest.raises(ConfigError, match="bootstrap_nodes"):
        await standalone.create_epidemic_storage("b", None, ["127.0.0.1:7400"])
    alone = await standalone.create_epidemic_storage("b")
    nodes.append(alone)
    assert alone.network is None


async def test_node_metadata_reaches_every_member_and_stays_out_of_the_keyspace(
    nodes: list[EpidemicStorage], tmp_path: Path
) -> None:
    bootstrap: list[str] = []
    for i in range(3):
        config = StorageConfig(data_dir=str(tmp_path / f"m{i}"), listen_addr=f"127.0.0.{i + 1}:0", **FAST)  # type: ignore[arg-type]
        factory = StorageFactory(config)
        info = NodeInfo(metadata={"rack": f"r{i}", "role": "db"}) if i < 2 else NodeInfo()
        nodes.append(await factory.create_epidemic_storage(f"m{i}", info, bootstrap, factory.create_sql_storage()))
        bootstrap = [runtime_of(nodes[0]).addr]
    await nodes[2].put("user-key", b"v")
    expected = {"m0": {"rack": "r0", "role": "db"}, "m1": {"rack": "r1", "role": "db"}}

    async def everywhere() -> bool:
        for node in nodes:
            if await node.member_metadata(["m0", "m1", "m2"]) != expected:
                return False
        return True

    await eventually(everywhere)
    for node in nodes:
        keys, _ = await node.list_keys()
        assert keys == ["user-key"] or keys == []  # internal member records are never listed
    with pytest.raises(InvalidInputError, match="mapping"):
        await StorageFactory(StorageConfig(listen_addr="")).create_epidemic_storage(
            "bad",
            NodeInfo(metadata=["not", "a", "mapping"]),
            [],
            None,  # type: ignore[arg-type]
        )
