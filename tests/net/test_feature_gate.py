"""The feature gate of keys that expire (`dsm.node.features`): two library nodes over loopback TCP; a TTL write
is taken once each holds the other's features record, refused with `FeatureUnavailableError` naming the
member whose record lacks `ttl` (here: withdrawn, as a node of an older build never has one), taken again
when it publishes, and when the blocking member has left; writes without a TTL never wait. Over HTTP the
refusal is a 409 `feature_unavailable` with the members. And on the same two nodes: a key that expired reads
as absent at every level (the merged reads of `quorum` and `all` too) on both, with no row rewritten."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dsm import EpidemicStorage, FeatureUnavailableError, NodeInfo, StorageConfig, StorageFactory
from dsm.api.errors import error_response
from dsm.core.encoding import decode_versions
from dsm.core.ring import State
from dsm.node.features import FEATURES_KEY_PREFIX, features_of
from support import eventually, runtime_of

pytestmark = pytest.mark.usefixtures("loopback_hosts")

FAST = {
    "probe_interval_ms": 200,
    "probe_timeout_ms": 100,
    "membership_sync_interval_ms": 500,
    "gossip_interval_ms": 200,
    "anti_entropy_interval_ms": 500,
    "cluster_secret": "feature-gate-secret-00001",
}


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[list[EpidemicStorage]]:
    started: list[EpidemicStorage] = []
    bootstrap: list[str] = []
    for i in range(2):
        factory = StorageFactory(
            StorageConfig(data_dir=str(tmp_path / f"g{i}"), listen_addr=f"127.0.0.{i + 1}:0", **FAST)  # type: ignore[arg-type]
        )
        node = await factory.create_epidemic_storage(f"g{i}", NodeInfo(), bootstrap, factory.create_sql_storage())
        started.append(node)
        bootstrap = [runtime_of(started[0]).addr]
    yield started
    for node in started:
        await node.close()


async def ttl_put_taken(node: EpidemicStorage) -> bool:
    try:
        await node.put("lease", b"v", ttl_ms=60_000)
    except FeatureUnavailableError:
        return False
    return True


async def test_ttl_writes_wait_until_every_member_that_has_not_left_supports_them(
    nodes: list[EpidemicStorage],
) -> None:
    a, b = nodes

    async def both_alive() -> bool:
        peer = runtime_of(a).peer
        return peer is not None and peer.member_state("g1") == State.ALIVE

    await eventually(both_alive)
    await eventually(lambda: ttl_put_taken(a))

    # b withdraws its record (as a node of an older build, which never has one): a refuses, naming b.
    key = FEATURES_KEY_PREFIX + "g1"
    held = await b.store.read(key)
    assert held is not None and "ttl" in features_of(held)
    await b.commits.submit(key, None, decode_versions(held).context())

    async def refused() -> bool:
        try:
            await a.put("lease", b"v", ttl_ms=60_000)
        except FeatureUnavailableError as exc:
            assert exc.feature == "ttl" and exc.members == ["g1"]
            return True
        return False

    await eventually(refused)
    await a.put("plain", b"no ttl")  # writes without a TTL do not wait
    response = error_response(FeatureUnavailableError("ttl", ["g1"]))
    assert response is not None and response.status == 409
    assert response.body is not None
    error = json.loads(response.body)["error"]  # type: ignore[arg-type]
    assert error["code"] == "feature_unavailable" and error["members"] == ["g1"]

    await b.features.publish()  # b supports it again
    await eventually(lambda: ttl_put_taken(a))
    await b.commits.submit(key, None, decode_versions(await b.store.read(key) or b"").context())
    await eventually(refused)
    await b.leave()  # a member that left does not block
    await eventually(lambda: ttl_put_taken(a))


async def test_an_expired_key_reads_absent_at_every_level_on_every_node(nodes: list[EpidemicStorage]) -> None:
    a, b = nodes

    async def both_alive() -> bool:
        return all(
            (peer := runtime_of(node).peer) is not None and peer.member_state(f"g{1 - i}") == State.ALIVE
            for i, node in enumerate(nodes)
        )

    await eventually(both_alive)
    await eventually(lambda: ttl_put_taken(a))
    await a.put("short", b"v", ttl_ms=2_000, consistency="all")  # on both nodes when it returns

    assert await b.store.read("short") is not None

    async def absent_everywhere() -> bool:
        for node in nodes:
            for level in ("local", "quorum", "all"):
                if await node.get("short", consistency=level) is not None:
                    return False
            if "short" in (await node.list_keys())[0]:
                return False
        return True

    await eventually(absent_everywhere, timeout=15)
    for node in nodes:  # nothing was rewritten at expiry: both still hold the same row
        assert await node.store.read("short") == await a.store.read("short") is not None
