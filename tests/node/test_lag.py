"""`dsm.node.lag.ReplicationDelay`: one reading per replicated key a commit stored, none for local writes,
internal records or purges; and on two real nodes, the delay of a write that reached the other."""

from __future__ import annotations

from pathlib import Path

from dsm import NodeInfo, StorageConfig, StorageFactory
from dsm.api.metrics import replication_metrics
from dsm.core.hlc import pack
from dsm.core.replica import Commit
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, VersionSet, write
from dsm.net.status import snapshot
from dsm.node.lag import BUCKETS_S, ReplicationDelay
from support import eventually, runtime_of

NOW = 1_700_000_000_000


def written_at(ms: int, node: str = "w") -> VersionSet:
    return write(VersionSet(), Dot(pack(ms), node), VersionVector(), b"v", Resolution.SIBLINGS, 16)


def test_a_reading_per_replicated_key_and_none_for_local_writes_internal_records_or_purges() -> None:
    lag = ReplicationDelay(lambda: NOW)
    lag.on_commit(Commit(states={"mine": written_at(NOW - 5_000)}, written={"mine": pack(NOW - 5_000)}))
    assert lag.count == 0 and lag.quantile(0.5) is None  # a local write is no replication
    commit = Commit(
        states={
            "a": written_at(NOW - 30),  # 30 ms after its write: the 0.05 s bucket
            "b": written_at(NOW - 700),  # 0.7 s: the 1 s bucket
            "\x00member/n2": written_at(NOW - 90_000),  # an internal record
            "gone": written_at(NOW - 90_000),  # purged
            "ahead": written_at(NOW + 40),  # the writer's clock is ahead: 0, not negative
        },
        deletes=["gone"],
    )
    lag.on_commit(commit)
    assert lag.count == 3
    assert lag.counts[BUCKETS_S.index(0.05)] == 1 and lag.counts[BUCKETS_S.index(1.0)] == 1
    assert lag.counts[0] == 1  # the clock ahead
    assert abs(lag.sum_s - 0.73) < 1e-9
    assert lag.quantile(0.5) == 0.05 and lag.quantile(1.0) == 1.0


async def test_a_write_replicated_to_another_node_shows_its_delay_there(tmp_path: Path) -> None:
    settings = {
        "probe_interval_ms": 200,
        "probe_timeout_ms": 100,
        "gossip_interval_ms": 200,
        "cluster_secret": "lag-test-secret-0001",
    }
    nodes = []
    try:
        for i, bootstrap in enumerate(([], None)):
            config = StorageConfig(data_dir=str(tmp_path / f"n{i}"), listen_addr="127.0.0.1:0", **settings)  # type: ignore[arg-type]
            factory = StorageFactory(config)
            seeds = bootstrap if bootstrap is not None else [runtime_of(nodes[0]).addr]
            nodes.append(
                await factory.create_epidemic_storage(f"n{i}", NodeInfo(), seeds, factory.create_sql_storage())
            )

        async def joined() -> bool:
            return runtime_of(nodes[1]).ready and runtime_of(nodes[0]).ready

        await eventually(joined)
        await nodes[0].put("k", b"v")

        async def arrived() -> bool:
            return await nodes[1].get("k") is not None

        await eventually(arrived)
        store = snapshot(nodes[1], runtime_of(nodes[1])).store
        assert sum(store.replication_delay_counts) >= 1 and store.replication_delay_p50_s is not None
        [family] = replication_metrics(store)  # as /metrics shows it
        samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
        assert samples[("dsm_replication_delay_seconds_count", None)] == sum(store.replication_delay_counts)
        assert samples[("dsm_replication_delay_seconds_bucket", "+Inf")] == sum(store.replication_delay_counts)
        assert snapshot(nodes[0], runtime_of(nodes[0])).store.replication_delay_p50_s is None  # wrote it
    finally:
        for node in nodes:
            await node.close()
