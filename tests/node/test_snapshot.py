"""Snapshots (`dsm.node.snapshot`) on real stores (SQLite, PostgreSQL): a save holds every row, tombstones
included, and a restore into a new store gives them back, dated at the snapshot and marked as
holding no acceptor state; corrupt, truncated, foreign, newer-format and too-old files, and a target that
already holds a store, are refused with a clear error."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from dsm import NodeInfo, StorageConfig, StorageFactory
from dsm.node.snapshot import MAGIC, SnapshotError, read_header, restore, rows, save
from dsm.node.startup import META_ACCEPTOR_RESTORED, META_LAST_SEEN

GRACE_MS = 3_600_000


def config_for(tmp_path: Path, name: str, url: str | None) -> StorageConfig:
    settings: dict[str, Any] = {"node_id": "s1", "data_dir": str(tmp_path / name), "tombstone_grace_ms": GRACE_MS}
    if url is not None:
        settings["storage_url"] = url
    (tmp_path / name).mkdir(exist_ok=True)
    return StorageConfig(listen_addr="", **settings)


async def open_node(config: StorageConfig, metadata: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    factory = StorageFactory(config)
    return await factory.create_epidemic_storage(
        node_info=NodeInfo(metadata=metadata or {}), backing_storage=factory.create_sql_storage()
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def urls(request: pytest.FixtureRequest) -> tuple[str | None, str | None]:
    if request.param == "sqlite":
        return None, None
    server = request.getfixturevalue("postgres_server")
    return server.create_database(), server.create_database()  # the saved node's, and the restore's


async def test_a_restore_gives_back_every_row_of_the_save(tmp_path: Path, urls: tuple[str | None, str | None]) -> None:
    source = config_for(tmp_path, "source", urls[0])
    node = await open_node(source)
    try:
        for i in range(120):
            await node.put(f"k{i:03d}", f"v{i}".encode())
        await node.delete("k007")  # a tombstone travels too
        before = {f"k{i:03d}": await node.get(f"k{i:03d}") for i in range(120)}
        path = tmp_path / "s1.dsmsnap"
        saved = await save(node, path)
    finally:
        await node.close()
    header = read_header(path)
    assert header["node_id"] == "s1" and header["keys"] == saved["keys"] == 120  # the tombstone's key included
    assert sum(1 for _ in rows(path)) == header["keys"]

    target = config_for(tmp_path, "target", urls[1])
    await restore(path, target, now_ms=header["created_ms"] + 1_000)
    raw = StorageFactory(target).create_sql_storage()
    await raw.open()
    try:  # dated at the snapshot: a node started on it is away since then (its next start stamps its own time)
        assert await raw.read_meta(META_LAST_SEEN) == str(header["created_ms"]).encode()
        assert await raw.read_meta(META_ACCEPTOR_RESTORED) is not None
    finally:
        await raw.close()
    restored = await open_node(target)
    try:
        for key, read in before.items():
            got = await restored.get(key)
            assert (got is None) == (read is None) and (got is None or got.siblings == read.siblings), key
        assert restored.commits.acceptor_restored  # no acceptor answers from it (see dsm.node.snapshot)
    finally:
        await restored.close()
    with pytest.raises(SnapshotError, match="already holds a store"):
        await restore(path, target, now_ms=header["created_ms"] + 1_000)


async def snapshot_of(tmp_path: Path) -> Path:
    node = await open_node(config_for(tmp_path, "source", None))
    try:
        for i in range(20):
            await node.put(f"k{i}", b"v" * 100)
        path = tmp_path / "s1.dsmsnap"
        await save(node, path)
    finally:
        await node.close()
    return path


async def test_bad_files_are_refused(tmp_path: Path) -> None:
    path = await snapshot_of(tmp_path)
    good = path.read_bytes()
    corrupt = tmp_path / "corrupt.dsmsnap"
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(SnapshotError, match="corrupt"):
        read_header(corrupt)
    truncated = tmp_path / "truncated.dsmsnap"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(SnapshotError, match=r"corrupt|truncated"):
        read_header(truncated)
    foreign = tmp_path / "foreign.dsmsnap"
    foreign.write_bytes(b"SQLite format 3\x00" + good[16:])
    with pytest.raises(SnapshotError, match="not a DSM snapshot"):
        read_header(foreign)
    # A newer format, with a checksum that matches: refused for its format, not as corrupt.
    header = json.dumps({"format": 99, "node_id": "s1", "created_ms": 1, "keys": 0, "tombstone_grace_ms": 1}).encode()
    body = MAGIC + struct.pack(">I", len(header)) + header + struct.pack(">I", 0)
    newer = tmp_path / "newer.dsmsnap"
    newer.write_bytes(body + hashlib.blake2b(body, digest_size=32).digest())
    with pytest.raises(SnapshotError, match="format 99"):
        read_header(newer)
    target = config_for(tmp_path, "target", None)
    for bad in (corrupt, truncated, foreign, newer):
        with pytest.raises(SnapshotError):
            await restore(bad, target, now_ms=10**13)
    assert not list((tmp_path / "target").iterdir())  # nothing was written for a refused file


async def test_a_snapshot_older_than_the_grace_period_needs_the_flag(tmp_path: Path) -> None:
    path = await snapshot_of(tmp_path)
    created = read_header(path)["created_ms"]
    target = config_for(tmp_path, "target", None)
    with pytest.raises(SnapshotError, match="discard-stale-deletes"):
        await restore(path, target, now_ms=created + GRACE_MS + 1)
    await restore(path, target, now_ms=created + GRACE_MS + 1, discard_stale_deletes=True)
    node = await open_node(target)
    try:
        assert await node.get("k3") is not None
    finally:
        await node.close()
